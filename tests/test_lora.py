"""LoRA runs (docs/training.md, "LoRA"): through the real trainer process, a fused LoRA array gives each
member what its run alone (Hugging Face PEFT) gives, with dropout off and with dropout on under member
streams; a member that diverges or is cancelled leaves the others training; checkpoints hold the merged
weights and the adapter; the transfers between stages start where they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import result_of, step_losses, train, wait, write_tiny_run

from stilts_tui.train import workload

ENV_TRAIN = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]}
RUNS = [(3, 1e-2), (4, 2e-2), (5, 5e-3)]  # (seed, lr): members that differ in data order, adapter and head


@pytest.fixture(scope="module")
def lora_workloads(tmp_path_factory):
    """The tiny RoBERTa and pair task of conftest, with dropout off and with dropout 0.1 (the adapters'
    dropout is set per run)."""
    work = tmp_path_factory.mktemp("lora")
    train_file, dev_file = workload.build_data(work / "data", 37, 16, max_len=40, median=20)
    task = workload.task_spec(train_file, dev_file)
    return {p: (workload.build_model(work / f"model{p}", "tiny", dropout=p), task) for p in (0.0, 0.1)}


def _runs(root: Path, wl, dropout: float = 0.0, runs=RUNS, **params) -> list[Path]:
    cfg = {**LORA, "dropout": dropout}
    return [
        write_tiny_run(root, f"a{i}000000000a", wl, seed=s, lr=lr, epochs=2, method="lora", lora=cfg, **params)
        for i, (s, lr) in enumerate(runs)
    ]


def _same_training(alone: Path, fused: Path, atol: float = 1e-5) -> None:
    la, lf = step_losses(alone), step_losses(fused)
    assert [s for s, _ in la] == [s for s, _ in lf] and la
    assert np.allclose([x for _, x in la], [x for _, x in lf], atol=atol), (la, lf)
    assert result_of(fused)["epoch_metrics"] == result_of(alone)["epoch_metrics"]
    assert result_of(fused)["score"] == result_of(alone)["score"]


@pytest.mark.slow
def test_each_member_of_a_fused_lora_array_trains_as_its_run_alone(tmp_path, lora_workloads, pad="longest"):
    """Dropout off: the runs alone (PEFT) and the array of 3 (one frozen encoder, each member's adapters
    and head on its own rows) give the same losses at every step, metrics, scores and merged weights."""
    from safetensors.torch import load_file

    alone = _runs(tmp_path / "alone", lora_workloads[0.0], pad=pad)
    fused = _runs(tmp_path / "fused", lora_workloads[0.0], pad=pad)
    for d in alone + fused:  # a checkpoint of each, to compare the trained weights too
        spec = json.loads((d / "spec.json").read_text())
        spec["keep_checkpoint"] = True
        (d / "spec.json").write_text(json.dumps(spec))
    out = train(alone)
    assert out.returncode == 0, out.stderr[-3000:]
    out = train(fused, "--fuse", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    for a, f in zip(alone, fused, strict=True):
        _same_training(a, f)
        ra, rf = result_of(a), result_of(f)
        assert rf["setup"]["fused"] == 3 and ra["setup"]["fused"] == 0
        assert ra["setup"]["method"] == rf["setup"]["method"] == "lora" and rf["setup"]["lora"]["r"] == 4
        for name in ("model.safetensors", "lora_adapter.safetensors"):
            wa, wf = (load_file(str(d / "checkpoint" / name)) for d in (a, f))
            assert wa.keys() == wf.keys()
            for k in wa:
                assert torch.allclose(wa[k], wf[k], atol=1e-5), (name, k)
    # the adapters trained (B left zero), and differently for each member
    adapters = [load_file(str(f / "checkpoint" / "lora_adapter.safetensors")) for f in fused]
    b = "roberta.encoder.layer.0.attention.self.query.lora_B"
    assert adapters[0][b].abs().max() > 0 and not torch.allclose(adapters[0][b], adapters[1][b])
    assert "fused with 2 other runs" in (fused[0] / "train.log").read_text()


@pytest.mark.slow
def test_with_dropout_each_member_draws_its_runs_masks_and_one_stream_does_not(tmp_path, lora_workloads):
    """Dropout on (the encoder's 0.1, the adapters' 0.1): under member streams each member of the array
    equals its run alone, masks and all; with one stream for the array (--dropout-streams one) a member
    draws other masks, so the comparison that passes above fails there."""
    wl = lora_workloads[0.1]
    alone = _runs(tmp_path / "alone", wl, dropout=0.1)
    fused = _runs(tmp_path / "fused", wl, dropout=0.1)
    one = _runs(tmp_path / "one", wl, dropout=0.1)
    assert train(alone).returncode == 0
    out = train(fused, "--fuse", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    for a, f in zip(alone, fused, strict=True):
        _same_training(a, f, atol=1e-4)
        assert result_of(f)["setup"]["dropout_streams"] == "member"
    assert train(one, "--fuse", "3", "--dropout-streams", "one").returncode == 0
    assert result_of(one[1])["setup"]["dropout_streams"] == "one"
    la, lo = step_losses(alone[1]), step_losses(one[1])
    assert not np.allclose([x for _, x in la], [x for _, x in lo], atol=1e-4)


@pytest.mark.slow
def test_a_member_that_diverges_fails_alone_and_the_others_train_as_alone(tmp_path, lora_workloads):
    """A learning rate of 1e30 makes member 1's loss infinite within a few steps: it fails, saying so; the
    two others finish with the results of their runs alone."""
    runs = [RUNS[0], (4, 1e30), RUNS[2]]
    alone = _runs(tmp_path / "alone", lora_workloads[0.0], runs=[RUNS[0], RUNS[2]])
    fused = _runs(tmp_path / "fused", lora_workloads[0.0], runs=runs)
    assert train(alone).returncode == 0
    out = train(fused, "--fuse", "3")
    assert out.returncode == 1  # one run failed
    failed = result_of(fused[1])
    assert failed["status"] == "failed" and failed["error"].startswith("diverged: training loss")
    for a, f in zip(alone, [fused[0], fused[2]], strict=True):
        # the alone folders are numbered 0 and 1: compare by the run's own seed and lr
        assert json.loads((a / "spec.json").read_text())["seed"] == json.loads((f / "spec.json").read_text())["seed"]
        _same_training(a, f)


@pytest.mark.slow
def test_a_member_cancelled_mid_array_ends_and_the_others_finish(tmp_path, lora_workloads):
    fused = _runs(tmp_path / "fused", lora_workloads[0.0])
    for d in fused:
        spec = json.loads((d / "spec.json").read_text())
        spec["debug"] = {"sleep_per_step": 0.2}
        (d / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stilts_tui.train", "--fuse", "3", *map(str, fused)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV_TRAIN,
    )
    wait(lambda: (fused[1] / "events.jsonl").exists() and step_losses(fused[1]), 120, "the array to start", alive=proc)
    (fused[1] / "cancel.request").touch()
    proc.wait(timeout=300)
    statuses = [result_of(d)["status"] for d in fused]
    assert statuses == ["done", "cancelled", "done"]
    assert len(step_losses(fused[1])) < len(step_losses(fused[0]))
    alone = _runs(tmp_path / "alone", lora_workloads[0.0], runs=[RUNS[0]])
    assert train(alone).returncode == 0
    _same_training(alone[0], fused[0])


LORA_PLAN_STAGES = """
[intermediate.inter]
task = "pair"
method = "lora"
lr = 1e-2
lora = {{ r = 4 }}
{targets}
"""
TRANSFER_TARGETS = """
[target.merge]
task = "pair"
method = "lora"
lora = { r = 4 }
transfer = "merge"
lr = 1e-2

