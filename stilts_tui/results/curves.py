"""Runs' curves, read from ``events.jsonl``: training loss and learning rate per step, the dev metrics at each
evaluation; runs grouped by every setting but the seed (or by starting point) into a mean line and a min-max
band; and the plan's curves figure (``scores PLAN --curves -o curves.pdf``: one column of panels per target,
one line per starting point, the mean over grid points and seeds with its min-max band).

Textual-free and numpy-free (the app's log panes feed :class:`RunCurves` from their reader thread);
matplotlib only inside :func:`curves_figure_bytes`."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, SPEC_FILE, Event
from stilts_tui.store import rundir

MAX_POINTS = 4000  # steps kept a run: past it every other one is dropped (a curve's shape stays, memory bounded)
READ_LIMIT = 32 << 20  # bytes of a finished run's events.jsonl read for a comparison (its last ones)
GRID_POINTS = 80  # points of a group's loss band (each run's loss interpolated onto them)
SEED_KEYS = ("seed",)  # what "every setting but the seed" leaves out


def _num(v: object) -> float | None:
    """A finite number, or None (a damaged event's string, NaN or inf is no point of a curve)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


@dataclass
class RunCurves:
    """One run's curves as its events say them (its last attempt: a start event begins them again)."""

    steps: list[int] = field(default_factory=list)
    x: list[float] = field(default_factory=list)  # each step in epochs (step / total * epochs): runs align
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (epoch, metrics)
    total_steps: int = 0
    epochs: int = 0
    majority: float | None = None  # a stopped event's majority-class score (stop_degenerate), if any

    def feed(self, e: Mapping) -> bool:
        """Take one event; True when a curve changed."""
        kind = e.get("event")
        if kind == Event.START:
            self.__init__()  # type: ignore[misc]  # a new attempt: its curves alone
            return True
        if kind == Event.BEGIN:
            self.total_steps = int(_num(e.get("total_steps")) or 0)
            self.epochs = int(_num(e.get("epochs")) or 0)
            return False
        if kind == Event.STEP:
            step, loss = _num(e.get("step")), _num(e.get("loss"))
            if step is None or loss is None:
                return False
            total = _num(e.get("total_steps")) or self.total_steps
            self.total_steps = int(total or 0)
            x = step / total * self.epochs if total and self.epochs else (_num(e.get("epoch")) or 0.0)
            self.steps.append(int(step))
            self.x.append(x)
            self.loss.append(loss)
            lr = _num(e.get("lr"))
            self.lr.append(lr if lr is not None else (self.lr[-1] if self.lr else 0.0))
            if len(self.steps) > MAX_POINTS:
                for series in (self.steps, self.x, self.loss, self.lr):
                    del series[1::2]
            return True
        if kind == Event.EVAL and isinstance(e.get("metrics"), dict):
            metrics = {str(k): v for k, v in e["metrics"].items() if _num(v) is not None}
            epoch = _num(e.get("epoch"))
            self.evals.append((epoch if epoch is not None else float(len(self.evals) + 1), metrics))
            return True
        if kind == Event.STOPPED and _num(e.get("majority_score")) is not None:
            self.majority = _num(e.get("majority_score"))
            return True
        return False

    def feed_lines(self, lines: Iterable[str | bytes]) -> bool:
        """Take events.jsonl lines (a damaged line is skipped); True when a curve changed."""
        changed = False
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict):
                changed = self.feed(e) or changed
        return changed

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(k for _, m in self.evals for k in m))

    def metric(self, name: str | None = None) -> tuple[list[float], list[float]]:
        """(epochs, values) of the dev metric ``name`` (default: the first one evaluated)."""
        name = name or next(iter(self.metric_names()), None)
        pts = [(ep, m[name]) for ep, m in self.evals if name in m]
        return [p[0] for p in pts], [float(p[1]) for p in pts]


def read_run(root: Path, run_id: str, limit: int = READ_LIMIT) -> RunCurves:
    """A run's curves from its events.jsonl (its last ``limit`` bytes; none for a run with no file)."""
    curves = RunCurves()
    try:
        path = rundir.run_dir(root, run_id) / EVENTS_FILE
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - limit))
            chunk = f.read(limit)
    except (OSError, ValueError):
        return curves
    lines = chunk.splitlines()
    if size > limit and lines:
        lines = lines[1:]  # the first line read may be cut
    curves.feed_lines(lines)
    return curves


