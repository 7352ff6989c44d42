"""Clients' requests to the queue: cancel, retry, priority, pause, note. A client (the CLI, the app, `ops`)
never changes a run it did not add; it records a request in the ledger (``meta/requests``: each
``{id, kind, runs, by, t, args}``) and the owner of the queue carries it out: the daemon's tick, first
thing, in one transaction, marking it done with what it did (``done``, ``outcome``). With no daemon
serving the runs-dir, the client takes the daemon's lock and carries out the open requests itself: for
that moment it is the one owner (as a daemon would, under the same lock)."""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from stilts_tui.contract import (
    AFTER_FIELD,
    CANCEL_GRACE_S,
    DAEMON_LOCK,
    DAEMON_LOG,
    PAUSED_FILE,
    PRUNED_FILE,
    PRUNED_WHY_FIELD,
    RANK_STAGE,
    RETRYABLE,
    Status,
)
from stilts_tui.queue import history
from stilts_tui.queue.runfiles import RunFiles
from stilts_tui.store import notes, rundir
from stilts_tui.store.ledger import Ledger, Tx

KEY = "requests"  # the ledger's meta document holding them: {"open": [...], "done": [...]}
KINDS = ("cancel", "retry", "priority", "pause", "note")
KEEP_DONE = 50  # done requests kept for the clients that wait on theirs (and for a reader's history)
WAIT_S = 30.0  # how long a client waits for a running daemon to carry out its request
BY_ARG = "by"  # a handler's args hold the request's ``by`` under this key


def _by() -> str:
    """Who asks: the user, the machine and the process (a request's ``by``; a run's history names it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def _book(tx: Tx) -> dict:
    doc = tx.meta.get(doc_id=KEY) or {}
    value = doc.get("value") if isinstance(doc.get("value"), dict) else {}
    return {"open": list(value.get("open") or []), "done": list(value.get("done") or [])}


def waiting(ledger: Ledger) -> bool:
    """Are requests waiting? (A cheap read of the cached ledger: the tick asks every time.)"""
    value = ledger.meta(KEY)
    return isinstance(value, dict) and bool(value.get("open"))


def _new(kind: str, runs: list[str], args: dict | None) -> dict:
    assert kind in KINDS, kind
    return {"id": uuid.uuid4().hex[:12], "kind": kind, "runs": runs, "by": _by(), "t": time.time(), "args": args or {}}


def _append(tx: Tx, req: dict) -> None:
    book = _book(tx)
    book["open"].append(req)
    tx.put(tx.meta, KEY, {"value": book})


def record(ledger: Ledger, kind: str, runs: list[str], args: dict | None = None) -> str:
    """Record one request; its id."""
    req = _new(kind, runs, args)
    with ledger.transaction() as tx:
        _append(tx, req)
    return req["id"]


def answer(ledger: Ledger, request_id: str) -> dict | None:
    """The request once carried out (with ``done`` and ``outcome``), or None while it is open."""
    value = ledger.meta(KEY)
    done = value.get("done") if isinstance(value, dict) else None
    return next((r for r in done or [] if isinstance(r, dict) and r.get("id") == request_id), None)


def carry_out(tx: Tx, files: RunFiles) -> int:
    """Carry out every open request in this transaction, in the order they came; each marked done with
    its outcome. The number carried out."""
    book = _book(tx)
    if not book["open"]:
        return 0
    for req in book["open"]:
        how = HANDLERS.get(req.get("kind"))
        runs = [rid for rid in req.get("runs") or [] if isinstance(rid, str)]
        args = {**(req.get("args") or {}), BY_ARG: req.get("by")}  # who asks, for the runs' history
        outcome = how(tx, files, runs, args) if how else {"error": "unknown kind"}
        files.log(f"request {req.get('kind')} by {req.get('by')} carried out: {_summary(outcome)}")
        book["done"].append({**req, "done": time.time(), "outcome": outcome})
    n = len(book["open"])
    book = {"open": [], "done": book["done"][-KEEP_DONE:]}
    tx.put(tx.meta, KEY, {"value": book})
    return n


def _summary(outcome: dict) -> str:
    return ", ".join(f"{k} {len(v) if isinstance(v, list) else v}" for k, v in outcome.items()) or "nothing"


def _cancel(tx: Tx, files: RunFiles, runs: list[str], args: dict) -> dict:
    """A queued or blocked run is cancelled now (no process holds it); a running one gets
    ``cancel_requested`` (and ``cancel_grace``), which the tick's cancel steps carry out."""
    now, out = time.time(), {"done": [], "requested": []}
    grace = args.get("grace", CANCEL_GRACE_S)
    for rid in runs:
        cur = tx.get_run(rid)
        if cur is None:
            continue
        if cur["status"] == Status.RUNNING:
            if not cur.get("cancel_requested"):
                tx.update_run(rid, cancel_requested=now, cancel_grace=float(grace), cancel_by=args.get(BY_ARG))
            out["requested"].append(rid)
        elif cur["status"] in (Status.QUEUED, Status.BLOCKED):
            ended = history.ended(files.root, cur, {"status": Status.CANCELLED, "finished": now}, by=args.get(BY_ARG))
            tx.update_run(rid, status=Status.CANCELLED.value, finished=now, **ended)
            out["done"].append(rid)
    return out


