"""`note`: a note and tags on a run or a plan, recorded as a request the queue's owner carries out
(queue/notes.py); with nothing to record, it prints the note and tags there are."""

from __future__ import annotations

from typing import Annotated

import typer

from stilts_tui.cli.root import app, runs_root
from stilts_tui.errors import UserError
from stilts_tui.fmt import terminal_safe
from stilts_tui.store import notes as rules
from stilts_tui.store.ledger import Ledger


@app.command("note")
def note(
    ctx: typer.Context,
    words: Annotated[
        list[str] | None,
        typer.Argument(help="RUN_ID then the note's text (with --plan: the text alone)", show_default=False),
    ] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="note the plan (by name) rather than a run")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="add a tag (repeatable)")] = None,
    untag: Annotated[list[str] | None, typer.Option("--untag", help="remove a tag (repeatable)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the note")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once the daemon is asked")] = False,
) -> None:
    """Attach a note or tags to a run or a plan (shown by `queue ls`, the app and the score exports)."""
    from stilts_tui.queue import notes, requests

    words = list(words or [])
    if plan is None and not words:
        raise UserError("name a run id (or --plan NAME)")
    run_ids = [] if plan is not None else words[:1]
    text_words = words if plan is not None else words[1:]
    text = " ".join(text_words) if text_words else None
    root = runs_root(ctx)
    if not root.is_dir():
        raise UserError(f"no runs-dir at {root}: run this where `queue add` made one, or name it (--runs-dir)")
    ledger = Ledger(root)
    if text is None and not (tag or untag or clear):  # nothing to record: say what is there
        (doc,) = notes.targets(ledger, run_ids, plan)
        typer.echo(_said(doc))
        return
    args = notes.note_args(text, clear, tag, untag, plan)
    out = notes.note(root, run_ids, args, wait=0.0 if no_wait else requests.WAIT_S)
    what = f"plan {plan}" if plan is not None else run_ids[0]
    if out.get("pending"):
        typer.echo(f"{what}: the note waits for the daemon, which records it at its next tick")
        return
    (doc,) = notes.targets(Ledger(root), run_ids, plan)
    typer.echo(f"{what}: {_said(doc)}")


def _said(doc: dict) -> str:
    """A run's or plan's note and tags in one line, as a terminal may print them."""
    text, tags = rules.note_of(doc), rules.tags_of(doc)
    said = [f"note: {terminal_safe(text)}" if text else "no note"]
    said.append(f"tags: {' '.join(tags)}" if tags else "no tags")
    return " · ".join(said)
