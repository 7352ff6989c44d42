"""The score table of a plan: its target runs grouped into cells, each cell's statistics and gain.

Ground truth is each run's ``result.json`` (a run is done when its result says so); the ledger says which
runs belong to the plan. Per cell, over the target's primary metric (or ``metric``) pooled over seeds x
grid: n, mean, std (population, ddof 0, as the reference computes it), median, max, min; "best of grid"
per seed averaged over seeds; the failed-run rate (:mod:`.failed`); and the gain over the "none" row with
its intervals and paired test (:mod:`.stats`). Runs not done (or whose score is not a finite number) are
counted as missing, never as zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from stilts_tui.contract import SPEC_FILE, ResultStatus, Status
from stilts_tui.errors import UserError
from stilts_tui.estimate import predicted
from stilts_tui.results import notes
from stilts_tui.results.cell import ALPHA, SETUP_KEYS, Cell, ScoreTable
from stilts_tui.results.failed import majorities, mark_failed
from stilts_tui.results.stats import bootstrap_gain, paired
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.notes import note_of, tags_of


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


def _data_of(result: dict | None) -> tuple[str, ...] | None:
    """The fingerprints of the examples a run trained and was scored on (result["data"], written by the
    trainer: docs/tasks.md), or None for a result that recorded none."""
    data = (result or {}).get("data")
    if not isinstance(data, dict):
        return None
    prints = tuple(str(s.get("fingerprint")) for s in (data.get(k) for k in ("train", "dev")) if isinstance(s, dict))
    return prints or None


def _data_note(versions: list[tuple[str, ...]]) -> str | None:
    """A cell whose runs trained on different data says so, as a cell of mixed setups does."""
    if len(versions) < 2:
        return None
    return f"data differs between its runs ({len(versions)} versions: " + ", ".join("/".join(v) for v in versions) + ")"


def _setup_note(setups: list[dict], off_plan: list[str], data: list[tuple[str, ...]] | None = None) -> str | None:
    notes = [n] if (n := _data_note(data or [])) else []
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
    done = [res for res in results.values() if res and res.get("status") == ResultStatus.DONE]
    if not done:
        raise UserError(f"plan '{name}' has no finished target runs yet ({notes.status_counts(root, runs)})")
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
    plan_doc = Ledger(root).plans().get(name)
    table.plan_note, table.plan_tags = note_of(plan_doc), tags_of(plan_doc)
    majority = majorities(root, runs, metrics, table.notes)
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
    values, keyed, setups, off_plan, per_seed, stopped, data = [], {}, [], [], {}, [], []
    for m in members:
        v = _value(results[m["id"]], metric)
        if v is None:
            continue
        values.append(v)
        stopped.append(results[m["id"]].get("status") == ResultStatus.DEGENERATE)
        keyed[_pair_key(m)] = v
        per_seed[m["seed"]] = max(per_seed.get(m["seed"], -np.inf), v)
        version = _data_of(results[m["id"]])
        if version is not None and version not in data:
            data.append(version)
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
    cell.setup_note = _setup_note(setups, off_plan, data)
    mark_failed(cell, majority)
    return cell
