"""The typer app and its command groups, the options several commands share, the root callback (the
bare command opens the app) and the two helpers every command uses: the runs-dir and the console.

The commands live one group a module beside this one and register themselves on these apps when
imported (``stilts_tui.cli.load`` imports them all, in the order ``--help`` lists them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui.cli.base import NoDaemon, RunsDir
from stilts_tui.store import rundir

app = typer.Typer(
    name="stilts-tui",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Plan, queue, watch and score intermediate-task fine-tuning (STILTs) studies.",
)
plan_app = typer.Typer(help="Validate and inspect plan files.", no_args_is_help=True)
queue_app = typer.Typer(help="Add plans to the queue and list its runs.", no_args_is_help=True)
daemon_app = typer.Typer(help="Start, stop and inspect the queue daemon.", no_args_is_help=True)
tasks_app = typer.Typer(help="List the built-in tasks; show a task's examples as the model receives them.")
app.add_typer(plan_app, name="plan")
app.add_typer(queue_app, name="queue")
app.add_typer(daemon_app, name="daemon")
app.add_typer(tasks_app, name="tasks")

PlanPath = Annotated[Path, typer.Argument(help="a plan file (TOML)", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output (see README)")]
RunIds = Annotated[list[str] | None, typer.Argument(help="run ids (as `queue ls` shows)", show_default=False)]
PlanOpt = Annotated[str | None, typer.Option("--plan", help="every run of this plan")]


def console():
    """Rich output for a terminal; piped or redirected, never cut to 80 columns (full ids and values)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def runs_root(ctx: typer.Context) -> Path:
    """The runs-dir the root options name (``--runs-dir``, its environment variable, else ./runs)."""
    return ctx.obj["runs_dir"]


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    runs_dir: RunsDir = None,
    no_daemon: NoDaemon = False,
) -> None:
    """Plan, queue, watch and score STILTs studies. With no command, opens the terminal app."""
    ctx.obj = {"runs_dir": rundir.runs_dir(runs_dir)}
    if ctx.invoked_subcommand is None:
        open_tui(ctx.obj["runs_dir"], no_daemon)


def open_tui(root: Path, no_daemon: bool) -> None:
    """Open the terminal app on a runs-dir (made if missing)."""
    from stilts_tui.tui.app import StiltsApp

    root.mkdir(parents=True, exist_ok=True)
    StiltsApp(root, start_daemon=not no_daemon).run()
