"""What a plan costs before it is queued: runs, training steps and GPU-hours per stage and in total.

A run's time is its training samples (train examples x epochs) over a throughput, plus a start-up
overhead (model load, data, evaluation outside the training loop):
- measured: the median ``samples_per_s`` and median ``wall_seconds - train_seconds`` of the finished
  runs in the ledger of the same shape (model, max_len, batch size, precision, task kind and choices;
  read by :mod:`.history`, as the wall-time prediction reads them);
  a run trained in a fused array of K shares its GPU with K-1 others, so it counts 1/K of its time;
- else a stated default per model size (DEFAULT_THROUGHPUT: one GPU, fp32, at max_len 128, scaled by
  128/max_len and divided by the number of choices of a multiple-choice task), plus DEFAULT_OVERHEAD_S.
Train sizes come from the local files (rows counted), else KNOWN_TRAIN_SIZES for hub tasks, else a
synth stage's ``n``. Synthesis: a measured synth run with the same generator, else SYNTH_SECONDS_PER_TEXT.
No torch; reads only files and the ledger.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.contract import RANK_STAGE, optional, shape_key
from stilts_tui.estimate import history
from stilts_tui.estimate.history import finite
from stilts_tui.estimate.modelsize import model_params

# (parameters up to, samples/s) on one GPU in fp32 at max_len 128: RoBERTa-large measured 186-214 on an
# H100 (the project's design notes; docs/results.md), base-size models ~3x that, MiniLM-size ~8x. Stated
# guesses, replaced by measurements.
DEFAULT_THROUGHPUT = ((30e6, 1600.0), (150e6, 600.0), (math.inf, 200.0))
DEFAULT_OVERHEAD_S = 30.0
SYNTH_SECONDS_PER_TEXT = 0.02  # GPT-2 medium sampling in batches of 64, one text = a context's ending
# train examples of the built-in tasks' official train splits (for hub data that is not on disk)
KNOWN_TRAIN_SIZES = {
    "rte": 2490,
    "mrpc": 3668,
    "cola": 8551,
    "sst2": 67349,
    "stsb": 5749,
    "qnli": 104743,
    "mnli": 392702,
    "wic": 5428,
    "mednli": 11232,
    "hellaswag": 39905,
    "hellaswag-p": 39905,
    "siqa": 33410,
    "winogrande-xs": 160,
    "winogrande-s": 640,
    "winogrande-m": 2558,
    "winogrande-l": 10234,
    "winogrande-xl": 40398,
    "cosmosqa": 25262,
    "boolq": 9427,
    "copa": 400,
    "commonsenseqa": 9741,
}


@dataclass
class StageCost:
    stage: str
    runs: int = 0
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    measured: int = 0  # runs timed from measured throughput
    default: int = 0  # runs timed from the default per model size
    unknown: int = 0  # runs whose train size is unknown (not counted in steps or time)

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600


@dataclass
class Cost:
    stages: dict[str, StageCost]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> StageCost:
        t = StageCost("total")
        for s in self.stages.values():
            for k in ("runs", "steps", "samples", "seconds", "measured", "default", "unknown"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
        return t

    def as_dict(self) -> dict:
        rows = [*self.stages.values(), self.total]
        return {
            "stages": {
                s.stage: {
                    "runs": s.runs,
                    "steps": s.steps,
                    "samples": s.samples,
                    "gpu_hours": round(s.gpu_hours, 4),
                    "measured": s.measured,
                    "default": s.default,
                    "unknown_size": s.unknown,
                }
                for s in rows
            },
            "notes": self.notes,
        }


@dataclass
class Rate:
    samples_per_s: float
    overhead_s: float
    runs: int  # how many finished runs it was measured from


def measured(root: Path | None) -> dict[str, Rate]:
    """Throughput by shape from the finished runs in the ledger (an empty dict without a ledger)."""
    found: dict[str, list[tuple[float, float]]] = {}
    for run in history.read(root).runs:
        rate, wall, train = (finite(run.result.get(k)) for k in ("samples_per_s", "wall_seconds", "train_seconds"))
        if not rate or rate <= 0 or wall is None or train is None:
            continue
        found.setdefault(run.shape, []).append((rate * run.fused, max(0.0, wall - train)))
    return {
        key: Rate(statistics.median(x for x, _ in v), statistics.median(o for _, o in v), len(v))
        for key, v in found.items()
    }


def default_rate(spec: dict) -> tuple[float, str]:
    """(samples/s, how it was chosen) for a run without a measurement."""
    params = model_params(spec.get("model") or {})
    base = next(rate for limit, rate in DEFAULT_THROUGHPUT if params <= limit)
    p = spec.get("params") or {}
    choices = (spec.get("task") or {}).get("num_choices") or (
        4 if (spec.get("task") or {}).get("kind") == "multiple_choice" else 1
    )
    rate = base * 128 / max(8, int(p["max_len"])) / choices
    return rate, f"{base:g} samples/s at max_len 128 for ~{params / 1e6:.0f}M parameters"


_ROWS: dict[tuple[str, float], int] = {}


def count_rows(task: dict, split: str = "train") -> int | None:
    """Examples in a task's local ``split`` file (None for hub data or a file that cannot be read)."""
    from stilts_tui.tasks import data as task_data

    try:
        path = task_data.file_for(task, split)
    except Exception:  # noqa: BLE001 - a damaged spec's task: size unknown
        return None
    if path is None or not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime)
    if key not in _ROWS:
        try:
            _ROWS[key] = len(task_data.load_rows(task, split)[0])
        except Exception:  # noqa: BLE001 - an unreadable file: size unknown (plan validate says why)
            return None
    return _ROWS[key]


