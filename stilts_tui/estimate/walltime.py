"""A plan's wall time on this box, per mode, from where each run's time goes.

Every finished run records its time by phase (result.json and the ledger's ``timings``: the process's
start and imports, data and model loading, compile, steps at a steady samples/s, evaluation). From the
box's own history of runs of the same shape (:func:`history`, over the finished runs that
:mod:`stilts_tui.estimate.history` reads for the cost estimate too), else from stated defaults, a run's
time is split into the same phases (:class:`Phases`) and the modes add them up as they pay them:

- ``reference``: the reference's loop, one process a run, one run at a time: every run pays the
  process's start, its loading, its steps and its evaluation, in sequence.
- ``queue``: the daemon packs ``slots`` processes a device (``--per-gpu``, or ``--cpu-slots`` without a
  GPU) and a process trains up to ``worker_runs`` runs of one shape, paying its start once. The
  processes that run at once overlap their fixed parts (start, imports, loading: CPU work, each on its
  own share of the cores), and K processes on one device do ``packing(K)`` times the steps and
  evaluations of one (measured from the box's history: the steady samples/s of runs that ran beside
  K-1 others against those that ran alone; else a stated default).
- ``mps``: the same under NVIDIA MPS (its own packing; no such mode without a GPU).
- ``fused``: runs of one shape in arrays of ``fuse``: one process an array, each member's loading and
  evaluation as alone, the array's steps ``fused_speedup(F)`` times faster than its members' in sequence.
Stages follow each other (a target waits for its intermediate), so each stage's time is its work over the
devices it can fill, and never shorter than its longest process. No torch; reads files and the ledger.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.contract import TRAINED_STAGES, shape_key
from stilts_tui.estimate import history as finished
from stilts_tui.estimate.history import Finished, finite

MODES = ("reference", "queue", "mps", "fused")
# stated defaults, each replaced by the box's own figure when its history has one
DEFAULT_PROCESS_S = 10.0  # a trainer's start and imports (torch + transformers): 2.4-10 s measured
DEFAULT_LOAD_S = 15.0  # data and model loading a run
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass: about 3x a training step's samples/s
# aggregate work of K processes on one device over one alone. GPU: 8 fp32 processes gave 360 samples/s
# against 186-214 alone on an H100 (1.8x), under MPS 444 (2.2x) (the design notes' speed table). CPU: the
# cores are shared (1.0: packing saves the start-up only, which the phases count apart).
DEFAULT_PACKING = {
    "gpu": {1: 1.0, 2: 1.3, 4: 1.6, 8: 1.8},
    "mps": {1: 1.0, 2: 1.5, 4: 2.0, 8: 2.2},
    "cpu": {1: 1.0},
}
# a fused array of F trains its members' steps this many times faster than in sequence: unmeasured on a GPU
# (one model at batch 128 gave 5.4x one at batch 16: an upper bound), 1.0 on the CPU (no figure yet)
DEFAULT_FUSED = {"gpu": 0.5, "cpu": 0.0}  # speedup = 1 + this x (F - 1)


@dataclass
class Phases:
    """One run's predicted seconds by phase."""

    process_s: float
    load_s: float
    steps_s: float
    eval_s: float
    measured: bool


@dataclass
class Box:
    """Where the plan would run: ``devices`` GPUs (``gpu``), else the CPU as one device."""

    gpu: bool = False
    devices: int = 1
    slots: int = 1
    worker_runs: int = 4
    fuse: int = 4


@dataclass
class Rates:
    """The box's figures by shape (``shapes``), and its packing and fused speed-ups where measured."""

    shapes: dict[str, dict] = field(default_factory=dict)
    packing: dict[int, float] = field(default_factory=dict)
    fused: dict[int, float] = field(default_factory=dict)
    runs: int = 0


def _num(v: object) -> float | None:
    """A finite number at least 0 (a time, a rate), or None."""
    n = finite(v)
    return n if n is not None and n >= 0 else None


def _rows(task: dict, split: str) -> int | None:
    from stilts_tui.estimate.cost import count_rows

    return count_rows(task, split)


def history(root: Path | None) -> Rates:
    """The box's figures from the finished runs in ``root``'s ledger (nothing without one): per shape, the
    median process start, loading, steady samples/s alone and seconds of evaluation a dev example; the
    packing of K processes on a device; the fused speed-up of arrays of F."""
    past = finished.read(root)
    seen: dict[str, dict[str, list]] = {}
    by_device: dict[object, list[dict]] = {}  # each run is compared with its own device's runs only
    for r in past.done:
        by_device.setdefault(r.get("gpu"), []).append(r)
    for run in past.runs:
        if isinstance(run.result.get("timings"), dict):
            _observe(seen.setdefault(run.shape, {}), run, by_device[run.row.get("gpu")])
    return _summarise(seen, past.trained)