def _retry(tx: Tx, files: RunFiles, runs: list[str], args: dict) -> dict:
    """A failed, cancelled, blocked, degenerate or pruned run queued again as a fresh attempt: its last
    result retired beside it; one brought back from pruned keeps its pruned.json, marked ``retried``."""
    done = []
    for rid in runs:
        cur = tx.get_run(rid)
        if cur is not None and cur.get("stage") == RANK_STAGE and cur["status"] == Status.DONE:
            done += _rank_again(tx, files, cur)
            continue
        if cur is None or cur["status"] not in RETRYABLE:
            continue
        attempts = cur.get("attempts")
        files.retire_result(rid, attempts if isinstance(attempts, int) and 0 <= attempts < 2**31 else 0)
        if cur["status"] == Status.PRUNED:
            _mark_retried(files, rid, args.get(BY_ARG))
        fields = {"status": Status.QUEUED.value, "attempts": 0, "alone": False, "error": None, "score": None}
        fields |= history.retried(cur, args.get(BY_ARG), time.time())  # kept: who retried it, when
        tx.update_run(rid, **fields, pid=None, gpu=None, **{PRUNED_WHY_FIELD: None})
        done.append(rid)
    return {"done": done}


def _rank_again(tx: Tx, files: RunFiles, rank: dict) -> list[str]:
    """A rank run that is done, queued to rank again (with the ``top`` its spec.json holds now: `queue add`
    rewrites it): its result retired beside it, and the runs it pruned (not those a person brought back)
    queued to wait on it again, their pruned.json set aside; the daemon prunes anew when it is done."""
    rid, attempts = rank["id"], rank.get("attempts")
    files.retire_result(rid, attempts if isinstance(attempts, int) and 0 <= attempts < 2**31 else 0)
    fields = {"status": Status.QUEUED.value, "attempts": 0, "alone": False, "error": None, "score": None}
    tx.update_run(rid, **fields, pid=None, gpu=None)
    out = [rid]
    for r in tx.runs.all():
        tid = str(r.doc_id)
        if r.get("status") != Status.PRUNED or rid not in (r.get(AFTER_FIELD) or ()) or files.brought_back(tid):
            continue
        path = files.run_path(tid, PRUNED_FILE)
        try:
            if path.is_file():
                os.replace(path, path.with_name(f"{PRUNED_FILE}.before-rank-{time.time():.0f}"))
        except OSError:
            pass  # a damaged record: the next prune writes the file again, or says on the row why it cannot
        tx.update_run(tid, status=Status.QUEUED.value, finished=None, error=None, **{PRUNED_WHY_FIELD: None})
        out.append(tid)
    return out


def _mark_retried(files: RunFiles, run_id: str, by: str | None = None) -> None:
    """A pruned run's record, kept, marked as brought back by a person (the daemon never prunes it again)."""
    path = files.run_path(run_id, PRUNED_FILE)
    record = rundir.read_json(path)
    record = record if isinstance(record, dict) else {}
    rundir.write_json_atomic(path, {**record, "retried": time.time(), "retried_by": by})