def train_size(run: plans.Run, synth_n: dict[str, int]) -> int | None:
    """Train examples a run sees an epoch: the files, else the known size, else the ``n`` of the synth
    run its task comes from (``synth_n``: synth run id -> n)."""
    task = run.task_spec
    if task.get("from_run"):
        n = synth_n.get(task["from_run"])
    else:
        n = count_rows(task) or KNOWN_TRAIN_SIZES.get(run.task)
    limit = optional(run.params, "max_train_samples")
    return min(n, limit) if n and isinstance(limit, int) else n


def estimate(plan: plans.Plan, runs: list[plans.Run], rates: dict[str, Rate] | None = None) -> Cost:
    """Runs, steps and GPU-hours per stage of an expanded plan; ``rates`` from :func:`measured`."""
    rates = rates or {}
    cost = Cost({s: StageCost(s) for s in plans.STAGES if s != RANK_STAGE or any(r.stage == s for r in runs)})
    defaults: set[str] = set()
    synth_n = {r.id: r.params["n"] for r in runs if r.stage == "synth"}
    for r in runs:
        sc = cost.stages[r.stage]
        sc.runs += 1
        if r.stage == "synth":
            texts = r.params["n"] * (1 + r.params["fakes"]) + r.params["dev"]
            sc.seconds += texts * SYNTH_SECONDS_PER_TEXT + DEFAULT_OVERHEAD_S
            sc.default += 1
            continue
        n = train_size(r, synth_n)
        if not n:
            sc.unknown += 1
            continue
        if r.stage == RANK_STAGE:
            _rank_cost(sc, r, n, sum(s["run_id"] is not None for s in r.starts) + 1, plan)
            continue
        p = r.params
        epochs, bs, accum = int(p["epochs"]), int(p["batch_size"]), int(p["grad_accum"])
        sc.steps += epochs * max(1, math.ceil(n / bs) // accum)  # as the trainer: leftovers carry over
        sc.samples += n * epochs
        spec = {"stage": r.stage, "model": {"name": plan.model, **r.model}, "params": p, "task": r.task_spec}
        rate = rates.get(shape_key(spec))
        if rate is not None:
            sc.seconds += n * epochs / rate.samples_per_s + rate.overhead_s
            sc.measured += 1
        else:
            value, why = default_rate(spec)
            sc.seconds += n * epochs / value + DEFAULT_OVERHEAD_S
            sc.default += 1
            defaults.add(why)
    total = cost.total
    if total.measured:
        n_shapes = len(
            {
                shape_key({"model": {"name": plan.model}, "params": r.params, "task": r.task_spec})
                for r in runs
                if r.stage != "synth"
            }
            & set(rates)
        )
        cost.notes.append(
            f"{total.measured} runs timed from throughput measured by finished runs of the same "
            f"shape in the ledger ({n_shapes} shapes)"
        )
    for why in sorted(defaults):
        cost.notes.append(
            f"default throughput (no finished run of the same shape): {why}, one GPU, fp32, "
            f"+{DEFAULT_OVERHEAD_S:g} s a run"
        )
    if cost.stages["synth"].runs:
        cost.notes.append(f"synthesis: {SYNTH_SECONDS_PER_TEXT:g} s a generated text (default)")
    if total.unknown:
        cost.notes.append(f"{total.unknown} runs have no known train size (hub data not on disk): not counted")
    return cost


def _rank_cost(sc: StageCost, r: plans.Run, n: int, starts: int, plan: plans.Plan) -> None:
    """A rank run: one forward pass over its first N train examples a starting point (forward alone is about
    a third of a training step's work), at the default throughput."""
    examples = min(n, int(r.params["examples"])) * starts
    spec = {"stage": r.stage, "model": {"name": plan.model, **r.model}, "params": r.params, "task": r.task_spec}
    sc.samples += examples
    sc.seconds += examples / (3 * default_rate(spec)[0]) + DEFAULT_OVERHEAD_S
    sc.default += 1


def summary(cost: Cost) -> str:
    """One line: the total, for the plan builder."""
    t = cost.total
    how = "measured" if t.measured and not t.default else "defaults" if not t.measured else "measured + defaults"
    return f"{t.steps:,} steps, ~{t.gpu_hours:.1f} GPU-hours ({how})"
