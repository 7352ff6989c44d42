"""The branches a GPU takes, taken on the CPU: length buckets with grouped batches, inductor
compilation (and gradient accumulation under it), fused arrays on buckets with short last batches,
compiler failures in the forward and the backward, out-of-memory errors mid-run and mid-array, and a
GPU placement whose process has no CUDA. Real trainer processes on a tiny real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import result_of, step_losses, train, write_tiny_run

from stilts_tui.contract import TRAINING_DEFAULTS
from stilts_tui.train import data
from stilts_tui.train.members import Schedule

ROOT = Path(__file__).resolve().parent.parent

BUCKETS = [16, 24, 32, 40]


def _lengths(n: int = 203, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 41, n)


def test_grouped_batches_hold_one_bucket_and_every_seed_steps_through_the_same_buckets():
    lengths = _lengths()
    orders = {seed: data.train_order(lengths, 8, seed, 1, "grouped", BUCKETS) for seed in (1, 2, 3)}
    sequences = []
    for seed, order in orders.items():
        assert sorted(np.concatenate(order).tolist()) == list(range(len(lengths)))  # every example once
        buckets = [{data.pad_length(int(x), "buckets", 40, BUCKETS) for x in lengths[b]} for b in order]
        assert all(len(b) == 1 for b in buckets), f"seed {seed}: a batch spans buckets"
        sequences.append([(b.pop(), len(idx)) for b, idx in zip(buckets, order, strict=True)])
    # the same bucket and the same batch size at every step, whatever the seed: a fused array pads
    # every member to one bucket and stacks batches of one size
    assert sequences[0] == sequences[1] == sequences[2]
    assert not all(np.array_equal(a, b) for a, b in zip(orders[1], orders[2], strict=True))  # the seed matters
    assert data.train_order(lengths, 8, 1, 2, "grouped", BUCKETS)[0].tolist() != orders[1][0].tolist()


def test_random_batches_are_uniform_over_the_epoch_with_one_short_batch_at_the_end():
    lengths = _lengths()
    order = data.train_order(lengths, 8, 5, 1, "random", BUCKETS)
    assert [len(b) for b in order] == [8] * 25 + [3]
    assert sorted(np.concatenate(order).tolist()) == list(range(len(lengths)))
    # not sorted by length: random batches mix lengths (the reference's RandomSampler)
    assert np.mean([np.ptp(lengths[b]) for b in order[:-1]]) > 10


def test_gradient_accumulation_steps_as_the_reference_leftovers_carry():
    # 37 examples, batch 4: 10 micro-batches an epoch; accumulation 4: 2 steps an epoch (floor), the
    # 2 leftover micro-batches carry into the next epoch's first step
    s = Schedule.of({"batch_size": 4, "grad_accum": 4, "epochs": 3, "warmup": 0.5}, 37)
    assert (s.steps_per_epoch, s.total, s.warmup) == (2, 6, 3)
    assert Schedule.of({**TRAINING_DEFAULTS, "batch_size": 8, "epochs": 2}, 37).total == 10
    fewer = {**TRAINING_DEFAULTS, "batch_size": 8, "grad_accum": 8, "epochs": 2}
    assert Schedule.of(fewer, 37).steps_per_epoch == 1  # fewer micro-batches than accum


@pytest.mark.slow
def test_a_fused_array_on_buckets_with_short_last_batches_equals_each_run_alone(tmp_path, tiny_workload):
    runs = [("a", 1e-3, 0.0, 1), ("b", 3e-3, 0.1, 2), ("c", 2e-3, 0.0, 3)]

    def write(where: str) -> list:
        return [
            write_tiny_run(
                tmp_path / where, f"{n}0000000000{n}", tiny_workload, seed=seed, lr=lr, weight_decay=wd, warmup=0.3
            )
            for n, lr, wd, seed in runs
        ]

    alone, fused = write("alone"), write("fused")
    flags = ("--pad", "buckets", "--group", "on")
    out = train(alone, *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    out = train(fused, *flags, "--fuse", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    for a, f in zip(alone, fused, strict=True):
        ra, rf = result_of(a), result_of(f)
        assert ra["status"] == rf["status"] == "done"
        assert rf["setup"] == {**ra["setup"], "fused": 3, "dropout_streams": "member"}
        assert ra["setup"] == {
            "precision": "fp32",
            "tf32": False,
            "batching": "grouped",
            "pad": "buckets",
            "clip": "step",
            "compile": "off",
            "cuda_graphs": False,
            "compile_scope": "regional",
            "fused": 0,
            "dropout_streams": "own",
            "method": "full",
        }
        la, lf = step_losses(a), step_losses(f)
        assert [s for s, _ in la] == [s for s, _ in lf] and len(la) >= 5
        assert np.allclose([x for _, x in la], [x for _, x in lf], atol=1e-5)
        assert ra["metrics"] == rf["metrics"]


@pytest.mark.slow
def test_inductor_compiles_on_the_cpu_with_and_without_gradient_accumulation(tmp_path, tiny_workload):
    eager = [write_tiny_run(tmp_path / "eager", f"e{i}0000000000e", tiny_workload, grad_accum=i) for i in (1, 2)]
    # compiled because the plan says so (`compile = "inductor"`), with the trainer's flag left at auto
    comp = [
        write_tiny_run(tmp_path / "comp", f"c{i}0000000000c", tiny_workload, grad_accum=i, compile="inductor")
        for i in (1, 2)
    ]
    # then an out-of-memory error in the same process, with the compiler's (fake) tensors still about
    oom = write_tiny_run(tmp_path / "comp", "d0000000000d", tiny_workload, debug={"oom_at_step": 1}, compile="inductor")
    assert train(eager, "--pad", "buckets").returncode == 0
    out = train([*comp, oom])
    assert out.returncode == 1, out.stderr[-2000:]
    assert result_of(oom)["status"] == "oom" and result_of(oom)["mem_after_cleanup_mb"] < 0.2
    for e, c in zip(eager, comp, strict=True):
        rc = result_of(c)
        assert rc["status"] == "done" and rc["compile"] == "inductor" and "compile_fallback" not in rc
        assert rc["setup"]["compile"] == "inductor" and rc["setup"]["pad"] == "buckets"
        assert rc["setup"]["compile_scope"] == "regional"  # the default: each encoder layer compiled
        # the compiled step computes the same losses as the eager one (to float rounding)
        assert np.allclose([x for _, x in step_losses(e)], [x for _, x in step_losses(c)], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fuse", [False, True], ids=["alone", "array"])
@pytest.mark.slow
def test_a_compiler_failure_in_forward_or_backward_falls_back_and_the_result_says_so(tmp_path, tiny_workload, fuse):
    where = ("forward", "backward") if not fuse else ("backward",)
    eager = [
        write_tiny_run(tmp_path / "eager", f"e{i}0000000000e", tiny_workload, seed=i, grad_accum=2)
        for i in range(len(where) + fuse)
    ]
    failing = [
        write_tiny_run(
            tmp_path / "fail",
            f"f{i}0000000000f",
            tiny_workload,
            seed=i,
            grad_accum=2,
            debug={"compile_fail": where[min(i, len(where) - 1)]},
        )
        for i in range(len(where) + fuse)
    ]
    fuse_flags = ("--fuse", "2") if fuse else ()
    assert train(eager, "--pad", "buckets", *fuse_flags).returncode == 0
    out = train(failing, "--compile", "inductor", *fuse_flags)
    assert out.returncode == 0, out.stderr[-2000:]
    for i, (e, f) in enumerate(zip(eager, failing, strict=True)):
        rf = result_of(f)
        assert rf["status"] == "done"
        assert rf["compile"] == "off" and rf["setup"]["compile"] == "inductor"  # asked for, and what ran
        assert rf["compile_fallback"].startswith(where[min(i, len(where) - 1)] + ": ")
        assert "going on without compilation" in (f / "train.log").read_text()
        # the failed step is redone eagerly: no gradient lost or counted twice
        assert np.allclose([x for _, x in step_losses(e)], [x for _, x in step_losses(f)], atol=1e-6)


@pytest.mark.slow
def test_out_of_memory_mid_worker_frees_the_memory_and_the_next_run_trains(tmp_path, tiny_workload):
    dirs = [
        write_tiny_run(tmp_path, "a0000000000a", tiny_workload, debug={"oom_at_step": 2}),
        write_tiny_run(tmp_path, "b0000000000b", tiny_workload, debug={"oom_at_step": 1, "oom_kind": "runtime"}),
        write_tiny_run(tmp_path, "c0000000000c", tiny_workload),
    ]
    out = train(dirs)
    assert out.returncode == 1  # not every run is done
    ra, rb, rc = map(result_of, dirs)
    assert ra["status"] == "oom" and rb["status"] == "oom", (ra["error"], rb["error"])
    assert "CUBLAS_STATUS_ALLOC_FAILED" in rb["error"]  # a cuBLAS allocation failure is an OOM, not a failure
    # clean-up ran outside the except block: the model, its gradients and the optimizer's state are gone
    # (the tiny model alone holds ~1.4 MB of weights, ~5 MB with gradients and AdamW's moments)
    assert ra["mem_after_cleanup_mb"] < 0.2 and rb["mem_after_cleanup_mb"] < 0.2
    assert rc["status"] == "done" and rc["score"] is not None


def test_out_of_memory_mid_array_ends_its_runs_oom_and_the_next_run_trains(tmp_path, tiny_workload):
    array = [
        write_tiny_run(
            tmp_path, f"{n}0000000000{n}", tiny_workload, seed=i, debug={"oom_at_step": 3} if n == "b" else None
        )
        for i, n in enumerate("abc")
    ]
    after = write_tiny_run(tmp_path, "d0000000000d", tiny_workload, batch_size=4)  # another shape: alone
    out = train([*array, after], "--fuse", "3", "--pad", "buckets", "--group", "on")
    assert out.returncode == 1
    for d in array:
        r = result_of(d)
        assert r["status"] == "oom" and r["mem_after_cleanup_mb"] < 0.2
    assert result_of(after)["status"] == "done"
    assert "fused with 2 other runs" in (array[0] / "train.log").read_text()


def test_a_gpu_placement_whose_process_has_no_cuda_fails_instead_of_training_on_the_cpu(tmp_path, tiny_workload):
    d = write_tiny_run(tmp_path, "a0000000000a", tiny_workload)
    out = train([d], "--device", "cuda")
    assert out.returncode == 1
    r = result_of(d)
    assert r["status"] == "failed" and "CUDA is not available" in r["error"]
    assert "step" not in (d / "events.jsonl").read_text()


def test_cuda_graphs_are_off_under_gradient_accumulation_and_settings_override_the_spec():
    import torch

    from stilts_tui.train.step import resolve_setup
    from stilts_tui.train.worker import Settings

    cuda = Settings(device=torch.device("cuda"))
    one = resolve_setup(cuda, {**TRAINING_DEFAULTS, "precision": "bf16"}, 1)
    assert (one.compile, one.cuda_graphs, one.pad, one.batching) == ("inductor", True, "buckets", "random")
    # graphs own their outputs: gradients accumulated over micro-batches would be overwritten by a replay
    assert resolve_setup(cuda, {**TRAINING_DEFAULTS, "grad_accum": 2}, 2).cuda_graphs is False
    cpu = Settings(device=torch.device("cpu"), compile="inductor", pad="longest", group="on")
    s = resolve_setup(cpu, {**TRAINING_DEFAULTS, "batching": "random", "pad": "max", "clip": "micro_batch"}, 1)
    # a flag other than auto wins over the spec; compiled code never pads to each batch's longest
    assert (s.precision, s.batching, s.pad, s.clip, s.cuda_graphs) == (
        "fp32",
        "grouped",
        "buckets",
        "micro_batch",
        False,
    )
    assert resolve_setup(Settings(device=torch.device("cpu")), {**TRAINING_DEFAULTS, "pad": "max"}, 1).pad == "max"


def test_auto_compiles_only_runs_long_enough_to_pay_for_the_compile():
    import torch

    from stilts_tui.train.step import AUTO_COMPILE_MIN_STEPS as LEAST
    from stilts_tui.train.step import resolve_setup
    from stilts_tui.train.worker import Settings

    cuda, cpu = Settings(device=torch.device("cuda")), Settings(device=torch.device("cpu"))
    fast = {**TRAINING_DEFAULTS, "precision": "bf16"}  # the step rule: runs whose shapes change (buckets)
    compiled = lambda s, p=None, **kw: resolve_setup(s, {**fast, **(p or {})}, 1, **kw).compile  # noqa: E731
    assert compiled(cuda, steps=LEAST - 1) == "off" and compiled(cuda, steps=LEAST) == "inductor"
    assert compiled(cuda, steps=LEAST, fused=True) == "off"
    assert compiled(cuda, steps=3 * LEAST, fused=True) == "inductor"
    assert compiled(cuda, steps=None) == "inductor" and compiled(cpu, steps=10 * LEAST) == "off"
    # the plan's key wins over auto, the trainer's flag over the plan
    assert compiled(cuda, {"compile": "off"}, steps=10 * LEAST) == "off"
    assert compiled(cpu, {"compile": "inductor"}, steps=1) == "inductor"
    flagged = Settings(device=torch.device("cuda"), compile="cudagraphs")
    assert compiled(flagged, {"compile": "off"}, steps=1) == "cudagraphs"


def test_the_reference_settings_pad_to_max_len_and_replay_cuda_graphs_of_the_eager_kernels_on_a_gpu():
    """fp32 with pad and compile auto (the reference plan's runs) on CUDA: every batch padded to max_len,
    as the reference did, and CUDA graphs of the eager kernels whatever the run's length (no code is
    generated); an array, a LoRA run, accumulation or another padding keep the step rule; the CPU trains
    as before."""
    import torch

    from stilts_tui import plan as plans
    from stilts_tui.train.step import resolve_setup
    from stilts_tui.train.worker import Settings

    cuda, cpu = Settings(device=torch.device("cuda")), Settings(device=torch.device("cpu"))
    _, runs = plans.load_and_expand(ROOT / "plans" / "chang_lu_2021.toml")
    rte = next(r for r in runs if r.stage == "target" and r.task == "rte")
    s = resolve_setup(cuda, rte.params, int(rte.params["grad_accum"]), steps=10)
    assert (s.precision, s.pad, s.compile, s.cuda_graphs) == ("fp32", "max", "cudagraphs", True)
    siqa = next(r for r in runs if r.stage == "target" and r.task == "siqa" and r.params["grad_accum"] > 1)
    s = resolve_setup(cuda, siqa.params, int(siqa.params["grad_accum"]), steps=10)
    assert (s.pad, s.compile, s.cuda_graphs) == ("max", "off", False)  # accumulation: the step rule, no graphs
    ref = {**TRAINING_DEFAULTS}
    assert resolve_setup(cuda, ref, 1, steps=10, fused=True).compile == "off"  # an array: the step rule
    assert resolve_setup(cuda, {**ref, "pad": "buckets"}, 1, steps=10).compile == "off"
    lora = {**ref, "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query"]}}
    assert resolve_setup(cuda, {**lora, "transfer": "merge"}, 1, steps=10).compile == "off"
    assert resolve_setup(cuda, {**ref, "compile": "off"}, 1, steps=10).compile == "off"  # the plan's key wins
    on_cpu = resolve_setup(cpu, rte.params, 1, steps=10)
    assert (on_cpu.pad, on_cpu.compile, on_cpu.cuda_graphs) == ("longest", "off", False)


def _tiny_config(layers: int):
    """A RoBERTa small enough to compile on the CPU in seconds."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=20,
        pad_token_id=1,
        type_vocab_size=1,
    )


