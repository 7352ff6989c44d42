"""What this box measured FOR ONE DEVICE, and a run's predicted time from it: the one model of a run's time
that the cost (:mod:`.cost`), the wall time per mode (:mod:`.walltime`) and the app's ETA (:mod:`.eta`) use.

A run's time is split into phases (:class:`Phases`: the process's start and imports, data and model
loading, steps, evaluation). The figures come only from finished runs that trained on the device the plan
will train on (``cpu``, or ``cuda:<GPU name>``: result.json's ``device``; :func:`history.device_of`):
a CPU is never timed from a GPU's runs, nor an H100 from an A100's. A run is matched as closely as the
history allows:
- ``shape``: runs of its shape (contract.shape_key: model, batch, length, kind, choices, precision);
- ``model``: runs of its model in other shapes, scaled by the padded tokens a sample (max_len x choices);
- ``device``: any run of this device, scaled also by the models' parameter counts (compute ~ params x tokens).
With nothing measured on the device there is no figure and no number (never a default from another
device). Figures outside :data:`BOUNDS` (a damaged or hostile history: 5e-324 samples/s, 1e308 s) are left
out and counted. No torch; reads the ledger and run folders only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import optional, shape_key
from stilts_tui.estimate import history as finished
from stilts_tui.estimate.history import Finished, finite
from stilts_tui.estimate.modelsize import model_params

# aggregate work of K processes on one device over one alone, where the box has not measured it. GPU: 8 fp32
# processes gave 360 samples/s against 186-214 alone on an H100 (1.8x), under MPS 444 (2.2x) (the design
# notes' speed table). CPU: the cores are shared (1.0: packing saves the start-up only, which the phases
# count apart). Ratios only: the time itself always comes from this device's own runs.
DEFAULT_PACKING = {
    "gpu": {1: 1.0, 2: 1.3, 4: 1.6, 8: 1.8},
    "mps": {1: 1.0, 2: 1.5, 4: 2.0, 8: 2.2},
    "cpu": {1: 1.0},
}
EVAL_SPEEDUP = 3.0  # evaluation is a forward pass: about 3x a training step's samples/s
# what a figure read from the history may be; anything else is damaged and left out (and counted)
RATE_RANGE = (1e-3, 1e7)  # samples/s
SECONDS_MAX = 1e7  # a phase of one run (about 116 days)
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
class Phases:
    """One run's predicted seconds by phase, and how closely its figures matched (shape, model, device)."""

    process_s: float
    load_s: float
    steps_s: float
    eval_s: float
    measured: bool = True
    match: str = "shape"

    @property
    def total(self) -> float:
        return self.process_s + self.load_s + self.steps_s + self.eval_s


@dataclass
class Rates:
    """The figures of one device (``device``; None: every device, for benches that made their own history):
    by shape (``shapes``), and the packing of processes side by side and the fused speed-ups where measured."""

    shapes: dict[str, dict] = field(default_factory=dict)
    packing: dict[int, float] = field(default_factory=dict)
    fused: dict[int, float] = field(default_factory=dict)
    runs: int = 0  # done runs of a trained stage in the history (every device)
    device: str | None = None
    used: int = 0  # finished runs of this device the figures come from
    other_device: int = 0  # finished runs of other devices, left out
    unknown_gpu: int = 0  # finished GPU runs that do not say which GPU (older results), left out
    out_of_range: int = 0  # figures outside the bounds, left out
    overall: dict = field(default_factory=dict)  # the device's fixed figures over every shape (a shape's fallback)

    @property
    def measured(self) -> bool:
        return any(s.get("samples_per_s") for s in self.shapes.values())


def _num(v: object, top: float = SECONDS_MAX) -> float | None:
    """A finite number in [0, top] (a time), or None."""
    n = finite(v)
    return n if n is not None and 0 <= n <= top else None


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


_ROWS: dict[tuple[str, float], int] = {}


def spec_train_size(spec: dict, synth_n: dict[str, int] | None = None) -> int | None:
    """Train examples a run sees an epoch, from its spec: the files, else the known size of its task, else
    the ``n`` of the synth run its task comes from (``synth_n``: synth run id -> n)."""
    task = spec.get("task") if isinstance(spec.get("task"), dict) else {}
    if task.get("from_run"):
        n = (synth_n or {}).get(task["from_run"])
    else:
        n = count_rows(task) or KNOWN_TRAIN_SIZES.get(task.get("name") or "")
    limit = optional(spec.get("params") or {}, "max_train_samples")
    return min(n, limit) if n and isinstance(limit, int) else n