def _observe(acc: dict[str, list], run: Finished, runs: list[dict]) -> None:
    """Add one finished run's figures to its shape's lists (``runs``: its device's done runs)."""
    t, spec = run.result["timings"], run.spec
    rate = _num(t.get("steady_samples_per_s"))
    if _num(t.get("process_s")):
        acc.setdefault("process", []).append(t["process_s"])
    load = [_num(t.get(k)) for k in ("data_s", "model_s")]
    if None not in load:
        acc.setdefault("load", []).append(sum(load))
    dev_n, epochs = _rows(spec.get("task") or {}, "dev"), (spec.get("params") or {}).get("epochs")
    if _num(t.get("eval_s")) and dev_n and isinstance(epochs, int) and epochs > 0:
        acc.setdefault("eval_per_example", []).append(t["eval_s"] / (dev_n * epochs))
    if rate:
        beside = _beside(run.row, runs) if run.fused == 1 else 1
        acc.setdefault(f"rate@{run.fused}f{beside}", []).append(rate)


def _beside(r: dict, runs: list[dict]) -> int:
    """How many processes trained on ``r``'s device while it trained (``r``'s own included): those whose
    interval covers the middle of ``r``'s."""
    start, end = _num(r.get("started")), _num(r.get("finished"))
    if start is None or end is None:
        return 1
    mid = (start + end) / 2
    workers = {
        x.get("worker")
        for x in runs
        if x.get("gpu") == r.get("gpu")
        and (_num(x.get("started")) or math.inf) <= mid <= (_num(x.get("finished")) or 0)
    }
    return max(1, len(workers | {r.get("worker")}))


def _summarise(seen: dict[str, dict[str, list]], n: int) -> Rates:
    out = Rates(runs=n)
    packing: dict[int, list[float]] = {}
    fused: dict[int, list[float]] = {}
    for key, acc in seen.items():
        alone = statistics.median(acc["rate@1f1"]) if acc.get("rate@1f1") else None
        out.shapes[key] = {
            "process_s": statistics.median(acc["process"]) if acc.get("process") else None,
            "load_s": statistics.median(acc["load"]) if acc.get("load") else None,
            "eval_per_example": statistics.median(acc["eval_per_example"]) if acc.get("eval_per_example") else None,
            "samples_per_s": alone,
        }
        for name, rates in acc.items():
            if not name.startswith("rate@") or alone is None or name == "rate@1f1":
                continue
            f, k = (int(x) for x in name[5:].split("f"))
            if f > 1:
                fused.setdefault(f, []).append(f * statistics.median(rates) / alone)
            else:
                packing.setdefault(k, []).append(k * statistics.median(rates) / alone)
    out.packing = {k: statistics.median(v) for k, v in packing.items()}
    out.fused = {f: statistics.median(v) for f, v in fused.items()}
    return out


def phases(plan: plans.Plan, run: plans.Run, rates: Rates, synth_n: dict[str, int]) -> Phases | None:
    """A run's predicted phases: its shape's measured figures where the box has them, else the defaults
    (:func:`stilts_tui.estimate.cost.default_rate` for the steps). None when its train size is unknown."""
    from stilts_tui.estimate import cost

    n = cost.train_size(run, synth_n)
    if not n:
        return None
    p = run.params
    spec = {"stage": run.stage, "model": {"name": plan.model, **run.model}, "params": p, "task": run.task_spec}
    got = rates.shapes.get(shape_key(spec), {})
    rate = got.get("samples_per_s") or cost.default_rate(spec)[0]
    samples = n * int(p["epochs"])
    dev_n = _rows(run.task_spec, "dev") or min(n, 1000)
    per_example = got.get("eval_per_example") or 1 / (EVAL_SPEEDUP * cost.default_rate(spec)[0])
    return Phases(
        process_s=got.get("process_s") or DEFAULT_PROCESS_S,
        load_s=got["load_s"] if got.get("load_s") is not None else DEFAULT_LOAD_S,
        steps_s=samples / rate,
        eval_s=dev_n * int(p["epochs"]) * per_example,
        measured=bool(got.get("samples_per_s")),
    )


def _factor(table: dict[int, float], k: int) -> float:
    """The figure for ``k`` in a table by count: the entry at the largest count not above ``k``."""
    below = [c for c in table if c <= k]
    return table[max(below)] if below else 1.0


def packing(rates: Rates, box: Box, mps: bool) -> tuple[float, str]:
    """K processes' work on one device over one alone, and where the figure came from."""
    k = box.slots
    if k <= 1:
        return 1.0, "one process a device"
    if not mps and rates.packing and max(rates.packing) >= 2:
        return _factor({1: 1.0, **rates.packing}, k), "measured by this box's runs side by side"
    table = DEFAULT_PACKING["mps" if mps else "gpu" if box.gpu else "cpu"]
    return _factor(table, k), "default"


