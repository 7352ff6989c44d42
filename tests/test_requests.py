"""Clients ask, the tick acts: a cancel or a retry is a request in the ledger until the queue's owner
(the daemon's tick, or with no daemon the client under the daemon's lock) carries it out. Real ledger,
real run folders, the real daemon's tick."""

from __future__ import annotations

import json

from conftest import add, make_plan
from filelock import FileLock

from stilts_tui.contract import DAEMON_LOCK, RESULT_FILE, Status
from stilts_tui.queue import daemon as qd
from stilts_tui.queue import ops, requests
from stilts_tui.store.ledger import Ledger

GRID2 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'


def _two_runs(tmp_path, runs_dir, tiny_model) -> tuple[str, str]:
    """Two queued runs; the first failed with a result, as a finished attempt leaves it. Paused, so that
    the tick launches nothing."""
    a, b = (r["id"] for r in add(make_plan(tmp_path, tiny_model, GRID2, baseline=True), runs_dir, {}))
    ledger = Ledger(runs_dir)
    with ledger.transaction() as tx:  # the test's setup stands in for an attempt the daemon reaped
        tx.update_run(a, status=Status.FAILED.value, attempts=1, error="boom")
        tx.put(tx.meta, "paused", {"value": True})
    (runs_dir / a / RESULT_FILE).write_text(json.dumps({"status": "failed", "error": "boom"}))
    return a, b


def test_a_cancel_and_a_retry_stay_requests_until_the_tick_carries_them_out(tmp_path, runs_dir, tiny_model):
    a, b = _two_runs(tmp_path, runs_dir, tiny_model)
    serving = FileLock(str(runs_dir / DAEMON_LOCK), timeout=0)
    serving.acquire()  # the daemon's lock is held (as a serving daemon holds it): the clients only ask
    try:
        out = ops.cancel(runs_dir, [b], wait=0.3)
        again = ops.retry(runs_dir, [a], wait=0.3)
    finally:
        serving.release()
    ledger = Ledger(runs_dir)
    assert out.done == [] and out.requested == [b] and again == []
    assert ledger.get(b)["status"] == Status.QUEUED and ledger.get(a)["status"] == Status.FAILED
    assert (runs_dir / a / RESULT_FILE).exists()  # no client moved the attempt's files either
    book = ledger.meta(requests.KEY)
    assert [(r["kind"], r["runs"]) for r in book["open"]] == [("cancel", [b]), ("retry", [a])]
    assert all(r["by"] and r["t"] > 0 for r in book["open"]) and book["open"][0]["args"]["grace"] > 0

    qd.Daemon(runs_dir, qd.Settings(interval=0)).tick()  # the real tick: requests first

    ledger = Ledger(runs_dir)
    assert ledger.get(b)["status"] == Status.CANCELLED
    assert ledger.get(a)["status"] == Status.QUEUED and ledger.get(a)["attempts"] == 0
    assert not (runs_dir / a / RESULT_FILE).exists() and list((runs_dir / a).glob("result.attempt*.json"))
    book = ledger.meta(requests.KEY)
    assert book["open"] == []
    assert [(r["kind"], r["outcome"]["done"]) for r in book["done"]] == [("cancel", [b]), ("retry", [a])]


def test_with_no_daemon_the_client_carries_out_its_request_under_the_daemons_lock(tmp_path, runs_dir, tiny_model):
    a, b = _two_runs(tmp_path, runs_dir, tiny_model)
    assert ops.cancel(runs_dir, [b]).done == [b]
    assert ops.retry(runs_dir, [a]) == [a]
    ops.set_priority(runs_dir, [b], priority=7)
    ops.set_paused(runs_dir, False)
    ledger = Ledger(runs_dir)
    assert ledger.get(b)["status"] == Status.CANCELLED and ledger.get(b)["priority"] == 7
    assert ledger.get(a)["status"] == Status.QUEUED and ledger.meta("paused") is False
    book = ledger.meta(requests.KEY)
    assert book["open"] == [] and [r["kind"] for r in book["done"]] == ["cancel", "retry", "priority", "pause"]
    lock = FileLock(str(runs_dir / DAEMON_LOCK), timeout=0)
    lock.acquire()  # the client let the lock go: a daemon can start
    lock.release()
    assert "carried out" in (runs_dir / "daemon.log").read_text()
