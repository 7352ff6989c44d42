"""The score table of a plan: statistics per (intermediate, target) and its exports.

Ground truth is each run's ``result.json`` (a run is done when its result says so); the ledger
says which runs belong to the plan. Per cell, over the target's primary metric (or ``metric``)
pooled over seeds x grid: n, mean, std (population, ddof 0, as the reference computes it),
median, max, min; "best of grid" per seed averaged over seeds; and the gain of the mean over the
"none" row with a seeded 95% bootstrap interval (scipy), marked where it excludes zero. Runs not
done are counted as missing, never as zero. Textual-free; matplotlib only for png.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stilts_tui import rundir
from stilts_tui.errors import UserError
from stilts_tui.ledger import Ledger

FORMATS = ("table", "csv", "md", "latex", "json", "png")
STD_NOTE = "std: population standard deviation (ddof 0), as the reference computes it"
BOOT = {"n_resamples": 10000, "confidence": 0.95, "seed": 0}


@dataclass
class Cell:
    intermediate: str
    target: str
    seed: int | None  # set with --by-seed
    n: int
    missing: int
    values: list[float] = field(repr=False)
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    max: float | None = None
    min: float | None = None
    best_of_grid: float | None = None
    gain: float | None = None
    gain_ci: tuple[float, float] | None = None
    gain_significant: bool = False


@dataclass
class ScoreTable:
    plan: str
    metric: str  # the metric name, or "primary" when each target uses its own
    metrics: dict[str, str]  # target -> metric used
    by_seed: bool
    rows: list[str]
    targets: list[str]
    cells: list[Cell]

    def cell(self, intermediate: str, target: str, seed: int | None = None) -> Cell | None:
        for c in self.cells:
            if (c.intermediate, c.target, c.seed) == (intermediate, target, seed):
                return c
        return None


def _read_result(root: Path, run_id: str) -> dict | None:
    try:
        return json.loads((rundir.run_dir(root, run_id) / "result.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _value(result: dict | None, metric: str | None) -> float | None:
    if not result or result.get("status") != "done":
        return None
    if metric is None:
        return result.get("score")
    return (result.get("metrics") or {}).get(metric)


def bootstrap_gain(x: list[float], base: list[float], seed: int = BOOT["seed"]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of mean(x) - mean(base), repeatable for a seed."""
    if len(x) < 2 or len(base) < 2:
        return None
    from scipy import stats

    res = stats.bootstrap(
        (np.asarray(x, float), np.asarray(base, float)),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=BOOT["n_resamples"], confidence_level=BOOT["confidence"], method="percentile",
        vectorized=True, rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def find_plan(root: Path, plan: str) -> str:
    """A plan name known to the ledger, given its name or its file."""
    ledger = Ledger(root)
    known = ledger.plans()
    if plan in known:
        return plan
    path = Path(plan)
    if path.suffix == ".toml" and path.is_file():
        from stilts_tui import plan as plans

        name = plans.load(path).name
        if name in known:
            return name
        raise UserError(f"plan '{name}' ({plan}) has not been queued in {ledger.path}")
    names = ", ".join(sorted(known)) or "none queued yet"
    raise UserError(f"unknown plan '{plan}' (plans in {ledger.path}: {names})")


def build(root: Path, plan: str, metric: str | None = None, by_seed: bool = False) -> ScoreTable:
    """The score table of a queued plan. Raises UserError for an unknown metric or no finished runs."""
    name = find_plan(root, plan)
    runs = [r for r in Ledger(root).runs(plan=name) if r["stage"] == "target"]
    runs.sort(key=lambda r: r.get("order", 0))
    results = {r["id"]: _read_result(root, r["id"]) for r in runs}
    done = [res for res in results.values() if res and res.get("status") == "done"]
    if not done:
        raise UserError(f"plan '{name}' has no finished target runs yet ({len(runs)} queued)")
    if metric is not None:
        available = sorted({k for res in done for k in (res.get("metrics") or {})})
        if metric not in available:
            raise UserError(f"--metric: '{metric}' is not in the runs' results (available: {', '.join(available)})")
    rows = list(dict.fromkeys(["none"] * any(r["intermediate"] == "none" for r in runs)
                              + [r["intermediate"] for r in runs]))
    targets = list(dict.fromkeys(r["name"] for r in runs))
    metrics = {}
    for r in runs:
        res = results[r["id"]]
        if res and res.get("status") == "done":
            metrics.setdefault(r["name"], metric or res.get("primary_metric") or "score")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["intermediate"], r["name"], r["seed"] if by_seed else None), []).append(r)
    cells = []
    for (inter, target, seed), members in groups.items():
        values = [v for v in (_value(results[m["id"]], metric) for m in members) if v is not None]
        cell = Cell(inter, target, seed, len(values), len(members) - len(values), values)
        if values:
            a = np.asarray(values, dtype=float)
            cell.mean, cell.std = float(a.mean()), float(a.std(ddof=0))
            cell.median, cell.max, cell.min = float(np.median(a)), float(a.max()), float(a.min())
            per_seed: dict = {}
            for m in members:
                v = _value(results[m["id"]], metric)
                if v is not None:
                    per_seed[m["seed"]] = max(per_seed.get(m["seed"], -np.inf), v)
            cell.best_of_grid = float(np.mean(list(per_seed.values())))
        cells.append(cell)
    for c in cells:
        base = next((b for b in cells if (b.intermediate, b.target, b.seed) == ("none", c.target, c.seed)), None)
        if c.intermediate != "none" and base is not None and c.values and base.values:
            c.gain = c.mean - base.mean
            c.gain_ci = bootstrap_gain(c.values, base.values)
            c.gain_significant = bool(c.gain_ci and (c.gain_ci[0] > 0 or c.gain_ci[1] < 0))
    return ScoreTable(name, metric or "primary", metrics, by_seed, rows, targets, cells)


