"""What a plan costs before it is queued: runs, training steps and device-hours per stage and in total.

A run's time is the one model of :mod:`.figures`: its phases (process start, loading, steps at the
samples/s this device measured, evaluation) from the finished runs of the runs-dir that trained on the
device the plan will train on (this box's GPU, else its CPU), matched by shape, else model, else any run
of the device, scaled. Hours are the device's: GPU-hours on a GPU, CPU-hours on the CPU (never a GPU's
rate for a CPU run). Where nothing was measured on the device the estimate says so and gives no number.
Train sizes come from the local files (rows counted), else KNOWN_TRAIN_SIZES for hub tasks, else a
synth stage's ``n``. Synthesis is not timed (no figure of its own yet). No torch; reads files and the ledger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.contract import RANK_STAGE
from stilts_tui.estimate import figures
from stilts_tui.estimate.figures import EVAL_SPEEDUP, KNOWN_TRAIN_SIZES, Rates, count_rows  # noqa: F401 - kept here too


@dataclass
class StageCost:
    stage: str
    runs: int = 0
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0  # of the runs timed
    measured: int = 0  # runs timed from this device's finished runs
    unmeasured: int = 0  # runs with no figure (nothing measured on the device; synthesis): no time
    unknown: int = 0  # runs whose train size is unknown (not counted in steps or time)

    @property
    def hours(self) -> float | None:
        """Device-hours of the timed runs; None when none of its runs could be timed."""
        return self.seconds / 3600 if self.measured else None

    gpu_hours = hours  # the name older callers read


@dataclass
class Cost:
    stages: dict[str, StageCost]
    notes: list[str] = field(default_factory=list)
    device: str | None = None  # the device key timed for (figures.history)

    @property
    def unit(self) -> str:
        """What the hours are hours of: GPU-hours on a GPU, CPU-hours on the CPU."""
        return "CPU-hours" if self.device == "cpu" else "GPU-hours"

    @property
    def total(self) -> StageCost:
        t = StageCost("total")
        for s in self.stages.values():
            for k in ("runs", "steps", "samples", "seconds", "measured", "unmeasured", "unknown"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
        return t

    def as_dict(self) -> dict:
        """`plan show --cost --json`'s ``cost`` (finite numbers only: strict JSON)."""
        rows = [*self.stages.values(), self.total]
        gpu = self.device != "cpu"

        def hours(s: StageCost) -> float | None:
            return None if s.hours is None else round(min(s.hours, MAX_HOURS), 4)

        return {
            "device": self.device,
            "unit": self.unit,
            "stages": {
                s.stage: {
                    "runs": s.runs,
                    "steps": s.steps,
                    "samples": s.samples,
                    "hours": hours(s),
                    "gpu_hours": hours(s) if gpu else None,
                    "measured": s.measured,
                    "unmeasured": s.unmeasured,
                    "unknown_size": s.unknown,
                }
                for s in rows
            },
            "notes": self.notes,
        }


MAX_HOURS = 1e12 / 3600  # walltime.MAX_SECONDS in hours


def measured(root: Path | None, device: str | None = None) -> Rates:
    """This device's figures from the finished runs in the ledger (figures.history; ``device`` None: every
    device's runs, for a history made on this device alone)."""
    return figures.history(root, device)


def train_size(run: plans.Run, synth_n: dict[str, int]) -> int | None:
    """Train examples a run sees an epoch (figures.spec_train_size of the run's spec)."""
    return figures.spec_train_size({"params": run.params, "task": {"name": run.task, **run.task_spec}}, synth_n)


def estimate(plan: plans.Plan, runs: list[plans.Run], rates: Rates | None = None) -> Cost:
    """Runs, steps and device-hours per stage of an expanded plan; ``rates`` from :func:`measured`."""
    rates = rates or Rates(device="cpu")
    cost = Cost({s: StageCost(s) for s in plans.STAGES if s != RANK_STAGE or any(r.stage == s for r in runs)})
    cost.device = rates.device
    synth_n = {r.id: r.params["n"] for r in runs if r.stage == "synth"}
    levels: dict[str, int] = {}
    for r in runs:
        sc = cost.stages[r.stage]
        sc.runs += 1
        if r.stage == "synth":
            sc.unmeasured += 1
            continue
        n = train_size(r, synth_n)
        if not n:
            sc.unknown += 1
            continue
        if r.stage == RANK_STAGE:
            _rank_cost(sc, r, n, sum(s["run_id"] is not None for s in r.starts) + 1, plan, rates)
            continue
        p = r.params
        epochs, bs, accum = int(p["epochs"]), int(p["batch_size"]), int(p["grad_accum"])
        sc.steps += epochs * max(1, math.ceil(n / bs) // accum)  # as the trainer: leftovers carry over
        sc.samples += n * epochs
        ph = figures.phases(plan, r, rates, synth_n)
        if ph is None:
            sc.unmeasured += 1
            continue
        sc.seconds += ph.total
        sc.measured += 1
        levels[ph.match] = levels.get(ph.match, 0) + 1
    total = cost.total
    if total.measured:
        cost.notes.append(
            f"{total.measured} runs {figures.level_line(levels, rates.device)} ({rates.used} runs measured there)"
        )
    elif total.unmeasured:
        cost.notes.append(figures.nothing_measured(rates.device))
    cost.notes += figures.notes(rates)
    if cost.stages["synth"].runs:
        cost.notes.append("synthesis: not timed (no figure of its own yet): not counted in the hours")
    if total.unknown:
        cost.notes.append(f"{total.unknown} runs have no known train size (hub data not on disk): not counted")
    return cost


def _rank_cost(sc: StageCost, r: plans.Run, n: int, starts: int, plan: plans.Plan, rates: Rates) -> None:
    """A rank run: one forward pass over its first N train examples a starting point (forward alone is about
    a third of a training step's work), at this device's rate for its shape."""
    examples = min(n, int(r.params["examples"])) * starts
    sc.samples += examples
    got = figures.match(figures.run_spec(plan, r), rates)
    if got is None:
        sc.unmeasured += 1
        return
    fig, level = got
    sc.seconds += (
        examples / (EVAL_SPEEDUP * fig["samples_per_s"]) + (fig.get("process_s") or 0) + (fig.get("load_s") or 0)
    )
    sc.measured += 1


def summary(cost: Cost) -> str:
    """One line: the total, for the plan builder."""
    t = cost.total
    if t.hours is None:
        return f"{t.steps:,} steps; time: nothing measured on {figures.label(cost.device)} yet"
    part = "" if not t.unmeasured else f" for {t.measured} of {t.measured + t.unmeasured} runs"
    return f"{t.steps:,} steps, ~{t.hours:.1f} {cost.unit}{part} (measured on {figures.label(cost.device)})"
