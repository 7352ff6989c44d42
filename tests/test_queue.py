"""The queue daemon with fake GPUs and tiny real runs: real subprocesses, a real ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import add, all_final, cli, make_plan, placements, set_debug, start, statuses, ticks, wait, wait_ticks

from stilts_tui.queue.checks import TIMING_KEYS
from stilts_tui.store.ledger import Ledger

STAGES = """[intermediate.i]
task = "pair"
[target.t]
task = "pair"
grid = { lr = [1e-4, 2e-4] }
"""


@pytest.mark.slow
def test_a_plan_runs_to_the_end_in_dependency_order(tmp_path, runs_dir, tiny_model, queue_env):
    runs = add(make_plan(tmp_path, tiny_model, STAGES, baseline=True), runs_dir, queue_env)
    assert len(runs) == 5
    start(runs_dir, queue_env, "--per-gpu", "2", "--worker-runs", "2")
    wait(lambda: all_final(runs_dir), what="every run to finish")
    runs = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert {r["status"] for r in runs.values()} == {"done"}
    for r in runs.values():
        assert r["gpu"] in (0, 1) and isinstance(r["score"], float) and r["attempts"] == 1
        if r["parent"]:
            assert r["started"] >= runs[r["parent"]]["finished"] - 0.5  # children start after the parent
        assert json.loads((runs_dir / r["id"] / "result.json").read_text())["status"] == "done"
    out = cli("scores", "q", "--format", "json", runs_dir=runs_dir)
    assert out.returncode == 0 and len(json.loads(out.stdout)["cells"]) == 2
    # where each run's time went, in the ledger: a worker's start-up is counted to its first run only
    by_worker: dict = {}
    for r in sorted(runs.values(), key=lambda r: r["started"]):
        t = r["timings"]
        assert {"process_s", "data_s", "model_s", "first_step_s", "steps_s", "eval_s", "compile_s"} <= set(t)
        assert set(t) <= set(TIMING_KEYS) and all(v >= 0 for v in t.values()) and t["compile_s"] == 0
        by_worker.setdefault(r["worker"], []).append(t["process_s"])
    for shares in by_worker.values():
        assert shares[0] > 0 and all(s == 0 for s in shares[1:])
    assert any(len(s) == 2 for s in by_worker.values())  # --worker-runs 2: some process trained two runs
    # what each run trained on, in result.json and the ledger: per split its files, count and fingerprint
    prints: dict = {}
    for r in runs.values():
        data = json.loads((runs_dir / r["id"] / "result.json").read_text())["data"]
        assert r["data"] == data, r["id"]
        for split in ("train", "dev"):
            assert data[split]["kind"] == "files" and data[split]["examples"] > 0
            assert data[split]["fingerprint"].startswith("sha256:")
        prints.setdefault(r["task"], set()).add((data["train"]["fingerprint"], data["dev"]["fingerprint"]))
    assert all(len(p) == 1 for p in prints.values())  # every run of a task trained on the same examples


@pytest.mark.slow
def test_a_failing_parent_blocks_its_children_and_retrying_it_unblocks_them(tmp_path, runs_dir, tiny_model, queue_env):
    runs = add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, queue_env)
    parent = next(r for r in runs if r["stage"] == "intermediate")
    spec_path = runs_dir / parent["id"] / "spec.json"
    good = spec_path.read_text()
    spec = json.loads(good)
    spec["task"]["train_file"] = str(tmp_path / "data/missing.jsonl")
    spec_path.write_text(json.dumps(spec))
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: statuses(runs_dir)[parent["id"]] == "failed", what="the parent to fail")
    wait(lambda: sorted(statuses(runs_dir).values()) == ["blocked", "blocked", "failed"], what="children blocked")
    assert "data file not found" in Ledger(runs_dir).get(parent["id"])["error"]
    spec_path.write_text(good)  # fix the cause, then retry the parent
    out = cli("queue", "retry", parent["id"], runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "requeued 1 runs" in out.stdout
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, what="the plan to finish after the retry")
    assert (runs_dir / parent["id"] / "result.attempt1.json").exists()  # the failed attempt is kept


@pytest.mark.slow
def test_per_gpu_and_memory_limits_are_never_exceeded(tmp_path, runs_dir, tiny_model, queue_env):
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4] }\n'
    add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    env = {**queue_env, "STILTS_FAKE_GPUS": "2x2.2"}  # room for two 1 GB estimates a GPU (95% of 2.2 GiB)
    start(runs_dir, env, "--per-gpu", "3", "--worker-runs", "1")
    wait(lambda: all_final(runs_dir), what="every run to finish")
    runs = Ledger(runs_dir).runs()
    assert {r["status"] for r in runs} == {"done"}
    history = placements(runs_dir)
    assert len(history) == 6
    for p in history:
        assert p["procs_before"] < p["slots"] == 3
        assert p["reserved_before_gb"] + p["est_gb"] <= 0.95 * p["total_gb"]
    for gpu in (0, 1):  # and from the runs' own start/finish times
        spans = [(r["started"], r["finished"]) for r in runs if r["gpu"] == gpu]
        peak = max(sum(s <= t < f for s, f in spans) for t, _ in spans)
        assert 1 <= peak <= 2


def test_cancel_kills_the_whole_process_group(tmp_path, runs_dir, tiny_model, queue_env):
    runs = add(make_plan(tmp_path, tiny_model, '[target.t]\ntask = "pair"\n', baseline=True), runs_dir, queue_env)
    (run,) = runs
    set_debug(runs_dir, run["id"], sleep_per_step=5, spawn_sleeper=True)
    start(runs_dir, queue_env, "--worker-runs", "1")
    sleeper = runs_dir / run["id"] / "sleeper.pid"
    wait(sleeper.exists, what="the run to start its child")
    pid, child = Ledger(runs_dir).get(run["id"])["pid"], int(sleeper.read_text())
    assert psutil.pid_exists(pid) and psutil.pid_exists(child) and os.getpgid(child) == pid
    out = cli("queue", "cancel", run["id"], "--grace", "3", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "cancelled 1 runs" in out.stdout
    wait(
        lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
        timeout=10,
        what="the child to die",
    )
    assert Ledger(runs_dir).get(run["id"])["status"] == "cancelled"
    wait_ticks(runs_dir)  # the daemon has looked at it since, and leaves a cancelled run alone
    assert Ledger(runs_dir).get(run["id"])["status"] == "cancelled"


@pytest.mark.slow
def test_a_daemon_killed_mid_plan_and_restarted_loses_no_run_and_starts_none_twice(
    tmp_path, runs_dir, tiny_model, queue_env
):
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=1.5)
    info = start(runs_dir, queue_env, "--per-gpu", "1", "--worker-runs", "1")
    wait(lambda: list(statuses(runs_dir).values()).count("running") == 2, what="two runs running")
    wait(lambda: all(r.get("pid") for r in Ledger(runs_dir).runs() if r["status"] == "running"), what="pids")
    before = {r["id"]: (r["pid"], r["pid_started"]) for r in Ledger(runs_dir).runs() if r["status"] == "running"}
    os.kill(info["pid"], signal.SIGKILL)
    wait(
        lambda: not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == "zombie",
        what="the daemon to die",
    )
    assert all(psutil.pid_exists(pid) for pid, _ in before.values())  # runs outlive the daemon
    again = cli(
        "daemon", "start", "--interval", "0.2", "--per-gpu", "1", "--worker-runs", "1", runs_dir=runs_dir, env=queue_env
    )
    assert again.returncode == 0, again.stderr
    wait(lambda: ticks(runs_dir) >= 2, what="the new daemon's first two ticks")  # it counts from 0
    after = {r["id"]: (r["pid"], r["pid_started"]) for r in Ledger(runs_dir).runs() if r["id"] in before}
    assert after == before  # adopted, not relaunched
    wait(lambda: all_final(runs_dir), what="every run to finish")
    final = Ledger(runs_dir).runs()
    assert {r["status"] for r in final} == {"done"} and all(r["attempts"] == 1 for r in final)
    launched = [rid for p in placements(runs_dir) for rid in p["runs"]]
    assert sorted(launched) == sorted(r["id"] for r in final)  # each run launched exactly once


def test_two_daemons_on_one_runs_dir_cannot_start(runs_dir, queue_env):
    info = start(runs_dir, queue_env)
    second = cli("daemon", "start", runs_dir=runs_dir, env=queue_env)
    assert second.returncode == 2 and f"a daemon is already running on {runs_dir} (pid {info['pid']})" in second.stderr
    direct = subprocess.run(
        [sys.executable, "-m", "stilts_tui.queue.daemon", "--runs-dir", str(runs_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **queue_env},
    )
    assert direct.returncode == 2 and "already running" in direct.stderr
    status = json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir, env=queue_env).stdout)
    assert status["running"] and status["daemon"]["pid"] == info["pid"]
    assert cli("daemon", "stop", runs_dir=runs_dir, env=queue_env).returncode == 0
    assert json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir, env=queue_env).stdout)["running"] is False


@pytest.mark.slow
def test_a_run_out_of_memory_is_requeued_to_run_alone(tmp_path, runs_dir, tiny_model, queue_env):
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    oom = runs[0]["id"]
    set_debug(runs_dir, oom, oom_at_step=1, oom_once=True)
    env = {**queue_env, "STILTS_FAKE_GPUS": "1x24"}
    start(runs_dir, env, "--per-gpu", "3", "--worker-runs", "1")
    wait(lambda: all_final(runs_dir), what="every run to finish")
    final = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert {r["status"] for r in final.values()} == {"done"}
    assert final[oom]["alone"] is True and final[oom]["attempts"] == 2
    assert json.loads((runs_dir / oom / "result.attempt1.json").read_text())["status"] == "oom"
    history = placements(runs_dir)
    first, second = [p for p in history if oom in p["runs"]]
    assert second["alone"] and second["others_on_gpu"] == [] and second["procs_before"] == 0
    # nothing else was placed on the GPU while it ran alone
    assert not [p for p in history if second["t"] < p["t"] < final[oom]["finished"]]


@pytest.mark.slow
def test_pause_resume_priority_and_logs(tmp_path, runs_dir, tiny_model, queue_env):
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    assert cli("queue", "pause", runs_dir=runs_dir, env=queue_env).returncode == 0
    last = runs[-1]["id"]
    assert cli("queue", "priority", "5", last, runs_dir=runs_dir, env=queue_env).returncode == 0
    assert Ledger(runs_dir).runs()[0]["id"] == last  # higher priority first
    start(runs_dir, queue_env, "--per-gpu", "1", "--gpus", "0", "--worker-runs", "1")
    wait_ticks(runs_dir)
    assert set(statuses(runs_dir).values()) == {"queued"}  # paused: nothing starts
    assert cli("queue", "resume", runs_dir=runs_dir, env=queue_env).returncode == 0
    wait(lambda: all_final(runs_dir), what="every run to finish")
    final = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert final[last]["started"] < min(r["started"] for r in final.values() if r["id"] != last)
    out = cli("logs", last, runs_dir=runs_dir)
    assert out.returncode == 0 and "eval epoch 1: acc" in out.stdout
    bad = cli("logs", "../../etc/passwd", runs_dir=runs_dir)
    assert bad.returncode == 2 and "is not a run id" in bad.stderr


def _started(runs_dir, run_id: str) -> bool:
    events = runs_dir / run_id / "events.jsonl"
    return events.exists() and '"start"' in events.read_text()


def test_cancelling_a_run_that_waits_in_a_worker_spares_the_run_the_worker_trains(
    tmp_path, runs_dir, tiny_model, queue_env
):
    """Three runs in one worker process; the second is cancelled while the first trains: the worker is not
    signalled, the first finishes on its first attempt, the second is skipped, the third trains."""
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=0.4)
    start(runs_dir, queue_env, "--worker-runs", "3")
    first = wait(lambda: next((r["id"] for r in runs if _started(runs_dir, r["id"])), None), 60, "a run to begin")
    pid, worker = Ledger(runs_dir).get(first)["pid"], Ledger(runs_dir).get(first)["worker"]
    waiting = [r["id"] for r in runs if r["id"] != first]
    assert all(Ledger(runs_dir).get(i)["pid"] == pid for i in waiting)  # one worker holds all three
    out = cli("queue", "cancel", waiting[0], runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "cancelled 1 runs" in out.stdout, out.stdout + out.stderr
    assert Ledger(runs_dir).get(first)["status"] == "running" and psutil.pid_exists(pid)
    wait(lambda: all_final(runs_dir), 120, "the worker to finish")
    final = {i: Ledger(runs_dir).get(i) for i in (first, *waiting)}
    assert final[first]["status"] == "done" and final[first]["attempts"] == 1  # never restarted
    assert final[waiting[0]]["status"] == "cancelled" and not _started(runs_dir, waiting[0])
    assert final[waiting[1]]["status"] == "done" and final[waiting[1]]["worker"] == worker  # by the same worker


def _worker_of_three(tmp_path, runs_dir, tiny_model, queue_env, sleep: float) -> tuple[list[dict], int]:
    """Three runs in one worker process (each step slowed by ``sleep`` s); the runs in the worker's order
    (by when each began) once the first has begun, and the worker's pid."""
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=sleep)
    start(runs_dir, queue_env, "--worker-runs", "3")
    wait(lambda: any(_started(runs_dir, r["id"]) for r in runs), 60, "a run to begin")
    pid = Ledger(runs_dir).get(runs[0]["id"])["pid"]
    assert pid and all(Ledger(runs_dir).get(r["id"])["pid"] == pid for r in runs)  # one worker holds all three
    return runs, pid