# ---- exports -----------------------------------------------------------------------------------

CSV_FIELDS = ["intermediate", "target", "seed", "metric", "n", "missing", "mean", "std_ddof0", "median", "max",
              "min", "best_of_grid", "gain", "gain_ci_low", "gain_ci_high", "gain_significant"]


def _row_keys(t: ScoreTable) -> list[tuple[str, int | None]]:
    seeds = sorted({c.seed for c in t.cells if c.seed is not None}) if t.by_seed else [None]
    return [(r, s) for r in t.rows for s in seeds]


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def to_csv(t: ScoreTable) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_FIELDS)
    for c in t.cells:
        lo, hi = c.gain_ci or (None, None)
        w.writerow([c.intermediate, c.target, "" if c.seed is None else c.seed, t.metrics.get(c.target, ""), c.n,
                    c.missing, *("" if v is None else repr(v) for v in (c.mean, c.std, c.median, c.max, c.min,
                                                                          c.best_of_grid, c.gain, lo, hi)),
                    str(c.gain_significant).lower()])
    return out.getvalue()


def to_json(t: ScoreTable) -> str:
    cells = []
    for c in t.cells:
        d = asdict(c)
        d["std_ddof"] = 0
        d["metric"] = t.metrics.get(c.target)
        d["gain_ci"] = list(c.gain_ci) if c.gain_ci else None
        cells.append(d)
    return json.dumps({"plan": t.plan, "metric": t.metric, "metrics": t.metrics, "by_seed": t.by_seed,
                       "std": STD_NOTE, "bootstrap": BOOT, "rows": t.rows, "targets": t.targets,
                       "cells": cells}, indent=2)


def _cell_text(c: Cell | None, latex: bool = False) -> str:
    if c is None:
        return "–"
    if c.mean is None:
        return f"missing {c.missing}"
    pm = r"$\pm$" if latex else "±"
    text = f"{_pct(c.mean)} {pm} {_pct(c.std)}"
    if c.gain is not None:
        mark = (r"$^\dagger$" if latex else "†") if c.gain_significant else ""
        text += f" ({'+' if c.gain >= 0 else ''}{_pct(c.gain)}{mark})"
    text += f" n={c.n}" + (f"/{c.n + c.missing}" if c.missing else "")
    return text


