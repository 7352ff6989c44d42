"""The ledger under several writing processes, and a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stilts_tui.store.ledger import Ledger, LedgerError

WRITER = r"""
import sys
from stilts_tui.store.ledger import Ledger
root, prefix, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ledger = Ledger(root)
for start in range(0, n, batch):
    recs = [{"id": f"{prefix}{i:06d}", "plan": prefix, "stage": "target", "order": i, "name": "x" * 200}
            for i in range(start, min(n, start + batch))]
    ledger.add_runs(recs)
    for r in recs:
        ledger.update(r["id"], status="running")  # a read-modify-write per run
    print(recs[-1]["id"], flush=True)  # committed: the transaction returned
"""


def _writer(root: Path, prefix: str, n: int, batch: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), prefix, str(n), str(batch)], stdout=subprocess.PIPE, text=True
    )


def test_four_processes_adding_200_runs_each_leave_800_records(tmp_path):
    procs = [_writer(tmp_path, f"w{k}", 200, 10) for k in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    data = json.loads((tmp_path / "ledger.json").read_text())  # valid JSON
    runs = data["runs"]
    assert len(runs) == 800
    assert {r["id"] for r in runs.values()} == {f"w{k}{i:06d}" for k in range(4) for i in range(200)}
    assert all(r["status"] == "running" for r in runs.values())  # no update was lost
    assert len(Ledger(tmp_path).runs()) == 800


def test_a_writer_killed_mid_write_leaves_a_valid_ledger_with_every_committed_record(tmp_path):
    # grow the file so that each write takes a while, then kill the writer at arbitrary moments
    Ledger(tmp_path).add_runs([{"id": f"base{i:08d}", "plan": "base", "name": "y" * 400} for i in range(5000)])
    for attempt in range(4):
        proc = _writer(tmp_path, f"k{attempt}", 100000, 5)
        committed: list[str] = []
        deadline = time.time() + 0.5 + 0.3 * attempt
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line:
                committed.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed += [x.strip() for x in proc.stdout.read().splitlines() if x.strip()]
        data = json.loads((tmp_path / "ledger.json").read_text())  # parses
        ids = set(data["runs"])
        assert committed, "the writer committed nothing before it was killed"
        last = int(committed[-1][2:])
        assert all(f"k{attempt}{i:06d}" in ids for i in range(last + 1))
        assert sum(1 for i in ids if i.startswith("base")) == 5000


def test_a_failed_transaction_changes_nothing(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": "a" * 12, "plan": "p"}])
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(RuntimeError):
        with ledger.transaction() as tx:
            tx.update_run("a" * 12, status="done")
            raise RuntimeError("boom")
    assert (tmp_path / "ledger.json").read_bytes() == before
    assert ledger.get("a" * 12)["status"] == "queued"  # the in-process cache was dropped too


def test_a_second_instance_sees_the_first_ones_writes(tmp_path):
    a, b = Ledger(tmp_path), Ledger(tmp_path)
    a.add_runs([{"id": "b" * 12, "plan": "p"}])
    assert b.get("b" * 12)["status"] == "queued"
    b.update("b" * 12, status="running")
    assert a.get("b" * 12)["status"] == "running"
    a.update("b" * 12, score=0.5)  # a's cache must not overwrite b's change
    assert Ledger(tmp_path).get("b" * 12) | {} == a.get("b" * 12)
    assert a.get("b" * 12)["status"] == "running"


def test_a_corrupt_ledger_is_a_clear_error_not_a_traceback(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(LedgerError, match="not valid JSON"):
        Ledger(tmp_path).runs()


def test_incremental_encoding_matches_the_whole_state(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": f"{i:012x}", "plan": "p", "order": i} for i in range(50)])
    for i in range(0, 50, 7):
        ledger.update(f"{i:012x}", status="done", score=i / 100)
    ledger.set_meta("paused", True)
    ledger.add_runs([{"id": "f" * 12, "plan": "q"}])
    ledger.update("f" * 12, status="failed")
    on_disk = json.loads((tmp_path / "ledger.json").read_text())
    assert on_disk["runs"] == {r["id"]: r for r in Ledger(tmp_path).runs()}
    assert on_disk["runs"]["00000000000e"]["score"] == 0.14 and on_disk["meta"]["paused"] == {"value": True}
    assert Ledger(tmp_path).meta("paused") is True


# -- the typed run row (store/row.py) ---------------------------------------------------------------


def test_a_write_naming_a_field_the_run_row_lacks_is_refused_and_changes_nothing(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": "a" * 12, "plan": "p", "stage": "target"}])
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(LedgerError, match="unknown field 'stauts'"):
        with ledger.transaction() as tx:
            tx.update_run("a" * 12, score=0.5)
            tx.update_run("a" * 12, stauts="done")  # a misspelt key: stored and never read, before the typed row
    with pytest.raises(LedgerError, match="unknown field 'cancel_grace_s'"):
        ledger.update("a" * 12, cancel_grace_s=3.0)
    with pytest.raises(LedgerError, match="unknown field 'pad'"):
        ledger.add_runs([{"id": "b" * 12, "plan": "p", "pad": "x"}])
    assert (tmp_path / "ledger.json").read_bytes() == before
    assert ledger.get("a" * 12)["score"] is None and ledger.get("b" * 12) is None


def test_every_field_the_queue_writes_or_a_plan_records_is_typed_once():
    """The keys of every update_run / Ledger.update call in the package, and every record a plan expands to,
    are fields of the typed row (and RUN_FIELDS, the queue's checks, are typed from it)."""
    import ast

    from stilts_tui import plan as plans
    from stilts_tui.store.ledger import RUN_FIELDS
    from stilts_tui.store.row import ROW_FIELDS, ROW_TYPES

    written = set()
    for path in (Path(__file__).parents[1] / "stilts_tui").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update_run":
                written |= {k.arg for k in node.keywords if k.arg}
    # (executors return their fields in dicts the tick commits: the ledger refuses an unknown one at run time)
    assert {"status", "cancel_grace"} <= written
    assert written <= ROW_FIELDS, written - ROW_FIELDS
    for plan_file in ("chang_lu_2021.toml", "chang_lu_2021_lora.toml"):
        _, runs = plans.load_and_expand(Path(__file__).parents[1] / "plans" / plan_file)
        assert {k for r in runs for k in r.record()} <= ROW_FIELDS
    assert set(RUN_FIELDS) <= ROW_FIELDS and len(ROW_TYPES) >= 40


def test_a_row_of_an_older_version_reads_and_takes_writes(tmp_path):
    """Rows with fewer fields, or with fields no version writes any more, still read; a write of a typed
    field to one keeps what it holds."""
    old = {"id": "c" * 12, "plan": "p", "stage": "target", "status": "queued", "precision": "fp32", "legacy": 1}
    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {old["id"]: old}}))
    ledger = Ledger(tmp_path)
    assert ledger.runs() == [old]
    ledger.update(old["id"], priority=3)
    assert Ledger(tmp_path).get(old["id"]) == {**old, "priority": 3}


def test_queue_order_follows_every_change_of_the_rows(tmp_path):
    """The order is sorted once per version of the file: a commit by this process, another process's
    commit, and a read inside an open transaction all see the order the rows hold now."""
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": f"{i:012x}", "plan": "p", "stage": "target", "order": i} for i in range(3)])
    assert [r["id"][-1] for r in ledger.runs()] == ["0", "1", "2"]
    ledger.update("000000000002", priority=5)  # this process
    assert [r["id"][-1] for r in ledger.runs()] == ["2", "0", "1"]
    Ledger(tmp_path).update("000000000001", priority=9)  # another writer
    assert [r["id"][-1] for r in ledger.runs()] == ["1", "2", "0"]
    with ledger.transaction() as tx:
        tx.update_run("000000000000", priority=99)
        assert ledger.runs()[0]["id"] == "000000000000"  # inside the transaction, the change is seen
    assert [r["id"][-1] for r in ledger.runs()] == ["0", "1", "2"]
