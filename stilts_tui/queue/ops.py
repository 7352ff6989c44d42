"""Client-side queue operations on the ledger and run folders (no daemon needed)."""

from __future__ import annotations

import time
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui import rundir
from stilts_tui.errors import UserError
from stilts_tui.ledger import Ledger


def add_plan(plan_path: str | Path, root: Path, priority: int = 0) -> tuple[plans.Plan, list, list[str]]:
    """Queue every run of a plan that the ledger does not hold yet.

    Each new run's folder and ``spec.json`` are written before the ledger records it, so a queued
    run always has a spec (and can be rerun by hand with ``python -m stilts_tui.train RUN_DIR``).
    """
    plan, runs = plans.load_and_expand(plan_path)
    missing = plans.missing_data(plan, runs)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(missing[0] + more)
    ledger = Ledger(root)
    known = {r["id"] for r in ledger.runs(plan=plan.name)}
    fresh = [r for r in runs if r.id not in known]
    for r in fresh:
        rundir.write_json_atomic(rundir.run_dir(root, r.id) / "spec.json", plans.spec_for(r, plan, root))
    added = ledger.add_runs([r.record() for r in fresh], priority=priority)
    ledger.set_plan(plan.name, {"file": str(plan.path), "updated": time.time(), "runs": len(runs)})
    return plan, runs, added