def _row_label(inter: str, seed: int | None) -> str:
    return inter if seed is None else f"{inter} (seed {seed})"


def _legend(t: ScoreTable) -> str:
    return (f"{t.plan}: mean {'' if t.by_seed else 'over seeds x grid '}x100 ± std; (gain over 'none'); "
            f"† 95% bootstrap interval of the gain excludes 0; n=done/all; {STD_NOTE}")


def to_markdown(t: ScoreTable) -> str:
    head = ["from \\ target"] + [f"{tg} ({t.metrics.get(tg, '')})" for tg in t.targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for inter, seed in _row_keys(t):
        cells = [_cell_text(t.cell(inter, tg, seed)) for tg in t.targets]
        lines.append("| " + " | ".join([_row_label(inter, seed), *cells]) + " |")
    return "\n".join(lines) + f"\n\n{_legend(t)}\n"


def _tex(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(t: ScoreTable) -> str:
    lines = [f"% {_tex(_legend(t))}", r"\begin{tabular}{l" + "c" * len(t.targets) + "}", r"\toprule",
             " & ".join(["from"] + [_tex(f"{tg} ({t.metrics.get(tg, '')})") for tg in t.targets]) + r" \\",
             r"\midrule"]
    for inter, seed in _row_keys(t):
        cells = [_cell_text(t.cell(inter, tg, seed), latex=True).replace(" n=", r" \tiny{n=") for tg in t.targets]
        cells = [c + "}" if r"\tiny{" in c else c for c in cells]
        lines.append(" & ".join([_tex(_row_label(inter, seed)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_rich(t: ScoreTable):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{t.plan} — {t.metric} (x100), mean ± std over "
                  f"{'grid' if t.by_seed else 'seeds x grid'}; gain over 'none'", caption=STD_NOTE)
    table.add_column("from \\ target")
    for tg in t.targets:
        table.add_column(f"{tg}\n({t.metrics.get(tg, '')})", justify="right")
    for inter, seed in _row_keys(t):
        row = [Text(_row_label(inter, seed))]
        for tg in t.targets:
            c = t.cell(inter, tg, seed)
            style = ""
            if c is not None and c.gain is not None:
                style = ("bold green" if c.gain > 0 else "bold red") if c.gain_significant else (
                    "green" if c.gain > 0 else "red")
            row.append(Text(_cell_text(c), style=style))
        table.add_row(*row)
    return table


def to_png(t: ScoreTable, path: Path) -> None:
    """One panel per target: per-intermediate distributions (violin with the points), as the study's figure."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("png export needs matplotlib: pip install 'stilts-tui[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(t.targets)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False, dpi=100)
    rng = np.random.default_rng(0)
    for ax, tg in zip(axes[0], t.targets, strict=True):
        data = [(r, [100 * v for c in t.cells if c.target == tg and c.intermediate == r for v in c.values])
                for r in t.rows]
        data = [(r, v) for r, v in data if v]
        if data:
            pos = np.arange(1, len(data) + 1)
            parts = ax.violinplot([v for _, v in data], positions=pos, showmedians=True)
            for body in parts["bodies"]:
                body.set_alpha(0.35)
            for p, (_, v) in zip(pos, data, strict=True):
                ax.scatter(p + rng.uniform(-0.08, 0.08, len(v)), v, s=8, color="black", zorder=3)
            ax.set_xticks(pos, [r for r, _ in data], rotation=30, ha="right")
        ax.set_title(tg)
        ax.set_ylabel(f"{t.metrics.get(tg, t.metric)} (x100)")
    fig.suptitle(t.plan)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": f"{t.plan} scores", "Description": f"panels: {n}"})
    plt.close(fig)


def render(t: ScoreTable, fmt: str) -> str:
    return {"csv": to_csv, "md": to_markdown, "latex": to_latex, "json": to_json}[fmt](t)
