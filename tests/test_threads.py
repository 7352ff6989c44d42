"""Every process the daemon starts gets its share of the cores, GPU placement or CPU, and says so in its
result.json; a trainer started by hand keeps torch's defaults (or Slurm's --cpus-per-task)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import add, all_final, make_plan, start, wait

from stilts_tui.contract import THREADS_ENV
from stilts_tui.queue import daemon as qd
from stilts_tui.queue import threads
from stilts_tui.store.ledger import Ledger

TARGETS = """[target.t]
task = "pair"
grid = { lr = [1e-4, 2e-4] }
"""


def test_the_share_is_the_cores_over_the_most_processes_at_once_and_never_zero():
    assert threads.share(2, 16) == 8 and threads.share(3, 16) == 5 and threads.share(32, 16) == 1
    assert threads.share(0, 4) == 4  # no slot count known: the process is alone
    env = threads.environment(4, 16)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env[THREADS_ENV] == "4"
    assert env["TOKENIZERS_PARALLELISM"] == "true" and threads.environment(16, 16)["TOKENIZERS_PARALLELISM"] == "false"
    assert threads.cores() == len(os.sched_getaffinity(0))  # the daemon's own affinity (taskset, cpusets)


def test_a_cpu_placement_and_a_gpu_placement_each_get_their_share(runs_dir, monkeypatch):
    cores = threads.cores()
    d = qd.Daemon(runs_dir, qd.Settings(cpu_slots=2))
    (cpu,) = d.executor.devices([])
    env, args, _ = d.executor.run_env(cpu, 0)
    assert cpu.index is None and args == ["--device", "cpu"]
    assert env["OMP_NUM_THREADS"] == env[THREADS_ENV] == str(max(1, cores // 2))
    monkeypatch.setenv("STILTS_FAKE_GPUS", "2x24")  # two GPUs, 3 processes each: 6 processes at most
    d = qd.Daemon(runs_dir, qd.Settings(per_gpu=3))
    gpus = d.executor.devices([])
    env, args, _ = d.executor.run_env(gpus[1], 0)
    assert len(gpus) == 2 and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env[THREADS_ENV] == str(max(1, cores // 6)) and "at most 6 processes" in env["STILTS_THREADS_WHY"]


def test_runs_packed_on_a_fake_gpu_train_with_their_share_not_the_daemons_environment(
    tmp_path, runs_dir, tiny_model, queue_env
):
    env = {**queue_env, "STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "7"}  # what the processes must not inherit
    runs = add(make_plan(tmp_path, tiny_model, TARGETS, baseline=True), runs_dir, env)
    start(runs_dir, env, "--per-gpu", "2", "--worker-runs", "1")
    wait(lambda: all_final(runs_dir), what="both runs to finish")
    share = max(1, threads.cores() // 2)
    for r in Ledger(runs_dir).runs():
        assert r["status"] == "done", r
        t = json.loads((runs_dir / r["id"] / "result.json").read_text())["threads"]
        assert t["intra_op"] == t["inter_op"] == share, t
        assert t["why"] == f"{share} of {threads.cores()} cores: the daemon runs at most 2 processes at once"
        assert f"threads: {share} intra-op" in (runs_dir / r["id"] / "train.log").read_text()
    assert len(runs) == 2


def test_a_trainer_started_by_hand_keeps_torchs_default_or_takes_slurms_cpus(tmp_path, tiny_workload):
    from conftest import result_of, write_tiny_run

    by_hand, slurm = (write_tiny_run(tmp_path / "runs", f"h{i}0000000000h", tiny_workload, seed=i) for i in (1, 2))
    base = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "SLURM_CPUS_PER_TASK")}
    for d, extra in (
        (by_hand, {"OMP_NUM_THREADS": "1"}),
        (slurm, {"OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "1"}),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "stilts_tui.train", "--device", "cpu", str(d)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**base, **extra},
        )
        assert out.returncode == 0, out.stderr[-2000:]
    hand, cluster = result_of(by_hand)["threads"], result_of(slurm)["threads"]
    assert hand["intra_op"] == 1 and hand["why"] == "started by hand: torch's default (OMP_NUM_THREADS=1)"
    assert cluster["intra_op"] == cluster["inter_op"] == 1 and cluster["why"] == "Slurm's --cpus-per-task (1)"
