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
from dataclasses import dataclass, field

from stilts_tui import bounds
from stilts_tui import plan as plans
from stilts_tui.contract import TRAINED_STAGES, shape_key
from stilts_tui.estimate import figures
from stilts_tui.estimate import history as finished
from stilts_tui.estimate.figures import DEFAULT_PACKING, Phases, Rates, factor, history, phases  # noqa: F401

MODES = ("reference", "queue", "mps", "fused")
# a fused array of F trains its members' steps this many times faster than in sequence: unmeasured on a GPU
# (one model at batch 128 gave 5.4x one at batch 16: an upper bound), 1.0 on the CPU (no figure yet)
DEFAULT_FUSED = {"gpu": 0.5, "cpu": 0.0}  # speedup = 1 + this x (F - 1)
# the most processes a device, runs a process or runs an array a prediction counts (a bigger setting, e.g.
# --cpu-slots 10^400, is counted as this and said so: no float overflows)
MAX_COUNT = 4096
MAX_SECONDS = 1e12  # a prediction above this is said to be over it (about 31,700 years)


@dataclass
class Box:
    """Where the plan would run: ``devices`` GPUs (``gpu``), else the CPU as one device; ``device`` the
    key of the device the figures must come from (figures.history)."""

    gpu: bool = False
    devices: int = 1
    slots: int = 1
    worker_runs: int = 4
    fuse: int = 4
    device: str | None = None
    clamped: list[str] = field(default_factory=list)  # settings counted at MAX_COUNT, one line each

    def __post_init__(self) -> None:
        for name in ("devices", "slots", "worker_runs", "fuse"):
            v = getattr(self, name)
            if v > MAX_COUNT:
                self.clamped.append(f"{name.replace('_', ' ')} {_big(v)} counted as {MAX_COUNT}")
                setattr(self, name, MAX_COUNT)
            elif v < 1:
                setattr(self, name, 1)


def _big(v: int) -> str:
    digits = len(str(v)) if v < 10**4300 else 4300
    return f"{v}" if digits <= 12 else f"of {digits} digits"


def box_for(gpus: list, settings: dict, per_gpu: int | None = None, cpu_slots: int | None = None,
            worker_runs: int | None = None, fuse: int = 4) -> Box:  # fmt: skip
    """This box for a prediction: its usable GPUs, ``per_gpu`` processes each; without one the CPU with
    ``cpu_slots``; fake GPUs (``STILTS_FAKE_GPUS``) train on the CPU, ``per_gpu`` processes each, all on
    the CPU. A setting not given is the daemon's (``settings``: daemon.json's), else the default."""

    real = [g for g in gpus if not getattr(g, "fake", False) and getattr(g, "error", None) is None]
    fakes = [g for g in gpus if getattr(g, "fake", False)]

    def setting(given: int | None, name: str, default: int) -> int:
        value = settings.get(name)
        # a hand-edited daemon.json is held to the table of bounds (10^400 processes would overflow)
        ok = isinstance(value, int) and bounds.BOUNDS[name].ok(value)  # any size of int: no float made
        return given or (value if ok else default)

    per = setting(per_gpu, "per_gpu", 4)
    return Box(
        gpu=bool(real),
        devices=max(1, len(real)),
        slots=per if real else min(per, MAX_COUNT) * len(fakes) if fakes else setting(cpu_slots, "cpu_slots", 1),
        worker_runs=setting(worker_runs, "worker_runs", 4),
        fuse=fuse,
        device=finished.box_device(gpus),
    )


def packing(rates: Rates, box: Box, mps: bool) -> tuple[float, str]:
    """K processes' work on one device over one alone, and where the figure came from."""
    k = box.slots
    if k <= 1:
        return 1.0, "one process a device"
    if not mps and rates.packing and max(rates.packing) >= 2:
        return factor({1: 1.0, **rates.packing}, k), "measured by this box's runs side by side"
    table = DEFAULT_PACKING["mps" if mps else "gpu" if box.gpu else "cpu"]
    return factor(table, k), "default"


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
    levels: dict[str, int] = field(default_factory=dict)  # runs timed at each match level (figures.match)


def stages_wall(stages: dict[str, list[tuple[float, float]]], box: Box, pack: float) -> float:
    """The queue's wall time for processes by stage (each ``(fixed, device)`` seconds): stages follow each
    other (a target waits for its intermediate), each :func:`_stage_wall`. The one packing model of both
    `plan show --cost` and the app's ETA (:mod:`.eta`)."""
    return sum(_stage_wall(procs, box, pack) for procs in stages.values())


def clamp(seconds: float | None, notes: list[str]) -> float | None:
    """A prediction as a finite number of at most MAX_SECONDS (said in ``notes`` when it was more)."""
    if seconds is None:
        return None
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        line = f"a prediction over {MAX_SECONDS:.0e} s is shown as that (the history's figures are extreme)"
        if line not in notes:
            notes.append(line)
        return MAX_SECONDS
    return max(0.0, seconds)


def predict(plan: plans.Plan, runs: list[plans.Run], rates: Rates, box: Box) -> Prediction:
    """The plan's wall time in each mode on ``box`` (None where the mode is not available, or where nothing
    was measured on the box's device: no number then)."""
    synth_n = {r.id: r.params["n"] for r in runs if r.stage == "synth"}
    by_stage: dict[str, dict[str, list[Phases]]] = {}
    known = measured = unsized = 0
    levels: dict[str, int] = {}
    for r in runs:
        if r.stage not in TRAINED_STAGES:
            continue
        spec = figures.run_spec(plan, r)
        if not figures.spec_train_size(spec, synth_n):
            unsized += 1
            continue
        known += 1
        ph = phases(plan, r, rates, synth_n)
        if ph is None:
            continue
        measured += 1
        levels[ph.match] = levels.get(ph.match, 0) + 1
        by_stage.setdefault(r.stage, {}).setdefault(shape_key(spec), []).append(ph)
    notes = list(box.clamped)
    if not measured:  # no number: nothing measured on the device (or no run of a known size)
        notes.append(figures.nothing_measured(rates.device) if known else "no run of a known train size")
        notes += figures.notes(rates)
        return Prediction({m: None for m in MODES}, notes, known, 0, levels)
    pack, pack_why = packing(rates, box, mps=False)
    mps_pack, _ = packing(rates, box, mps=True)
    speed, fused_why = fused_speedup(rates, box)
    seconds: dict[str, float | None] = {m: 0.0 for m in MODES}
    seconds["reference"] = sum(x.total for shapes in by_stage.values() for g in shapes.values() for x in g)
    queued = {
        st: [p for g in shapes.values() for p in _processes(g, box.worker_runs)] for st, shapes in by_stage.items()
    }
    seconds["queue"] = stages_wall(queued, box, pack)
    seconds["mps"] = stages_wall(queued, box, mps_pack) if box.gpu else None
    arrays = {st: [p for g in shapes.values() for p in _arrays(g, box.fuse, speed)] for st, shapes in by_stage.items()}
    seconds["fused"] = stages_wall(arrays, box, pack)
    seconds = {m: clamp(v, notes) for m, v in seconds.items()}
    notes += [
        f"{measured} of {known} runs {figures.level_line(levels, rates.device)} ({rates.used} runs measured there)",
        f"packing of {box.slots} processes a device: {pack:.2f}x one ({pack_why})",
        f"fused arrays of {box.fuse}: steps {speed:.2f}x faster than in sequence ({fused_why})",
        *figures.notes(rates),
    ]
    if unsized:
        notes.append("runs without a known train size are not counted")
    return Prediction(seconds, notes, known, measured, levels)


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
