"""The console script. The bare command (open the app) is parsed by a one-command typer app of its own
that imports nothing of the plan layer, so the app's first frame comes quickly; every other command
goes to the typer app in ``cli``. Both share the root options below and :func:`run`, which turns a
usage error into one line and exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.2x carries its own copy of click; older typer uses click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

RunsDir = Annotated[
    Path | None, typer.Option("--runs-dir", envvar="STILTS_RUNS_DIR", help="where run folders and the ledger live")
]
NoDaemon = Annotated[
    bool,
    typer.Option("--no-daemon", envvar="STILTS_NO_DAEMON", help="do not start the queue daemon if it is not running"),
]


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


def usage_error(e: click_errors.ClickException):
    """A usage error (unknown option, bad value, missing argument; typer draws them as a box) as one line
    naming the command, with the exit status click gives it (2)."""
    from stilts_tui.errors import UserError

    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "stilts-tui"
    line = " ".join(e.format_message().split())
    return UserError(f"{where}: {line} (see `{where} --help`)", exit_code=e.exit_code)


def run(app: typer.Typer, prog: str = "stilts-tui") -> None:
    """Run a typer app: bad input (a usage error included) is one line on stderr and exit status 2; a
    failure of the machine (a full disk, a permission) one line and exit status 1."""
    from stilts_tui.errors import UserError, report

    try:
        code = app(prog_name=prog, standalone_mode=False)  # click's own handling prints a box
    except click_errors.NoArgsIsHelpError as e:  # a command group alone: its help, as before
        e.show()
        sys.exit(e.exit_code)
    except click_errors.ClickException as e:
        sys.exit(report(usage_error(e)))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except (UserError, OSError) as e:
        sys.exit(report(e))
    sys.exit(code if isinstance(code, int) else 0)


def open_app(runs_dir: RunsDir = None, no_daemon: NoDaemon = False) -> None:
    """Open the terminal app (starting the queue daemon unless --no-daemon)."""
    from stilts_tui.store import rundir

    root = rundir.runs_dir(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    from stilts_tui.tui.app import StiltsApp

    StiltsApp(root, start_daemon=not no_daemon).run()


def main() -> None:
    if names_a_command(sys.argv[1:]):
        from stilts_tui.cli import main as cli_main

        cli_main()
        return
    bare = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    bare.command()(open_app)
    run(bare)
