"""What a run alone and a fused array share: how a run trains (:class:`Setup`, recorded in every
result.json), batches as tensors, which weights decay, the seeds, the step logger, and telling an
out-of-memory error from other failures."""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from stilts_tui import contract
from stilts_tui.contract import Event, optional
from stilts_tui.fmt import duration
from stilts_tui.train import data
from stilts_tui.train.events import RunLog


@dataclass
class Setup(contract.Setup):
    """The contract's :class:`~stilts_tui.contract.Setup` (recorded in result.json), with the autocast
    dtype it means."""

    @property
    def amp(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)


# ``compile = "auto"`` compiles on CUDA only when a run has enough optimizer steps to pay the compile
# back. Measured on one H100 (2026-11-26, bench/results/gpu_check-h100-*): a cold inductor compile of
# the loss took 20-26 s for a 2-layer RoBERTa, tens of seconds for RoBERTa-base, and a fused array's
# 2.6x that (68 s for 3 tiny members; over 138 s for 3 of RoBERTa-base); a recompile with inductor's
# cache warm took 6 s. What a compiled step saves on the GPU is not measured yet; at a generous 30 ms
# a step, 400 steps pay for a warm compile plus part of a cold one. Short grids train eagerly.
AUTO_COMPILE_MIN_STEPS = 400
AUTO_COMPILE_MIN_STEPS_FUSED = 3 * AUTO_COMPILE_MIN_STEPS


def auto_compile(cuda: bool, steps: int | None, fused: bool, graphs_fit: bool = False) -> str:
    """What ``compile = "auto"`` means for a run of ``steps`` optimizer steps (None: unknown, compile).
    ``graphs_fit``: the run's shapes never change (every batch padded to max_len, no accumulation, a
    run alone): CUDA graphs of the eager kernels, whatever the run's length, since capturing them
    generates no code (a few steps' time, against inductor's tens of seconds)."""
    if not cuda:
        return "off"
    if graphs_fit:
        return "cudagraphs"
    least = AUTO_COMPILE_MIN_STEPS_FUSED if fused else AUTO_COMPILE_MIN_STEPS
    return "inductor" if steps is None or steps >= least else "off"


def _graphs_fit(pad: str, accum: int, fused: bool, params: dict) -> bool:
    """Fixed shapes a plain CUDA graph can replay: pad max, no accumulation, a full fine-tune alone."""
    return pad == "max" and accum == 1 and not fused and not contract.is_lora(params)


def resolve_setup(settings, params: dict, accum: int, steps: int | None = None, fused: bool = False) -> Setup:
    """The run's setup from its params, the trainer's flags (anything but ``auto`` overrides the spec:
    for debugging, and so the CPU can take the GPU's branches) and the device; ``steps``, the run's
    optimizer steps, decides whether ``compile = "auto"`` compiles."""
    device = settings.device
    cuda = device.type == "cuda"
    precision = str(params["precision"])
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    compile_mode = settings.compile if settings.compile != "auto" else str(optional(params, "compile"))
    pad = settings.pad if settings.pad != "auto" else str(params["pad"])
    if pad == "auto" and cuda and precision == "fp32" and compile_mode == "auto":
        pad = "max"  # the reference's own padding (fp32 is the reference's setting): one shape, every step
    if compile_mode == "auto":
        compile_mode = auto_compile(cuda, steps, fused, graphs_fit=_graphs_fit(pad, accum, fused, params))
    if pad == "auto":
        pad = "buckets" if cuda or compile_mode != "off" else "longest"
    if pad == "longest" and compile_mode != "off":
        pad = "buckets"  # compiled code needs few shapes: never a new length every step
    group = getattr(settings, "group", "auto")
    batching = {"on": "grouped", "off": "random"}.get(group) or str(params["batching"])
    clip = str(params["clip"])
    # CUDA graphs own their outputs: gradients accumulated over micro-batches would be overwritten by the
    # next replay, so accumulation compiles without graphs
    graphs = cuda and compile_mode in ("inductor", "cudagraphs") and accum == 1
    tf32 = cuda and precision == "fp32" and torch.backends.cuda.matmul.allow_tf32
    scope = getattr(settings, "compile_scope", "regional")
    setup = Setup(precision, tf32, batching, pad, clip, compile_mode, graphs, compile_scope=scope)
    if contract.is_lora(params):
        setup.method, setup.lora, setup.transfer = "lora", dict(params["lora"]), str(params["transfer"])
    return setup


