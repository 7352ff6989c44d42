"""One rule for the tick (issue 38, must-show 2): an error while the tick handles one run, in any phase
(reap, prune, place/launch, a ledger row's fields), marks that run with one line and never stops the
tick for the others. Through the real daemon's tick (`Daemon.tick()`), a real ledger and run folders."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import add, cli, make_plan
from test_pruned import _plan, _runs

from stilts_tui import contract
from stilts_tui.queue import daemon as qd
from stilts_tui.queue import ops
from stilts_tui.queue.executors import local
from stilts_tui.store.ledger import Ledger

GRID3 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4] }\n'


def _dead_pid() -> tuple[int, float]:
    """A process that has exited (as a finished trainer has): its pid and start time."""
    p = subprocess.Popen(["true"], start_new_session=True)
    started = psutil.Process(p.pid).create_time()
    p.wait()
    return p.pid, started


def _stop_launched(runs_dir: Path) -> None:
    for r in Ledger(runs_dir).runs():
        if isinstance(r.get("pid"), int):
            local.stop(r["pid"], r.get("pid_started"), grace=2)


def _edit_rows(runs_dir: Path, **rows: dict) -> None:
    """Damage the ledger as a hand edit would: rows put in whole (key = id)."""
    path = runs_dir / "ledger.json"
    data = json.loads(path.read_text())
    data["runs"].update(rows)
    path.write_text(json.dumps(data))


def _runs_of_plan(tmp_path: Path, runs_dir: Path, tiny_model: Path, rank: str = "rank = { top = 1 }") -> dict:
    """test_pruned's ranked plan (a rank stage over two intermediates, top 1), added; its runs by name."""
    add(_plan(tmp_path, tiny_model, rank), runs_dir, {})
    return _runs(runs_dir)


def _rank_ended(runs_dir: Path, runs: dict, top: int) -> dict:
    """The intermediates done and the rank run's process ended with its ranking written (learned first,
    idle second, ``top``), as the rank stage leaves them; the daemon's next tick reaps and prunes."""
    pid, started = _dead_pid()
    with Ledger(runs_dir).transaction() as tx:
        for name in ("learned", "idle"):
            tx.update_run(runs[name]["id"], status="done", score=0.5, finished=time.time())
        tx.update_run(
            runs["rank"]["id"], status="running", pid=pid, pid_started=started, attempts=1, started=time.time()
        )
    ranking = [
        {"run_id": runs["learned"]["id"], "start": "learned", "rank": 1},
        {"run_id": runs["idle"]["id"], "start": "idle", "rank": 2},
    ]
    result = {"status": "done", "score": None, "ranking": ranking, "top": top, "method": "LogME", "error": None}
    (runs_dir / runs["rank"]["id"] / contract.RESULT_FILE).write_text(json.dumps(result))
    return runs


@pytest.mark.parametrize("damage", ["pruned.json a directory", "run folder a file"])
def test_a_target_folder_that_cannot_take_its_pruned_json_never_stops_the_tick(tmp_path, runs_dir, tiny_model, damage):
    """Item 1: the rank stage's prune step meets a damaged target folder. Today every tick fails and the
    rank run stays running; now the rank run is done, the target is pruned with the error on its row, the
    kept target is queued to train, and the next tick goes on."""
    runs = _rank_ended(runs_dir, _runs_of_plan(tmp_path, runs_dir, tiny_model), top=1)
    rank, idle = runs["rank"]["id"], runs["t:idle"]["id"]
    target = runs_dir / idle
    if damage == "run folder a file":
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
        target.write_text("not a folder")
    else:
        (target / contract.PRUNED_FILE).mkdir()
    ops.set_paused(runs_dir, True)  # nothing launches: the prune step alone is looked at

    daemon = qd.Daemon(runs_dir, qd.Settings(interval=0))
    stats = daemon.tick()
    daemon.tick()  # and the tick after it

    ledger = Ledger(runs_dir)
    assert ledger.get(rank)["status"] == "done"
    assert ledger.get(idle)["status"] == "pruned" and stats["pruned"] == 1
    assert ledger.get(runs["t:learned"]["id"])["status"] == "queued"  # kept: it trains
    log = (runs_dir / contract.DAEMON_LOG).read_text()
    assert "tick failed" not in log, log
    error = ledger.get(idle)["error"]
    assert error.startswith("pruned, but its pruned.json could not be written") and "\n" not in error


