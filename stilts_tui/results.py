"""The score table of a plan: statistics per (intermediate, target) and its exports.

Ground truth is each run's ``result.json`` (a run is done when its result says so); the ledger
says which runs belong to the plan. Per cell, over the target's primary metric (or ``metric``)
pooled over seeds x grid: n, mean, std (population, ddof 0, as the reference computes it),
median, max, min; "best of grid" per seed averaged over seeds; the failed-run rate (runs at or
below the majority-class score of the target's dev set) with the mean without them; and the gain
over the "none" row: the difference of means with a seeded 95% bootstrap interval, and the paired
analysis over (seed, grid point) pairs: a paired bootstrap interval and an exact sign-flip test.
A cell is marked only when that test can reach the chosen level with the pairs it has. Runs not
done (or whose score is not a finite number) are counted as missing, never as zero.
Textual-free; matplotlib only for png. docs/results.md states every statistic.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stilts_tui.contract import SPEC_FILE, ResultStatus, Status
from stilts_tui.errors import UserError, first_line
from stilts_tui.estimate import predicted
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger
from stilts_tui.tasks.majority import REGRESSION_FAIL_THRESHOLD, is_failed, majority_score

FORMATS = ("table", "csv", "md", "latex", "json", "png", "pdf", "svg")
EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex", "json": "json", "png": "png", "pdf": "pdf", "svg": "svg"}
FIGURES = ("png", "pdf", "svg")  # drawn with matplotlib (the plot extra, which the demo extra includes)
FIGURE_DPI = 300  # print resolution for the png; pdf and svg are vector
MISSING_MATPLOTLIB = "figure export needs matplotlib, which is not installed: pip install 'stilts-tui[plot]'"
STD_NOTE = "std: population standard deviation (ddof 0), as the reference computes it"
BOOT = {"n_resamples": 10000, "confidence": 0.95, "seed": 0}
ALPHA = 0.05  # the test's default level (two-sided)
EXACT_MAX_PAIRS = 16  # up to 2^16 sign patterns enumerated; beyond, a seeded Monte Carlo
MC_RESAMPLES = 100_000
MC_SEED = 0
TOO_FEW = "too few pairs"
SETUP_KEYS = ("method", "lora", "precision", "tf32", "batching", "pad", "clip", "compile", "fused")
LORA_MARK = "LoRA"  # before a score: the cell's runs are LoRA runs (method = "lora"), not full fine-tunes


class WriteError(UserError):
    """An export could not be written (a full disk, a directory in the way): a failure, exit 1."""

    exit_code = 1


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
    gain: float | None = None  # mean(cell) - mean(none), all done runs
    gain_ci: tuple[float, float] | None = None  # bootstrap of that difference (unpaired resampling)
    gain_significant: bool = False  # the paired test's verdict is "significant"
    # failed runs: dev score at or below the majority-class score of the target's dev set
    majority: float | None = None
    failed: int | None = None
    failed_rate: float | None = None
    n_ok: int | None = None
    stopped: int = 0  # runs stopped as degenerate (stop_degenerate): always counted as failed
    pruned: int = 0  # runs a rank stage left out (never trained: among the missing, never counted as failed)
    mean_ok: float | None = None
    std_ok: float | None = None
    # the paired analysis over (seed, grid point) pairs with the "none" row
    pairs: int = 0
    paired_gain: float | None = None
    paired_ci: tuple[float, float] | None = None
    p_value: float | None = None
    test: str | None = None  # "exact" | "monte carlo"
    min_p: float | None = None  # the smallest p the exact test can give with these pairs
    verdict: str | None = None  # "significant" | "not significant" | "too few pairs"
    setups: list[dict] = field(default_factory=list, repr=False)  # distinct result["setup"]s recorded
    setup_note: str | None = None  # why the cell is marked "*": mixed setups, or not what the plan asked
    # the predicted order (stilts_tui.estimate.predicted): this starting point's rank for the target, 1 = best
    predicted_rank: int | None = None
    transferability: float | None = None  # its LogME score (higher: predicted better)

    @property
    def method(self) -> str | None:
        """ "full", "lora", or "full/lora" for a cell that mixes them (None: no setup recorded)."""
        methods = sorted({str(s.get("method", "full")) for s in self.setups})
        return "/".join(methods) or None

    keyed: dict = field(default_factory=dict, repr=False)  # (seed, grid) -> value, for pairing
    stopped_flags: list[bool] = field(default_factory=list, repr=False)  # per value: stopped as degenerate


@dataclass
class ScoreTable:
    plan: str
    metric: str  # the metric name, or "primary" when each target uses its own
    metrics: dict[str, str]  # target -> metric used
    by_seed: bool
    rows: list[str]
    targets: list[str]
    cells: list[Cell]
    alpha: float = ALPHA
    without_failed: bool = False  # show the mean and std without the failed runs
    notes: list[str] = field(default_factory=list)  # e.g. a majority score that could not be computed
    rankings: dict = field(default_factory=dict)  # target -> predicted.Ranking (a rank run or `stilts-tui rank`)

    def cell(self, intermediate: str, target: str, seed: int | None = None) -> Cell | None:
        for c in self.cells:
            if (c.intermediate, c.target, c.seed) == (intermediate, target, seed):
                return c
        return None


def _number(v: object) -> float | None:
    """A finite number, or None: a string, a bool, NaN or inf in a result is not a score."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


