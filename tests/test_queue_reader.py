"""The queue screen's reads: one Ledger kept between reads, nothing handed to the screen when nothing
changed, and the app's garbage collector set once its table holds the runs (tui/gc_policy.py)."""

from __future__ import annotations

import gc
import json
import os
import time

from conftest import until

from stilts_tui.store.ledger import Ledger, LedgerError
from stilts_tui.tui import gc_policy
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.data import QueueReader
from stilts_tui.tui.screens.queue import QueueScreen


def runs(n: int) -> list[dict]:
    return [
        {"id": f"{i:012x}", "plan": "p", "stage": "target", "name": "t", "task": "rte", "intermediate": "none",
         "seed": 1, "params": {}, "grid": {"lr": 1e-5}, "parent": None, "order": i}
        for i in range(n)
    ]  # fmt: skip


def step(root, run_id: str, n: int) -> None:
    (root / run_id).mkdir(exist_ok=True)
    with open(root / run_id / "events.jsonl", "a") as f:
        f.write(json.dumps({"t": time.time(), "event": "step", "step": n, "total_steps": 10}) + "\n")


def test_a_read_that_finds_nothing_new_hands_nothing_and_any_change_is_read(runs_dir):
    Ledger(runs_dir).add_runs(runs(5))
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run("000000000000", status="running", started=time.time())
    step(runs_dir, "000000000000", 1)
    reader = QueueReader(runs_dir)
    first = reader.read()
    assert first is not None and first.counts == {"running": 1, "queued": 4}
    assert first.progress["000000000000"].step == 1
    assert reader.read() is None  # nothing changed: the screen is handed nothing
    assert reader.read() is None

    step(runs_dir, "000000000000", 2)  # a running run's progress
    moved = reader.read()
    assert moved is not None and moved.progress["000000000000"].step == 2
    assert reader.read() is None

    Ledger(runs_dir).update("000000000001", status="failed", error="boom")  # the ledger, from another writer
    changed = reader.read()
    assert changed is not None and changed.counts["failed"] == 1 and changed.reasons["000000000001"] == "boom"
    Ledger(runs_dir).set_meta("paused", True)
    assert reader.read().paused is True


def test_a_damaged_ledger_is_raised_and_the_next_good_read_is_shown_even_if_the_same_as_before(runs_dir):
    Ledger(runs_dir).add_runs(runs(3))
    reader = QueueReader(runs_dir)
    assert reader.read() is not None
    ledger = runs_dir / "ledger.json"
    good, st = ledger.read_bytes(), ledger.stat()
    ledger.write_bytes(b"{not json")
    try:
        reader.read()
        raise AssertionError("a damaged ledger was read")
    except LedgerError as e:
        assert "not valid JSON" in str(e)
    ledger.write_bytes(good)  # restored in place, byte for byte, its time put back: the very file read before
    os.utime(ledger, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ledger.stat().st_ino == st.st_ino
    # the screen shows the error in place of its totals: the good read must reach it all the same
    again = reader.read()
    assert again is not None and len(again.runs) == 3


async def test_the_app_freezes_its_objects_and_raises_the_collector_thresholds_once_its_runs_are_shown(
    runs_dir,
):
    Ledger(runs_dir).add_runs(runs(250))  # more than a frame's chunk of rows: settled after the last one
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        app = StiltsApp(runs_dir, keymap={}, confirm=False, settle_gc=True)  # as in a terminal
        async with app.run_test(size=(160, 45)) as pilot:
            await until(
                pilot,
                lambda: isinstance(app.screen, QueueScreen) and app.screen.query_one("DataTable").row_count == 250,
                "the queue table filled",
            )
            await until(pilot, lambda: gc.get_freeze_count() > 0, "the app's objects frozen")
            assert gc.get_threshold() == gc_policy.THRESHOLDS
            frozen = gc.get_freeze_count()
            Ledger(runs_dir).add_runs([dict(r, id="1" + r["id"][1:], order=300 + i) for i, r in enumerate(runs(5))])
            await until(pilot, lambda: app.screen.query_one("DataTable").row_count == 255, "the new runs shown")
            assert gc.get_freeze_count() <= frozen  # once (frozen objects freed since are gone from the count)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_headless_app_leaves_the_collector_alone(runs_dir):
    """Tests run many apps in one process: none of them freezes the process's objects."""
    Ledger(runs_dir).add_runs(runs(20))
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        app = StiltsApp(runs_dir, keymap={}, confirm=False)
        async with app.run_test(size=(160, 45)) as pilot:
            await until(pilot, lambda: app.screen.query_one("DataTable").row_count == 20, "the queue table filled")
            # the point where a terminal's app sets the collector has passed: then nothing was set
            await until(pilot, lambda: app.screen._settled, "the queue table settled")
            assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