def test_rows_without_a_stage_and_damaged_run_files_in_every_phase_fail_only_their_run(tmp_path, runs_dir, tiny_model):
    """Item 3 and the rule: in one tick, a done run's row without ``stage`` (today: KeyError every
    tick), a queued row without ``stage``, a running run whose result.json is a directory (reap) and a
    queued run whose spec.json is a directory (placing) are each handled alone; the healthy run launches."""
    plan = make_plan(tmp_path, tiny_model, GRID3 + '[target.u]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n', True)
    done, nostage, reaped, badspec, healthy = (r["id"] for r in add(plan, runs_dir, {}))
    pid, started = _dead_pid()
    rows = json.loads((runs_dir / "ledger.json").read_text())["runs"]
    row_done = {**rows[done], "status": "done", "score": 0.5, "finished": time.time()}
    del row_done["stage"]
    row_nostage = dict(rows[nostage])
    del row_nostage["stage"]
    row_reaped = {**rows[reaped], "status": "running", "pid": pid, "pid_started": started, "attempts": 1}
    _edit_rows(runs_dir, **{done: row_done, nostage: row_nostage, reaped: row_reaped})
    (runs_dir / reaped / contract.RESULT_FILE).mkdir()
    spec = runs_dir / badspec / contract.SPEC_FILE
    spec.unlink()
    spec.mkdir()

    daemon = qd.Daemon(runs_dir, qd.Settings(interval=0, cpu_slots=1, worker_runs=1))
    try:
        stats = daemon.tick()
        ledger = Ledger(runs_dir)
        got = {rid: ledger.get(rid) for rid in (done, nostage, reaped, badspec, healthy)}
        assert got[done]["status"] == "done"  # a finished run is used as it is, never failed again
        assert got[nostage]["status"] == "failed" and "stage is missing" in got[nostage]["error"]
        assert got[reaped]["status"] == "failed" and "result.json" in got[reaped]["error"]
        assert got[badspec]["status"] == "failed" and "spec.json" in got[badspec]["error"]
        assert all("\n" not in got[r]["error"] for r in (nostage, reaped, badspec))
        assert got[healthy]["status"] == "running" and stats["launched"] == 1
        daemon.tick()  # the next tick: nothing of it fails again
        assert "tick failed" not in (runs_dir / contract.DAEMON_LOG).read_text()
    finally:
        _stop_launched(runs_dir)


def test_retrying_a_done_rank_run_ranks_again_with_the_plans_new_top(tmp_path, runs_dir, tiny_model):
    """Item 14: docs/plans.md says `queue retry RANK_RUN_ID` ranks again with the new `top`; today it
    answers "requeued 0 runs". Now the plan re-added with top 2 rewrites the rank run's spec, the retry
    queues the rank run and the run it pruned (waiting on it again), and the new ranking prunes nothing."""
    runs = _rank_ended(runs_dir, _runs_of_plan(tmp_path, runs_dir, tiny_model), top=1)
    rank, idle = runs["rank"]["id"], runs["t:idle"]["id"]
    ops.set_paused(runs_dir, True)
    daemon = qd.Daemon(runs_dir, qd.Settings(interval=0))
    daemon.tick()
    assert Ledger(runs_dir).get(idle)["status"] == "pruned"

    _plan(tmp_path, tiny_model, "rank = { top = 2 }")
    assert cli("queue", "add", str(tmp_path / "q.toml"), "--no-daemon", runs_dir=runs_dir).returncode == 0
    assert json.loads((runs_dir / rank / contract.SPEC_FILE).read_text())["params"]["top"] == 2
    out = cli("queue", "retry", rank, runs_dir=runs_dir)
    assert out.returncode == 0 and out.stdout.strip() == "requeued 2 runs", (out.stdout, out.stderr)
    ledger = Ledger(runs_dir)
    assert ledger.get(rank)["status"] == "queued" and ledger.get(rank)["attempts"] == 0
    assert ledger.get(idle)["status"] == "queued" and ledger.get(idle)["pruned_why"] is None
    assert rank in ledger.get(idle)["after"]  # it waits on the new ranking, never trains before it
    assert list((runs_dir / rank).glob("result.attempt*.json"))  # the first ranking kept beside the run
    ls = cli("queue", "ls", runs_dir=runs_dir)
    assert f"waits for rank run {rank}" in ls.stdout, ls.stdout

    _rank_ended(runs_dir, runs, top=2)  # the rank run ran again: both intermediates in the top 2
    daemon.tick()
    ledger = Ledger(runs_dir)
    assert ledger.get(rank)["status"] == "done" and ledger.get(idle)["status"] == "queued"


def test_a_run_whose_folder_cannot_be_readied_fails_alone_and_its_worker_mate_launches(tmp_path, runs_dir, tiny_model):
    """The launch phase: two runs placed in one worker (--worker-runs 2), one whose folder cannot be
    readied (a directory where its cancel request file goes). Today the tick fails with IsADirectoryError
    on every tick and nothing launches again; now that run fails with one line and the other launches."""
    plan = make_plan(tmp_path, tiny_model, '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n', True)
    a, b = (r["id"] for r in add(plan, runs_dir, {}))
    (runs_dir / b / contract.CANCEL_FILE).mkdir()
    daemon = qd.Daemon(runs_dir, qd.Settings(interval=0, cpu_slots=1, worker_runs=2))
    try:
        stats = daemon.tick()
        ledger = Ledger(runs_dir)
        assert ledger.get(b)["status"] == "failed" and contract.CANCEL_FILE in ledger.get(b)["error"]
        assert "launch" in ledger.get(b)["error"] and "\n" not in ledger.get(b)["error"]
        assert ledger.get(a)["status"] == "running" and ledger.get(a)["attempts"] == 1 and stats["launched"] == 1
        daemon.tick()
        assert "tick failed" not in (runs_dir / contract.DAEMON_LOG).read_text()
    finally:
        _stop_launched(runs_dir)
