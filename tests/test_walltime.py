"""`plan show --cost` predicts a plan's wall time per mode from where each run's time goes: the arithmetic
of each mode, the box's history read from a real ledger and real result files, and the CLI's output."""

from __future__ import annotations

import json
import math

import pytest
from conftest import QUEUE_DEFAULTS, cli, write_jsonl, write_plan

from stilts_tui import plan as plans
from stilts_tui.contract import ResultStatus, Status, shape_key
from stilts_tui.estimate import cost, history, walltime
from stilts_tui.queue import ops
from stilts_tui.store.ledger import Ledger

STAGES = """[intermediate.i]
task = "pair"
[target.t]
task = "pair"
grid = { lr = [1e-4, 2e-4] }
"""


@pytest.fixture
def plan_file(tmp_path):
    write_jsonl(tmp_path / "data/tr.jsonl", [{"s1": f"a{i}", "s2": "b", "label": str(i % 2)} for i in range(48)])
    write_jsonl(tmp_path / "data/dv.jsonl", [{"s1": f"c{i}", "s2": "d", "label": str(i % 2)} for i in range(16)])
    pair = ("data/tr.jsonl", "data/dv.jsonl")
    return write_plan(
        tmp_path / "w.toml", name="w", model="some/model", defaults=QUEUE_DEFAULTS, pair=pair, stages=STAGES
    )


def the_shape(plan, runs) -> str:
    r = runs[-1]
    return shape_key({"model": {"name": plan.model, **r.model}, "params": r.params, "task": r.task_spec})


def test_each_mode_adds_up_the_phases_as_it_pays_them(plan_file):
    plan, runs = plans.load_and_expand(plan_file)
    assert [r.stage for r in runs].count("intermediate") == 1 and len(runs) == 5  # 1 + (i, none) x 2 lrs
    figures = {"process_s": 4.0, "load_s": 1.0, "eval_per_example": 0.01, "samples_per_s": 16.0}
    rates = walltime.Rates(shapes={the_shape(plan, runs): figures}, packing={2: 1.5}, fused={4: 2.0}, runs=9)
    box = walltime.Box(gpu=False, devices=1, slots=2, worker_runs=2, fuse=4)
    got = walltime.predict(plan, runs, rates, box)
    # a run: 48 samples at 16/s = 3 s of steps, 16 dev examples x 0.01 s = 0.16 s of evaluation, 1 s loading
    run = 1.0 + 3.0 + 0.16
    assert got.seconds["reference"] == pytest.approx(5 * (4.0 + run))  # every run its own process, in sequence
    # queue: the intermediate alone (one process); then 4 targets, 2 a process (start paid once): the two
    # processes' starts and loading overlap, their steps and evaluations go at 1.5x the speed of one
    assert got.seconds["queue"] == pytest.approx((4.0 + run) + 2 * (4.0 + 2 * 1.0) / 2 + 2 * (2 * 3.16) / 1.5)
    # fused: the 4 targets as one array, steps 2x faster together; the array alone on the device
    assert got.seconds["fused"] == pytest.approx((4.0 + run) + 4.0 + 4 * (1.0 + 0.16) + 4 * 3.0 / 2.0)
    assert got.seconds["mps"] is None  # no GPU, no MPS
    assert got.runs == got.measured == 5 and "5 of 5 runs timed from this box's" in got.notes[0]
    assert "1.50x one (measured" in got.notes[1] and "2.00x faster than in sequence (measured" in got.notes[2]
    # never shorter than its longest process: one GPU's 4 slots, one process of all 4 targets
    one = walltime.predict(plan, runs, rates, walltime.Box(gpu=True, devices=1, slots=4, worker_runs=8, fuse=4))
    assert one.seconds["queue"] == pytest.approx((4.0 + run) + (4.0 + 4 * run))


def test_without_history_on_the_device_no_mode_gets_a_number_and_it_says_so(plan_file):
    plan, runs = plans.load_and_expand(plan_file)
    rates = walltime.Rates(device="cuda:NVIDIA H100 80GB HBM3")
    got = walltime.predict(plan, runs, rates, walltime.Box(gpu=True, devices=2, slots=4, worker_runs=4))
    assert got.measured == 0 and all(v is None for v in got.seconds.values())
    assert "nothing measured on NVIDIA H100 80GB HBM3 yet" in got.notes[0]


def finished(root, run_id: str, *, worker: str, start: float, end: float, rate: float, process_s: float, fused=None):
    """A finished run as the daemon and the trainer leave it: the ledger's fields and a result.json."""
    timings = {"process_s": process_s, "data_s": 0.5, "model_s": 1.5, "steady_samples_per_s": rate, "eval_s": 0.32}
    result = {"status": ResultStatus.DONE, "score": 0.5, "timings": timings, "setup": {"fused": fused} if fused else {}}
    (root / run_id / "result.json").write_text(json.dumps(result))
    with Ledger(root).transaction() as tx:
        tx.update_run(run_id, status=Status.DONE, worker=worker, gpu=0, started=start, finished=end, timings=timings)