[target.adapter]
task = "pair"
method = "lora"
lora = { r = 4 }
transfer = "adapter"
lr = 1e-2

[target.full]
task = "pair"
lr = 1e-4
"""


def _train_plan(tmp_path: Path, tiny_model: Path, stages: str) -> dict[str, Path]:
    """Queue a plan's runs (no daemon) and train them with the real trainer, parents first."""
    from conftest import cli, make_plan

    from stilts_tui.store.ledger import Ledger

    runs_dir = tmp_path / "runs"
    plan = make_plan(tmp_path, tiny_model, stages)
    out = cli("queue", "add", str(plan), "--no-daemon", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    runs = Ledger(runs_dir).runs()
    for stage in ("intermediate", "target"):
        dirs = [runs_dir / r["id"] for r in runs if r["stage"] == stage]
        done = train(dirs)
        assert done.returncode == 0, done.stderr[-3000:]
    return {r["name"]: runs_dir / r["id"] for r in runs}


@pytest.mark.slow
def test_targets_after_a_lora_intermediate_start_from_its_merged_weights_or_its_adapter(tmp_path, tiny_model):
    """After a LoRA intermediate: a LoRA target with transfer = "merge" (the adapter merged into the base, a
    fresh adapter), one with "adapter" (the unmerged base and the intermediate's adapter, trained further)
    and a full fine-tune (the merged weights) all start as the same function with the intermediate's
    head, so their first losses agree; each records its method and transfer."""
    runs = _train_plan(tmp_path, tiny_model, LORA_PLAN_STAGES.format(targets=TRANSFER_TARGETS))
    inter = runs["inter"]
    assert (inter / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((inter / "checkpoint" / "lora.json").read_text())["r"] == 4
    spec = json.loads((runs["adapter"] / "spec.json").read_text())
    assert spec["model"]["base"]["name"] == str(tiny_model)  # the frozen base is the intermediate's own
    first = {name: step_losses(runs[name])[0][1] for name in ("merge", "adapter", "full")}
    assert first["merge"] == pytest.approx(first["adapter"], abs=1e-5)
    assert first["merge"] == pytest.approx(first["full"], abs=1e-5)
    setups = {name: result_of(runs[name])["setup"] for name in ("merge", "adapter", "full")}
    assert (setups["merge"]["method"], setups["merge"]["transfer"]) == ("lora", "merge")
    assert (setups["adapter"]["method"], setups["adapter"]["transfer"], setups["adapter"]["lora"]["r"]) == (
        "lora",
        "adapter",
        4,
    )
    assert setups["full"]["method"] == "full" and "lora" not in setups["full"]
    log = (runs["adapter"] / "train.log").read_text()
    assert "LoRA r 4" in log and "(transfer adapter)" in log


@pytest.mark.slow
def test_a_lora_target_after_a_full_intermediate_starts_from_its_weights(tmp_path, tiny_model):
    stages = """
[intermediate.inter]
task = "pair"
lr = 1e-4

[target.lora]
task = "pair"
method = "lora"
lr = 1e-2

[target.full]
task = "pair"
lr = 1e-4
"""
    runs = _train_plan(tmp_path, tiny_model, stages)
    assert not (runs["inter"] / "checkpoint" / "lora_adapter.safetensors").exists()
    assert step_losses(runs["lora"])[0][1] == pytest.approx(step_losses(runs["full"])[0][1], abs=1e-5)
    assert result_of(runs["lora"])["setup"]["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "targets": ["query", "value"],
    }