# ---- the history of one device -------------------------------------------------------------------


def history(root: Path | None, device: str | None = None) -> Rates:
    """The figures of ``device`` from the finished runs in ``root``'s ledger (nothing without one): per
    shape, the median process start, loading, steady samples/s alone (a run beside K-1 others counted at
    K/packing(K) of its rate), evaluation seconds a dev example; the packing of K processes on a device;
    the fused speed-up of arrays of F."""
    past = finished.read(root)
    out = Rates(runs=past.trained, device=device)
    seen: dict[str, dict[str, list]] = {}
    by_device: dict[object, list[dict]] = {}  # each run is compared with its own device's runs only
    for run in past.runs:
        by_device.setdefault((run.device, run.row.get("gpu")), []).append(run.row)
    for run in past.runs:
        if device is not None and run.device != device:
            if run.device == finished.UNKNOWN_GPU and device != "cpu":
                out.unknown_gpu += 1
            else:
                out.other_device += 1
            continue
        out.used += 1
        acc = seen.setdefault(run.shape, {"spec": run.spec})
        out.out_of_range += _observe(acc, run, by_device.get((run.device, run.row.get("gpu")), []))
    _summarise(out, seen)
    return out


def _observe(acc: dict, run: Finished, runs: list[dict]) -> int:
    """Add one finished run's figures to its shape's lists (``runs``: its device's done runs); returns how
    many of its figures were out of range (left out)."""
    res, spec = run.result, run.spec
    t = res.get("timings") if isinstance(res.get("timings"), dict) else {}
    bad = 0
    rate = finite(t.get("steady_samples_per_s"))
    if rate is None:
        rate = finite(res.get("samples_per_s"))  # a result older than timings: its mean rate
    if rate is not None and not RATE_RANGE[0] <= rate * run.fused <= RATE_RANGE[1]:
        rate, bad = None, bad + 1
    for key, name in (("process_s", "process"), ("eval_s", None)):
        v = t.get(key)
        if v is not None and _num(v) is None:
            bad += 1
        elif name and _num(v):
            acc.setdefault(name, []).append(float(v))
    # a run's fixed time outside its steps: its loading (data and model: more for the run that started its
    # process, which loads cold), with its first step's excess over a steady one; then what follows its
    # loop (a checkpoint saved, the result written: wall - train - loading), apart for runs that keep one
    wall, train = _num(res.get("wall_seconds")), _num(res.get("train_seconds"))
    parts = [_num(t.get(k)) for k in ("data_s", "model_s")]
    loaded = sum(x for x in parts if x is not None) if t and None not in parts else None
    end = None
    if wall is not None and train is not None:
        outside = max(0.0, wall - train)
        loaded, end = (outside, None) if loaded is None else (min(loaded, outside), outside - min(loaded, outside))
    elif res.get("wall_seconds") is not None or res.get("train_seconds") is not None:
        bad += 1
    if loaded is not None:
        first, p = _num(t.get("first_step_s")), spec.get("params") or {}
        batch = p.get("batch_size") if isinstance(p.get("batch_size"), int) else 0
        if first is not None and rate:
            loaded += max(0.0, first - batch / rate)
        acc.setdefault("load_first" if _num(t.get("process_s")) else "load_warm", []).append(loaded)
    if end is not None:
        acc.setdefault("end_keep" if _keeps(spec) else "end", []).append(end)
    dev_n, epochs = count_rows(spec.get("task") or {}, "dev"), (spec.get("params") or {}).get("epochs")
    if _num(t.get("eval_s")) and dev_n and isinstance(epochs, int) and 0 < epochs < 10**6:
        acc.setdefault("eval_per_example", []).append(t["eval_s"] / (dev_n * epochs))
    if rate:
        beside = _beside(run.row, runs) if run.fused == 1 else 1
        acc.setdefault(f"rate@{run.fused}f{beside}", []).append(rate)
    return bad


def _beside(r: dict, runs: list[dict]) -> int:
    """How many processes trained on ``r``'s device while it trained (``r``'s own included): those whose
    interval covers the middle of ``r``'s."""
    start, end = _num(r.get("started"), math.inf), _num(r.get("finished"), math.inf)
    if start is None or end is None:
        return 1
    mid = (start + end) / 2
    workers = set()
    for x in runs:
        a, b = _num(x.get("started"), math.inf), _num(x.get("finished"), math.inf)
        if x.get("gpu") == r.get("gpu") and a is not None and b is not None and a <= mid <= b:
            workers.add(x.get("worker"))
    return max(1, len(workers | {r.get("worker")}))


