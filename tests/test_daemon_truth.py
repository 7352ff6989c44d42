"""Truthful daemon control (issue 38, must-show 5), through the real CLI, the real daemon process and real
trainers: every child reaped, a trainer the ledger no longer names stopped (never beside the slots),
`daemon stop` says stopped only when the process is gone, a replaced runs-dir is noticed, and a damaged
or stale daemon.json is never taken for a running daemon."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import add, cli, make_plan, set_debug, start, statuses, wait

from stilts_tui import contract
from stilts_tui.store.ledger import Ledger

GRID8 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4] }\n'
ONE = '[target.t]\ntask = "pair"\n'


def _zombies(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_eight_finished_trainers_leave_no_zombie_of_the_daemon(tmp_path, runs_dir, tiny_model, queue_env):
    """Item 15: 8 runs with --worker-runs 1 (8 processes); once they are done the daemon has reaped every
    one (today 7 stay zombies: a long queue runs the box out of process ids)."""
    runs = add(make_plan(tmp_path, tiny_model, GRID8, baseline=True), runs_dir, queue_env)
    assert len(runs) == 8
    info = start(runs_dir, queue_env, "--worker-runs", "1", "--per-gpu", "2")
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, timeout=300, what="the 8 runs done")
    wait(lambda: not _zombies(info["pid"]), timeout=10, what="no zombie child of the daemon")
    assert psutil.Process(info["pid"]).status() != psutil.STATUS_ZOMBIE  # it still serves


def _queue_trainers(runs_dir: Path) -> list[int]:
    """The live trainer processes of this runs-dir's runs (by their command lines)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        try:
            if "stilts_tui.train" in cmd and any(str(runs_dir) in x for x in cmd) and p.status() != "zombie":
                out.append(p.info["pid"])
        except psutil.Error:
            continue
    return out


