"""Notes and tags on runs and plans: their bounds, and how a note request changes the ledger.

A person's words about a run ("lr too high: diverged at step 300") or a plan ("the paper's table 2"),
and tags to find them by (``baseline``, ``rerun:v2``). Clients check what they are given here
(:func:`check_note`, :func:`check_tags`: one line naming what is wrong, nothing written) and write a
``note`` request (queue/requests.py); the queue's owner applies it with :func:`apply`, which bounds
what it stores again (a request in the ledger may have been written by anything). A run keeps its note
and tags on its row (``note``, ``tags``: store/row.py); a plan on its document in the ledger's ``plans``
table. Notes are stored as typed; every reader shows them through ``fmt.terminal_safe``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from stilts_tui.errors import UserError

MAX_NOTE = 2000  # characters of a note (a paragraph; a longer text belongs in a file beside the plan)
MAX_TAGS = 20  # tags on one run or plan
MAX_TAG = 40  # characters of a tag
TAG_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_TAG}}}")
TAG_RULE = f"1 to {MAX_TAG} of A-Z a-z 0-9 _ . : -"


def check_note(text: str, where: str = "note") -> str:
    """The note as stored (surrounding blanks dropped), or a UserError naming what is wrong."""
    note = text.strip()
    if not note:
        raise UserError(f"{where}: the note is empty (--clear removes a note)")
    if len(note) > MAX_NOTE:
        raise UserError(f"{where}: the note has {len(note)} characters; at most {MAX_NOTE}")
    return note


def check_tags(tags: Iterable[str], where: str = "--tag") -> list[str]:
    """The tags, each checked (:data:`TAG_RE`), duplicates dropped, in the order given."""
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str) or not TAG_RE.fullmatch(t):
            raise UserError(f"{where}: {str(t)[:60]!r} is not a tag ({TAG_RULE})")
        if t not in out:
            out.append(t)
    return out


def tags_of(doc: dict | None) -> list[str]:
    """A row's (or plan's) tags as stored: a list of valid tags, anything else dropped."""
    tags = (doc or {}).get("tags")
    return [t for t in tags if isinstance(t, str) and TAG_RE.fullmatch(t)] if isinstance(tags, list) else []


def note_of(doc: dict | None) -> str | None:
    """A row's (or plan's) note as stored, or None."""
    note = (doc or {}).get("note")
    return note if isinstance(note, str) and note else None


def one_line(note: str | None, tags: Iterable[str]) -> str:
    """Tags (``#tag``) then the note's words, on one line: what a table cell or a title shows (not yet made
    safe for a terminal: the caller passes it through ``fmt.terminal_safe``)."""
    return " ".join([*(f"#{t}" for t in tags), *(note or "").split()])


def changed_tags(old: list[str], add: list[str], remove: list[str]) -> list[str]:
    """``old`` with ``add`` appended (once each) and ``remove`` taken out."""
    return [t for t in dict.fromkeys([*old, *add]) if t not in remove]


def check_count(tags: list[str], what: str) -> None:
    if len(tags) > MAX_TAGS:
        raise UserError(f"--tag: {what} would have {len(tags)} tags; at most {MAX_TAGS}")


def new_fields(doc: dict, args: dict) -> dict:
    """What a note request (``args``: ``note`` sets it, ``clear`` removes it, ``tags`` adds, ``untag``
    removes) makes of a run's or a plan's ``note`` and ``tags``; bounded again (a request read from the
    ledger is not trusted): a note cut to :data:`MAX_NOTE`, invalid tags dropped, at most :data:`MAX_TAGS`."""
    out: dict = {}
    if args.get("clear"):
        out["note"] = None
    elif isinstance(args.get("note"), str) and args["note"].strip():
        out["note"] = args["note"].strip()[:MAX_NOTE]
    add = [t for t in args.get("tags") or [] if isinstance(t, str) and TAG_RE.fullmatch(t)]
    remove = [t for t in args.get("untag") or [] if isinstance(t, str)]
    if add or remove:
        tags = changed_tags(tags_of(doc), add, remove)[:MAX_TAGS]
        out["tags"] = tags or None
    return out
