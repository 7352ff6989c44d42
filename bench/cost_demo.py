"""The cost prediction against the real thing, on this machine's CPU (issue 27 item 3).

The demo plan (`stilts-tui demo`'s: 14 MiniLM runs) is run three times, each in its own runs-dir:
1. **history**: through the real daemon (``--cpu-slots 1 --worker-runs 4``), to give the box its
   figures (each run's timings in result.json and the ledger);
2. the prediction from that history (``stilts_tui.estimate.walltime``, what `plan show --cost` prints), for the
   queue with the same settings and for the reference loop;
3. **queue**: the plan again, fresh, through the daemon with the same settings: its elapsed time
   (daemon start to the last run's end) against the queue prediction;
4. **reference**: the plan again, fresh, one trainer process a run, one at a time in stage order (the
   reference's loop): its elapsed time against the reference prediction.
Also printed: the prediction before any history (none: nothing measured yet) and the per-stage estimate.
Goal: each prediction within 25 % of its measured run.

    python bench/cost_demo.py [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.cli import demo
from stilts_tui.contract import SETTLED
from stilts_tui.estimate import cost, walltime
from stilts_tui.queue import ops
from stilts_tui.store.ledger import Ledger

FLAGS = ["--cpu-slots", "1", "--worker-runs", "4", "--interval", "0.5"]
BOX = walltime.Box(gpu=False, devices=1, slots=1, worker_runs=4)
GOAL = 0.25


def through_daemon(root: Path, plan_path: Path) -> float:
    ops.add_plan(plan_path, root)
    t0 = time.time()
    ops.start_daemon(root, FLAGS)
    try:
        while not all(r["status"] in SETTLED for r in Ledger(root).runs()):
            time.sleep(0.5)
    finally:
        ops.stop_daemon(root)
    return time.time() - t0


def reference_loop(root: Path, plan_path: Path) -> float:
    """One process a run, one at a time, in the plan's order (parents first)."""
    _, runs, _ = ops.add_plan(plan_path, root)
    t0 = time.time()
    for r in runs:
        subprocess.run(
            [sys.executable, "-m", "stilts_tui.train", "--device", "cpu", str(root / r.id)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="work here instead of a temporary folder")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="stilts-cost-"))
    plan_path = demo.write_demo(work / "plans")
    plan, runs = plans.load_and_expand(plan_path)
    before = walltime.predict(plan, runs, walltime.Rates(), BOX)
    print(f"{len(runs)} runs; before any history (nothing measured: no number): " + fmt(before.seconds), flush=True)
    history_s = through_daemon(work / "history", plan_path)
    print(f"history: the plan through the daemon in {history_s:.1f} s", flush=True)
    rates = walltime.history(work / "history", "cpu")  # the CPU's runs (the trainer ran with --device cpu)
    pred = walltime.predict(plan, runs, rates, BOX)
    print("predicted from the history: " + fmt(pred.seconds) + f" ({'; '.join(pred.notes)})", flush=True)
    old = cost.estimate(plan, runs, cost.measured(work / "history"))
    print(f"the per-stage estimate from the same history: {old.total.seconds:.1f} s of run time", flush=True)
    measured = {
        "queue": through_daemon(work / "queue", plan_path),
        "reference": reference_loop(work / "reference", plan_path),
    }
    out = {"before": before.seconds, "predicted": pred.seconds, "measured": measured, "history_s": history_s}
    for mode, took in measured.items():
        err = pred.seconds[mode] / took - 1
        verdict = "met" if abs(err) <= GOAL else "NOT met"
        print(
            f"{mode}: predicted {pred.seconds[mode]:.1f} s, measured {took:.1f} s: {err:+.1%} (within 25 %: {verdict})"
        )
        out[f"{mode}_error"] = err
    statuses = {r["status"] for root in ("history", "queue") for r in Ledger(work / root).runs()}
    print(f"statuses: {sorted(statuses)}; work folder: {work}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


def fmt(seconds: dict) -> str:
    return ", ".join(f"{m} {'n/a' if v is None else f'{v:.1f} s'}" for m, v in seconds.items())


if __name__ == "__main__":
    main()