SCORED = (ResultStatus.DONE, ResultStatus.DEGENERATE)  # a degenerate run's score: its last evaluated epoch's


def _value(result: dict | None, metric: str | None) -> float | None:
    if not result or result.get("status") not in SCORED:
        return None
    if metric is None:
        return _number(result.get("score"))
    metrics = result.get("metrics")
    return _number(metrics.get(metric)) if isinstance(metrics, dict) else None


def bootstrap_gain(x: list[float], base: list[float], seed: int = BOOT["seed"]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of mean(x) - mean(base), repeatable for a seed."""
    return _bootstrap_gain(tuple(map(float, x)), tuple(map(float, base)), seed)


@functools.lru_cache(maxsize=4096)
def _bootstrap_gain(x: tuple[float, ...], base: tuple[float, ...], seed: int) -> tuple[float, float] | None:
    if len(x) < 2 or len(base) < 2:
        return None
    from scipy import stats

    res = stats.bootstrap(
        (np.asarray(x, float), np.asarray(base, float)),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=BOOT["n_resamples"],
        confidence_level=BOOT["confidence"],
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(d: list[float], seed: int = BOOT["seed"]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the mean paired difference (pairs resampled), seeded."""
    return _paired_bootstrap(tuple(float(x) for x in d), seed)


@functools.lru_cache(maxsize=4096)
def _paired_bootstrap(d: tuple[float, ...], seed: int) -> tuple[float, float] | None:
    if len(d) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical differences: a degenerate (but right) interval
        res = stats.bootstrap(
            (np.asarray(d, float),),
            np.mean,
            n_resamples=BOOT["n_resamples"],
            confidence_level=BOOT["confidence"],
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def sign_flip_test(d: list[float], seed: int = MC_SEED) -> tuple[float, str]:
    """Two-sided paired sign-flip permutation test of mean(d) = 0: (p, "exact" | "monte carlo").

    Exact: all 2^n sign patterns when n <= EXACT_MAX_PAIRS, p = #{|sum(s*d)| >= |sum(d)|} / 2^n.
    Otherwise MC_RESAMPLES seeded random patterns, p = (#{...} + 1) / (MC_RESAMPLES + 1). Sums that
    differ from the observed one by float rounding only (1e-9 of sum|d|) count as reaching it.
    (numpy rather than scipy.stats.permutation_test: the same p, a hundred times faster, which the app's
    reloads need; tests check both against each other.)
    """
    return _sign_flip(tuple(float(x) for x in d), seed)


@functools.lru_cache(maxsize=4096)
def _sign_flip(d: tuple[float, ...], seed: int) -> tuple[float, str]:
    a = np.asarray(d, float)
    n = len(a)
    if n < 2:  # one pair (or none): every sign pattern reaches |d|
        return 1.0, "exact"
    observed = abs(a.sum()) - 1e-9 * np.abs(a).sum()
    if n <= EXACT_MAX_PAIRS:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        return float(np.mean(np.abs(signs @ a) >= observed)), "exact"
    rng, hits, left = np.random.default_rng(seed), 0, MC_RESAMPLES
    while left:
        k = min(left, 10_000)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
        hits += int(np.sum(np.abs(signs @ a) >= observed))
        left -= k
    return (hits + 1) / (MC_RESAMPLES + 1), "monte carlo"


def min_attainable_p(d: list[float]) -> float:
    """The smallest two-sided p the exact sign-flip test can give: 2 / 2^m over the m nonzero pairs
    (zero differences cannot change sign), and 1 with none."""
    m = sum(1 for x in d if x != 0)
    return min(1.0, 2.0 / 2**m)


def paired(c: Cell, base: Cell, alpha: float) -> None:
    """Fill ``c``'s paired analysis from the runs it shares a (seed, grid point) with ``base``."""
    keys = [k for k in c.keyed if k in base.keyed]
    c.pairs = len(keys)
    if not keys:
        return
    d = [c.keyed[k] - base.keyed[k] for k in keys]
    c.paired_gain = float(np.mean(d))
    c.paired_ci = paired_bootstrap(d)
    c.min_p = min_attainable_p(d)
    c.p_value, c.test = sign_flip_test(d)
    if c.min_p > alpha and c.test == "exact":
        c.verdict = TOO_FEW
    else:
        c.verdict = "significant" if c.p_value < alpha else "not significant"
    c.gain_significant = c.verdict == "significant"


# ---- failed runs: the majority-class score of a target's dev set -------------------------------


def _failed(c: Cell, majority: float | None) -> None:
    c.majority = majority
    if majority is None or not c.values:
        return
    flags = c.stopped_flags or [False] * len(c.values)
    ok = [v for v, stopped in zip(c.values, flags, strict=True) if not stopped and not is_failed(v, majority)]
    c.failed = len(c.values) - len(ok)
    c.failed_rate = c.failed / len(c.values)
    c.n_ok = len(ok)
    if ok:
        c.mean_ok, c.std_ok = float(np.mean(ok)), float(np.std(ok, ddof=0))


# ---- training setups (result["setup"], written by the trainer) ---------------------------------


def _setup_of(result: dict | None) -> dict | None:
    setup = (result or {}).get("setup")
    if not isinstance(setup, dict):
        return None
    out = {k: setup.get(k) for k in SETUP_KEYS if k in setup}
    out.setdefault("method", "full")  # results written before LoRA runs existed are full fine-tunes
    return out


def _asked(spec: dict | None) -> dict:
    """The setup a run's plan asked for explicitly (not "auto")."""
    p = (spec or {}).get("params")
    p = p if isinstance(p, dict) else {}
    return {k: p[k] for k in ("precision", "batching", "pad", "clip") if p.get(k) not in (None, "auto")}


def _setup_note(setups: list[dict], off_plan: list[str]) -> str | None:
    notes = []
    if len(setups) > 1:
        differ = [k for k in SETUP_KEYS if len({json.dumps(s.get(k)) for s in setups}) > 1]
        notes.append("; ".join(f"{k} " + "/".join(sorted({str(s.get(k)) for s in setups})) for k in differ))
    if off_plan:
        notes.append("not as the plan asked: " + ", ".join(sorted(set(off_plan))))
    return "; ".join(notes) or None


# ---- the table ---------------------------------------------------------------------------------


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


def _well_formed(r: object) -> bool:
    """A ledger row the table can group: damaged rows are left out rather than crash the table."""
    return (
        isinstance(r, dict)
        and r.get("stage") == "target"
        and isinstance(r.get("id"), str)
        and isinstance(r.get("intermediate"), str)
        and isinstance(r.get("name"), str)
        and (r.get("seed") is None or isinstance(r.get("seed"), int))
    )


def _pair_key(r: dict) -> tuple:
    return r.get("seed"), json.dumps(r.get("grid") or {}, sort_keys=True, default=str)


def build(
    root: Path,
    plan: str,
    metric: str | None = None,
    by_seed: bool = False,
    alpha: float = ALPHA,
    without_failed: bool = False,
) -> ScoreTable:
    """The score table of a queued plan. Raises UserError for an unknown metric or no finished runs."""
    if not 0 < alpha < 1:
        raise UserError(f"--alpha: expected a level between 0 and 1, got {alpha}")
    name = find_plan(root, plan)
    every = Ledger(root).runs(plan=name)
    runs = [r for r in every if _well_formed(r)]
    runs.sort(key=lambda r: r["order"] if isinstance(r.get("order"), int) else 0)
    results = {r["id"]: rundir.read_run_file(root, r["id"]) for r in runs}
    done = [res for res in results.values() if res and res.get("status") == "done"]
    if not done:
        by: dict[str, int] = {}
        for r in runs:
            by[r["status"]] = by.get(r["status"], 0) + 1
        raise UserError(
            f"plan '{name}' has no finished target runs yet ("
            + ", ".join(f"{n} {st}" for st, n in sorted(by.items()))
            + ")"
        )
    if metric is not None:
        available = sorted({k for res in done if isinstance(res.get("metrics"), dict) for k in res["metrics"]})
        if metric not in available:
            raise UserError(f"--metric: '{metric}' is not in the runs' results (available: {', '.join(available)})")
    rows = list(
        dict.fromkeys(["none"] * any(r["intermediate"] == "none" for r in runs) + [r["intermediate"] for r in runs])
    )
    targets = list(dict.fromkeys(r["name"] for r in runs))
    metrics: dict[str, str] = {}
    for r in runs:
        res = results[r["id"]]
        if res and res.get("status") in SCORED:
            pm = res.get("primary_metric")
            metrics.setdefault(r["name"], metric or (pm if isinstance(pm, str) else "score"))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["intermediate"], r["name"], r["seed"] if by_seed else None), []).append(r)
    table = ScoreTable(name, metric or "primary", metrics, by_seed, rows, targets, [], alpha, without_failed)
    majority = _majorities(root, runs, metrics, table.notes)
    for (inter, target, seed), members in groups.items():
        table.cells.append(_cell(root, inter, target, seed, members, results, metric, majority.get(target)))
    for c in table.cells:
        base = table.cell("none", c.target, c.seed)
        if c.intermediate != "none" and base is not None and c.values and base.values:
            c.gain = c.mean - base.mean
            c.gain_ci = bootstrap_gain(c.values, base.values)
            paired(c, base, alpha)
    _predicted(table, root, every, runs)
    return table