def test_a_trainer_whose_row_was_deleted_is_stopped_never_run_beside_the_slots(
    tmp_path, runs_dir, tiny_model, queue_env
):
    """Item 16: a running run's ledger row deleted by hand. Today its trainer runs on untracked and the
    daemon launches the next run beside it although --cpu-slots is 1; now the daemon stops the untracked
    trainer (saying so in its log) before the next one starts, and never two train at once."""
    env = {k: v for k, v in queue_env.items() if k != contract.Env.FAKE_GPUS}  # the CPU: --cpu-slots counts
    stages = '[target.t]\ntask = "pair"\nepochs = 6\ngrid = { lr = [1e-4, 2e-4] }\n'
    a, b = (r["id"] for r in add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, env))
    for rid in (a, b):
        set_debug(runs_dir, rid, sleep_per_step=2)
    start(runs_dir, env, "--cpu-slots", "1", "--per-gpu", "1", "--worker-runs", "1")
    first = wait(
        lambda: next(
            (r for r in _ledger_rows(runs_dir).values() if r.get("status") == "running" and r.get("pid")), None
        ),
        timeout=60,
        what="one run training",
    )
    other = b if first["id"] == a else a
    path = runs_dir / "ledger.json"
    with Ledger(runs_dir).transaction() as tx:  # a hand edit: the row taken out under the same lock
        tx.db.table("runs").remove(doc_ids=[first["id"]])
    assert first["id"] not in json.loads(path.read_text())["runs"]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # never two trainers of this runs-dir at once
            found = _queue_trainers(runs_dir)
            assert len(found) <= 1, found
            if statuses(runs_dir).get(other) == "running" and first["pid"] not in _queue_trainers(runs_dir):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the untracked trainer was not stopped and the next run started")
    finally:  # whatever happened, the untracked trainer does not outlive the test
        try:
            os.killpg(first["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    log = (runs_dir / contract.DAEMON_LOG).read_text()
    assert f"pid {first['pid']} trained {first['id']}, which the ledger does not hold as running" in log, log


def _ledger_rows(runs_dir: Path) -> dict[str, dict]:  # (read as it is rewritten: {} then)
    try:
        return json.loads((runs_dir / "ledger.json").read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return {}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _one_line(out) -> str:
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr.strip()


@pytest.mark.slow
def test_stop_says_stopped_only_once_the_daemon_is_gone(runs_dir, queue_env):
    """Item 10: a daemon stopped with SIGSTOP. Today `daemon stop` says "daemon stopped (pid N)" and the
    process is still there; now it says what it sent, that the process is still there and what to do
    (exit 1), `daemon status` says it does not tick, and `daemon stop --force` ends it for good."""
    info = start(runs_dir, queue_env)
    pid = info["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        out = cli("daemon", "stop", runs_dir=runs_dir, env=queue_env)  # waits its 15 s
        line = _one_line(out)
        assert out.returncode == 1 and "stopped" not in out.stdout, (out.stdout, line)
        assert f"sent SIGTERM to the daemon (pid {pid})" in line and "still there after 15 s" in line, line
        assert "daemon stop --force" in line and not _gone(pid)
        status = cli("daemon", "status", runs_dir=runs_dir, env=queue_env)
        assert f"daemon stopped with SIGSTOP (pid {pid})" in status.stdout and "daemon running" not in status.stdout
        assert json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir).stdout)["running"] is False

        out = cli("daemon", "stop", "--force", runs_dir=runs_dir, env=queue_env)
        assert out.returncode == 0 and f"daemon stopped (pid {pid}, killed)" in out.stdout, out.stderr
        assert _gone(pid)  # said only once the process is gone
        assert "no daemon is running" in cli("daemon", "status", runs_dir=runs_dir).stdout
        again = start(runs_dir, queue_env)  # and a new one starts
        assert again["pid"] != pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_daemon_whose_runs_dir_was_replaced_stops_and_says_so(tmp_path, runs_dir, tiny_model, queue_env):
    """Item 11: the runs-dir deleted and made again under a live daemon. Today the old daemon goes on
    serving the new folder, `daemon stop` refuses ("names pid None") and `queue add` says a daemon runs
    (pid None); now the old daemon stops, saying so in the new folder's log, and the new folder is served
    by a daemon of its own."""
    plan = make_plan(tmp_path, tiny_model, ONE, baseline=True)
    pid = start(runs_dir, queue_env)["pid"]
    for _ in range(50):  # the daemon writes its files meanwhile: remove until the folder is gone
        shutil.rmtree(runs_dir, ignore_errors=True)
        if not runs_dir.exists():
            break
    runs_dir.mkdir()
    wait(lambda: _gone(pid), timeout=30, what="the old daemon to stop")
    log = (runs_dir / contract.DAEMON_LOG).read_text()
    assert f"daemon {pid}: the runs-dir {runs_dir} was replaced by another folder under the daemon: stopping" in log
    assert "no daemon is running" in cli("daemon", "status", runs_dir=runs_dir).stdout
    out = cli("queue", "add", str(plan), runs_dir=runs_dir, env={**queue_env, "STILTS_NO_DAEMON": ""})
    assert out.returncode == 0 and "started the queue daemon" in out.stdout, out.stderr
    new = json.loads((runs_dir / "daemon.json").read_text())["pid"]
    assert new != pid and f"daemon running (pid {new})" in cli("daemon", "status", runs_dir=runs_dir).stdout


def test_a_damaged_or_stale_daemon_json_is_never_taken_for_a_running_daemon(runs_dir, queue_env):
    """Item 11: daemon.json naming pid None, or a pid no daemon has, while daemon.lock is held (by a
    client's request) or free: `daemon status` and `daemon stop` say no daemon runs and what is wrong with
    the file (today: "daemon running (pid None)", and stop refuses); the runs-dir /proc/1 has no daemon."""
    from filelock import FileLock

    info = runs_dir / contract.DAEMON_FILE
    held = FileLock(str(runs_dir / contract.DAEMON_LOCK), timeout=0)
    held.acquire()  # as a client carrying out a request holds it
    try:
        for pid, word in ((None, "damaged"), (1, "stale")):
            info.write_text(json.dumps({"pid": pid, "pid_started": 1.0}))
            status = cli("daemon", "status", runs_dir=runs_dir, env=queue_env)
            assert status.returncode == 0 and "daemon running" not in status.stdout, status.stdout
            assert f"no daemon is running on {runs_dir}; {info} is {word}" in status.stdout, status.stdout
            stop = cli("daemon", "stop", "--wait", "1", runs_dir=runs_dir, env=queue_env)
            assert stop.returncode == 0 and f"no daemon was running on {runs_dir}; {info} is {word}" in stop.stdout
        assert json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir).stdout)["running"] is False
    finally:
        held.release()
    proc1 = cli("daemon", "status", runs_dir=Path("/proc/1"), env=queue_env)
    assert "daemon running" not in proc1.stdout and "Traceback" not in proc1.stderr, proc1.stdout
