"""Compile once: regional compilation (each encoder layer compiled, one graph every layer reuses; the
fused array's one layer function) equals eager, takes the CUDA-graph branches on CPU tensors, and a
second trainer process of the same shapes starts warm from the inductor cache under the runs-dir. Real
inductor on the CPU, real trainer processes, tiny real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fused_inputs, result_of, step_losses, write_tiny_run

from stilts_tui.train.step import Setup, resolve_setup
from stilts_tui.train.worker import Model, Settings, compile_options

ATOL = 1e-5
STEPS = 3


def _config(layers: int = 2):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=40,
        pad_token_id=1,
        type_vocab_size=1,
        num_labels=3,
    )


def _setup(compile_mode: str = "inductor", graphs: bool = False, scope: str = "regional") -> Setup:
    return Setup("fp32", False, "random", "max", "step", compile_mode, graphs, compile_scope=scope)


def _sgd_losses(loss_fn, batch, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[float]:
    """STEPS SGD steps on one batch: each step's loss (``grads``: where each parameter's gradient lands)."""
    out = []
    for _ in range(STEPS):
        loss = loss_fn(*batch, None)
        total = loss[0] if isinstance(loss, tuple) else loss
        total.backward()
        with torch.no_grad():
            for p, g in zip(params, grads() if callable(grads) else grads, strict=True):
                p.sub_(0.05 * g)
                g.zero_()
        out.append(float(total.detach()))
    return out


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def fresh_compiler(tmp_path, monkeypatch):
    """An empty inductor cache and dynamo's counters at zero (what a new process has)."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _alone_model() -> tuple[Model, tuple, dict]:
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    module = RobertaForSequenceClassification._from_config(_config(), attn_implementation="sdpa").float()
    ids, _, mask, labels = fused_inputs("roberta", "classification", 1)
    batch = (ids[0], None, mask[0], labels[0], torch.ones(labels.shape[1]))
    return Model(module, "classification"), batch, {n: t.detach().clone() for n, t in module.state_dict().items()}


def _alone_losses(model: Model, batch, loss_fn) -> list[float]:
    params = list(model.module.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    return _sgd_losses(loss_fn, batch, params, [p.grad for p in params])


@pytest.mark.slow
def test_regional_compilation_of_a_model_alone_reuses_one_graph_for_every_layer_and_equals_eager(fresh_compiler):
    model, batch, start = _alone_model()
    names = list(model.module.state_dict())
    eager = _alone_losses(model, batch, model._loss)
    model.module.load_state_dict(start)
    compiled = _alone_losses(model, batch, model.loss_fn(_setup()))
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) <= ATOL, (eager, compiled)
    assert _graphs() == 1  # two layers, one graph: the second layer reused the first's
    assert list(model.module.state_dict()) == names  # no wrapper in the names: checkpoints load as before
    model.logits(*batch[:3], None)  # evaluation stays eager: nothing more compiled
    assert _graphs() == 1
    assert model.scope(_setup()) == "regional" and model.scope(_setup(scope="whole")) == "whole"


@pytest.mark.slow
def test_regional_compilation_of_a_fused_array_reuses_one_layer_graph_and_equals_eager(fresh_compiler):
    from transformers import RobertaForSequenceClassification

    from stilts_tui.train.engines.array import compile_array
    from stilts_tui.train.engines.array_model import FusedEncoder

    k, config = 3, _config()
    states = []
    for seed in range(k):
        torch.manual_seed(seed)
        states.append(dict(RobertaForSequenceClassification._from_config(config).named_parameters()))
    fused = FusedEncoder(config, "classification", "roberta", states, torch.device("cpu"))
    w0 = fused.W.clone()
    ids, types, mask, labels = fused_inputs("roberta", "classification", k)
    batch = (ids, types, mask, labels, torch.ones(labels.shape))
    eager = _sgd_losses(fused.loss, batch, [fused.W], [fused.G])
    with torch.no_grad():
        fused.W.copy_(w0)
    compiled = _sgd_losses(compile_array(fused, "regional"), batch, [fused.W], [fused.G])
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) <= ATOL, (eager, compiled)
    assert _graphs() == 1
    # another batch size and length (another bucket): the same graph, still eager's numbers
    ids, types, mask, labels = fused_inputs("roberta", "classification", k, b=3, t=20)
    other = (ids, types, mask, labels, torch.ones(labels.shape))
    loss_fn = compile_array(fused, "regional")
    assert abs(float(loss_fn(*other, None)[0].detach()) - float(fused.loss(*other, None)[0].detach())) <= ATOL
    fused.logits(ids, types, mask, None)  # evaluation runs the layers eagerly
    assert _graphs() == 1


