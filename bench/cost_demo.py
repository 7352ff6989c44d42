"""The cost estimate against the real thing: the demo plan's estimate before it is queued (defaults:
nothing measured yet), then the plan run to the end by the real daemon on this machine's CPU, then the
actual device time (sum of the runs' wall_seconds) and elapsed time, and the estimate again from the
throughput those runs measured.

    python bench/cost_demo.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from stilts_tui import cost, demo
from stilts_tui import plan as plans
from stilts_tui.ledger import Ledger
from stilts_tui.queue import ops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, default=None, help="work here instead of a temporary folder")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="stilts-cost-"))
    root = work / "runs"
    plan_path = demo.write_demo(work / "plans")
    plan, runs = plans.load_and_expand(plan_path)
    before = cost.estimate(plan, runs, cost.measured(root))
    print(
        f"before queuing: {len(runs)} runs, {before.total.steps} steps, "
        f"{before.total.seconds:.0f} s estimated ({'; '.join(before.notes)})"
    )
    ops.add_plan(plan_path, root)
    t0 = time.time()
    ops.start_daemon(root, ["--cpu-slots", "1", "--worker-runs", "4", "--interval", "0.5"])
    try:
        while any(r["status"] in ("queued", "running") for r in Ledger(root).runs()):
            time.sleep(1.0)
    finally:
        ops.stop_daemon(root)
    elapsed = time.time() - t0
    led = Ledger(root).runs()
    walls = [json.loads((root / r["id"] / "result.json").read_text()).get("wall_seconds") or 0 for r in led]
    after = cost.estimate(plan, runs, cost.measured(root))
    print(f"statuses: {sorted({r['status'] for r in led})}")
    print(
        f"actual: {sum(walls):.0f} s of run time (sum of wall_seconds), {elapsed:.0f} s elapsed "
        f"from daemon start to the last run's end"
    )
    print(
        f"estimate before (defaults): {before.total.seconds:.0f} s; estimate after (measured): "
        f"{after.total.seconds:.0f} s ({'; '.join(after.notes)})"
    )
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
