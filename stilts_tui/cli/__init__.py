"""The command line (typer): one module a command group, each command a small function calling into the
layers below; rendering (rich tables and text) in ``render.py``.

    base.py      the root options and run(): usage errors as one line (shared with the bare command)
    root.py      the typer app, its groups, shared options, the runs-dir and the console
    plan.py      plan validate | show | rehearse          queue.py     queue add | cancel | retry | ...
    queue_ls.py  queue ls                                 daemon.py    daemon start | stop | status
    slurm.py     daemon start's Slurm settings, checked   tasks.py     tasks, tasks show
    scores.py    scores, rank                             logs.py      logs
    export.py    export (a plan's runs into a tracker)
    doctor.py    doctor                                   demo_cmd.py  demo, synth
    render.py    rich tables and text                     demo.py, rehearse.py: what demo and rehearse run

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 1 on failure. This module
stays light: the bare command imports ``base`` through it before the app's first frame; the commands are
imported when a command runs (:func:`load`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# in the order `stilts-tui --help` lists them (each registers its commands on import)
COMMAND_MODULES = (
    "demo_cmd",
    "scores",
    "export",
    "logs",
    "note",
    "doctor",
    "plan",
    "queue",
    "queue_ls",
    "daemon",
    "tasks",
)


def load() -> typer.Typer:
    """The typer app with every command registered."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"stilts_tui.cli.{name}")
    from stilts_tui.cli.root import app

    return app


def __getattr__(name: str):
    if name == "app":  # `stilts_tui.cli.app`: the whole app (tests build click commands from it)
        return load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console entry point: bad input (a usage error included) becomes one line on stderr and exit status 2;
    a failure of the machine (a full disk, a permission, a read-only file system) one line and exit status 1."""
    from stilts_tui.cli.base import run

    run(load())