def _array_optimizer_ops(layers: int) -> int:
    import torch
    from transformers import RobertaForSequenceClassification

    from stilts_tui.train.engines.array import ArrayAdamW
    from stilts_tui.train.engines.array_model import FusedEncoder

    config = _tiny_config(layers)
    models = [RobertaForSequenceClassification(config) for _ in range(3)]
    fused = FusedEncoder(
        config, "classification", "roberta", [dict(m.named_parameters()) for m in models], torch.device("cpu")
    )
    opt = ArrayAdamW(fused, [0.0, 0.1, 0.0], [1e-3, 2e-3, 3e-3], [2, 0, 1], total=10)
    fused.G.normal_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.clip(1.0)
        opt.step()
        opt.zero_grad()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def test_the_array_optimizer_is_a_few_whole_buffer_operations_whatever_the_model_size():
    # one AdamW update, clipping and zeroing of every run's every weight: the same few operations for 2
    # layers (~40 parameters) as for 6 (~100); a per-parameter loop would grow with the model
    small, big = _array_optimizer_ops(2), _array_optimizer_ops(6)
    assert small == big and small < 60, (small, big)  # per parameter it would be ~6 x 40 for the small one


@pytest.mark.slow
def test_the_compiled_array_optimizer_makes_the_eager_updates():
    # what a compiled fused array runs (inductor on the CPU, as on a GPU): three updates of three runs
    # with their own lr, warmup and decay equal the eager ones; a 0-d update count was dropped by
    # inductor, so the bias correction divided by zero and every weight went nan after the first step
    import torch
    from transformers import RobertaForSequenceClassification

    from stilts_tui.train.engines.array import ArrayAdamW
    from stilts_tui.train.engines.array_model import FusedEncoder

    config = _tiny_config(1)
    torch.manual_seed(0)
    models = [RobertaForSequenceClassification(config) for _ in range(3)]

    def updated(compiled: bool) -> torch.Tensor:
        states = [{k: v.detach().clone() for k, v in m.named_parameters()} for m in models]
        fused = FusedEncoder(config, "classification", "roberta", states, torch.device("cpu"))
        opt = ArrayAdamW(fused, [0.0, 0.1, 0.0], [1e-3, 2e-3, 3e-3], [2, 0, 1], total=10, compiled=compiled)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            fused.G.copy_(torch.randn(fused.G.shape, generator=gen))
            opt.clip(1.0)
            opt.step()
        assert opt.fallback is None and int(opt.t.item()) == 3
        return fused.W.detach().clone()

    eager, compiled = updated(False), updated(True)
    assert torch.isfinite(compiled).all()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