def _predicted(table: ScoreTable, root: Path, every: list[dict], runs: list[dict]) -> None:
    """Each cell's predicted rank beside its measured mean, and each ranked target's Kendall's tau
    between the predicted and the measured order of its starting points (their means over every seed
    and grid point) once none of its runs is still to come."""
    for target, ranking in predicted.rankings(root, table.plan, every).items():
        if target not in table.targets:
            continue
        table.rankings[target] = ranking
        mine = [r for r in runs if r["name"] == target]
        points = []
        for inter in table.rows:
            parents = {r.get("parent") for r in mine if r["intermediate"] == inter}
            hits = [ranking.by_run[p] for p in parents if p in ranking.by_run]
            if not hits:
                continue
            rank, score = min(hits)
            cells = [c for c in table.cells if c.target == target and c.intermediate == inter]
            for c in cells:
                c.predicted_rank, c.transferability = rank, score
            values = [v for c in cells for v in c.values]
            if values:
                points.append((score, float(np.mean(values))))
        predicted.settle(ranking, mine, points)


def _cell(
    root: Path,
    inter: str,
    target: str,
    seed: int | None,
    members: list[dict],
    results: dict,
    metric: str | None,
    majority: float | None,
) -> Cell:
    values, keyed, setups, off_plan, per_seed, stopped = [], {}, [], [], {}, []
    for m in members:
        v = _value(results[m["id"]], metric)
        if v is None:
            continue
        values.append(v)
        stopped.append(results[m["id"]].get("status") == ResultStatus.DEGENERATE)
        keyed[_pair_key(m)] = v
        per_seed[m["seed"]] = max(per_seed.get(m["seed"], -np.inf), v)
        setup = _setup_of(results[m["id"]])
        if setup is not None:
            if setup not in setups:
                setups.append(setup)
            asked = _asked(rundir.read_run_file(root, m["id"], SPEC_FILE))
            off_plan += [f"{k} {asked[k]}->{setup.get(k)}" for k in asked if k in setup and setup[k] != asked[k]]
    cell = Cell(inter, target, seed, len(values), len(members) - len(values), values, keyed=keyed, setups=setups)
    cell.stopped, cell.stopped_flags = sum(stopped), stopped
    cell.pruned = sum(m.get("status") == Status.PRUNED for m in members)
    if values:
        a = np.asarray(values, dtype=float)
        cell.mean, cell.std = float(a.mean()), float(a.std(ddof=0))
        cell.median, cell.max, cell.min = float(np.median(a)), float(a.max()), float(a.min())
        cell.best_of_grid = float(np.mean(list(per_seed.values())))
    cell.setup_note = _setup_note(setups, off_plan)
    _failed(cell, majority)
    return cell


