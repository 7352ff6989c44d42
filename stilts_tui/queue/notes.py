"""The clients' side of notes and tags (the CLI's `note`, the app's note key): check what a person typed,
then ask the queue's owner to record it, as every other change (queue/requests.py, kind ``note``). Bad
input is one line and nothing is written; the rules are store/notes.py's."""

from __future__ import annotations

from pathlib import Path

from stilts_tui.errors import UserError
from stilts_tui.queue import requests
from stilts_tui.store import notes, rundir
from stilts_tui.store.ledger import Ledger


def note_args(
    text: str | None = None,
    clear: bool = False,
    tags: list[str] | None = None,
    untag: list[str] | None = None,
    plan: str | None = None,
) -> dict:
    """A note request's arguments from what a person gave, checked (UserError: one line)."""
    if text is not None and clear:
        raise UserError("give a note or --clear, not both")
    args: dict = {"tags": notes.check_tags(tags or [], "--tag"), "untag": notes.check_tags(untag or [], "--untag")}
    if text is not None:
        args["note"] = notes.check_note(text)
    if clear:
        args["clear"] = True
    if plan is not None:
        args["plan"] = plan
    if text is None and not clear and not args["tags"] and not args["untag"]:
        raise UserError("nothing to record: give a note, --tag, --untag or --clear")
    return args


def targets(ledger: Ledger, run_ids: list[str], plan: str | None) -> list[dict]:
    """The rows (or the plan's document) a note goes on; an unknown run or plan is one line."""
    if bool(run_ids) == (plan is not None):
        raise UserError("name run ids or --plan NAME (one of them)")
    if plan is not None:
        doc = ledger.plans().get(plan)
        if doc is None:
            raise UserError(f"--plan: no plan named '{plan}' in {ledger.path}")
        return [doc]
    rows = []
    for rid in run_ids:
        row = ledger.get(rundir.check_id(rid))
        if row is None:
            raise UserError(f"no run '{rid}' in {ledger.path}")
        rows.append(row)
    return rows


def note(root: Path, run_ids: list[str], args: dict, wait: float = requests.WAIT_S) -> dict:
    """Ask for a note request (``args`` from :func:`note_args`) on runs, or on the plan ``args["plan"]``;
    its outcome (``done``: what it changed), or ``{"pending": True}`` while a daemon has not got to it.
    Tags beyond :data:`notes.MAX_TAGS` on any target are refused here: nothing is written."""
    ledger = Ledger(root)
    for doc in targets(ledger, run_ids, args.get("plan")):
        tags = notes.changed_tags(notes.tags_of(doc), args.get("tags") or [], args.get("untag") or [])
        what = f"plan '{args['plan']}'" if args.get("plan") else f"run {doc.get('id')}"
        notes.check_count(tags, what)
    return requests.ask(ledger, "note", list(run_ids), args, wait=wait)