def _median(acc: dict, key: str) -> float | None:
    return statistics.median(acc[key]) if acc.get(key) else None


def _summarise(out: Rates, seen: dict[str, dict]) -> None:
    packing: dict[int, list[float]] = {}
    fused: dict[int, list[float]] = {}
    for key, acc in seen.items():
        alone = _median(acc, "rate@1f1")
        for name, rates in acc.items():
            if not name.startswith("rate@") or name == "rate@1f1" or alone is None:
                continue
            f, k = (int(x) for x in name[5:].split("f"))
            if f > 1:
                fused.setdefault(f, []).append(f * statistics.median(rates) / alone)
            else:
                packing.setdefault(k, []).append(k * statistics.median(rates) / alone)
        out.shapes[key] = {**_fixed(acc), "samples_per_s": alone, "spec": acc["spec"]}
        out.shapes[key]["eval_per_example"] = _median(acc, "eval_per_example")
        out.shapes[key]["beside"] = {
            n: statistics.median(v) for n, v in acc.items() if n.startswith("rate@1f") and n != "rate@1f1"
        }
    merged: dict[str, list] = {}
    for acc in seen.values():
        for name in ("process", "load_first", "load_warm", "end", "end_keep"):
            merged.setdefault(name, []).extend(acc.get(name, []))
    out.overall = _fixed(merged)
    out.packing = {k: statistics.median(v) for k, v in packing.items()}
    out.fused = {f: statistics.median(v) for f, v in fused.items()}
    for fig in out.shapes.values():  # a shape measured only beside others: its rate alone from the packing
        if fig["samples_per_s"] is None and fig["beside"]:
            k, rate = min((int(n.split("f")[1]), v) for n, v in fig["beside"].items())
            table = DEFAULT_PACKING["cpu" if out.device == "cpu" else "gpu"]
            pack = factor({1: 1.0, **out.packing} if out.packing else table, k)
            fig["samples_per_s"] = rate * k / pack


def _keeps(spec: dict) -> bool:
    """Whether a run saves its checkpoint (an intermediate's children start from it)."""
    return spec.get("keep_checkpoint") is True or (spec.get("params") or {}).get("keep_checkpoint") is True


def _fixed(acc: dict) -> dict:
    """A shape's (or the device's) fixed figures: the process's start, the warm loading of a run, the cold
    loading's excess of a process's first run, and what follows the loop (with and without a checkpoint)."""
    first, warm = _median(acc, "load_first"), _median(acc, "load_warm")
    return {
        "process_s": _median(acc, "process"),
        "load_s": warm if warm is not None else first,  # what a run loads (warm where known)
        "load_warm_s": warm,
        "load_first_s": first,
        "end_s": _median(acc, "end"),
        "end_keep_s": _median(acc, "end_keep"),
    }


def factor(table: dict[int, float], k: int) -> float:
    """The figure for ``k`` in a table by count: the entry at the largest count not above ``k``."""
    below = [c for c in table if c <= k]
    return table[max(below)] if below else 1.0


# ---- a run's phases ------------------------------------------------------------------------------


def _tokens(spec: dict) -> float:
    """Padded tokens a sample (max_len x choices): what a step's work grows with, within one model."""
    p, task = spec.get("params") or {}, spec.get("task") or {}
    choices = task.get("num_choices") or (4 if task.get("kind") == "multiple_choice" else 1)
    length = p.get("max_len") if isinstance(p.get("max_len"), int) and p.get("max_len") > 0 else 128
    return float(max(8, length) * max(1, int(choices) if isinstance(choices, int) else 1))


def _model(spec: dict) -> dict:
    return spec.get("model") if isinstance(spec.get("model"), dict) else {}


def _work(spec: dict, level: str) -> float:
    """A sample's work at a matching level: tokens (same model), tokens x parameters (same device)."""
    return _tokens(spec) * (model_params(_model(spec)) if level == "device" else 1.0)


def match(spec: dict, rates: Rates) -> tuple[dict, str] | None:
    """The figures for a run of ``spec``: its shape's, else its model's scaled, else its device's scaled,
    and the level ("shape" | "model" | "device"); None when nothing was measured on the device."""
    own = rates.shapes.get(shape_key(spec))
    if own and own.get("samples_per_s"):
        return own, "shape"
    name = _model(spec).get("name")
    for level in ("model", "device"):
        peers = [
            f
            for f in rates.shapes.values()
            if f.get("samples_per_s") and (level == "device" or _model(f["spec"]).get("name") == name)
        ]
        if peers:
            return _scaled(spec, peers, level), level
    return None