def _majorities(root: Path, runs: list[dict], metrics: dict[str, str], notes: list[str]) -> dict[str, float]:
    """Each target's majority-class score on its dev set (targets whose labels cannot be read: a note)."""
    out: dict[str, float] = {}
    for target, metric in metrics.items():
        specs = (rundir.read_run_file(root, r["id"], SPEC_FILE) for r in runs if r["name"] == target)
        spec = next((s for s in specs if s and isinstance(s.get("task"), dict)), None)
        if spec is None:
            notes.append(f"failed runs of {target}: no spec.json to find its dev set")
            continue
        params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
        limit = params.get("max_dev_samples") if isinstance(params.get("max_dev_samples"), int) else None
        value, why = majority_score(spec["task"], metric, limit)
        if value is None:
            notes.append(f"failed runs of {target}: majority-class score unknown: {why}")
        else:
            out[target] = value
    return out


# ---- exports -----------------------------------------------------------------------------------

CSV_FIELDS = [
    "intermediate",
    "target",
    "seed",
    "metric",
    "n",
    "missing",
    "mean",
    "std_ddof0",
    "median",
    "max",
    "min",
    "best_of_grid",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "gain_significant",
    "majority_score",
    "failed",
    "failed_rate",
    "mean_without_failed",
    "std_without_failed",
    "stopped",
    "pairs",
    "paired_gain",
    "paired_ci_low",
    "paired_ci_high",
    "p_value",
    "test",
    "min_attainable_p",
    "verdict",
    "setup_note",
    "method",
    "pruned",
    "predicted_rank",
    "transferability",
]


