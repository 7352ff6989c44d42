"""The console script. The bare command (open the app) takes a short path that imports neither
typer nor the plan layer, so the app's first frame comes quickly; every other command goes to
the typer app in ``cli``."""

from __future__ import annotations

import os
import sys


def _bare_args(argv: list[str]) -> tuple[str | None, bool] | None:
    """(runs-dir, no-daemon) when argv only opens the app; None when it names a command."""
    runs_dir, no_daemon, i = None, os.environ.get("STILTS_NO_DAEMON", "") not in ("", "0"), 0
    while i < len(argv):
        a = argv[i]
        if a == "--no-daemon":
            no_daemon = True
        elif a == "--runs-dir" and i + 1 < len(argv):
            runs_dir = argv[i + 1]
            i += 1
        elif a.startswith("--runs-dir="):
            runs_dir = a.split("=", 1)[1]
        else:
            return None
        i += 1
    return runs_dir, no_daemon


def main() -> None:
    bare = _bare_args(sys.argv[1:])
    if bare is None:
        from stilts_tui.cli import main as cli_main

        cli_main()
        return
    from stilts_tui import rundir
    from stilts_tui.errors import UserError, report

    try:
        root = rundir.runs_dir(bare[0])
        root.mkdir(parents=True, exist_ok=True)
        from stilts_tui.tui.app import StiltsApp

        StiltsApp(root, start_daemon=not bare[1]).run()
    except (UserError, OSError) as e:
        sys.exit(report(e))
