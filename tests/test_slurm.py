"""The Slurm executor against a real single-node Slurm cluster (munged, slurmctld, slurmd started by
``ci/slurm/start.sh``; ``.ci/run`` starts it) with tiny real runs.

Where no cluster answers these tests skip, saying why, except under ``STILTS_REQUIRE_SLURM=1`` (CI),
where they fail instead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import add, cli, make_plan, set_debug, statuses, wait

from stilts_tui.store.ledger import Ledger


def _cluster_up() -> str | None:
    """None when a Slurm node answers idle or busy, else why not."""
    if shutil.which("sinfo") is None:
        return (
            "Slurm is not installed (apt-get install slurmctld slurmd slurm-client munge, then bash ci/slurm/start.sh)"
        )
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"no Slurm node is up ({(out.stderr or out.stdout).strip()[:100]}); run bash ci/slurm/start.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    why = _cluster_up()
    if why and os.environ.get("STILTS_REQUIRE_SLURM") == "1":
        pytest.fail(f"STILTS_REQUIRE_SLURM=1 but {why}")
    if why:
        pytest.skip(why)


@pytest.fixture
def slurm_env(runs_dir):
    env = {"OMP_NUM_THREADS": "1"}
    yield env
    cli("daemon", "stop", runs_dir=runs_dir, env=env)
    jobs = [r["job_id"] for r in Ledger(runs_dir).runs() if r.get("job_id")]
    if jobs:  # leave no job of this test in the cluster
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


STAGES = """[intermediate.i]
task = "pair"
[target.t]
task = "pair"
grid = { lr = [1e-4, 2e-4] }
"""


def start_slurm(runs_dir: Path, env: dict, *extra: str) -> dict:
    out = cli(
        "daemon",
        "start",
        "--executor",
        "slurm",
        "--interval",
        "0.3",
        "--gpus-per-run",
        "1",
        "--cpus-per-run",
        "1",
        "--mem",
        "2G",
        "--time",
        "10:00",
        *extra,
        runs_dir=runs_dir,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads((runs_dir / "daemon.json").read_text())


def job_of(runs_dir: Path, run_id: str) -> str | None:
    return (Ledger(runs_dir).get(run_id) or {}).get("job_id")


def slurm_state(job: str) -> tuple[str, str]:
    """(state, reason) as Slurm itself reports it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    return fields.get("JobState", "?"), fields.get("Reason", "?")