def _row_keys(t: ScoreTable) -> list[tuple[str, int | None]]:
    seeds = sorted({c.seed for c in t.cells if c.seed is not None}) if t.by_seed else [None]
    return [(r, s) for r in t.rows for s in seeds]


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _csv_value(v: object) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def to_csv(t: ScoreTable) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_FIELDS)
    for c in t.cells:
        lo, hi = c.gain_ci or (None, None)
        plo, phi = c.paired_ci or (None, None)
        w.writerow(
            [
                c.intermediate,
                c.target,
                "" if c.seed is None else c.seed,
                t.metrics.get(c.target, ""),
                c.n,
                c.missing,
                *map(_csv_value, (c.mean, c.std, c.median, c.max, c.min, c.best_of_grid, c.gain, lo, hi)),
                str(c.gain_significant).lower(),
                *map(
                    _csv_value,
                    (
                        c.majority,
                        c.failed,
                        c.failed_rate,
                        c.mean_ok,
                        c.std_ok,
                        c.stopped,
                        c.pairs,
                        c.paired_gain,
                        plo,
                        phi,
                        c.p_value,
                        c.test,
                        c.min_p,
                        c.verdict,
                        c.setup_note,
                        c.method,
                        c.pruned,
                        c.predicted_rank,
                        c.transferability,
                    ),
                ),
            ]
        )
    return out.getvalue()


def to_json(t: ScoreTable) -> str:
    cells = []
    for c in t.cells:
        d = asdict(c)
        d.pop("keyed")
        d.pop("stopped_flags")
        d["std_ddof"] = 0
        d["metric"] = t.metrics.get(c.target)
        d["gain_ci"] = list(c.gain_ci) if c.gain_ci else None
        d["paired_ci"] = list(c.paired_ci) if c.paired_ci else None
        d["mean_without_failed"], d["std_without_failed"] = d.pop("mean_ok"), d.pop("std_ok")
        d["n_without_failed"] = d.pop("n_ok")
        d["majority_score"] = d.pop("majority")
        d["min_attainable_p"] = d.pop("min_p")
        d["method"] = c.method
        cells.append(d)
    doc = {
        "plan": t.plan,
        "metric": t.metric,
        "metrics": t.metrics,
        "by_seed": t.by_seed,
        "std": STD_NOTE,
        "bootstrap": BOOT,
        "failed_rule": FAILED_NOTE,
        "test": test_note(t),
        "alpha": t.alpha,
        "without_failed": t.without_failed,
        "rows": t.rows,
        "targets": t.targets,
        "notes": t.notes,
        "cells": cells,
        "rankings": {
            target: {
                "method": rk.method,
                "examples": rk.examples,
                "source": rk.source,
                "kendall_tau": rk.tau,
                "tau_points": rk.tau_points,
                "pending": rk.pending,
            }
            for target, rk in t.rankings.items()
        },
    }
    return json.dumps(_finite(doc), indent=2, allow_nan=False)