def _scaled(spec: dict, peers: list[dict], level: str) -> dict:
    """Peers' figures brought to ``spec``'s work a sample (rates and evaluation scale, starts and loading do
    not) and their medians taken."""
    mine = _work(spec, level)
    ratio = [_work(f["spec"], level) / mine for f in peers]
    fields = {
        "samples_per_s": [f["samples_per_s"] * r for f, r in zip(peers, ratio, strict=True)],
        "eval_per_example": [
            f["eval_per_example"] / r for f, r in zip(peers, ratio, strict=True) if f.get("eval_per_example")
        ],
    }
    for key in ("process_s", "load_s", "load_warm_s", "load_first_s", "end_s", "end_keep_s"):
        fields[key] = [f[key] for f in peers if f.get(key) is not None]
    return {k: statistics.median(v) if v else None for k, v in fields.items()}


def spec_phases(spec: dict, n: int, rates: Rates) -> Phases | None:
    """A run's predicted phases from its spec and train size ``n``; None when nothing was measured on the
    device (no number rather than another device's)."""
    got = match(spec, rates)
    if got is None:
        return None
    fig, level = got
    p = spec.get("params") or {}
    epochs = p.get("epochs") if isinstance(p.get("epochs"), int) and 0 < p.get("epochs") < 10**6 else 1
    rate = fig["samples_per_s"]
    dev_n = count_rows(spec.get("task") or {}, "dev") or min(n, 1000)
    per_example = fig.get("eval_per_example") or 1 / (EVAL_SPEEDUP * rate)

    def pick(key: str) -> float | None:  # the shape's (or model's) figure, else the device's
        v = fig.get(key)
        return v if v is not None else rates.overall.get(key)

    ends = (pick("end_keep_s"), pick("end_s")) if _keeps(spec) else (pick("end_s"), pick("end_keep_s"))
    end = next((x for x in ends if x is not None), 0.0)
    # a run loads warm (a worker's later runs); a process's first run loads cold: its excess is paid once a
    # process. A shape seen only cold takes the device's warm loading where the device has one.
    first, warm = pick("load_first_s"), pick("load_warm_s")
    if warm is None:
        warm, first = (fig.get("load_s") or 0.0), None
    cold = max(0.0, first - warm) if first is not None else 0.0
    return Phases(
        process_s=(pick("process_s") or 0.0) + cold,  # paid once a process
        load_s=warm + end,
        steps_s=n * epochs / rate,
        eval_s=dev_n * epochs * per_example,
        measured=True,
        match=level,
    )


def run_spec(plan, run) -> dict:
    """The parts of a plan's run that its spec.json holds and the figures read (model, params, task)."""
    return {"stage": run.stage, "model": {"name": plan.model, **run.model}, "params": run.params, "task": run.task_spec}


def phases(plan, run, rates: Rates, synth_n: dict[str, int]) -> Phases | None:
    """A plan's run's predicted phases (None: train size unknown, or nothing measured on the device)."""
    spec = run_spec(plan, run)
    n = spec_train_size(spec, synth_n)
    return spec_phases(spec, n, rates) if n else None


def notes(rates: Rates, what: str = "runs") -> list[str]:
    """What the history held that was left out, one line each."""
    out = []
    if rates.other_device:
        out.append(
            f"{rates.other_device} finished runs of other devices left out (timed only from {label(rates.device)})"
        )
    if rates.unknown_gpu:
        out.append(f"{rates.unknown_gpu} finished GPU runs that do not say which GPU (older results) left out")
    if rates.out_of_range:
        out.append(f"{rates.out_of_range} figures of the history out of range (damaged?) left out")
    return out


def level_line(levels: dict[str, int], device: str | None) -> str:
    """How the runs were matched to this device's history, in one line."""
    how = {
        "shape": "of their shape",
        "model": "of their model (scaled by length)",
        "device": "of another model (scaled by size and length)",
    }
    parts = [f"{n} from runs {how[k]}" for k, n in levels.items() if n]
    return f"timed from {label(device)}'s own finished runs: " + ", ".join(parts)


def label(device: str | None) -> str:
    """A device key as a person reads it: "this CPU", "NVIDIA H100 80GB HBM3"."""
    if device is None:
        return "this box"
    return "the CPU" if device == "cpu" else device.split(":", 1)[-1]


def nothing_measured(device: str | None) -> str:
    return (
        f"nothing measured on {label(device)} yet: no finished run of this runs-dir trained there, so no time "
        "is predicted (one finished run of any shape gives the figures; `stilts-tui demo` makes some)"
    )
