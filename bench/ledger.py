"""Ledger speed: add 1,000 / 10,000 runs, list them, update one run's status with 10,000 stored.

The reference, measured in the same invocation, is plain TinyDB with its default JSONStorage
(what a hand-rolled script would do: insert_multiple, all(), update by Query), without the
ledger's lock, atomic replace and fsync.

    python bench/ledger.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tinydb import Query, TinyDB

from stilts_tui import plan as plans
from stilts_tui.store.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def records(n: int) -> list[dict]:
    """n realistic run records: the reference plan's runs, repeated with fresh ids."""
    base = [r.record() for r in plans.load_and_expand(ROOT / "plans" / "chang_lu_2021.toml")[1]]
    return [{**base[i % len(base)], "id": f"{i:012x}", "order": i} for i in range(n)]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_stilts(n: int) -> dict:
    recs = records(n)
    with tempfile.TemporaryDirectory() as d:
        add = timed(lambda: Ledger(d).add_runs(recs))
        listing = timed(lambda: Ledger(d).runs())  # a fresh process's view: parse included
        ledger = Ledger(d)
        ledger.runs()
        target = recs[n // 2]["id"]
        updates = [timed(lambda: ledger.update(target, status="running")) for _ in range(20)]
        other = Ledger(d)  # another process's update after ours: must re-read the file
        cold = timed(lambda: other.update(target, status="done"))
    return {"add": add, "list": listing, "update": statistics.median(updates), "update_cold": cold}


def bench_tinydb(n: int) -> dict:
    recs = records(n)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "db.json"
        add = timed(lambda: TinyDB(path).table("runs").insert_multiple(recs))
        listing = timed(lambda: TinyDB(path).table("runs").all())
        table = TinyDB(path).table("runs")
        target = recs[n // 2]["id"]
        q = Query()
        updates = [timed(lambda: table.update({"status": "running"}, q.id == target)) for _ in range(5)]
    return {"add": add, "list": listing, "update": statistics.median(updates), "update_cold": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'runs':>6} {'op':<12} {'stilts (ms)':>12} {'plain TinyDB (ms)':>18} {'ratio':>7}")
    for n in (1000, 10000):
        s = [bench_stilts(n) for _ in range(args.repeat)]
        t = [bench_tinydb(n) for _ in range(args.repeat)]
        for op in ("add", "list", "update", "update_cold"):
            sv = statistics.median(x[op] for x in s) * 1000
            tv = statistics.median(x[op] for x in t) * 1000
            ratio = f"{tv / sv:6.1f}x" if tv == tv else "    -"
            print(f"{n:>6} {op:<12} {sv:>12.1f} {tv:>18.1f} {ratio:>7}")
    print(
        "targets: 10,000-run add < 2000 ms; status update < 20 ms; list < 200 ms "
        "(update_cold: another process's update, re-reading the file)"
    )


if __name__ == "__main__":
    main()