def fused_speedup(rates: Rates, box: Box) -> tuple[float, str]:
    f = box.fuse
    if f in rates.fused:
        return rates.fused[f], "measured by this box's fused arrays"
    return 1.0 + DEFAULT_FUSED["gpu" if box.gpu else "cpu"] * (f - 1), "default"


def _stage_wall(procs: list[tuple[float, float]], box: Box, pack: float) -> float:
    """Processes of one stage on the box, each ``(fixed, device)`` seconds: the fixed part (start, imports,
    loading: the CPU's work, each process on its own share of the cores) overlaps across the processes
    that run at once; the device part (steps and evaluation) goes at ``pack`` times one process's speed
    a device. Never less than the longest process."""
    if not procs:
        return 0.0
    at_once = min(len(procs), box.devices * box.slots)
    devices = min(box.devices, at_once)
    per_device = math.ceil(at_once / devices)
    speed = devices * (pack if per_device >= box.slots else _pack_fewer(pack, per_device, box.slots))
    fixed, device = sum(f for f, _ in procs), sum(d for _, d in procs)
    return max(fixed / at_once + device / speed, max(f + d for f, d in procs))


def _pack_fewer(pack: float, k: int, slots: int) -> float:
    """Fewer processes than slots on a device: the packing between one and ``slots``, linearly."""
    return 1.0 + (pack - 1.0) * (k - 1) / max(1, slots - 1)


def _processes(group: list[Phases], per: int) -> list[tuple[float, float]]:
    """Runs of one shape trained ``per`` a process (start paid once a process): each process's fixed
    and device seconds."""
    out = []
    for i in range(0, len(group), per):
        chunk = group[i : i + per]
        out.append((chunk[0].process_s + sum(x.load_s for x in chunk), sum(x.eval_s + x.steps_s for x in chunk)))
    return out


@dataclass
class Prediction:
    seconds: dict[str, float | None]
    notes: list[str]
    runs: int
    measured: int


def predict(plan: plans.Plan, runs: list[plans.Run], rates: Rates, box: Box) -> Prediction:
    """The plan's wall time in each mode on ``box`` (None where the mode is not available)."""
    synth_n = {r.id: r.params["n"] for r in runs if r.stage == "synth"}
    by_stage: dict[str, dict[str, list[Phases]]] = {}
    known = 0
    measured = 0
    for r in runs:
        if r.stage not in TRAINED_STAGES:
            continue
        ph = phases(plan, r, rates, synth_n)
        if ph is None:
            continue
        known += 1
        measured += ph.measured
        spec = {"model": {"name": plan.model, **r.model}, "params": r.params, "task": r.task_spec}
        by_stage.setdefault(r.stage, {}).setdefault(shape_key(spec), []).append(ph)
    pack, pack_why = packing(rates, box, mps=False)
    mps_pack, _ = packing(rates, box, mps=True)
    speed, fused_why = fused_speedup(rates, box)
    seconds: dict[str, float | None] = {m: 0.0 for m in MODES}
    for shapes in by_stage.values():
        alone = [x for g in shapes.values() for x in g]
        seconds["reference"] += sum(x.process_s + x.load_s + x.steps_s + x.eval_s for x in alone)
        queued = [p for g in shapes.values() for p in _processes(g, box.worker_runs)]
        seconds["queue"] += _stage_wall(queued, box, pack)
        seconds["mps"] += _stage_wall(queued, box, mps_pack)
        arrays = [p for g in shapes.values() for p in _arrays(g, box.fuse, speed)]
        seconds["fused"] += _stage_wall(arrays, box, pack)
    if not box.gpu:
        seconds["mps"] = None
    notes = [
        f"{measured} of {known} runs timed from this box's finished runs of their shape ({rates.runs} in its history)",
        f"packing of {box.slots} processes a device: {pack:.2f}x one ({pack_why})",
        f"fused arrays of {box.fuse}: steps {speed:.2f}x faster than in sequence ({fused_why})",
    ]
    if known < sum(r.stage in TRAINED_STAGES for r in runs):
        notes.append("runs without a known train size are not counted")
    return Prediction(seconds, notes, known, measured)


def _arrays(group: list[Phases], size: int, speed: float) -> list[tuple[float, float]]:
    """Runs of one shape as fused arrays of ``size``: each array's fixed and device seconds (one process,
    its members' loading and evaluation, their steps ``speed`` times faster together)."""
    out = []
    for i in range(0, len(group), size):
        chunk = group[i : i + size]
        scale = 1.0 / (1.0 + (speed - 1.0) * (len(chunk) - 1) / max(1, size - 1))  # a short last array
        out.append(
            (chunk[0].process_s + sum(x.load_s for x in chunk), sum(x.eval_s + x.steps_s * scale for x in chunk))
        )
    return out
