"""The queue's side of a run's history (store/history.py reads it back): the owner of the queue appends an
entry where it commits how an attempt ended (the tick's ``_apply``, the cancel of a queued run) and where
a person retries a run (the retry request), and leaves a trace in the run folder when a cancel is
carried out: a line in train.log and a ``cancelled`` event in events.jsonl, so that a log read later says
that the attempt was cancelled, when, by whom and at which step, and a retried run's next attempt header
says that it is attempt N+1 and why."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, FINAL, PRUNED_WHY_FIELD, TRAIN_LOG, Event, ResultStatus, Status
from stilts_tui.errors import UserError
from stilts_tui.store import history as h
from stilts_tui.store import rundir
from stilts_tui.store.view import Folders

__all__ = ["attempt_header", "ended", "retried"]


def _step(root: Path, cur: Mapping) -> tuple[int | None, int | None]:
    """The attempt's last step and total from events.jsonl (read bounded, store/view.py); (None, None) when
    its process never began it (the last start event is another process's: an earlier attempt's)."""
    prog = Folders(root).progress(cur["id"])
    if cur.get("pid") and prog.began_pid != cur.get("pid"):
        return None, None
    if prog.began_pid is None and not prog.total:
        return None, None
    ok = all(type(x) is int and 0 <= x < 2**53 for x in (prog.step, prog.total))
    return (prog.step, prog.total or None) if ok else (None, None)


def _how(root: Path, cur: Mapping, new: str) -> str:
    """How an attempt that the queue moves to ``new`` ended: ``oom`` where its result.json says so (a run
    requeued to run alone, or failed alone), ``failed`` for one requeued without a result, else ``new``."""
    if new in (Status.QUEUED, Status.FAILED):
        try:
            res = rundir.read_run_file(root, cur["id"])
        except UserError:
            res = None
        if isinstance(res, dict) and res.get("status") == ResultStatus.OOM:
            return ResultStatus.OOM.value
        return Status.FAILED.value
    return str(new)


def ended(root: Path, cur: Mapping, fields: Mapping, by: str | None = None) -> dict:
    """The fields to add to a change of the run ``cur`` (its row before the change) to ``fields`` that ends
    an attempt, or ends the run before any attempt began: its history with the entry appended (and, for a
    cancel, the trace in its folder). ``{}`` for a change that ends nothing (a launch, a block, a run sent
    back from a stopped worker whose attempt is not counted). ``by``: who, where the caller knows it (a
    cancel of a queued run); a running run's canceller is on its row (``cancel_by``)."""
    old, new = cur.get("status"), fields.get("status")
    if new is None or new == old:
        return {}
    if old == Status.RUNNING and new == Status.QUEUED:
        before, after = cur.get("attempts"), fields.get("attempts")
        if type(before) is int and type(after) is int and after < before:
            return {}  # it waited in a worker that was stopped: the attempt is not counted
    elif not (new in FINAL and old in (Status.RUNNING, Status.QUEUED, Status.BLOCKED)):
        return {}
    launched = old == Status.RUNNING
    status = _how(root, cur, new) if launched else str(new)
    step, total = _step(root, cur) if launched else (None, None)
    now = fields.get("finished") if isinstance(fields.get("finished"), (int, float)) else time.time()
    if status == Status.CANCELLED:
        by = by or (cur.get("cancel_by") if isinstance(cur.get("cancel_by"), str) else None)
    error = fields.get("error", cur.get("error")) if status in (Status.FAILED, ResultStatus.OOM) else None
    if status == Status.PRUNED:
        error = fields.get(PRUNED_WHY_FIELD, cur.get(PRUNED_WHY_FIELD))
    entry = h.entry(
        status,
        attempt=h.next_attempt(cur.get("history")) if launched else None,
        t_start=cur.get("started") if launched else None,
        t_end=now,
        step=step,
        total_steps=total,
        by=by,
        error=" ".join(error.split())[:300] if isinstance(error, str) else None,
    )
    entry = h.entries([entry])[0]  # what is stored is what a reader takes back
    if status == Status.CANCELLED:
        _trace_cancel(root, cur["id"], entry)
    out: dict = {"history": h.appended(cur.get("history"), entry)}
    if cur.get("cancel_by") is not None:
        out["cancel_by"] = None
    return out


def retried(cur: Mapping, by: str | None, t: float) -> dict:
    """The history of a run a person queued again, with the retry at its end."""
    return {"history": h.appended(cur.get("history"), h.entry(h.RETRIED, t_end=t, by=by)), "cancel_by": None}


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError:
        pass  # a run folder that cannot take the line: the ledger's history still says it


def _trace_cancel(root: Path, run_id: str, e: dict) -> None:
    """The cancel in the run folder: a line in train.log, a ``cancelled`` event in events.jsonl."""
    try:
        folder = rundir.run_dir(root, run_id)
    except UserError:
        return  # an id that is no run id never becomes a path
    if not folder.is_dir():
        return
    what = f"attempt {e['attempt']} cancelled" if e["attempt"] is not None else "cancelled before it began"
    step = h.at_step(e)
    _append(
        folder / TRAIN_LOG,
        f"── {what}{' ' + step if step else ''} by {e['by'] or 'the queue'} at {h.when(e['t_end'])} ──",
    )
    event = {"t": e["t_end"], "event": Event.CANCELLED.value, "attempt": e["attempt"], "by": e["by"]}
    _append(folder / EVENTS_FILE, json.dumps({**event, "step": e["step"], "total_steps": e["total_steps"]}))


def attempt_header(row: Mapping, note: str) -> str:
    """The train.log line that begins a run's next attempt: its number over the run's whole life, why it is
    tried again (retried by whom and when, or after an attempt that ran out of memory or failed), then
    ``note`` (where it was placed)."""
    past = h.entries(row.get("history"))
    n = h.next_attempt(past)
    last = past[-1] if past else None
    why = ""
    if last is not None and last["status"] == h.RETRIED:
        why = f"retried by {last['by'] or 'someone'} at {h.when(last['t_end'])}; "
    elif last is not None and last["attempt"] == n - 1 and last["status"] in (ResultStatus.OOM, Status.FAILED):
        why = f"again after attempt {n - 1} ended {last['status']}; "
    return f"── attempt {n} ── {why}{note}"
