"""A run's history: every attempt with how it ended, and every retry (as pueue keeps a task's), on the
ledger row's ``history`` field. The queue appends to it (queue/history.py); this module reads it back,
cleaned, and says it in words, once, for `queue ls --json`, `logs` and the app (store/view.py).

An entry is a small dict with :data:`KEYS`: ``attempt`` (1, 2, ... counted over the run's whole life,
retries included; None for an end that came before any launch, such as a cancel while queued),
``status`` (done, failed, oom, cancelled, degenerate, pruned; :data:`RETRIED` for a person's retry),
``t_start`` and ``t_end`` (unix times; a retry's time is its ``t_end``), ``step`` and ``total_steps``
(the attempt's last step in events.jsonl), ``by`` (who cancelled or retried it: a request's ``by``) and
``error`` (one line). A ledger written by hand or by an older version may hold anything there: what is
not an entry of that shape is left out, never shown as one."""

from __future__ import annotations

import time
from collections.abc import Mapping

from stilts_tui.fmt import duration, terminal_safe

KEEP = 50  # entries kept on a row (the last ones): a run retried a thousand times stays a small row
RETRIED = "retried"  # an entry's status when a person queued the run again
KEYS = ("attempt", "status", "t_start", "t_end", "step", "total_steps", "by", "error")
_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("attempt", (int,)),
    ("status", (str,)),
    ("t_start", (int, float)),
    ("t_end", (int, float)),
    ("step", (int,)),
    ("total_steps", (int,)),
    ("by", (str,)),
    ("error", (str,)),
)


def _clean(e: Mapping) -> dict:
    """An entry of exactly :data:`KEYS`: a value of the wrong type (a bool, a NaN, a negative or huge
    number, a text of over 500 characters) read as None. (Run for every run's view: kept cheap.)"""
    out = {}
    for key, types in _TYPES:
        v = e.get(key)
        if v is not None:
            t = type(v)  # exact types: a bool is no number here
            if t not in types or (t is str and len(v) > 500) or (t is not str and not 0 <= v < 2**53):
                v = None
        out[key] = v
    return out


def entries(value: object) -> list[dict]:
    """The row's history, cleaned: each entry a dict of exactly :data:`KEYS` (a wrong-typed value read as
    None), entries without a status left out; at most the last :data:`KEEP`."""
    if not isinstance(value, list):
        return []
    return [
        _clean(e) for e in value[-KEEP:] if isinstance(e, Mapping) and isinstance(e.get("status"), str) and e["status"]
    ]


def entry(status: str, **fields: object) -> dict:
    """A new entry (the keys not given: None)."""
    return {k: fields.get(k) for k in KEYS} | {"status": status}


def appended(value: object, new: dict) -> list[dict]:
    """The history with ``new`` at its end, bounded."""
    return [*entries(value), new][-KEEP:]


def next_attempt(value: object) -> int:
    """The number the run's next attempt gets: one past the last attempt recorded (1 for none)."""
    return max((e["attempt"] for e in entries(value) if e["attempt"] is not None), default=0) + 1


def when(t: float | None) -> str:
    """A time as people read it in a log (local time, to the second)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t is not None else "?"
    except (OverflowError, ValueError, OSError):  # a time beyond what the platform's calendar holds
        return "?"


def at_step(e: Mapping) -> str:
    """ "at step 4/8" where the attempt got to a step, else ""."""
    if e.get("step") is None:
        return ""
    return f"at step {e['step']}/{e['total_steps']}" if e.get("total_steps") else f"at step {e['step']}"


def line(e: Mapping) -> str:
    """One entry in words: "attempt 2  cancelled at step 4/8 by ana@box (pid 7) at 2026-01-02 03:04:05 (ran 0:12)"."""
    if e["status"] == RETRIED:
        return f"retried by {e.get('by') or 'someone'} at {when(e.get('t_end'))}"
    head = f"attempt {e['attempt']}" if e.get("attempt") is not None else "before any attempt"
    parts = [head, " ", e["status"]]
    if step := at_step(e):
        parts.append(f" {step}")
    if e.get("by"):
        parts.append(f" by {e['by']}")
    parts.append(f" at {when(e.get('t_end'))}")
    if e.get("t_start") is not None and e.get("t_end") is not None:
        parts.append(f" (ran {duration(max(0.0, e['t_end'] - e['t_start']))})")
    if e.get("error"):
        parts.append(f": {' '.join(e['error'].split())}")
    return terminal_safe("".join(parts))


def lines(value: object) -> list[str]:
    """Every entry of a row's history in words, oldest first."""
    return [line(e) for e in entries(value)]