@pytest.mark.parametrize("mode", ["cudagraphs", "inductor"], ids=["cudagraphs-backend", "reduce-overhead"])
@pytest.mark.slow
def test_regional_compilation_takes_the_cuda_graph_branches_on_cpu_tensors(fresh_compiler, mode):
    # on CPU tensors both skip the graphs (torch logs why) and run what they compiled: the branch a GPU
    # takes, short of the graph capture itself
    setup = _setup(mode, graphs=True)
    options = compile_options(setup)
    expected = {"backend": "cudagraphs", "dynamic": False} if mode == "cudagraphs" else {"mode": "reduce-overhead"}
    assert expected.items() <= options.items()
    model, batch, start = _alone_model()
    eager = _alone_losses(model, batch, model._loss)
    model.module.load_state_dict(start)
    compiled = _alone_losses(model, batch, model.loss_fn(setup))
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) <= ATOL, (eager, compiled)
    assert _graphs() == 1


def test_compiled_runs_compile_regionally_unless_the_trainer_asks_for_the_whole_loss():
    params = {"precision": "fp32", "pad": "auto", "batching": "random", "clip": "step", "compile": "inductor"}
    cpu = torch.device("cpu")
    assert resolve_setup(Settings(device=cpu), params, 1).compile_scope == "regional"
    assert resolve_setup(Settings(device=cpu, compile_scope="whole"), params, 1).compile_scope == "whole"
    # results written before the field: the contract's default is what they did
    from stilts_tui import contract

    old = {"precision": "fp32", "tf32": False, "batching": "random", "pad": "buckets", "clip": "step"}
    assert contract.Setup(**old, compile="inductor").compile_scope == "whole"


def _trainer(dirs: list[Path], *flags: str, **env: str) -> subprocess.CompletedProcess:
    """The real trainer on the CPU, one thread, the inductor cache wherever the trainer puts it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    return subprocess.run(
        [sys.executable, "-m", "stilts_tui.train", *flags, *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**base, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu", **env},
    )


@pytest.mark.slow
def test_a_second_trainer_process_of_the_same_shapes_starts_warm_from_the_runs_dir_cache(tmp_path, tiny_workload):
    runs = tmp_path / "runs"
    eager = write_tiny_run(tmp_path / "eager", "e0000000000e", tiny_workload)
    first, second = (write_tiny_run(runs, f"{n}0000000000{n}", tiny_workload, compile="inductor") for n in "ab")
    cache = runs / ".cache" / "inductor"
    for d in (eager, first, second):  # one process each: the second finds what the first compiled
        out = _trainer([d])
        assert out.returncode == 0, out.stderr[-3000:]
        if d == first:
            assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*")), "nothing cached under the runs-dir"
            # inductor's CPU vector check passed: recorded, so that no later process pays it again
            assert json.loads((cache / "stilts-vec-isa.json").read_text())["isa"]
    assert "(checked;" in (first / "train.log").read_text()
    assert "(record;" in (second / "train.log").read_text()
    cold, warm = result_of(first), result_of(second)
    for r in (cold, warm):
        assert r["status"] == "done" and r["compile"] == "inductor" and "compile_fallback" not in r
        assert r["setup"]["compile_scope"] == "regional"
    assert warm["timings"]["compile_s"] < cold["timings"]["compile_s"], (warm["timings"], cold["timings"])
    losses = [[x for _, x in step_losses(d)] for d in (eager, first, second)]
    assert len(losses[0]) >= 5
    for other in losses[1:]:
        assert max(abs(a - b) for a, b in zip(losses[0], other, strict=True)) <= ATOL, (losses[0], other)
    (tmp_path / "timings.json").write_text(json.dumps({"cold": cold["timings"], "warm": warm["timings"]}))


@pytest.mark.slow
def test_the_whole_loss_is_compiled_when_the_trainer_is_asked_and_the_result_says_so(tmp_path, tiny_workload):
    d = write_tiny_run(tmp_path / "runs", "w0000000000w", tiny_workload, compile="inductor")
    out = _trainer([d], STILTS_COMPILE_SCOPE="whole")
    assert out.returncode == 0, out.stderr[-3000:]
    r = result_of(d)
    assert r["status"] == "done" and r["compile"] == "inductor" and r["setup"]["compile_scope"] == "whole"
    assert "compile inductor (whole)" in (d / "train.log").read_text()
