"""The console script. The bare command (open the app) is parsed by a one-command typer app of its own
that imports nothing of the plan layer, so the app's first frame comes quickly; every other command
goes to the typer app in ``cli``. Both share the root options and :func:`~stilts_tui.cli.base.run`
(``cli/base.py``), which turns a usage error into one line and exit status 2."""

from __future__ import annotations

import sys

import typer

from stilts_tui.cli.base import NoDaemon, RunsDir, run


def names_a_command(argv: list[str]) -> bool:
    """Does argv name a command (or --help), rather than only the root options of the bare command?"""
    i = 0
    while i < len(argv):
        if argv[i] == "--runs-dir":
            i += 1
        elif argv[i] != "--no-daemon" and not argv[i].startswith("--runs-dir="):
            return True
        i += 1
    return False


def open_app(runs_dir: RunsDir = None, no_daemon: NoDaemon = False) -> None:
    """Open the terminal app (starting the queue daemon unless --no-daemon)."""
    from stilts_tui.store import rundir

    root = rundir.runs_dir(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    from stilts_tui.tui.app import StiltsApp

    StiltsApp(root, start_daemon=not no_daemon).run()


def main() -> None:
    """``stilts-tui``: a command goes to the full command line; none opens the app."""
    if names_a_command(sys.argv[1:]):
        from stilts_tui.cli import main as cli_main

        cli_main()
        return
    bare = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    bare.command()(open_app)
    run(bare)
