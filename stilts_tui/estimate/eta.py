"""The queue's time left (the app's ETA), from the same model as `plan show --cost`.

Each run still to train is timed by :func:`figures.spec_phases` (this device's finished runs, matched by
shape, model or device), and the queue's packing is :func:`walltime.stages_wall`'s: runs of one shape
trained ``worker_runs`` a process (its start paid once) or as fused arrays when the daemon fuses, the
processes of a stage overlapping on the box's slots (``--per-gpu`` a GPU, ``--cpu-slots`` on the CPU),
stages one after the other. A running run counts what is left of it: the steps and evaluations not done
yet (its progress), or its loading not finished yet; a run waiting in a worker adds its loading and
training to that worker's process. Paused: the queue launches nothing, so no time of day is promised;
the work left is still said (:attr:`Eta.paused`). Nothing measured on the device: no number, said so.
No torch; the caller reads the ledger, the run folders and the daemon's settings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from stilts_tui.contract import TRAINED_STAGES, Status, shape_key
from stilts_tui.estimate import figures, walltime
from stilts_tui.estimate.figures import Phases, Rates


@dataclass
class Eta:
    """The queue's time left: ``seconds`` (None: no number; ``why`` says why), and whether it is paused."""

    seconds: float | None
    why: str = ""
    paused: bool = False
    runs: int = 0  # runs still to train that it counts


def fuse_size(setting: object) -> int:
    """The daemon's ``--fuse`` as an array size (1: off; auto counts as arrays of 4)."""
    if isinstance(setting, int) and not isinstance(setting, bool):
        return max(1, min(setting, walltime.MAX_COUNT))
    if isinstance(setting, str) and setting.isascii() and setting.isdigit():
        return max(1, min(int(setting), walltime.MAX_COUNT)) if len(setting) < 6 else walltime.MAX_COUNT
    return 4 if setting == "auto" else 1


def remaining(
    runs: list[dict],
    specs: dict[str, dict],
    progress: dict[str, object],
    waiting: set[str],
    rates: Rates,
    box: walltime.Box,
    fuse: int = 1,
    paused: bool = False,
    now: float | None = None,
) -> Eta:
    """The time left to train every queued and running run of ``runs`` (ledger rows). ``specs``: each
    run's spec.json (by id); ``progress``: each training run's progress (``step``, ``total``);
    ``waiting``: ids of runs held by a worker that has not begun them; ``fuse``: the daemon's array size
    (1: off)."""
    now = time.time() if now is None else now
    live = [r for r in runs if r.get("status") in (Status.QUEUED, Status.RUNNING)]
    todo = [r for r in live if r.get("stage") in TRAINED_STAGES]  # synthesis and rank runs: no figure of their own
    if not todo:
        return Eta(None, f"{len(live)} runs of no timed stage (synthesis, rank) not counted" if live else "", paused)
    stages: dict[str, list[tuple[float, float]]] = {}
    queued: dict[str, dict[str, list[Phases]]] = {}
    workers: dict[object, list[float]] = {}  # a running process: [fixed, device] seconds left
    unknown = counted = 0
    for r in todo:
        spec = specs.get(r.get("id"))
        n = figures.spec_train_size(spec) if isinstance(spec, dict) else None
        if not n:
            unknown += 1
            continue
        ph = figures.spec_phases(spec, n, rates)
        if ph is None:
            return Eta(None, figures.nothing_measured(rates.device), paused, len(todo))
        counted += 1
        if r.get("status") == Status.QUEUED:
            queued.setdefault(str(r.get("stage")), {}).setdefault(shape_key(spec), []).append(ph)
            continue
        left = workers.setdefault((r.get("stage"), r.get("worker") or r.get("id")), [0.0, 0.0])
        fixed, device = _left(r, ph, progress.get(r["id"]), r["id"] in waiting, now)
        left[0] += fixed
        left[1] += device
    for (stage, _), (fixed, device) in workers.items():
        stages.setdefault(str(stage), []).append((fixed, device))
    speed, _ = walltime.fused_speedup(rates, walltime.Box(box.gpu, box.devices, box.slots, box.worker_runs, fuse))
    for stage, shapes in queued.items():
        for group in shapes.values():
            procs = walltime._arrays(group, fuse, speed) if fuse > 1 else walltime._processes(group, box.worker_runs)
            stages.setdefault(stage, []).extend(procs)
    pack, _ = walltime.packing(rates, box, mps=False)
    seconds = walltime.clamp(walltime.stages_wall(stages, box, pack), [])
    why = "; ".join(
        x
        for x in (
            f"{unknown} runs of unknown train size not counted" if unknown else "",
            f"{len(live) - len(todo)} synthesis or rank runs not counted" if len(live) > len(todo) else "",
        )
        if x
    )
    return Eta(seconds, why, paused, counted)


def _left(row: dict, ph: Phases, prog: object, waiting: bool, now: float) -> tuple[float, float]:
    """What is left of a running run: (fixed, device) seconds. Training: the steps and evaluations its
    progress has not reached; waiting in a worker: its loading and all its training; else loading, less
    the time since it started."""
    train = ph.steps_s + ph.eval_s
    step, total = getattr(prog, "step", 0), getattr(prog, "total", 0)
    if not waiting and isinstance(total, int) and total > 0 and isinstance(step, int):
        return 0.0, train * max(0.0, 1.0 - step / total)
    if waiting:
        return ph.load_s, train
    started = figures.finite(row.get("started"))
    elapsed = max(0.0, now - started) if started is not None and math.isfinite(now) else 0.0
    return max(0.0, ph.process_s + ph.load_s - elapsed), train