def test_the_box_history_gives_each_shape_its_figures_and_the_packing_of_runs_side_by_side(plan_file, runs_dir):
    _, _, added = ops.add_plan(plan_file, runs_dir)
    a, b, c, d, e = added
    finished(runs_dir, a, worker="w1", start=0, end=10, rate=10.0, process_s=3.0)  # alone
    finished(runs_dir, b, worker="w2", start=20, end=30, rate=10.0, process_s=5.0)  # alone
    finished(runs_dir, c, worker="w3", start=40, end=60, rate=7.5, process_s=0)  # side by side with d
    finished(runs_dir, d, worker="w4", start=41, end=61, rate=7.5, process_s=0)
    finished(runs_dir, e, worker="w5", start=70, end=80, rate=5.0, process_s=0, fused=4)  # one of an array of 4
    rates = walltime.history(runs_dir)
    (figures,) = rates.shapes.values()
    assert figures["samples_per_s"] == 10.0 and figures["process_s"] == 4.0 and figures["load_s"] == 2.0
    assert figures["eval_per_example"] == pytest.approx(0.32 / 16)
    assert rates.packing == {2: pytest.approx(1.5)} and rates.fused == {4: pytest.approx(2.0)} and rates.runs == 5


def test_a_damaged_result_is_left_out_of_the_history_not_fatal(plan_file, runs_dir):
    _, _, added = ops.add_plan(plan_file, runs_dir)
    finished(runs_dir, added[0], worker="w1", start=0, end=10, rate=10.0, process_s=3.0)
    finished(runs_dir, added[1], worker="w2", start=20, end=30, rate=10.0, process_s=3.0)
    (runs_dir / added[1] / "result.json").write_text(
        json.dumps({"status": ResultStatus.DONE, "timings": {"steady_samples_per_s": "fast"}})[:-1]  # torn
    )
    rates = walltime.history(runs_dir)
    assert next(iter(rates.shapes.values()))["samples_per_s"] == 10.0


def test_plan_show_cost_prints_the_wall_time_of_each_mode_and_its_json(plan_file, runs_dir):
    _, _, added = ops.add_plan(plan_file, runs_dir)
    finished(runs_dir, added[0], worker="w1", start=0, end=10, rate=10.0, process_s=3.0)  # a CPU run (no GPU memory)
    out = cli("plan", "show", str(plan_file), "--cost", "--cpu-slots", "2", "--worker-runs", "3", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    assert "predicted wall time on this box (the CPU: 2 processes a device, 3 runs a process)" in out.stdout
    for label in ("reference loop (one process a run, one at a time)", "queue", "fused arrays of 4", "n/a (no GPU)"):
        assert label in out.stdout
    got = json.loads(cli("plan", "show", str(plan_file), "--cost", "--json", runs_dir=runs_dir).stdout)["cost"]["wall"]
    assert got["box"] == {"device": "cpu", "gpu": False, "devices": 1, "slots": 1, "worker_runs": 4, "fuse": 4}
    assert got["seconds"]["mps"] is None and all(
        math.isfinite(got["seconds"][m]) for m in ("reference", "queue", "fused")
    )


def test_cost_and_wall_time_learn_from_the_same_finished_runs_a_damaged_array_size_read_as_alone(plan_file, runs_dir):
    """One reader (estimate/history.py) for both estimates: before it, a result.json whose setup was not an
    object crashed the wall-time history, and a negative ``fused`` made the cost's throughput negative."""
    _, _, added = ops.add_plan(plan_file, runs_dir)
    a, b, c = added[:3]
    for run_id, worker, rate in ((a, "w1", 50.0), (b, "w2", 30.0), (c, "w3", 40.0)):
        finished(runs_dir, run_id, worker=worker, start=0, end=10, rate=10.0, process_s=3.0)
        result = json.loads((runs_dir / run_id / "result.json").read_text())
        result.update(samples_per_s=rate, wall_seconds=20.0, train_seconds=12.0)
        result["setup"] = {b: ["damaged"], c: {"fused": -2}}.get(run_id, {"fused": 0})
        (runs_dir / run_id / "result.json").write_text(json.dumps(result))
    past = history.read(runs_dir)
    assert sorted(r.row["id"] for r in past.runs) == sorted([a, b, c]) and {r.fused for r in past.runs} == {1}
    measured = cost.measured(runs_dir, "cpu")
    assert set(measured.shapes) == set(walltime.history(runs_dir, "cpu").shapes)  # one shape, seen by both
    (fig,) = measured.shapes.values()
    # the three ran side by side on one device: each at 10 samples/s, so one alone at 3 x 10 / packing(3)
    assert measured.used == 3 and fig["samples_per_s"] == pytest.approx(30.0)


def test_the_history_holds_only_done_runs_of_a_trained_stage_with_both_files(plan_file, runs_dir):
    _, _, added = ops.add_plan(plan_file, runs_dir)
    for run_id in added[:3]:
        finished(runs_dir, run_id, worker="w1", start=0, end=10, rate=10.0, process_s=3.0)
    (runs_dir / added[1] / "spec.json").unlink()  # no spec: no shape to learn by
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(added[2], status=Status.FAILED)
    past = history.read(runs_dir)
    assert [r.row["id"] for r in past.runs] == [added[0]] and past.trained == 2
    assert history.read(None).runs == [] and history.read(runs_dir / "nowhere").done == []
