"""One view of a run (store/view.py): `queue ls --json`, its table and the app's table say the same status
and reason for every run, whatever its status."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cli, until
from textual.widgets import DataTable

from stilts_tui.contract import Status
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.view import PRUNED_DEFAULT_WHY, TAIL, Folders, Shown
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.queue import COLUMNS, QueueScreen

OOM = "CUDA out of memory: tried to allocate 2.00 GiB"
STUCK = "pending (PartitionConfig): it never clears by waiting; lower --cpus-per-run"
WORKER, PID = "abcdef01", 4242


def rid(n: int) -> str:
    return f"{n:012x}"


def row(n: int, **kw) -> dict:
    return {"id": rid(n), "plan": "p", "stage": "target", "name": "t", "task": "rte", "intermediate": "none",
            "seed": 1, "params": {}, "grid": {"lr": n * 1e-6}, "parent": None, "order": n, **kw}  # fmt: skip


def events(root: Path, n: int, *lines: dict) -> None:
    (root / rid(n)).mkdir(exist_ok=True)
    with open(root / rid(n) / "events.jsonl", "a") as f:
        f.writelines(json.dumps({"t": 1.0, **e}) + "\n" for e in lines)


# what each run shows: (status as read, reason); every status of the view, every kind of reason
EXPECTED = {
    1: ("queued", ""),
    2: ("queued", f"waits for rank run {rid(3)}"),
    3: ("running", ""),  # the rank run 2 waits for; trained by its own process (began)
    4: ("waiting", ""),  # in the worker of run 3, not begun by it
    5: ("done", ""),
    6: ("failed", "data file not found: /x/train.jsonl"),
    7: ("oom", OOM),
    8: ("cancelled", ""),
    9: ("degenerate", "stopped: dev acc at the majority class"),
    10: ("pruned", "pruned: rank 2 of 2 on t (logme, top 1); saved ~1:40 (median of t's done runs)"),
    11: ("pruned", f"pruned: {PRUNED_DEFAULT_WHY}; saved ~1:40 (median of t's done runs)"),
    12: ("blocked", f"parent {rid(6)} failed"),
    13: ("stuck", STUCK),
}


@pytest.fixture
def every_status(runs_dir: Path) -> Path:
    """A real ledger (the project's Ledger) and run folders holding every status and every reason."""
    ledger = Ledger(runs_dir)
    ledger.add_runs([row(n, **({"after": [rid(3)]} if n == 2 else {})) for n in EXPECTED])
    now = time.time()
    fields = {
        3: dict(status="running", worker=WORKER, pid=PID, pid_started=1.0, gpu=0, started=now, attempts=1),
        4: dict(status="running", worker=WORKER, pid=PID, pid_started=1.0, gpu=0, started=now, attempts=2),
        5: dict(status="done", score=0.7, started=now - 100, finished=now, attempts=1),
        6: dict(status="failed", error="data file not found:\n /x/train.jsonl", finished=now, attempts=1),
        7: dict(status="failed", error=OOM, finished=now, attempts=1, alone=True),
        8: dict(status="cancelled", finished=now),
        9: dict(status="degenerate", error="stopped: dev acc at the majority class", finished=now, attempts=1),
        10: dict(status="pruned", pruned_why="rank 2 of 2 on t (logme, top 1)", finished=now),
        11: dict(status="pruned", finished=now),
        12: dict(status="blocked", parent=rid(6)),
        13: dict(status="running", executor="slurm", job_id="77", slurm_state="PENDING", stuck=STUCK, started=now),
    }
    for n in EXPECTED:
        (runs_dir / rid(n)).mkdir()
    with ledger.transaction() as tx:
        for n, f in fields.items():
            tx.update_run(rid(n), **f)
    events(runs_dir, 3, {"event": "start", "pid": PID}, {"event": "step", "step": 5, "total_steps": 20})
    events(runs_dir, 4, {"event": "start", "pid": 99})  # an earlier attempt's process: not begun by this one
    (runs_dir / rid(7) / "result.json").write_text(json.dumps({"status": "oom", "error": OOM}))
    (runs_dir / rid(6) / "result.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    return runs_dir


def test_queue_ls_json_shows_every_status_and_reason_as_the_view_reads_it(every_status):
    out = cli("queue", "ls", "--json", runs_dir=every_status)
    assert out.returncode == 0, out.stderr
    doc = {r["id"]: r for r in json.loads(out.stdout)}
    assert {n: (doc[rid(n)]["shown"], doc[rid(n)]["reason"]) for n in EXPECTED} == EXPECTED
    assert {s.value for s in Shown} - {"waiting"} <= {v[0] for v in EXPECTED.values()} | {"waiting"}
    waiting, training = doc[rid(4)], doc[rid(3)]
    assert waiting["status"] == "running" and waiting["waiting_in"] == 1 and waiting["label"] == "waiting in worker 1"
    assert (training["step"], training["total_steps"], training["attempts"]) == (5, 20, 1)
    assert doc[rid(7)]["status"] == "failed" and doc[rid(13)]["status"] == "running"  # the ledger's, kept


def test_queue_ls_table_shows_the_view(every_status):
    out = cli("queue", "ls", runs_dir=every_status, env={"COLUMNS": "400"})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    for n, (status, reason) in EXPECTED.items():
        label = "waiting in worker 1" if status == "waiting" else status
        assert f" {label} " in lines[rid(n)] and reason in lines[rid(n)], lines[rid(n)]


def app_cells(screen: QueueScreen, run_id: str) -> dict[str, str]:
    cells = [str(c) for c in screen.query_one(DataTable).get_row(run_id)]
    return dict(zip(screen.columns, cells, strict=True))


async def app_rows(root: Path) -> dict[str, dict[str, str]]:
    app = StiltsApp(root, keymap={}, confirm=False)
    async with app.run_test(size=(400, 40)) as pilot:
        await until(
            pilot,
            lambda: isinstance(app.screen, QueueScreen) and app.screen.query_one(DataTable).row_count == 13,
            "the table",
        )
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert "status" in screen.columns and "reason" in screen.columns and set(screen.columns) <= set(COLUMNS)
        return {rid(n): app_cells(screen, rid(n)) for n in EXPECTED}


async def test_the_app_table_says_what_queue_ls_says_for_every_run(every_status):
    doc = {r["id"]: r for r in json.loads(cli("queue", "ls", "--json", runs_dir=every_status).stdout)}
    rows = await app_rows(every_status)
    for run_id, cells in rows.items():
        assert cells["reason"] == doc[run_id]["reason"], run_id
        if doc[run_id]["shown"] == Shown.WAITING:
            assert (cells["status"], cells["progress"]) == ("waiting", f"in worker {doc[run_id]['waiting_in']}")
        else:
            assert cells["status"] == doc[run_id]["shown"], run_id


async def test_the_app_shows_oom_and_stuck_runs_as_the_view_does(every_status):
    rows = await app_rows(every_status)
    assert (rows[rid(7)]["status"], rows[rid(13)]["status"]) == ("oom", "stuck")


def test_a_first_look_at_a_long_events_file_still_finds_the_start_of_the_run(runs_dir):
    """The tail read of events.jsonl holds no start event once a run has logged enough steps: the start is
    found further back, so a run its worker began never reads as waiting."""
    steps = [{"event": "step", "step": i, "total_steps": 5000, "loss": 0.5} for i in range(1, 3000)]
    events(runs_dir, 1, {"event": "start", "pid": PID}, *steps)
    assert (runs_dir / rid(1) / "events.jsonl").stat().st_size > 2 * TAIL
    prog = Folders(runs_dir).progress(rid(1))
    assert (prog.began_pid, prog.step, prog.total) == (PID, 2999, 5000)


def test_reasons_are_one_wording_for_every_reader():
    """The pruned line without its rank line, once (the CLI said "its rank run", the app "the rank stage")."""
    from stilts_tui.store.view import around, view

    r = row(1, status=Status.PRUNED.value)
    assert view(r, around([r])).reason == f"pruned: {PRUNED_DEFAULT_WHY}" == "pruned: left out by its rank run"