def primary_metric(root: Path, run_id: str) -> str | None:
    """The metric a run is scored by (its result's, else its task's), or None."""
    for name in (None, SPEC_FILE):
        data = rundir.read_run_file(root, run_id, name) if name else rundir.read_run_file(root, run_id)
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("primary_metric"), str):
            return data["primary_metric"]
        task = data.get("task")
        if isinstance(task, dict) and isinstance(task.get("metric"), str):
            return task["metric"]
    return None


# ---- groups: every setting but the seed, or a starting point ---------------------------------------


def setting_key(row: Mapping) -> str:
    """What a run is but its seed: plan, stage, target, starting point and every resolved setting."""
    params = row.get("params") if isinstance(row.get("params"), dict) else {}
    grid = row.get("grid") if isinstance(row.get("grid"), dict) else {}
    settings = {k: v for k, v in {**params, **grid}.items() if k not in SEED_KEYS}
    what = {k: row.get(k) for k in ("plan", "stage", "name", "task", "intermediate")}
    return json.dumps([what, settings], sort_keys=True, default=str)


def group_label(row: Mapping) -> str:
    """A group's name as a person reads it: "rte from hellaswag lr=2e-05 batch_size=16"."""
    grid = row.get("grid") if isinstance(row.get("grid"), dict) else {}
    start = f" from {row['intermediate']}" if row.get("intermediate") else ""
    points = " ".join(f"{k}={v}" for k, v in sorted(grid.items()) if k not in SEED_KEYS)
    return f"{row.get('name') or row.get('task') or row.get('id')}{start}" + (f" {points}" if points else "")


@dataclass
class Band:
    """A group's curve: the mean over its runs at each x, and the min and max (the band)."""

    label: str
    runs: list[str]
    x: list[float]
    mean: list[float]
    lo: list[float]
    hi: list[float]

    @property
    def n(self) -> int:
        return len(self.runs)