def _priority(tx: Tx, files: RunFiles, runs: list[str], args: dict) -> dict:
    """Set (``priority``) or shift (``delta``) the priority of runs (checked by the client)."""
    done = []
    for rid in runs:
        cur = tx.get_run(rid)
        if cur is None:
            continue
        old = cur.get("priority", 0)
        new = args["priority"] if args.get("priority") is not None else (old if isinstance(old, int) else 0)
        tx.update_run(rid, priority=new + (0 if args.get("priority") is not None else int(args.get("delta") or 0)))
        done.append(rid)
    return {"done": done}


def _pause(tx: Tx, files: RunFiles, runs: list[str], args: dict) -> dict:
    tx.put(tx.meta, "paused", {"value": bool(args.get("paused"))})
    mirror_pause(files.root, bool(args.get("paused")))
    return {"paused": bool(args.get("paused"))}


def mirror_pause(root: Path, paused: bool) -> None:
    """Keep the runs-dir's :data:`PAUSED_FILE` as the ledger says: a worker process that holds runs it has
    not begun (``--worker-runs``) reads it before each and waits while it exists, so a paused queue begins
    no run, even one a worker already holds. Written only by the queue's owner (the tick, or a client
    under the daemon's lock)."""
    path = Path(root) / PAUSED_FILE
    try:
        if paused and not os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))  # empty: a flag
        elif not paused and os.path.lexists(path):
            path.unlink()  # a link planted there is removed, never followed
    except OSError:
        pass  # the ledger stays the truth; the next tick tries again


def _note(tx: Tx, files: RunFiles, runs: list[str], args: dict) -> dict:
    """Set or clear the note of runs (or of the plan ``args["plan"]``), add and remove their tags (checked by
    the client; bounded again by store/notes.py). Only words: no status, no process, no file changes."""
    done = []
    for rid in runs:
        cur = tx.get_run(rid)
        if cur is not None:
            tx.update_run(rid, **notes.new_fields(cur, args))
            done.append(rid)
    plan = args.get("plan")
    doc = tx.plans.get(doc_id=plan) if isinstance(plan, str) else None
    if doc is not None:
        tx.put(tx.plans, plan, {**doc, **notes.new_fields(doc, args)})
        done.append(f"plan {plan}")
    return {"done": done}


HANDLERS: dict[str, Callable[[Tx, RunFiles, list[str], dict], dict]] = {
    "cancel": _cancel,
    "retry": _retry,
    "priority": _priority,
    "pause": _pause,
    "note": _note,
}


def _client_log(root) -> Callable[[str], None]:
    def log(text: str) -> None:
        try:
            with open(root / DAEMON_LOG, "a", encoding="utf-8") as f:
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] (no daemon: pid {os.getpid()}) {text}\n")
        except OSError:
            pass

    return log


def carry_out_if_no_daemon(ledger: Ledger, new: dict | None = None) -> bool:
    """With no daemon holding the runs-dir's lock, take it and carry out the open requests (and ``new``,
    recorded in the same commit: the ledger's backup is then the state before the request, as the error
    of a damaged ledger says). This client is the one owner while it holds the lock. False when the lock is
    held (the daemon, or another client, acts)."""
    root = ledger.dir
    lock = FileLock(str(root / DAEMON_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    try:
        with ledger.transaction() as tx:
            if new is not None:
                _append(tx, new)
            carry_out(tx, RunFiles(root, _client_log(root)))
    finally:
        lock.release()
    return True


def ask(ledger: Ledger, kind: str, runs: list[str], args: dict | None = None, wait: float = WAIT_S) -> dict:
    """Record a request and wait until it is carried out (at once with no daemon, in one commit; by the
    daemon's next tick otherwise); its outcome, or ``{"pending": True}`` if the daemon has not got to it
    in ``wait`` s."""
    req = _new(kind, runs, args)
    if carry_out_if_no_daemon(ledger, req):
        return (answer(ledger, req["id"]) or {}).get("outcome") or {}
    with ledger.transaction() as tx:
        _append(tx, req)
    rid = req["id"]
    deadline = time.time() + wait
    while True:
        done = answer(ledger, rid)
        if done is None and carry_out_if_no_daemon(ledger):
            done = answer(ledger, rid)
        if done is not None:
            return done.get("outcome") or {}
        if time.time() > deadline:
            return {"pending": True}
        time.sleep(0.05)
