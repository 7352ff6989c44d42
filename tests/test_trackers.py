"""report_to (issue 37, must-show 3): a plan's trackers reach every trained run's spec without changing a run
id; a real run logs its settings, steps and evaluations to TensorBoard and MLflow, read back with each
tracker's own reader and equal to events.jsonl; a tracker that fails never fails the run; `export` replays
finished runs into a tracker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, make_plan, set_debug, train, wait

from stilts_tui import plan as plans

STAGES = '[intermediate.inter]\ntask = "pair"\n\n[target.tgt]\ntask = "pair"\ngrid = { lr = [1e-3] }\n'


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """MLflow's file store, opted into (MLflow 3 keeps it in maintenance), and no tracking server of the user's."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _with_report_to(plan: Path, where: str, value: list[str]) -> Path:
    """The plan with ``report_to = value`` at the end of its ``[where]`` table."""
    text = plan.read_text()
    line = f"report_to = {json.dumps(value)}\n"
    head = f"[{where}]\n"
    assert head in text
    plan.write_text(text.replace(head, head + line, 1))
    return plan


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def _expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What the trackers must hold: each step metric and dev metric of events.jsonl, by step."""
    ev = _events(run_dir)
    begin = next(e for e in ev if e["event"] == "begin")
    per_epoch = begin["total_steps"] // begin["epochs"]
    out: dict[str, list[tuple[int, float]]] = {}
    for e in ev:
        if e["event"] == "step":
            for k in ("loss", "lr", "samples_per_s"):
                out.setdefault(f"train/{k}", []).append((e["step"], e[k]))
        elif e["event"] == "eval":
            for k, v in e["metrics"].items():
                out.setdefault(f"eval/{k}", []).append((e["epoch"] * per_epoch, v))
    return out


def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = (run_dir / "tensorboard").iterdir()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(runs_dir: Path, run_id: str) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(runs_dir / ".mlflow").resolve().as_uri())
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.run_id = '{run_id}'"
    )
    history = {
        k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
        for k in run.data.metrics
    }
    return run, history


def _check_equal(expected: dict, got: dict, float32: bool) -> None:
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for tag, points in expected.items():
        want = [(s, float(np.float32(v)) if float32 else v) for s, v in points]  # TensorBoard keeps float32
        assert got[tag] == want, tag


def _queue(tmp_path: Path, runs_dir: Path, tiny_model: Path, report_to: list[str]) -> list[dict]:
    plan = _with_report_to(make_plan(tmp_path, tiny_model, STAGES), "defaults", report_to)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    return json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)


def test_report_to_reaches_every_trained_runs_spec_and_changes_no_run_id(tmp_path, runs_dir, tiny_model):
    plan = make_plan(tmp_path, tiny_model, STAGES, baseline=True)
    before = [r.id for r in plans.load_and_expand(plan)[1]]
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    spec_before = json.loads((runs_dir / before[0] / "spec.json").read_text())
    assert "report_to" not in spec_before  # a plan without the key: its spec.json as before
    _with_report_to(plan, "defaults", ["tensorboard", "mlflow"])
    _with_report_to(plan, "target.tgt", ["mlflow"])  # a stage's own list over [defaults]'
    p, runs = plans.load_and_expand(plan)
    assert [r.id for r in runs] == before
    out = cli("queue", "add", str(plan), runs_dir=runs_dir)
    assert out.returncode == 0 and "0 runs queued" in out.stdout, out.stdout + out.stderr
    for r in runs:  # the runs still queued take the trackers from this add: their spec.json on disk
        spec = json.loads((runs_dir / r.id / "spec.json").read_text())
        assert spec == plans.spec_for(r, p, runs_dir)
        assert spec["report_to"] == (["mlflow"] if r.stage == "target" else ["tensorboard", "mlflow"])
        assert spec["grid"] == r.grid
        assert "report_to" not in spec["params"]
    first = json.loads((runs_dir / before[0] / "spec.json").read_text())
    assert {k: v for k, v in first.items() if k not in ("report_to", "grid")} == spec_before  # nothing else
    # a bad value: one line naming the file and key, exit 2
    plan.write_text(plan.read_text().replace('report_to = ["mlflow"]', 'report_to = ["comet"]'))
    bad = cli("plan", "validate", str(plan))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "target.tgt.report_to" in bad.stderr and '"tensorboard"' in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_run_logs_its_settings_steps_and_evaluations_to_tensorboard_and_mlflow(tmp_path, runs_dir, tiny_model):
    rows = _queue(tmp_path, runs_dir, tiny_model, ["tensorboard", "mlflow"])
    inter = next(r for r in rows if r["stage"] == "intermediate")
    d = runs_dir / inter["id"]
    out = train([d])
    assert out.returncode == 0, out.stderr
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "done" and result["trackers"] == {"tensorboard": "ok", "mlflow": "ok"}
    expected = _expected(d)
    assert len(expected["train/loss"]) >= 2 and "eval/acc" in expected
    _check_equal(expected, _tensorboard(d), float32=True)
    run, history = _mlflow(runs_dir, inter["id"])
    _check_equal(expected, history, float32=False)
    # the settings and the tags a tracker's UI groups by (every one but the seed)
    assert run.data.params["lr"] == str(inter["params"]["lr"]) and run.data.params["seed"] == str(inter["seed"])
    tags = run.data.tags
    assert (tags["plan"], tags["stage"], tags["start"], tags["seed"]) == ("q", "intermediate", "inter", "42")
    assert tags["group"] == "q.intermediate.inter" and run.info.run_name == "q.intermediate.inter.seed42"
    assert run.info.status == "FINISHED"
    assert "warning" not in (d / "train.log").read_text()


@pytest.mark.slow
def test_a_tracker_that_fails_never_fails_the_run(tmp_path, runs_dir, tiny_model):
    """TensorBoard's folder a regular file, MLflow's store a regular file, W&B not importable: the run ends
    done all the same, one warning line a tracker in train.log, and result.json says how each ended."""
    rows = _queue(tmp_path, runs_dir, tiny_model, ["tensorboard", "mlflow", "wandb"])
    d = runs_dir / next(r for r in rows if r["stage"] == "intermediate")["id"]
    (d / "tensorboard").write_text("a file where TensorBoard's folder goes\n")
    (runs_dir / ".mlflow").write_text("a file where MLflow's store goes\n")
    # wandb as an environment without it sees it: the import fails (this venv has no wandb either)
    shadow = tmp_path / "no_wandb" / "wandb"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "stilts_tui.train", str(d)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "done" and result["score"] is not None
    states = result["trackers"]
    assert set(states) == {"tensorboard", "mlflow", "wandb"}
    assert all(s.startswith("failed: ") and "\n" not in s for s in states.values()), states
    assert "not installed" in states["wandb"] and "stilts-tui[wandb]" in states["wandb"]
    warnings = [x for x in (d / "train.log").read_text().splitlines() if "warning: tracker" in x]
    assert len(warnings) == 3 and all(any(f"tracker {n} " in w for w in warnings) for n in states)
    assert _events(d)[-1]["event"] == "end" and _events(d)[-1]["status"] == "done"


@pytest.mark.slow
def test_export_replays_finished_runs_into_tensorboard_and_mlflow(tmp_path, runs_dir, tiny_model):
    """A study run before report_to was set: export writes what events.jsonl holds, read back equal."""
    plan = make_plan(tmp_path, tiny_model, STAGES, baseline=True)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    rows = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    target = next(r for r in rows if r["stage"] == "target" and r["intermediate"] == "none")
    d = runs_dir / target["id"]
    assert "report_to" not in json.loads((d / "spec.json").read_text())
    assert train([d]).returncode == 0
    assert not (d / "tensorboard").exists() and not (runs_dir / ".mlflow").exists()
    expected = _expected(d)
    for to in ("tensorboard", "mlflow"):
        out = cli("export", "q", "--to", to, runs_dir=runs_dir, env={"MLFLOW_ALLOW_FILE_STORE": "true"})
        assert out.returncode == 0, out.stderr
        assert f"1 of 1 finished runs exported to {to}" in out.stdout
    _check_equal(expected, _tensorboard(d), float32=True)
    run, history = _mlflow(runs_dir, target["id"])
    _check_equal(expected, history, float32=False)
    assert run.data.tags["group"] == "q.target.tgt.from-none.lr=0.001"  # the grid, from the ledger's row
    assert cli("export", "q", "--to", "wandb", runs_dir=runs_dir).returncode == 0
    (record,) = (d / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    assert all(json.dumps(v).encode() in record.read_bytes() for points in expected.values() for _, v in points)
    # again: the export replaces what it wrote (one TensorBoard folder, one MLflow run), never adds to it
    for to in ("tensorboard", "mlflow"):
        assert cli("export", "q", "--to", to, runs_dir=runs_dir).returncode == 0
    _check_equal(expected, _tensorboard(d), float32=True)
    _check_equal(expected, _mlflow(runs_dir, target["id"])[1], float32=False)


def test_export_refuses_bad_input_in_one_line(tmp_path, runs_dir, tiny_model):
    plan = make_plan(tmp_path, tiny_model, STAGES)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    for args, says in (
        (["q", "--to", "comet"], "--to: 'comet' is not one of tensorboard, mlflow, wandb"),
        (["nope", "--to", "mlflow"], "unknown plan 'nope'"),
        (["q", "--to", "mlflow"], "plan 'q' has no finished runs to export"),
    ):
        out = cli("export", *args, runs_dir=runs_dir)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_the_cli_queue_and_app_import_no_tracker_library():
    """The tracker libraries (and torch, for TensorBoard's writer) are imported by the trainer's processes
    only: the export command, the queue, the app and train/trackers.py itself import none of them."""
    code = (
        "import sys, stilts_tui.cli, stilts_tui.cli.export, stilts_tui.queue.ops, stilts_tui.tui.app\n"
        "import stilts_tui.train.trackers, stilts_tui.train.events\n"
        "print(','.join(m for m in ('torch', 'tensorboard', 'mlflow', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_a_run_logs_to_wandb_offline_in_its_folder(tmp_path, runs_dir, tiny_model):
    """W&B offline (it has no reader of its offline files; `wandb sync` uploads them): the run's own
    folder holds an offline run whose records carry every step and evaluation value of events.jsonl."""
    rows = _queue(tmp_path, runs_dir, tiny_model, ["wandb"])
    d = runs_dir / next(r for r in rows if r["stage"] == "intermediate")["id"]
    out = train([d])
    assert out.returncode == 0, out.stderr
    assert json.loads((d / "result.json").read_text())["trackers"] == {"wandb": "ok"}
    (record,) = (d / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    data = record.read_bytes()
    for tag, points in _expected(d).items():
        assert tag.encode() in data
        for _, value in points:
            assert json.dumps(value).encode() in data, (tag, value)
    assert b"q.intermediate.inter.seed42" in data and b"q.intermediate.inter" in data  # its name and group
    assert "wandb:" not in out.stdout + out.stderr  # silent: train.log is the run's console


@pytest.mark.slow
def test_a_tracker_that_raises_while_logging_is_dropped_and_the_run_goes_on(tmp_path, runs_dir, tiny_model):
    """MLflow's run folder broken under it after the first step: the next log raises; one warning line,
    MLflow off for the rest of the run, TensorBoard goes on, the run ends done."""
    rows = _queue(tmp_path, runs_dir, tiny_model, ["tensorboard", "mlflow"])
    rid = next(r for r in rows if r["stage"] == "intermediate")["id"]
    d = runs_dir / rid
    set_debug(runs_dir, rid, sleep_per_step=2.0)  # time to break the store between two steps
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "stilts_tui.train", str(d)], env=env)
    try:
        wait(
            lambda: (d / "events.jsonl").is_file() and '"event": "step"' in (d / "events.jsonl").read_text(),
            what="the first step event",
            alive=proc,
        )
        (metrics,) = (runs_dir / ".mlflow").glob("*/*/metrics")
        shutil.rmtree(metrics)
        metrics.write_text("a file where MLflow's metrics go\n")
        assert proc.wait(timeout=600) == 0
    finally:
        proc.kill()
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "done"
    assert result["trackers"]["tensorboard"] == "ok" and result["trackers"]["mlflow"].startswith("failed: ")
    warnings = [x for x in (d / "train.log").read_text().splitlines() if "warning: tracker" in x]
    assert len(warnings) == 1 and "tracker mlflow failed" in warnings[0]
    _check_equal(_expected(d), _tensorboard(d), float32=True)  # the other tracker saw every step
