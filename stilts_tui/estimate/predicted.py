"""The predicted order of each target's starting points (LogME from frozen features) beside the measured
one: where the score table finds a ranking, and Kendall's tau between the two once a target's runs are
done. No torch.

A target's ranking comes from the plan's own rank run for it (``rank = { top = K }``: its result.json),
else from the last ``stilts-tui rank`` of the plan (saved beside the rank cache, one file a plan,
:func:`save`). Everything read back is checked: a damaged file is no ranking, never an error.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import RANK_METHOD, RANK_STAGE, SETTLED, Status
from stilts_tui.store import rundir

SAVED_DIR = ".cache/rank-plans"  # one file a plan, beside the per-job cache of rank_cache (.cache/rank)


@dataclass
class Ranking:
    """One target's predicted order: each starting point's rank (1 = predicted best) and score, by the
    starting point's intermediate run id (None: the plan's model, "none")."""

    target: str
    method: str
    examples: int | None
    source: str  # "rank run ID" | "stilts-tui rank"
    by_run: dict[str | None, tuple[int, float]] = field(default_factory=dict)
    tau: float | None = None  # Kendall's tau, predicted vs measured order, once the target's runs are done
    tau_points: int = 0  # the starting points it compares (those with both a prediction and a mean)
    pending: int = 0  # the target's runs not settled yet (no tau until 0)


def _saved_path(root: Path, plan: str) -> Path:
    return root / SAVED_DIR / f"plan-{hashlib.sha256(plan.encode()).hexdigest()[:20]}.json"


def save(root: Path, doc: dict) -> None:
    """Keep a ``stilts-tui rank`` answer (its --json document) for the plan's score table: per target,
    the newest replaces the older (a ``--target`` run changes only its target)."""
    from filelock import FileLock

    path = _saved_path(root, doc["plan"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        old = rundir.read_json(path)
        targets = old.get("targets") if isinstance(old, dict) and old.get("plan") == doc["plan"] else None
        targets = targets if isinstance(targets, dict) else {}
        for t in doc["targets"]:
            targets[t["target"]] = {**t, "method": doc["method"], "t": time.time()}
        rundir.write_json_atomic(path, {"version": 1, "plan": doc["plan"], "targets": targets})


def _entries(value: object) -> dict[str | None, tuple[int, float]] | None:
    """A ranking list as {run id: (rank, score)}, or None when any entry is not what a ranking holds."""
    if not isinstance(value, list) or not value:
        return None
    out: dict[str | None, tuple[int, float]] = {}
    for e in value:
        if not isinstance(e, dict):
            return None
        rank, score, run = e.get("rank"), e.get("score"), e.get("run_id")
        if type(rank) is not int or rank < 1 or isinstance(score, bool) or not isinstance(score, (int, float)):
            return None
        if not math.isfinite(score) or not (run is None or (type(run) is str and rundir.RUN_ID_RE.fullmatch(run))):
            return None
        out[run] = (rank, float(score))
    return out


def _examples(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


def from_rank_runs(root: Path, runs: list[dict]) -> dict[str, Ranking]:
    """Each target's ranking from the plan's done rank runs (the newest when a target has several)."""
    out: dict[str, Ranking] = {}
    done = [r for r in runs if r.get("stage") == RANK_STAGE and r.get("status") == Status.DONE]
    for r in sorted(done, key=lambda r: r.get("finished") if isinstance(r.get("finished"), (int, float)) else 0):
        res = rundir.read_run_file(root, r["id"])
        entries = _entries(res.get("ranking")) if isinstance(res, dict) else None
        if entries is None or not isinstance(r.get("name"), str):
            continue
        method = res.get("method") if isinstance(res.get("method"), str) else RANK_METHOD
        out[r["name"]] = Ranking(r["name"], method, _examples(res.get("examples")), f"rank run {r['id']}", entries)
    return out


def from_saved(root: Path, plan: str) -> dict[str, Ranking]:
    """Each target's ranking from the plan's last ``stilts-tui rank``."""
    doc = rundir.read_json(_saved_path(root, plan))
    if not isinstance(doc, dict) or doc.get("plan") != plan or not isinstance(doc.get("targets"), dict):
        return {}
    out = {}
    for name, t in doc["targets"].items():
        entries = _entries(t.get("ranking")) if isinstance(t, dict) else None
        if entries is None:
            continue
        method = t.get("method") if isinstance(t.get("method"), str) else RANK_METHOD
        out[name] = Ranking(name, method, _examples(t.get("examples")), "stilts-tui rank", entries)
    return out


def rankings(root: Path, plan: str, runs: list[dict]) -> dict[str, Ranking]:
    """The table's rankings: the plan's rank run for a target, else its last ``stilts-tui rank``."""
    return {**from_saved(root, plan), **from_rank_runs(root, runs)}


def kendall_tau(predicted: list[float], measured: list[float]) -> float | None:
    """Kendall's tau-b (scipy.stats.kendalltau) of two orders; None under 2 points or when one is flat."""
    if len(predicted) < 2:
        return None
    import warnings

    from scipy.stats import kendalltau

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant input: tau is undefined (NaN), said as None
        tau = kendalltau(predicted, measured).statistic
    return float(tau) if math.isfinite(tau) else None


def settle(ranking: Ranking, target_runs: list[dict], points: list[tuple[float, float]]) -> None:
    """Set the ranking's tau from (predicted score, measured mean) points, once none of the target's
    runs is still to come (queued, running); else only count what is pending."""
    ranking.pending = sum(r.get("status") not in SETTLED for r in target_runs)
    if ranking.pending:
        return
    ranking.tau_points = len(points)
    ranking.tau = kendall_tau([p for p, _ in points], [m for _, m in points])