def compiled(fn, **options):
    """``torch.compile(fn, **options)``, with Python floats kept constant: with dynamic sizes, dynamo
    first traces a float it meets (a dropout probability, LayerNorm's eps) as a symbol, then specializes
    it and traces again (torch 2.13: every compile traced twice, about 4 s of a warm start)."""
    torch._dynamo.config.specialize_float = True
    return torch.compile(fn, **options)


class Parts(list):
    """One micro-batch's batches, one a member (:func:`make_batch`'s tuples, all padded to one length),
    with each member's ``lengths``: the length its batch pads to alone (what its dropout masks cover)."""

    def __init__(self, batches: list, lengths: list[int]):
        super().__init__(batches)
        self.lengths = lengths


def make_batch(split: data.Split, idx: np.ndarray, length: int, device, fill_to: int | None = None):
    """Tensors ``(ids, types, mask, labels, weights)`` for one batch padded to ``length`` (and, for
    fixed shapes, to ``fill_to`` rows of weight 0)."""
    ids = split.ids[idx, ..., :length]
    types = split.types[idx, ..., :length] if split.types is not None else None
    labels = split.labels[idx]
    weights = np.ones(len(idx), dtype=np.float32)
    if fill_to and len(idx) < fill_to:
        extra = fill_to - len(idx)
        ids = np.concatenate([ids, np.full((extra, *ids.shape[1:]), split.pad_id, dtype=ids.dtype)])
        if types is not None:
            types = np.concatenate([types, np.zeros((extra, *types.shape[1:]), dtype=types.dtype)])
        labels = np.concatenate([labels, np.zeros(extra, dtype=labels.dtype)])
        weights = np.concatenate([weights, np.zeros(extra, dtype=np.float32)])
        ids[len(idx) :, ..., 0] = split.ids[idx[0], ..., 0]  # a real first token keeps attention non-empty
    t_ids = torch.from_numpy(ids).to(device, non_blocking=True)
    mask = (t_ids != split.pad_id).long()
    mask[..., 0] = 1
    t_types = torch.from_numpy(types).to(device, non_blocking=True) if types is not None else None
    return (
        t_ids,
        t_types,
        mask,
        torch.from_numpy(labels).to(device, non_blocking=True),
        torch.from_numpy(weights).to(device, non_blocking=True),
    )


# ---- failures ---------------------------------------------------------------------------------------

_OOM_TEXT = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")


def is_oom(e: BaseException) -> bool:
    """Out of memory, however it was raised: torch's OutOfMemoryError, or a plain RuntimeError from
    cuBLAS, cuDNN, CUDA context creation, or a compiler that ran out while compiling."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(t in text for t in _OOM_TEXT)


def live_tensor_mb(device: torch.device) -> float:
    """Memory held by live tensors on ``device``: the allocator's count on CUDA, else a scan of the heap."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    storages: dict[int, int] = {}  # each storage once, however many views share it
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == device.type and not obj.is_meta:
                if type(obj).__name__ == "FakeTensor":  # the compiler's stand-ins hold no memory
                    continue
                storage = obj.untyped_storage()
                n, ptr = storage.nbytes(), storage.data_ptr()
                if type(n) is int and n and ptr:
                    storages[ptr] = n
        except Exception:  # noqa: BLE001, S112 - objects that die or lie while scanned are skipped
            continue
    return float(sum(storages.values())) / 2**20


