"""Fused training: K runs of one shape as one array give what each run alone gives — on tiny real
models (built here, dropout off so that the two are comparable number for number)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fused_inputs, wait

from stilts_tui.train import workload

ATOL = 2e-5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}


def _models(kind: str, family: str, k: int):
    from transformers import (
        BertConfig,
        BertForMultipleChoice,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForMultipleChoice,
        RobertaForSequenceClassification,
    )

    common = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=40,
    )
    if family == "roberta":
        config = RobertaConfig(**common, pad_token_id=1, type_vocab_size=1, num_labels=3)
        cls = RobertaForMultipleChoice if kind == "multiple_choice" else RobertaForSequenceClassification
    else:
        config = BertConfig(**common, pad_token_id=0, type_vocab_size=2, num_labels=3)
        cls = BertForMultipleChoice if kind == "multiple_choice" else BertForSequenceClassification
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(cls(config).float().train())
    return config, out


@pytest.mark.parametrize("family", ["roberta", "bert"])
@pytest.mark.parametrize("kind", ["classification", "multiple_choice"])
def test_fused_logits_and_gradients_equal_each_model_alone(family, kind):
    import torch.nn.functional as F

    from stilts_tui.train.engines.array_model import FusedEncoder

    k = 3
    config, models = _models(kind, family, k)
    ids, types, mask, labels = fused_inputs(family, kind, k)
    fused = FusedEncoder(
        config, kind, models[0].base_model_prefix, [dict(m.named_parameters()) for m in models], torch.device("cpu")
    )
    weights = torch.ones(labels.shape)
    total, each = fused.loss(ids, types, mask, labels, weights, None)
    total.backward()
    for i, m in enumerate(models):
        kw = {"input_ids": ids[i], "attention_mask": mask[i]}
        if types is not None:
            kw["token_type_ids"] = types[i]
        logits = m(**kw).logits
        loss = F.cross_entropy(logits, labels[i])
        loss.backward()
        assert torch.allclose(each[i], loss.detach(), atol=ATOL), (each[i], loss)
        assert torch.allclose(fused.logits(ids, types, mask, None)[i], logits.detach(), atol=ATOL)
        for name, p in m.named_parameters():
            g = fused.p[name].grad[i]
            assert p.grad is not None and torch.allclose(g, p.grad, atol=ATOL), name


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("fused")
    model = workload.build_model(work / "model", "tiny", dropout=0.0)
    train, dev = workload.build_data(work / "data", 96, 32, max_len=40, median=20)
    return model, workload.task_spec(train, dev)


# different learning rates, warmups, weight decays and seeds (two runs share a seed, so share batches)
RUNS = [("a0000000000a", 3e-4, 0.0, 0.0, 1), ("b0000000000b", 1e-3, 0.3, 0.1, 2), ("c0000000000c", 5e-4, 0.5, 0.0, 1)]


def _write_runs(runs_dir: Path, model: Path, task: dict, stage: str = "intermediate") -> list[Path]:
    dirs = []
    for rid, lr, warmup, wd, seed in RUNS:
        params = {
            "lr": lr,
            "batch_size": 16,
            "warmup": warmup,
            "epochs": 2,
            "max_len": 40,
            "weight_decay": wd,
            "grad_accum": 1,
            "precision": "fp32",
            "transfer": "all",
        }
        d = workload.write_run(runs_dir, rid, model, task, params, seed)
        spec = json.loads((d / "spec.json").read_text())
        spec.update(stage=stage, keep_checkpoint=True)
        (d / "spec.json").write_text(json.dumps(spec))
        dirs.append(d)
    return dirs


def _train(dirs: list[Path], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stilts_tui.train", *extra, *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )


def _steps(d: Path) -> list[tuple[int, float, float]]:
    events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"], e["lr"]) for e in events if e["event"] == "step"]


@pytest.mark.slow
def test_a_fused_array_gives_each_run_its_own_losses_weights_scores_and_checkpoint(tmp_path, tiny_setup):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model, task = tiny_setup
    alone = _write_runs(tmp_path / "alone", model, task)
    fused = _write_runs(tmp_path / "fused", model, task)
    out = _train(alone)
    assert out.returncode == 0, out.stderr[-2000:]
    out = _train(fused, "--fuse", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    for a, f in zip(alone, fused, strict=True):
        ra, rf = (json.loads((d / "result.json").read_text()) for d in (a, f))
        assert ra["status"] == rf["status"] == "done"
        assert rf["fused"] == 3 and "fused" not in ra
        steps_a, steps_f = _steps(a), _steps(f)
        assert len(steps_a) == len(steps_f) == 12  # 96 examples / 16 x 2 epochs, every step logged
        for (sa, la, lra), (sf, lf, lrf) in zip(steps_a, steps_f, strict=True):
            assert sa == sf and lra == pytest.approx(lrf, rel=1e-9)
            assert lf == pytest.approx(la, abs=1e-5)
        assert rf["epoch_metrics"] == ra["epoch_metrics"]
        wa, wf = (
            load_file(str(a / "checkpoint" / "model.safetensors")),
            load_file(str(f / "checkpoint" / "model.safetensors")),
        )
        assert wa.keys() == wf.keys()
        for name in wa:
            assert torch.allclose(wa[name], wf[name], atol=2e-6), name
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(f / "checkpoint"))  # an ordinary HF model
        assert reloaded.config.id2label == {0: "0", 1: "1"}
        log = (f / "train.log").read_text()
        assert "fused with 2 other runs" in log and "checkpoint saved" in log
    # the runs did learn different things: different learning rates give different weights
    w = [load_file(str(f / "checkpoint" / "model.safetensors")) for f in fused]
    assert not torch.allclose(w[0]["classifier.out_proj.weight"], w[1]["classifier.out_proj.weight"])


@pytest.mark.slow
def test_a_run_cancelled_inside_an_array_ends_alone_and_the_others_finish(tmp_path, tiny_setup):
    model, task = tiny_setup
    dirs = _write_runs(tmp_path / "runs", model, task, stage="target")
    for d in dirs:
        spec = json.loads((d / "spec.json").read_text())
        spec["debug"] = {"sleep_per_step": 0.3}
        spec["keep_checkpoint"] = False
        (d / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stilts_tui.train", "--fuse", "3", *map(str, dirs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    wait(lambda: (dirs[1] / "events.jsonl").exists() and _steps(dirs[1]), 120, "the array to start", alive=proc)
    (dirs[1] / "cancel.request").touch()
    proc.wait(timeout=300)
    results = [json.loads((d / "result.json").read_text()) for d in dirs]
    assert [r["status"] for r in results] == ["done", "cancelled", "done"]
    assert len(_steps(dirs[1])) < 12 and len(_steps(dirs[0])) == 12
    assert isinstance(results[0]["score"], float) and isinstance(results[2]["score"], float)
    # the two left are the same as a run alone: compare with run 0 trained by itself
    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copytree(dirs[0], solo / dirs[0].name, ignore=shutil.ignore_patterns("*.log", "*.jsonl", "result.json"))
    out = _train([solo / dirs[0].name])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((solo / dirs[0].name / "result.json").read_text())["epoch_metrics"] == results[0]["epoch_metrics"]


@pytest.mark.slow
def test_the_queue_fuses_ready_runs_of_one_shape_and_cancels_one_run_of_an_array(tmp_path, runs_dir, tiny_setup):
    from conftest import add, cli, make_plan, set_debug, statuses, wait

    from stilts_tui.store.ledger import Ledger

    model, _ = tiny_setup
    stages = '[target.t]\ntask = "pair"\nepochs = 4\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4] }\n'
    runs = add(make_plan(tmp_path, model, stages, baseline=True), runs_dir, {})
    assert len(runs) == 4
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=1.5)  # 12 steps: time to cancel one mid-array
    env = {"STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "1"}
    out = cli("daemon", "start", "--interval", "0.2", "--fuse", "3", runs_dir=runs_dir, env=env)
    assert out.returncode == 0, out.stderr
    try:

        def array_running() -> list[dict]:
            return [r for r in Ledger(runs_dir).runs() if r["status"] == "running" and r.get("fused")]

        array = wait(lambda: len(array_running()) == 3 and array_running(), 60, "an array of 3 launched")
        assert len({r["worker"] for r in array}) == 1 and {r["fused"] for r in array} == {3}
        victim = array[1]["id"]
        wait(
            lambda: (runs_dir / victim / "events.jsonl").exists() and _steps(runs_dir / victim),
            120,
            "the array training",
        )
        out = cli("queue", "cancel", victim, runs_dir=runs_dir, env=env)
        assert out.returncode == 0 and "cancelled 1 runs" in out.stdout, (out.stdout, out.stderr)
        assert Ledger(runs_dir).get(victim)["status"] == "cancelled"
        wait(lambda: set(statuses(runs_dir).values()) <= {"done", "cancelled"}, 240, "every run to end")
        final = {r["id"]: r for r in Ledger(runs_dir).runs()}
        assert final[victim]["status"] == "cancelled"
        assert json.loads((runs_dir / victim / "result.json").read_text())["status"] == "cancelled"
        assert len(_steps(runs_dir / victim)) < 12
        for r in array:
            if r["id"] != victim:  # the array's other runs went on in the same process and finished
                assert final[r["id"]]["status"] == "done" and final[r["id"]]["attempts"] == 1
                assert final[r["id"]]["worker"] == array[0]["worker"]
                assert json.loads((runs_dir / r["id"] / "result.json").read_text())["fused"] == 3
        fourth = next(r for r in final.values() if r["id"] not in {a["id"] for a in array})
        assert fourth["status"] == "done" and not fourth.get("fused")  # left alone, it trained alone
        assert "fused as one array of 3" in (runs_dir / "daemon.log").read_text()
    finally:
        cli("daemon", "stop", runs_dir=runs_dir, env=env)
