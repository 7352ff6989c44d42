"""Every default has one source: the daemon's in queue/settings.Settings, the synthesis's in
contract.py (SYNTH_DEFAULTS). The command lines and the plan read them from there; these tests fail when one of
them says otherwise (a default written again by hand and then changed in one place only)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import typer
from conftest import cli, write_text

from stilts_tui import cli as cli_module
from stilts_tui import contract as synth_settings
from stilts_tui import plan as plans
from stilts_tui.queue import daemon
from stilts_tui.queue.settings import DEFAULTS, Settings, help_of


def _options(*command: str) -> dict[str, object]:
    """The click parameters typer builds for ``stilts-tui COMMAND...``, by Python name."""
    cmd = typer.main.get_command(cli_module.app)
    for name in command:
        cmd = cmd.commands[name]
    return {p.name: p for p in cmd.params}


def test_daemon_start_and_the_daemons_own_command_line_take_defaults_and_help_from_settings(runs_dir):
    options, parser = _options("daemon", "start"), daemon.arg_parser()
    for f in fields(Settings):
        if f.name == "slurm":  # `daemon start` builds it from --partition, --account, ... (plan.SLURM_KEYS)
            assert json.loads(parser.get_default("slurm")) == DEFAULTS.slurm
            continue
        assert options[f.name].default == getattr(DEFAULTS, f.name), f"daemon start --{f.name}"
        assert options[f.name].help == help_of(f.name), f"daemon start --{f.name}"
        assert parser.get_default(f.name) == getattr(DEFAULTS, f.name), f"daemon --{f.name}"
    root, settings = daemon.parse_settings(["--runs-dir", str(runs_dir)])
    assert (root, settings) == (runs_dir.resolve(), Settings())  # no flag: exactly the defaults


def test_a_daemon_started_without_flags_runs_at_the_default_settings(runs_dir, queue_env):
    out = cli("daemon", "start", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0, out.stderr
    info = json.loads((runs_dir / "daemon.json").read_text())  # queue_env stops the daemon afterwards
    assert info["settings"] == asdict(Settings())  # the CLI's defaults passed through the daemon's argparse


def test_the_synth_command_and_a_plans_synth_stage_take_their_defaults_from_one_table(tmp_path: Path):
    options = _options("synth")
    given = {name: o.default for name, o in options.items() if name not in ("out", "corpus_file")}
    assert given == synth_settings.SYNTH_COMMAND_DEFAULTS
    # the command differs from a stage only where it reproduces the reference file: no dev split
    assert {k: v for k, v in given.items() if v != synth_settings.SYNTH_DEFAULTS[k]} == {"dev": 0, "corpus": None}
    plan = write_text(
        tmp_path / "p.toml",
        """name = "syn"
model = "roberta-base"
[synth.s]
[intermediate.i]
task = "synth:s"
[target.t]
task = "rte"
""",
    )
    _, runs = plans.load_and_expand(plan)
    (stage,) = [r for r in runs if r.stage == "synth"]
    assert stage.params == synth_settings.SYNTH_DEFAULTS  # an empty stage runs at exactly the table's settings


def test_the_synth_command_holds_its_values_to_the_ranges_a_plan_stage_is_held_to(tmp_path):
    for flag, value, expected in (
        ("--top-p", "0", "a number > 0 and <= 1"),
        ("--fakes", "65", "<= 64"),
        ("--batch-size", "0", "an integer >= 1"),
        ("--corpus", "wiki", '"squad"'),
    ):
        args = ["synth", "--out", str(tmp_path / "o"), flag, value]
        out = cli(*(args if flag == "--corpus" else [*args, "--corpus", "squad"]))
        assert out.returncode == 2, (flag, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"stilts-tui: error: {flag}: expected ") and expected in lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything ran
