"""Truthful daemon control (issue 38, must-show 5), through the real CLI, the real daemon process and real
trainers: every child reaped, a trainer the ledger no longer names stopped (never beside the slots),
`daemon stop` says stopped only when the process is gone, a replaced runs-dir is noticed, and a damaged
or stale daemon.json is never taken for a running daemon."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
from conftest import add, make_plan, set_debug, start, statuses, wait

from stilts_tui import contract
from stilts_tui.store.ledger import Ledger

GRID8 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4] }\n'
ONE = '[target.t]\ntask = "pair"\n'


def _zombies(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]


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
