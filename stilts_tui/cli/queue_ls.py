"""`queue ls`: the runs in queue order, as a table or JSON, with each run's reason.

What a run is shown as (status, reason, progress, attempts) comes from the one view of a run,
store/view.py, as in the app."""

from __future__ import annotations

from typing import Annotated

import typer

from stilts_tui import plan as plans
from stilts_tui.cli.root import JsonFlag, queue_app
from stilts_tui.cli.root import console as _console
from stilts_tui.cli.root import runs_root as _root
from stilts_tui.contract import STATUSES, Env
from stilts_tui.errors import UserError
from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.view import read_views


@queue_app.command("ls")
def queue_ls(
    ctx: typer.Context,
    plan: Annotated[str | None, typer.Option("--plan", help="only this plan (by name)")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"only runs in this status: {', '.join(STATUSES)}")
    ] = None,
    as_json: JsonFlag = False,
    tag: Annotated[str | None, typer.Option("--tag", help="only runs with this tag (`stilts-tui note`)")] = None,
) -> None:
    """List runs in queue order."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status: '{status}' is not one of {', '.join(STATUSES)}")
    root = _root(ctx)
    if not root.is_dir():  # an empty table here would read as "nothing queued" when nothing was looked at
        raise UserError(
            f"no runs-dir at {root}: run this where `queue add` made one, or name it (--runs-dir, ${Env.RUNS_DIR})"
        )
    ledger = Ledger(root)
    if plan is not None and plan not in ledger.plans():
        raise UserError(f"--plan: no plan named '{plan}' in {ledger.path}")
    runs = ledger.runs(plan=plan, status=status)
    if tag is not None:
        from stilts_tui.store import notes

        (tag,) = notes.check_tags([tag], "--tag")
        runs = [r for r in runs if tag in notes.tags_of(r)]
    shown = read_views(_root(ctx), ledger.runs())  # every run: a blocked run names its parent's status
    if as_json:  # the ledger's fields, then the view's (store/view.py: RunView.record)
        typer.echo(json_text([{**{k: r.get(k) for k in LS_KEYS}, **shown[r["id"]].record()} for r in runs], indent=1))
    else:
        _console().print(_runs_table(runs, shown))
        typer.echo(f"{len(runs)} runs", err=True)
    _warn_stuck(runs)


# the fields of a run in `queue ls --json` (documented in docs/cli.md: the stable form)
LS_KEYS = (
    "id",
    "plan",
    "stage",
    "name",
    "task",
    "intermediate",
    "seed",
    "params",
    "grid",
    "parent",
    "status",
    "gpu",
    "score",
    "priority",
    "error",
    "stuck",
    "after",
    "pruned_why",
)


def _runs_table(runs: list[dict], shown: dict):
    """`queue ls`'s table: one row a run, every cell escaped (``shown``: every run's view, store/view.py)."""
    from rich.table import Table
    from rich.text import Text

    table = Table("id", "plan", "stage", "task", "from", "seed", "grid", "status", "gpu", "score", "reason", box=None)
    for r in runs:
        params = r.get("params") if isinstance(r.get("params"), dict) else None
        grid = plans.grid_text(r.get("grid"), params) if isinstance(r.get("grid"), dict) else str(r.get("grid") or "")
        score = r.get("score")
        cells = (
            r["id"],
            r.get("plan"),
            r.get("stage"),
            r.get("task"),
            r.get("intermediate") or "",
            r.get("seed", ""),
            grid,
            shown[r["id"]].label,
            "" if r.get("gpu") is None else r["gpu"],
            f"{score:.4f}" if isinstance(score, (int, float)) else "",
            shown[r["id"]].reason,
        )
        # Text, not markup: a name like "[/]" is shown, not parsed; control characters shown escaped
        table.add_row(*(Text(terminal_safe("" if c is None else c)) for c in cells))
    return table


def _warn_stuck(runs: list[dict]) -> None:
    from stilts_tui.queue.executors.slurm import stuck_lines

    for line in stuck_lines(runs):
        typer.echo(f"warning: {terminal_safe(line)}", err=True)