# ---- what every engine's optimizer and data order share ------------------------------------------


def decays(name: str) -> bool:
    """Does weight decay apply to this parameter? (Not to biases and LayerNorm weights.)"""
    lname = name.lower()
    return not (name.endswith("bias") or "layernorm" in lname or "layer_norm" in lname)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---- the step logger ----------------------------------------------------------------------------------


class StepLog:
    """The logging cadence of a run or an array: running losses stay on the device (no sync a step)
    until a log line, then one line and one ``step`` event for each run."""

    def __init__(self, logs: list[RunLog], total: int, epochs: int, device):
        self.logs, self.total, self.epochs = logs, total, epochs
        self.every = max(1, min(50, total // 20))
        self.running = torch.zeros(len(logs), device=device)
        self.n = 0
        self.seen = 0
        self.t0 = self.t_mark = time.time()
        self.seen_mark = 0
        self.steps_done = 0
        self.eval_s = 0.0  # evaluations (every epoch's), inside ``seconds``
        self.first_step_s: float | None = None  # the first optimizer step: a compile, the first kernels
        self.seen_first = 0

    def first_step(self) -> None:
        """Mark the end of the first optimizer step (call once it is done)."""
        if self.first_step_s is None:
            self.first_step_s, self.seen_first = time.time() - self.t0, self.seen

    def timings(self, compiled: bool, seconds: float | None = None) -> dict:
        """Where the loop's time went: the first step, the steady steps (and their samples/s), the
        evaluations; ``compile_s`` is the first step's excess over a steady one when compiled (else 0)."""
        total = self.seconds if seconds is None else seconds  # the run's train_seconds, read once
        steps_s = max(0.0, total - self.eval_s)
        first = self.first_step_s if self.first_step_s is not None else steps_s
        steady_s = max(0.0, steps_s - first)
        rest_steps = max(0, self.steps_done - 1)
        steady = (self.seen - self.seen_first) / steady_s if steady_s > 0 and rest_steps else None
        per_step = steady_s / rest_steps if rest_steps else 0.0
        return {
            "first_step_s": round(first, 3),
            "compile_s": round(max(0.0, first - per_step), 3) if compiled else 0.0,
            "steps_s": round(steps_s, 3),
            "steady_samples_per_s": round(steady, 2) if steady is not None else None,
            "eval_s": round(self.eval_s, 3),
        }

    def add(self, each: torch.Tensor, rows: int) -> None:
        self.running += each
        self.n += 1
        self.seen += rows

    def keep(self, rows: list[int]) -> None:
        self.logs = [self.logs[i] for i in rows]
        self.running = self.running[rows]

    def step(self, step: int, epoch: int, lrs: list[float]) -> list[float] | None:
        """At a log step: a line and an event for each run; each run's mean loss since the last (else None)."""
        self.steps_done = step
        if step == 1:
            self.first_step()
        if step % self.every and step != self.total:
            return None
        now = time.time()
        rate = (self.seen - self.seen_mark) / max(now - self.t_mark, 1e-9)
        eta = (self.total - step) * (now - self.t0) / step
        means = (self.running / max(1, self.n)).tolist()
        self.running.zero_()
        self.n = 0
        fused = {"fused": len(self.logs)} if len(self.logs) > 1 else {}
        for log, mean, lr in zip(self.logs, means, lrs, strict=True):
            log.line(
                f"epoch {epoch}/{self.epochs} step {step}/{self.total} loss {mean:.4f} lr {lr:.3g} "
                f"{rate:.1f} samples/s ETA {duration(eta)}"
            )
            log.event(
                Event.STEP,
                step=step,
                total_steps=self.total,
                epoch=epoch,
                loss=mean,
                lr=lr,
                samples_per_s=rate,
                eta_s=eta,
                **fused,
            )
        self.t_mark, self.seen_mark = now, self.seen
        return means

    @property
    def seconds(self) -> float:
        return time.time() - self.t0
