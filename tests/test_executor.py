"""The executor interface and the request flow: the local executor's reaping and signalling against
real processes (in-process, a real ledger file), and a cancel request carried out by the real daemon,
never by the client (which has exited, or ran while no daemon was there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import add, cli, make_plan, set_debug, start, statuses, wait

from stilts_tui.queue import daemon as qd
from stilts_tui.queue.executor import new_stats
from stilts_tui.store.ledger import Ledger

GRID4 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4] }\n'
LONG = '[target.t]\ntask = "pair"\nepochs = 6\n'  # 18 steps: time to cancel it mid-run


def _sleeper() -> subprocess.Popen:
    """A process in its own session and group, as the daemon starts a run's."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def _gone(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None


def _started(pid: int) -> float:
    return psutil.Process(pid).create_time()


def test_the_local_executor_reaps_by_result_and_by_process_and_never_trusts_a_pid_alone(tmp_path, runs_dir, tiny_model):
    a, b, c, d = (r["id"] for r in add(make_plan(tmp_path, tiny_model, GRID4, baseline=True), runs_dir, {}))
    daemon = qd.Daemon(runs_dir, qd.Settings(max_retries=1))
    ex = daemon.executor
    live, ended = _sleeper(), subprocess.Popen(["true"], start_new_session=True)
    ended_start = _started(ended.pid)
    ended.wait()
    try:
        with Ledger(runs_dir).transaction() as tx:
            tx.update_run(a, status="running", pid=live.pid, pid_started=_started(live.pid), attempts=1)
            tx.update_run(b, status="running", pid=ended.pid, pid_started=ended_start, attempts=1, fused=4, gpu=0)
            tx.update_run(c, status="running", pid=ended.pid, pid_started=ended_start, attempts=2)
            tx.update_run(d, status="running", pid=live.pid, pid_started=_started(live.pid) - 3600, attempts=1)
        (runs_dir / b / "result.json").write_text(json.dumps({"status": "oom", "error": "CUDA out of memory"}))
        runs = {r["id"]: r for r in Ledger(runs_dir).runs()}
        stats = new_stats()
        changes = ex.reap(list(runs.values()), {k: r["status"] for k, r in runs.items()}, stats)

        assert ex.alive(runs[a]) and a not in changes  # its process runs: nothing to record
        assert changes[b][1]["status"] == "queued" and changes[b][1]["fuse_max"] == 2  # an array's OOM halves it
        assert changes[c][1]["status"] == "failed" and "process exited without result" in changes[c][1]["error"]
        # d names live's pid with another start time: a reused pid, not its process
        assert not ex.alive(runs[d]) and changes[d][1]["status"] == "queued"
        ex.cancel(runs[d], kill=True)
        assert not _gone(live)  # never signalled through a reused pid
        ex.cancel(runs[a])  # SIGTERM to its group
        wait(lambda: _gone(live), 10, "the process to stop")
        assert live.returncode == -signal.SIGTERM and not ex.alive(runs[a])
        assert stats == {**new_stats(), "requeued": 2, "reaped": 1}
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_a_cancel_asked_while_no_daemon_runs_is_carried_out_by_the_next_daemon(
    tmp_path, runs_dir, tiny_model, queue_env
):
    (run,) = add(make_plan(tmp_path, tiny_model, LONG, baseline=True), runs_dir, queue_env)
    rid = run["id"]
    set_debug(runs_dir, rid, sleep_per_step=1.0, spawn_sleeper=True)
    start(runs_dir, queue_env, "--worker-runs", "1")
    sleeper = runs_dir / rid / "sleeper.pid"
    wait(sleeper.exists, 60, "the run to start its child")
    pid, child = Ledger(runs_dir).get(rid)["pid"], int(sleeper.read_text())
    assert cli("daemon", "stop", runs_dir=runs_dir, env=queue_env).returncode == 0  # runs go on without it

    out = cli("queue", "cancel", rid, "--grace", "3", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "no daemon runs on" in out.stdout, (out.stdout, out.stderr)
    assert len(out.stdout.strip().splitlines()) == 1
    # the client has exited and signalled nothing: the run trains on, its request waiting in the ledger
    row = Ledger(runs_dir).get(rid)
    assert row["status"] == "running" and row["cancel_requested"] and row["cancel_grace"] == 3.0
    steps = _steps(runs_dir / rid)
    wait(lambda: _steps(runs_dir / rid) > steps, 30, "the run to go on training")
    assert psutil.pid_exists(pid) and os.getpgid(child) == pid

    start(runs_dir, queue_env, "--worker-runs", "1")  # its first tick carries the cancel out
    wait(lambda: statuses(runs_dir)[rid] == "cancelled", 30, "the daemon to cancel the run")
    wait(lambda: not _alive(child) and not _alive(pid), 15, "the run's whole process group to stop")
    row = Ledger(runs_dir).get(rid)
    assert row["cancel_requested"] is None and row["pid"] is None
    assert f"{rid}: cancel asked: stopping it (grace 3 s)" in (runs_dir / "daemon.log").read_text()


def test_queue_cancel_no_wait_returns_at_once_and_the_daemon_finishes_it(tmp_path, runs_dir, tiny_model, queue_env):
    (run,) = add(make_plan(tmp_path, tiny_model, LONG, baseline=True), runs_dir, queue_env)
    rid = run["id"]
    set_debug(runs_dir, rid, sleep_per_step=1.0)
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: (Ledger(runs_dir).get(rid) or {}).get("pid"), 60, "the run started")
    pid = Ledger(runs_dir).get(rid)["pid"]
    t0 = time.monotonic()
    out = cli("queue", "cancel", rid, "--no-wait", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "the daemon is stopping 1 running run(s)" in out.stdout, (out.stdout, out.stderr)
    assert time.monotonic() - t0 < 10
    wait(lambda: statuses(runs_dir)[rid] == "cancelled", 30, "the daemon to cancel the run")
    wait(lambda: not _alive(pid), 15, "the run's process to stop")
    out = cli("queue", "cancel", rid, runs_dir=runs_dir, env=queue_env)  # nothing left to cancel
    assert out.returncode == 0 and "cancelled 0 runs" in out.stdout


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _steps(d: Path) -> int:
    path = d / "events.jsonl"
    if not path.exists():
        return 0
    return sum(1 for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("event") == "step")
