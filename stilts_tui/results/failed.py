"""The failed-run rule of the score table: a run failed when its dev score is at or below the majority-class
score of its target's dev set (the rule the trainer's stop_degenerate shares: stilts_tui.tasks.majority).
A run stopped as degenerate always counts as failed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stilts_tui.contract import SPEC_FILE
from stilts_tui.results.cell import Cell
from stilts_tui.store import rundir
from stilts_tui.tasks.majority import REGRESSION_FAIL_THRESHOLD, is_failed, majority_score

FAILED_NOTE = (
    f"a run failed when its dev score is at or below the majority-class score of the target's dev "
    f"set (regression: at or below {REGRESSION_FAIL_THRESHOLD:g})"
)


def mark_failed(c: Cell, majority: float | None) -> None:
    """Count ``c``'s failed runs against its target's ``majority`` score (stopped ones always fail), and its
    mean and std without them."""
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


def majorities(root: Path, runs: list[dict], metrics: dict[str, str], notes: list[str]) -> dict[str, float]:
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