def _interp(xs: list[float], ys: list[float], at: float) -> float | None:
    """``ys`` at ``at``, linear between the points around it; None outside the run's range."""
    if not xs or at < xs[0] - 1e-12 or at > xs[-1] + 1e-12:
        return None
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= at:
            lo = mid
        else:
            hi = mid
    if xs[hi] == xs[lo] or at <= xs[lo]:
        return ys[lo]
    t = (at - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + t * (ys[hi] - ys[lo])


def _band(label: str, ids: list[str], series: list[tuple[list[float], list[float]]], xs: list[float]) -> Band:
    x, mean, lo, hi = [], [], [], []
    for at in xs:
        vals = [v for s in series if (v := _interp(*s, at)) is not None]
        if vals:
            x.append(at)
            mean.append(sum(vals) / len(vals))
            lo.append(min(vals))
            hi.append(max(vals))
    return Band(label, ids, x, mean, lo, hi)


def loss_band(label: str, members: Mapping[str, RunCurves], points: int = GRID_POINTS) -> Band:
    """The group's training loss over epochs: each run interpolated onto one grid (runs of other batch sizes
    take other steps), the mean where any run has a value, and the min and max."""
    series = [(c.x, c.loss) for c in members.values() if c.x]
    end = max((s[0][-1] for s in series), default=0.0)
    start = min((s[0][0] for s in series), default=0.0)
    xs = [start + (end - start) * i / max(1, points - 1) for i in range(points)] if series else []
    return _band(label, list(members), series, xs)


def metric_band(label: str, members: Mapping[str, RunCurves], metric: str | None) -> Band:
    """The group's dev metric at each evaluated epoch: mean, min and max over the runs evaluated there."""
    series = [c.metric(metric) for c in members.values()]
    series = [s for s in series if s[0]]
    xs = sorted({x for s in series for x in s[0]})
    band = Band(label, list(members), [], [], [], [])
    for at in xs:
        vals = [s[1][s[0].index(at)] for s in series if at in s[0]]
        band.x.append(at)
        band.mean.append(sum(vals) / len(vals))
        band.lo.append(min(vals))
        band.hi.append(max(vals))
    return band


@dataclass
class Comparison:
    """Runs' curves side by side, one line per run or per group of runs that differ only by their seed."""

    metric: str | None
    loss: list[Band]
    metrics: list[Band]
    majority: float | None = None


def compare(rows: list[Mapping], curves: Mapping[str, RunCurves], metric: str | None, grouped: bool) -> Comparison:
    """Each run its own line (``grouped`` False), or each group of runs alike but for the seed one line, the
    mean, with the min-max band; groups in the order of their first run."""
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(setting_key(r) if grouped else str(r["id"]), []).append(r)
    loss, metrics = [], []
    for members in groups.values():
        label = group_label(members[0]) if grouped else f"{members[0]['id']} {group_label(members[0])}"
        if grouped:
            label += f" (n={len(members)})"
        these = {str(r["id"]): curves.get(str(r["id"]), RunCurves()) for r in members}
        loss.append(loss_band(label, these))
        metrics.append(metric_band(label, these, metric))
    majority = next((c.majority for c in curves.values() if c.majority is not None), None)
    return Comparison(metric, loss, metrics, majority)


# ---- the plan's figure -------------------------------------------------------------------------------


@dataclass
class PlanCurves:
    """A plan's curves by target: per starting point the mean over its runs (grid points and seeds) and the
    min-max band, of the dev metric per epoch and the training loss."""

    plan: str
    targets: list[str]
    metrics: dict[str, str | None]  # target -> the metric drawn
    loss: dict[str, list[Band]]  # target -> a band per starting point
    dev: dict[str, list[Band]]


def plan_curves(root: Path, plan: str) -> PlanCurves:
    """The curves of a queued plan's target runs that wrote any (from each run's events.jsonl)."""
    from stilts_tui.errors import UserError
    from stilts_tui.results.table import find_plan
    from stilts_tui.store.ledger import Ledger

    name = find_plan(root, plan)
    runs = [
        r
        for r in Ledger(root).runs(plan=name)
        if isinstance(r, dict) and r.get("stage") == "target" and isinstance(r.get("id"), str)
    ]
    runs.sort(key=lambda r: r["order"] if isinstance(r.get("order"), (int, float)) else 0)
    read = {r["id"]: read_run(root, r["id"]) for r in runs}
    have = [r for r in runs if read[r["id"]].steps or read[r["id"]].evals]
    if not have:
        raise UserError(f"plan '{name}' has no target run with curves yet (no step or eval in their events.jsonl)")
    out = PlanCurves(name, list(dict.fromkeys(str(r.get("name")) for r in have)), {}, {}, {})
    for target in out.targets:
        mine = [r for r in have if str(r.get("name")) == target]
        metric = next((m for r in mine if (m := primary_metric(root, r["id"]))), None)
        out.metrics[target] = metric
        starts = list(dict.fromkeys(str(r.get("intermediate")) for r in mine))
        if "none" in starts:  # the baseline first, as the score table has it
            starts.remove("none")
            starts.insert(0, "none")
        out.loss[target], out.dev[target] = [], []
        for start in starts:
            members = {r["id"]: read[r["id"]] for r in mine if str(r.get("intermediate")) == start}
            label = f"{start} (n={len(members)})"
            out.loss[target].append(loss_band(label, members))
            out.dev[target].append(metric_band(label, members, metric))
    return out


def draw_curves(plt, pc: PlanCurves):
    """The figure: a column of panels per target, the dev metric per epoch above and the training loss
    below; a line per starting point (the mean) with its min-max band shaded."""
    n = len(pc.targets)
    fig, axes = plt.subplots(2, n, figsize=(2.0 + 3.6 * n, 6.4), squeeze=False)
    for col, target in enumerate(pc.targets):
        top, bottom = axes[0][col], axes[1][col]
        for k, (dev, loss) in enumerate(zip(pc.dev[target], pc.loss[target], strict=True)):
            color = f"C{k % 10}"
            for ax, band in ((top, dev), (bottom, loss)):
                if band.x:
                    ax.plot(
                        band.x,
                        band.mean,
                        color=color,
                        label=band.label,
                        linewidth=1.4,
                        marker="o" if ax is top else None,
                        ms=3,
                    )
                    ax.fill_between(band.x, band.lo, band.hi, color=color, alpha=0.2, linewidth=0)
        top.set_title(target, fontsize=9)
        top.set_ylabel(f"dev {pc.metrics.get(target) or 'metric'}", fontsize=8)
        bottom.set_ylabel("training loss", fontsize=8)
        bottom.set_xlabel("epoch", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f"{pc.plan}: mean over grid points and seeds per starting point (band: min to max)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def curves_figure_bytes(pc: PlanCurves, fmt: str = "pdf") -> bytes:
    """The plan's curves figure as png (300 dpi), pdf or svg."""
    from stilts_tui.results.figure import FIGURE_DPI, MISSING_MATPLOTLIB, MissingDependency, figures_available

    if not figures_available():
        raise MissingDependency(MISSING_MATPLOTLIB)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig = draw_curves(plt, pc)
        buf = io.BytesIO()
        meta = {"Title": f"{pc.plan} curves"}
        meta["Subject" if fmt == "pdf" else "Description"] = "panels: " + ", ".join(pc.targets)
        fig.savefig(buf, format=fmt, dpi=FIGURE_DPI, metadata=meta)
        plt.close(fig)
    return buf.getvalue()