def jobs_named(run_id: str, runs_dir: Path) -> list[str]:
    """Slurm's jobs for this run of this runs-dir (another test may hold the same run id)."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i|%Z"], capture_output=True, text=True, timeout=30
    )
    return [x.split("|")[0] for x in out.stdout.split() if x.split("|")[1] == str(runs_dir)]


def split(runs: list[dict]) -> tuple[dict, list[dict]]:
    parent = next(r for r in runs if r["stage"] == "intermediate")
    return parent, [r for r in runs if r["stage"] == "target"]


def test_a_plan_runs_to_the_end_through_slurm_with_children_held_on_their_parent(
    tmp_path, runs_dir, tiny_model, slurm_env
):
    parent, children = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    set_debug(runs_dir, parent["id"], sleep_per_step=1.0)  # long enough to watch the children wait
    start_slurm(runs_dir, slurm_env)
    wait(lambda: all(job_of(runs_dir, c["id"]) for c in children), 60, "children submitted while the parent runs")
    assert Ledger(runs_dir).get(parent["id"])["status"] == "running"
    for c in children:  # Slurm, not our daemon, holds them
        assert slurm_state(job_of(runs_dir, c["id"])) == ("PENDING", "Dependency")
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, 240, "every run done")
    runs = {r["id"]: r for r in Ledger(runs_dir).runs()}
    for r in runs.values():
        assert r["executor"] == "slurm" and r["attempts"] == 1 and isinstance(r["score"], float)
        job = r["job_id"]
        wait(lambda j=job: slurm_state(j)[0] == "COMPLETED", 30, "the job to complete")  # exit status 0
        assert jobs_named(r["id"], runs_dir) == [r["job_id"]]  # one job each
        assert json.loads((runs_dir / r["id"] / "result.json").read_text())["status"] == "done"
        log = (runs_dir / r["id"] / "train.log").read_text()
        assert "step" in log  # sbatch --output is the run's own log
    for c in children:  # each child ran after its parent's checkpoint was written
        assert runs[c["id"]]["started"] <= runs[parent["id"]]["finished"]  # submitted early...
        events = [json.loads(x) for x in (runs_dir / c["id"] / "events.jsonl").read_text().splitlines()]
        assert events[0]["t"] >= runs[parent["id"]]["finished"] - 2  # ...but started only once the parent ended
    out = cli("scores", "q", "--format", "json", runs_dir=runs_dir)
    assert out.returncode == 0 and len(json.loads(out.stdout)["cells"]) == 1


def test_a_failing_parent_leaves_its_children_blocked_and_cancelled_in_slurm(tmp_path, runs_dir, tiny_model, slurm_env):
    parent, children = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    spec_path = runs_dir / parent["id"] / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["task"]["train_file"] = str(tmp_path / "data/missing.jsonl")
    spec["debug"] = {"sleep_per_step": 0.5}
    spec_path.write_text(json.dumps(spec))
    start_slurm(runs_dir, slurm_env)
    wait(lambda: all(job_of(runs_dir, c["id"]) for c in children), 60, "children submitted")
    wait(lambda: sorted(statuses(runs_dir).values()) == ["blocked", "blocked", "failed"], 120, "children blocked")
    assert "data file not found" in Ledger(runs_dir).get(parent["id"])["error"]
    for c in children:
        assert slurm_state(job_of(runs_dir, c["id"])) == ("CANCELLED", "DependencyNeverSatisfied")
        assert not (runs_dir / c["id"] / "result.json").exists()  # never ran


def test_queue_cancel_cancels_the_slurm_job(tmp_path, runs_dir, tiny_model, slurm_env):
    parent, children = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    set_debug(runs_dir, parent["id"], sleep_per_step=5.0)
    start_slurm(runs_dir, slurm_env)
    wait(
        lambda: job_of(runs_dir, parent["id"]) and slurm_state(job_of(runs_dir, parent["id"]))[0] == "RUNNING",
        60,
        "the parent's job running",
    )
    job = job_of(runs_dir, parent["id"])
    out = cli("queue", "cancel", parent["id"], runs_dir=runs_dir, env=slurm_env)
    assert out.returncode == 0, out.stderr
    assert slurm_state(job)[0] == "CANCELLED"
    assert Ledger(runs_dir).get(parent["id"])["status"] == "cancelled"
    wait(lambda: sorted(statuses(runs_dir).values()) == ["blocked", "blocked", "cancelled"], 60, "the children blocked")


def test_a_daemon_killed_mid_plan_and_restarted_submits_nothing_twice(tmp_path, runs_dir, tiny_model, slurm_env):
    parent, children = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    set_debug(runs_dir, parent["id"], sleep_per_step=0.5)
    info = start_slurm(runs_dir, slurm_env)
    wait(lambda: job_of(runs_dir, parent["id"]), 60, "the parent submitted")
    os.kill(info["pid"], signal.SIGKILL)
    # as if it died between sbatch and recording the job id: the job is in Slurm, its id not in the ledger
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(parent["id"], job_id=None)
    start_slurm(runs_dir, slurm_env)
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, 240, "every run done after the restart")
    for r in Ledger(runs_dir).runs():
        assert jobs_named(r["id"], runs_dir) == [r["job_id"]], f"{r['id']}: {jobs_named(r['id'], runs_dir)}"
        assert r["attempts"] == 1
    assert f"{parent['id']}: found job" in (runs_dir / "daemon.log").read_text()


# -- issue 14: settings no node can run, options the executor manages, jobs that can never start -----------


def test_daemon_start_refuses_what_no_node_of_the_partition_can_run(runs_dir, slurm_env):
    node = (
        subprocess.run(["sinfo", "-h", "-N", "-o", "%c|%m|%G"], capture_output=True, text=True, timeout=30)
        .stdout.split()[0]
        .split("|")
    )
    cpus, mem = int(node[0]), int(node[1])
    cases = [
        (("--cpus-per-run", str(cpus + 2)), f"--cpus-per-run {cpus + 2}: no node can run it"),
        (("--mem", f"{mem // 1024 + 64}G"), f"--mem {mem // 1024 + 64}G: no node can run it"),
        (("--gpus-per-run", "9"), "--gpus-per-run 9: no node can run it"),
        (("--partition", "nosuchpart"), "no partition 'nosuchpart'"),
    ]
    for args, needle in cases:
        out = cli(
            "daemon", "start", "--executor", "slurm", "--cpus-per-run", "1", *args, runs_dir=runs_dir, env=slurm_env
        )
        assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, (
            args,
            out.stderr,
        )
        assert not (runs_dir / "daemon.json").exists()


@pytest.mark.parametrize(
    "arg",
    [
        "--depend=afterok:1",
        "--arr=1-3",
        "--out=/tmp/stilts-escape.log",
        "--chd=/",
        "--hol",
        "--test",
        "--kill-on=no",
        "-o/tmp/x",
        "--j=name",
    ],
)
def test_sbatch_options_the_executor_sets_are_refused_under_any_abbreviation(runs_dir, slurm_env, arg):
    out = cli(
        "daemon",
        "start",
        "--executor",
        "slurm",
        "--cpus-per-run",
        "1",
        f"--sbatch-arg={arg}",
        runs_dir=runs_dir,
        env=slurm_env,
    )
    assert out.returncode == 2 and "--sbatch-arg" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_managed_option_in_a_run_spec_fails_that_run_and_submits_nothing(tmp_path, runs_dir, tiny_model, slurm_env):
    parent, children = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    path = runs_dir / parent["id"] / "spec.json"
    spec = json.loads(path.read_text())
    spec["slurm"] = {"sbatch_args": ["--out=/tmp/stilts-escape.log"]}
    path.write_text(json.dumps(spec))
    start_slurm(runs_dir, slurm_env)
    wait(lambda: sorted(statuses(runs_dir).values()) == ["blocked", "blocked", "failed"], 60, "the run failed")
    error = Ledger(runs_dir).get(parent["id"])["error"]
    assert "--output" in error and "\n" not in error
    assert jobs_named(parent["id"], runs_dir) == [] and not Path("/tmp/stilts-escape.log").exists()


def test_a_job_that_can_never_start_is_reported_in_queue_ls_and_doctor_within_a_minute(
    tmp_path, runs_dir, tiny_model, slurm_env
):
    parent, _ = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    cpus = int(
        subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True, timeout=30).stdout.split()[0]
    )
    path = runs_dir / parent["id"] / "spec.json"
    spec = json.loads(path.read_text())
    spec["slurm"] = {"cpus": cpus + 2}  # a plan's [slurm] table asking for more than the node has
    path.write_text(json.dumps(spec))
    t0 = time.time()
    start_slurm(runs_dir, slurm_env)

    def warned() -> str | None:
        out = cli("queue", "ls", runs_dir=runs_dir, env=slurm_env)
        return out.stderr if "PartitionConfig" in out.stderr else None

    text = wait(warned, 60, "queue ls to report the stuck job")
    assert time.time() - t0 < 60 and "--cpus-per-run" in text and parent["id"] in text
    doctor = cli("doctor", runs_dir=runs_dir, env=slurm_env)
    assert any(x.startswith("fail") and "PartitionConfig" in x for x in doctor.stdout.splitlines()), doctor.stdout
    assert Ledger(runs_dir).get(parent["id"])["status"] == "running"  # reported, not given up: an admin may fix it


def test_a_finished_run_whose_job_id_was_never_recorded_is_read_from_its_result_not_resubmitted(
    tmp_path, runs_dir, tiny_model, slurm_env
):
    parent, _ = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    with Ledger(runs_dir).transaction() as tx:  # submitted, finished and gone from squeue before the id was kept
        tx.update_run(
            parent["id"], status="running", executor="slurm", job_id=None, started=time.time() - 600, attempts=1
        )
    (runs_dir / parent["id"] / "result.json").write_text(json.dumps({"status": "done", "score": 0.75}))
    start_slurm(runs_dir, slurm_env)
    wait(lambda: statuses(runs_dir)[parent["id"]] == "done", 30, "the run reaped from its result")
    run = Ledger(runs_dir).get(parent["id"])
    assert run["score"] == 0.75 and run["attempts"] == 1 and jobs_named(parent["id"], runs_dir) == []


def test_a_run_stopped_as_degenerate_is_reaped_degenerate_from_its_result(tmp_path, runs_dir, tiny_model, slurm_env):
    parent, _ = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(
            parent["id"], status="running", executor="slurm", job_id=None, started=time.time() - 600, attempts=1
        )
    why = "degenerate: dev acc 0.5000 at or below the majority class's 0.5000 by epoch 1"
    (runs_dir / parent["id"] / "result.json").write_text(
        json.dumps({"status": "degenerate", "score": 0.5, "error": why})
    )
    start_slurm(runs_dir, slurm_env)
    wait(lambda: statuses(runs_dir)[parent["id"]] == "degenerate", 30, "the run reaped from its result")
    run = Ledger(runs_dir).get(parent["id"])
    assert run["score"] == 0.5 and run["error"] == why and jobs_named(parent["id"], runs_dir) == []
    wait(lambda: all(s in ("blocked", "degenerate") for s in statuses(runs_dir).values()), 30, "children blocked")


def _sbatch(runs_dir: Path, *args: str) -> str:
    """A job standing in for a run's: sleep, in this runs-dir."""
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={runs_dir}",
            "--output=/dev/null",
            "--gres=gpu:1",
            "--cpus-per-task=1",
            "--mem=100M",
            *args,
            "--wrap",
            "sleep 300",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def test_the_slurm_executor_reads_job_states_cancels_and_reaps(tmp_path, runs_dir, tiny_model, slurm_env):
    from stilts_tui.queue import daemon as qd
    from stilts_tui.queue.executor import new_stats

    parent, (a, b) = split(add(make_plan(tmp_path, tiny_model, STAGES), runs_dir, slurm_env))
    ex = qd.Daemon(runs_dir, qd.Settings(executor="slurm")).executor
    assert ex.name == "slurm"
    held, later, done = _sbatch(runs_dir), _sbatch(runs_dir, "--begin=now+1hour"), _sbatch(runs_dir)
    with Ledger(runs_dir).transaction() as tx:  # the ledger rows the submission wrote for each job
        for run, job in ((parent, held), (a, later), (b, done)):
            tx.update_run(run["id"], status="running", executor="slurm", job_id=job, attempts=1, started=time.time())
    (runs_dir / b["id"] / "result.json").write_text(json.dumps({"status": "done", "score": 0.5}))
    runs = {r["id"]: r for r in Ledger(runs_dir).runs()}
    ex.observe(list(runs.values()))
    assert ex.alive(runs[a["id"]]) and ex.pending_reason(runs[a["id"]]) == "BeginTime"

    ex.cancel(runs[parent["id"]])  # scancel, never waiting
    wait(lambda: slurm_state(held)[0] == "CANCELLED", 30, "Slurm to cancel the job")
    ex.observe(list(runs.values()))
    assert not ex.alive(runs[parent["id"]]) and ex.alive(runs[a["id"]])
    stats = new_stats()
    changes = ex.reap(list(runs.values()), {k: r["status"] for k, r in runs.items()}, stats)
    assert changes[b["id"]][1]["status"] == "done" and changes[b["id"]][1]["score"] == 0.5  # its result first
    assert changes[parent["id"]][1]["status"] == "failed"  # left Slurm without a result, not a node failure
    assert f"Slurm job {held} ended CANCELLED" in changes[parent["id"]][1]["error"]
    assert changes[a["id"]][1] == {"slurm_state": "PENDING", "slurm_reason": "BeginTime", "stuck": None}
    assert stats == {**new_stats(), "reaped": 2}
    subprocess.run(["scancel", later, done], capture_output=True, timeout=30)


def test_a_ranked_plan_prunes_through_slurm_as_it_does_locally(tmp_path, runs_dir, tiny_model, slurm_env):
    from test_pruned import _plan

    add(_plan(tmp_path, tiny_model), runs_dir, slurm_env)
    start_slurm(runs_dir, slurm_env)
    settled = ("done", "failed", "cancelled", "blocked", "degenerate", "pruned")
    wait(lambda: all(s in settled for s in statuses(runs_dir).values()), 300, "every run settled")
    runs = {(r["stage"], r.get("intermediate")): r for r in Ledger(runs_dir).runs()}
    assert runs[("rank", None)]["status"] == "done" and runs[("rank", None)]["executor"] == "slurm"
    assert runs[("target", "idle")]["status"] == "pruned" and not runs[("target", "idle")].get("job_id")
    assert runs[("target", "none")]["status"] == runs[("target", "learned")]["status"] == "done"
