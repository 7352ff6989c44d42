"""Queue tick time with 1,000 and 10,000 queued runs.

The tick reads the ledger, reaps, blocks/unblocks and tries to place every ready run; here every
run is ready and none fits (fake 1 GiB GPUs), so the tick scans them all: the worst case. The
reference, in the same invocation, is the naive tick a script would write with TinyDB queries
(a search per status, a parent lookup per run).

    python bench/queue_tick.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tinydb import Query, TinyDB

from stilts_tui.contract import SPEC_FILE, TRAINING_DEFAULTS
from stilts_tui.queue.daemon import Daemon, Settings
from stilts_tui.store.ledger import KeyedTable, Ledger


def fill(root: Path, n: int) -> None:
    """n queued runs: a tenth of them intermediates, the rest their children; each with a spec."""
    recs = []
    for i in range(n):
        parent = None if i % 10 == 0 else f"{(i // 10) * 10:012x}"
        recs.append(
            {
                "id": f"{i:012x}",
                "plan": "bench",
                "stage": "target" if parent else "intermediate",
                "name": "t",
                "task": "rte",
                "intermediate": "i",
                "seed": 1,
                "params": {"batch_size": 16},
                "grid": {},
                "parent": parent,
                "order": i,
            }
        )
        d = root / f"{i:012x}"
        d.mkdir()
        spec = {
            "stage": recs[-1]["stage"],
            "model": {"name": "roberta-large"},
            "task": {"kind": "classification"},
            "params": {**TRAINING_DEFAULTS, "batch_size": 16, "max_len": 128},
        }
        (d / SPEC_FILE).write_text(json.dumps(spec))
    Ledger(root).add_runs(recs)


def naive_tick(db_path: Path) -> None:
    db = TinyDB(db_path)
    db.table_class = KeyedTable  # run ids as document ids
    table = db.table("runs")
    q = Query()
    table.search(q.status == "running")
    for r in table.search(q.status == "queued"):
        if r.get("parent"):
            table.get(q.id == r["parent"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ["STILTS_FAKE_GPUS"] = "2x1"
    print(f"{'queued':>7} {'stilts tick (ms)':>17} {'naive TinyDB tick (ms)':>23} {'ratio':>7}")
    for n in (1000, 10000):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            fill(root, n)
            daemon = Daemon(root, Settings(per_gpu=4))
            daemon.tick()  # first tick reads the specs once (they are cached after)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                stats = daemon.tick()
                times.append(time.perf_counter() - t)
            assert stats["launched"] == 0
            ours = statistics.median(times) * 1000
            if n > 1000:  # the naive tick is quadratic: ~100x its 1,000-run time, not worth the wait
                print(f"{n:>7} {ours:>17.1f} {'(skipped: quadratic)':>23} {'-':>7}")
                continue
            t = time.perf_counter()
            naive_tick(root / "ledger.json")
            ref = (time.perf_counter() - t) * 1000
            print(f"{n:>7} {ours:>17.1f} {ref:>23.1f} {ref / ours:>6.0f}x")
    print("target: a tick with 1,000 queued runs well under 100 ms")


if __name__ == "__main__":
    main()