@pytest.mark.slow
def test_a_cancel_that_comes_after_the_run_wrote_its_result_keeps_it_done(tmp_path, runs_dir, tiny_model, queue_env):
    """The cancel of a run in a worker that has just finished (its result.json written, the daemon not yet
    reaped it): the run stays done with its result, the worker and the run it trains next go on."""
    runs, _ = _worker_of_three(tmp_path, runs_dir, tiny_model, queue_env, sleep=1.0)
    assert cli("daemon", "stop", runs_dir=runs_dir, env=queue_env).returncode == 0  # nothing reaps it now
    first = wait(
        lambda: next((r["id"] for r in runs if (runs_dir / r["id"] / "result.json").exists()), None),
        90,
        "the first run's result",
    )
    assert Ledger(runs_dir).get(first)["status"] == "running"  # not reaped yet
    out = cli("queue", "cancel", first, "--no-wait", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0, out.stderr
    start(runs_dir, queue_env, "--worker-runs", "3")  # its first tick carries the request out
    wait(lambda: Ledger(runs_dir).get(first)["status"] != "running", 30, "the request carried out")
    row = Ledger(runs_dir).get(first)
    assert row["status"] == "done" and isinstance(row["score"], float) and not row.get("cancel_requested")
    assert json.loads((runs_dir / first / "result.json").read_text())["status"] == "done"
    assert not (runs_dir / first / "result.attempt1.json").exists()
    wait(lambda: all_final(runs_dir), 120, "the worker to finish")
    final = Ledger(runs_dir).runs()
    assert {r["status"] for r in final} == {"done"} and {r["attempts"] for r in final} == {1}
    assert {r["worker"] for r in final} == {Ledger(runs_dir).get(first)["worker"]}  # one worker, never restarted
    log = (runs_dir / "daemon.log").read_text()
    assert f"{first}: cancel asked after it ended (done): its result is kept" in log
    assert "stopping it" not in log  # the worker was never signalled


@pytest.mark.slow
def test_cancelling_a_run_that_trains_in_a_worker_never_restarts_the_runs_after_it(
    tmp_path, runs_dir, tiny_model, queue_env
):
    """The run a worker trains is cancelled: its trainer drops it at the next step, and the worker trains
    the runs after it (the same process, their first attempt); no run is placed again."""
    runs, pid = _worker_of_three(tmp_path, runs_dir, tiny_model, queue_env, sleep=1.0)
    first = next(r["id"] for r in runs if _started(runs_dir, r["id"]))
    out = cli("queue", "cancel", first, runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "cancelled 1 runs" in out.stdout, out.stdout + out.stderr
    assert json.loads((runs_dir / first / "result.json").read_text())["status"] == "cancelled"
    wait(lambda: all_final(runs_dir), 120, "the worker to finish")
    final = {r["id"]: r for r in Ledger(runs_dir).runs()}
    others = [i for i in final if i != first]
    assert final[first]["status"] == "cancelled"
    assert all(final[i]["status"] == "done" and final[i]["attempts"] == 1 for i in others)
    assert len(placements(runs_dir)) == 1  # one launch: nothing was placed again
    log = (runs_dir / others[0] / "train.log").read_text()
    assert log.count("── attempt 1 ──") == 1 and "attempt 2" not in log


def test_pausing_keeps_a_worker_from_beginning_the_runs_it_holds_until_resumed(
    tmp_path, runs_dir, tiny_model, queue_env
):
    """Two runs in one worker process; the queue is paused while the first trains: the first finishes, the
    second (held by the worker, "waiting in worker 1") does not begin until the queue resumes (issue 35,
    item 3: it began while the app said PAUSED)."""
    stages = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'
    runs = add(make_plan(tmp_path, tiny_model, stages, baseline=True), runs_dir, queue_env)
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=0.3)
    start(runs_dir, queue_env, "--worker-runs", "2")
    first = wait(lambda: next((r["id"] for r in runs if _started(runs_dir, r["id"])), None), 60, "a run to begin")
    (second,) = [r["id"] for r in runs if r["id"] != first]
    assert Ledger(runs_dir).get(second)["pid"] == Ledger(runs_dir).get(first)["pid"]  # the worker holds both
    assert cli("queue", "pause", runs_dir=runs_dir, env=queue_env).returncode == 0
    wait(lambda: (runs_dir / "queue.paused").exists(), 30, "the pause to reach the workers")
    wait(lambda: statuses(runs_dir)[first] == "done", 120, "the first run to finish")
    wait_ticks(runs_dir, 10)  # two seconds and more: today's worker began the second run at once
    assert not _started(runs_dir, second), "a run held by a worker began while the queue was paused"
    shown = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir, env=queue_env).stdout)
    assert {r["id"]: r["shown"] for r in shown}[second] == "waiting"
    assert cli("queue", "resume", runs_dir=runs_dir, env=queue_env).returncode == 0
    wait(lambda: all_final(runs_dir), 120, "the held run to finish after resuming")
    assert statuses(runs_dir)[second] == "done" and not (runs_dir / "queue.paused").exists()