def _finite(value: object) -> object:
    """JSON has no Infinity or NaN (a mean of scores near 1e308 overflows): such numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


FAILED_NOTE = (
    f"a run failed when its dev score is at or below the majority-class score of the target's dev "
    f"set (regression: at or below {REGRESSION_FAIL_THRESHOLD:g})"
)


def test_note(t: ScoreTable) -> str:
    return (
        f"gain paired by (seed, grid point) with 'none': two-sided sign-flip permutation test, exact up to "
        f"{EXACT_MAX_PAIRS} pairs, else {MC_RESAMPLES} seeded Monte Carlo patterns; marked at p < {t.alpha:g} "
        f"only where the pairs can reach it (smallest exact p 2/2^n), else '{TOO_FEW}'"
    )


def _shown(c: Cell, without_failed: bool) -> tuple[float | None, float | None]:
    return (c.mean_ok, c.std_ok) if without_failed and c.failed is not None else (c.mean, c.std)


def gain_text(c: Cell, dagger: str = "†") -> str:
    """The gain part of a cell: ``+20.0† p=0.031``, ``+2.0 p=0.41``, ``+20.0, too few pairs``."""
    if c.gain is None:
        return ""
    text = f"{'+' if c.gain >= 0 else ''}{_pct(c.gain)}"
    if c.verdict == TOO_FEW:
        return text + f", {TOO_FEW}"
    if c.verdict is not None:
        return text + (dagger if c.gain_significant else "") + f" p={c.p_value:.2g}"
    return text


def failed_text(c: Cell) -> str:
    stopped = f" ({c.stopped} stopped)" if c.stopped else ""
    return ("" if c.failed is None else f" fail {c.failed}/{c.n}{stopped}") + pruned_text(c)


def pruned_text(c: Cell) -> str:
    """ " (k pruned)" for a cell with runs a rank stage left out (they are among the missing), else ""."""
    return f" ({c.pruned} pruned)" if c.pruned else ""


LATEX_DAGGER = r"$^\dagger$"


def _cell_text(c: Cell | None, latex: bool = False, without_failed: bool = False) -> str:
    if c is None:
        return "–"
    if c.mean is None:
        return f"missing {c.missing}" + pruned_text(c) + predicted_text(c, latex)
    pm = r"$\pm$" if latex else "±"
    mean, std = _shown(c, without_failed)
    star = "*" if c.setup_note else ""
    mark = f"{LORA_MARK} " if c.method == "lora" else ""
    text = f"{mark}{_pct(mean)}{star} {pm} {_pct(std)}"
    if c.gain is not None:
        text += " (" + gain_text(c, LATEX_DAGGER if latex else "†") + ")"
    text += f" n={c.n}" + (f"/{c.n + c.missing}" if c.missing else "") + failed_text(c)
    return text + predicted_text(c, latex)


def predicted_text(c: Cell, latex: bool = False) -> str:
    """ " pred #k" for a cell whose starting point a ranking placed k-th for its target, else ""."""
    if c.predicted_rank is None:
        return ""
    hash_sign = "\\#" if latex else "#"
    return f" pred {hash_sign}{c.predicted_rank}"


def _row_label(inter: str, seed: int | None) -> str:
    return inter if seed is None else f"{inter} (seed {seed})"


def footnotes(t: ScoreTable) -> list[str]:
    """Lines under the table: mixed training setups, majority scores that could not be computed."""
    lines = []
    if any(c.method == "lora" for c in t.cells):
        lines.append(f'cells marked {LORA_MARK} are LoRA runs (method = "lora"); the others are full fine-tunes')
    mixed = [c for c in t.cells if c.setup_note]
    if mixed:
        lines.append(
            "cells marked * mix training setups: "
            + "; ".join(f"{_row_label(c.intermediate, c.seed)} -> {c.target}: {c.setup_note}" for c in mixed)
        )
    stopped = [c for c in t.cells if c.stopped]
    if stopped:
        lines.append(
            "runs stopped as degenerate (stop_degenerate; counted as failed, scored at the epoch they stopped): "
            + "; ".join(f"{_row_label(c.intermediate, c.seed)} -> {c.target}: {c.stopped}/{c.n}" for c in stopped)
        )
    pruned = [c for c in t.cells if c.pruned]
    if pruned:
        lines.append(
            "runs pruned by a rank stage (not trained: missing, never failed; `stilts-tui queue retry --pruned` "
            "trains them): "
            + "; ".join(
                f"{_row_label(c.intermediate, c.seed)} -> {c.target}: {c.pruned}/{c.n + c.missing}" for c in pruned
            )
        )
    return lines + rank_lines(t) + t.notes


def rank_lines(t: ScoreTable) -> list[str]:
    """Per ranked target: the predicted order (pred #k in the cells), where it comes from, and Kendall's
    tau against the measured order (or why not yet)."""
    out = []
    for target in t.targets:
        rk = t.rankings.get(target)
        if rk is None:
            continue
        cells = [c for c in t.cells if c.target == target and c.seed is None] or [
            c for c in t.cells if c.target == target
        ]
        order = sorted({(c.predicted_rank, c.intermediate) for c in cells if c.predicted_rank is not None})
        shown = ", ".join(f"#{k} {inter}" for k, inter in order)
        n = f" on its first {rk.examples} train examples" if rk.examples else ""
        if rk.tau is not None:
            verdict = f"Kendall's tau with the measured order {rk.tau:+.2f} over {rk.tau_points} starting points"
        elif rk.pending:
            verdict = f"Kendall's tau once its {rk.pending} runs still to come are done"
        else:
            verdict = f"Kendall's tau undefined ({rk.tau_points} starting points with a measured mean)"
        out.append(f"predicted order for {target} ({rk.method}{n}, {rk.source}): {shown}; {verdict}")
    return out


def _legend(t: ScoreTable) -> str:
    shown = "mean without failed runs" if t.without_failed else "mean"
    return (
        f"{t.plan}: {shown} {'' if t.by_seed else 'over seeds x grid '}x100 ± std; (gain of the mean over "
        f"'none'; † paired sign-flip test p < {t.alpha:g}; '{TOO_FEW}': the pairs cannot reach p < {t.alpha:g}); "
        f"n=done/all; fail k/n: {FAILED_NOTE}; {STD_NOTE}"
    )


def to_markdown(t: ScoreTable) -> str:
    head = ["from \\ target"] + [f"{tg} ({t.metrics.get(tg, '')})" for tg in t.targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for inter, seed in _row_keys(t):
        cells = [_cell_text(t.cell(inter, tg, seed), without_failed=t.without_failed) for tg in t.targets]
        lines.append("| " + " | ".join([_row_label(inter, seed), *cells]) + " |")
    return "\n".join(lines) + f"\n\n{_legend(t)}\n" + "".join(f"\n{line}\n" for line in footnotes(t))


def _tex(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(t: ScoreTable) -> str:
    lines = [
        f"% {_tex(_legend(t))}",
        *(f"% {_tex(line)}" for line in footnotes(t)),
        r"\begin{tabular}{l" + "c" * len(t.targets) + "}",
        r"\toprule",
        " & ".join(["from"] + [_tex(f"{tg} ({t.metrics.get(tg, '')})") for tg in t.targets]) + r" \\",
        r"\midrule",
    ]
    for inter, seed in _row_keys(t):
        cells = [
            _cell_text(t.cell(inter, tg, seed), latex=True, without_failed=t.without_failed).replace(
                " n=", r" \tiny{n="
            )
            for tg in t.targets
        ]
        cells = [c + "}" if r"\tiny{" in c else c for c in cells]
        lines.append(" & ".join([_tex(_row_label(inter, seed)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def gain_style(c: Cell | None) -> str:
    if c is None or c.gain is None:
        return ""
    return ("bold " if c.gain_significant else "") + ("green" if c.gain > 0 else "red")


def to_rich(t: ScoreTable):
    from rich.table import Table
    from rich.text import Text

    shown = "mean without failed runs" if t.without_failed else "mean"
    over = "grid" if t.by_seed else "seeds x grid"
    table = Table(
        title=Text(f"{t.plan} — {t.metric} (x100), {shown} ± std over {over}; gain over 'none'"),
        caption=Text("\n".join([_legend(t), *footnotes(t)])),
    )
    table.add_column("from \\ target")
    for tg in t.targets:
        table.add_column(Text(f"{tg}\n({t.metrics.get(tg, '')})"), justify="right")
    for inter, seed in _row_keys(t):
        row = [Text(_row_label(inter, seed))]
        for tg in t.targets:
            c = t.cell(inter, tg, seed)
            row.append(Text(_cell_text(c, without_failed=t.without_failed), style=gain_style(c)))
        table.add_row(*row)
    return table


class MissingDependency(UserError):
    """An optional dependency that is not installed: a failure of the installation, exit 1."""

    exit_code = 1


def figures_available() -> bool:
    """Can figures be drawn here (is matplotlib installed)?"""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def png_bytes(t: ScoreTable) -> bytes:
    return figure_bytes(t, "png")


def figure_bytes(t: ScoreTable, fmt: str = "png") -> bytes:
    """The study's figure: one panel per target; per starting point its runs' scores as points (with a
    box where there are enough of them), the mean, n, and the gain over "none" (dagger: the paired test
    says significant); a dotted line at the majority-class score (runs on or below it failed); a legend.
    ``fmt``: png (300 dpi), pdf or svg (vector)."""
    if not figures_available():
        raise MissingDependency(MISSING_MATPLOTLIB)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text stays text in vector figures (editable, searchable), fonts embedded as TrueType in the pdf
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        return _figure(plt, t, fmt)


def _figure(plt, t: ScoreTable, fmt: str) -> bytes:
    n = len(t.targets)
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 1.0 * max(2, len(t.rows)) * n, 3.8), squeeze=False)
    for ax, tg in zip(axes[0], t.targets, strict=True):
        _panel(ax, t, tg)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=len(seen), frameon=False, fontsize=8)
    fig.suptitle(f"{t.plan}: score of each run by starting point (gain: mean over none, † significant)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    failed = ", ".join(f"{c.intermediate}->{c.target} {c.failed}/{c.n}" for c in t.cells if c.failed)
    buf = io.BytesIO()
    meta = (
        {"Title": f"{t.plan} scores"}
        if fmt != "png"
        else {
            "Title": f"{t.plan} scores",
            "Description": f"panels: {n}",
            "Comment": f"failed runs (dotted line: majority class): {failed or 'none'}",
        }
    )
    fig.savefig(buf, format=fmt, dpi=FIGURE_DPI, metadata=meta)
    plt.close(fig)
    return buf.getvalue()


def _panel(ax, t: ScoreTable, target: str) -> None:
    """One target's panel: points, box (5 runs or more), mean, n and gain per starting point."""
    rng = np.random.default_rng(0)
    cells = [c for r in t.rows for c in t.cells if c.target == target and c.intermediate == r and c.values]
    pos = np.arange(1, len(cells) + 1)
    for p, c in zip(pos, cells, strict=True):
        v = [100 * x for x in c.values]
        if len(v) >= 5:
            ax.boxplot([v], positions=[p], widths=0.5, showfliers=False, medianprops={"color": "tab:blue"})
        ax.scatter(p + rng.uniform(-0.1, 0.1, len(v)), v, s=10, color="black", alpha=0.7, zorder=3, label="one run")
        ax.scatter([p], [100 * c.mean], marker="D", s=28, color="tab:red", zorder=4, label="mean")
        gain = (
            ""
            if c.gain is None or c.intermediate == "none"
            else f"\n{100 * c.gain:+.1f}{'†' if c.gain_significant else ''}"
        )
        pred = "" if c.predicted_rank is None else f"\npred #{c.predicted_rank}"
        ax.annotate(
            f"n={c.n}{gain}{pred}",
            (p, max(v)),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(pos, [c.intermediate for c in cells], rotation=30, ha="right")
    ax.set_xlim(0.4, len(cells) + 0.6)
    majority = next((c.majority for c in t.cells if c.target == target and c.majority is not None), None)
    if majority is not None:
        ax.axhline(
            100 * majority, color="grey", linestyle=":", linewidth=1, label="majority class (runs on or below: failed)"
        )
    ax.margins(y=0.2)
    rk = t.rankings.get(target)
    tau = f" (tau {rk.tau:+.2f} with {rk.method}'s order)" if rk is not None and rk.tau is not None else ""
    ax.set_title(target + tau, fontsize=9)
    ax.set_ylabel(f"{t.metrics.get(target, t.metric)} (x100)")


def to_png(t: ScoreTable, path: Path) -> None:
    write_output(Path(path), png_bytes(t), force=True)


def render(t: ScoreTable, fmt: str) -> str:
    return {"csv": to_csv, "md": to_markdown, "latex": to_latex, "json": to_json}[fmt](t)


def export_bytes(t: ScoreTable, fmt: str) -> bytes:
    return figure_bytes(t, fmt) if fmt in FIGURES else render(t, fmt).encode("utf-8")


# ---- where exports go --------------------------------------------------------------------------


def format_for(path: Path) -> str | None:
    """The export format a file name's extension names (``x.tex`` -> latex), or None."""
    ext = path.suffix.lower().lstrip(".")
    return next((f for f, e in EXTENSIONS.items() if e == ext or f == ext), None)


def safe_name(name: str) -> str:
    """A plan name as one file name: anything but letters, digits, '_', '-', '.' becomes '_', no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100]
    return cleaned or "plan"


def export_path(root: Path, plan: str, fmt: str) -> Path:
    """``<runs-dir>/exports/<plan>.<ext>``: inside the runs-dir whatever the plan name."""
    base = (Path(root) / "exports").resolve()
    path = (base / f"{safe_name(plan)}.{EXTENSIONS[fmt]}").resolve()
    if path.parent != base:  # cannot happen after safe_name; checked because it must never happen
        raise UserError(f"plan name '{plan}' does not make a file name under {base}")
    return path


def write_output(path: Path, data: bytes, force: bool = False) -> None:
    """Write ``data`` to exactly ``path``: atomically for a regular file (a temporary file beside it, then a
    rename), straight for a device or pipe (/dev/stdout). An existing regular file needs ``force``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"-o {path}: is a directory; give a file name")
    special = path.exists() and not path.is_file()
    if path.is_file() and not force:
        raise UserError(f"-o {path}: the file exists; add --force to overwrite it")
    try:
        if special:
            with open(path, "wb") as f:
                f.write(data)
            return
        if not path.parent.is_dir():
            raise UserError(f"-o {path}: no folder {path.parent}")
        rundir.write_atomic(path, [data])  # keeps an overwritten file's mode (mkstemp alone made it 0600)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
