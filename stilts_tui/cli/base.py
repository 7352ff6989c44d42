"""What every command line of the package shares, light enough for the bare command (open the app) to
import before its first frame: the root options and :func:`run`, which turns a usage error into one line
and exit status 2. Imports nothing of the plan, queue or ledger layers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui.contract import EXIT_OK, Env

try:  # typer >= 0.2x carries its own copy of click; older typer uses click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

RunsDir = Annotated[
    Path | None, typer.Option("--runs-dir", envvar=Env.RUNS_DIR, help="where run folders and the ledger live")
]
NoDaemon = Annotated[
    bool,
    typer.Option("--no-daemon", envvar=Env.NO_DAEMON, help="do not start the queue daemon if it is not running"),
]
INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C


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
        sys.exit(INTERRUPTED)
    except (UserError, OSError) as e:
        sys.exit(report(e))
    sys.exit(code if isinstance(code, int) else EXIT_OK)
