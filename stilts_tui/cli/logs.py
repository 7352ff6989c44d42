"""`logs`: print a run's history (how each attempt ended, each retry) and its train.log, and follow the log
until the run settles; `--history`: the history alone."""

from __future__ import annotations

import io
import sys
from typing import Annotated

import typer

from stilts_tui.cli.root import app, runs_root
from stilts_tui.contract import SETTLED, TRAIN_LOG
from stilts_tui.errors import Failure, UserError
from stilts_tui.fmt import terminal_safe
from stilts_tui.store import files, rundir
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.view import around, view

HISTORY_PREFIX = "history: "  # the header block's lines, apart from the log's


@app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="a run id", show_default=False)],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep printing until the run ends")] = False,
    history_only: Annotated[
        bool, typer.Option("--history", help="print only how each attempt ended (and each retry), not the log")
    ] = False,
) -> None:
    """Print a run's history of attempts, then its train.log (and follow it)."""
    import time

    root = runs_root(ctx)
    d = rundir.run_dir(root, run_id)
    ledger = Ledger(root)
    row = ledger.get(run_id)
    if row is None and not d.is_dir():
        raise UserError(f"no run '{run_id}' in {ledger.path}")
    past = view(row, around([row])).history_lines if row is not None else []  # the one view's words
    for line in past:
        typer.echo(f"{HISTORY_PREFIX}{line}")
    if history_only:
        if not past:
            typer.echo(terminal_safe(f"{run_id}: no attempt has ended yet (status {(row or {}).get('status')})"))
        return
    path = d / TRAIN_LOG
    pos = 0
    while True:
        over = not follow or (ledger.get(run_id) or {}).get("status") in SETTLED  # before the read: its last lines
        if path.exists():
            try:  # a FIFO or a folder as train.log: one line, never a hang
                raw = files.open_regular(path, nofollow=True)
            except FileNotFoundError:
                raw = None
            if raw is None:
                chunk = ""
            else:
                with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            if chunk:
                sys.stdout.write(terminal_safe(chunk, keep_newlines=True))
                sys.stdout.flush()
        if over:
            return
        if not d.is_dir():
            raise Failure(f"{d}: the run folder was removed while following its log")
        time.sleep(0.5)
