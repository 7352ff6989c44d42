"""The synthesis settings: the one table of their defaults (no torch: the plan layer and the CLI import it).

A plan's ``[synth.NAME]`` stage (plan.py), ``stilts-tui synth`` (cli.py) and the synthesis itself
(synth/run.py) read them from here; tests/test_defaults.py fails when one says otherwise.
A stage's resolved settings are hashed into its run id: changing a default here changes the id of
every synth run that relied on it (re-adding an old plan would then queue it again)."""

from __future__ import annotations

# dev: pairs taken from beyond the first n of the seeded shuffle (the reference never evaluated
# SynGPT2, but the trainer evaluates every epoch; the first n stay exactly the reference's).
DEFAULTS = {
    "corpus": "squad",
    "generator": "gpt2-medium",
    "n": 30000,
    "fakes": 3,
    "top_p": 0.9,
    "top_k": 0,
    "temperature": 1.0,
    "seed": 42,
    "dev": 1000,
    "batch_size": 64,
}
# `stilts-tui synth` reproduces the reference file (no dev split unless --dev asks for one) and makes
# the user name a corpus (--corpus or --corpus-file); the rest are the stage's defaults.
COMMAND_DEFAULTS = {**DEFAULTS, "dev": 0, "corpus": None}
