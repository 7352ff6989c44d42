"""Every process its share of the CPU (issue 27 item 5): six MiniLM runs, two at a time against one at a
time, placed on one fake GPU and on the CPU by the real daemon, and started by hand the way a GPU
placement started them before each process got its share (torch's default pools, as wide as the machine).

The runs: the pretrained MiniLM on a generated two-topic task (bench/spend_less.py's), 3 seeds x 2
learning rates, 3 epochs with an evaluation each, every run its own process (``--worker-runs 1``: the
start-up counts, as it does for a reference loop). One run is trained first, untimed, so that no way
pays for a cold page cache. Each way in its own runs-dir, in one invocation:
- ``hand x1`` / ``hand x2``: ``python -m stilts_tui.train RUN_DIR`` one at a time / two at a time, with
  no thread settings (what a GPU placement was given before; the reference for the oversubscription);
- ``gpu x1`` / ``gpu x2``: the daemon on one fake GPU (``STILTS_FAKE_GPUS=1x24``: the GPU placement path,
  training on the CPU) with ``--per-gpu 1`` / ``2``;
- ``cpu x1`` / ``cpu x2``: the daemon without GPUs, ``--cpu-slots 1`` / ``2``.
Printed: each way's elapsed time (queue add excluded; daemon start to the last run's end), the ratio
two-at-a-time over one-at-a-time for each (goal for the daemon's ways: at most 1.0), the threads each run
recorded, and the largest difference of a run's score between ways (threads change float sums, not
the training).

    python bench/thread_share.py [--train 96] [--ways hand,gpu,cpu] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spend_less import MINILM, TARGETS, first_topic_rows  # noqa: E402

from stilts_tui import rundir  # noqa: E402
from stilts_tui.contract import SETTLED, THREADS_ENV, THREADS_WHY_ENV  # noqa: E402
from stilts_tui.queue import ops, threads  # noqa: E402
from stilts_tui.store.ledger import Ledger  # noqa: E402

PLAN = """name = "threads"
model = "{model}"
baseline = true
target_seeds = [1, 2, 3]
[defaults]
batch_size = 16
epochs = 3
max_len = 32
warmup = 0.1
[tasks.ab]
format = "jsonl"
train = "data/ab_train.jsonl"
dev = "data/ab_dev.jsonl"
kind = "classification"
text_fields = ["text"]
[target.ab]
task = "ab"
grid = {{ lr = [1e-4, 3e-4] }}
"""
# the variables a process's pools read: unset for the hand-started reference (torch's defaults)
POOL_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
    THREADS_ENV,
    THREADS_WHY_ENV,
)


def write_plan(folder: Path, n_train: int) -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    pair = TARGETS["ab"]
    for split, rows in (("train", first_topic_rows(n_train, 21, pair)), ("dev", first_topic_rows(64, 22, pair))):
        (data / f"ab_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = folder / "threads.toml"
    plan.write_text(PLAN.format(model=MINILM))
    return plan


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in (*POOL_VARS, "STILTS_FAKE_GPUS")}, **extra}


def by_hand(root: Path, at_once: int) -> float:
    """The queued runs' trainers started by hand, ``at_once`` at a time, with torch's default pools."""
    ids = [r["id"] for r in Ledger(root).runs()]
    t0 = time.time()
    for i in range(0, len(ids), at_once):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "stilts_tui.train", "--device", "cpu", str(root / rid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
            )
            for rid in ids[i : i + at_once]
        ]
        for p in procs:
            p.wait()
    return time.time() - t0


def through_daemon(root: Path, flags: list[str], fake_gpu: bool) -> float:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_env(**({"STILTS_FAKE_GPUS": "1x24"} if fake_gpu else {})))
    try:
        t0 = time.time()
        ops.start_daemon(root, [*flags, "--worker-runs", "1", "--interval", "0.5"])
        try:
            while not all(r["status"] in SETTLED for r in Ledger(root).runs()):
                time.sleep(0.5)
        finally:
            ops.stop_daemon(root)
        return time.time() - t0
    finally:
        os.environ.clear()
        os.environ.update(saved)


def one_way(work: Path, way: str, at_once: int, n_train: int) -> dict:
    folder = work / f"{way}-x{at_once}"
    plan = write_plan(folder / "plans", n_train)
    root = folder / "runs"
    ops.add_plan(plan, root)
    if way == "hand":
        elapsed = by_hand(root, at_once)
    elif way == "gpu":
        elapsed = through_daemon(root, ["--per-gpu", str(at_once)], fake_gpu=True)
    else:
        elapsed = through_daemon(root, ["--cpu-slots", str(at_once)], fake_gpu=False)
    runs = {}
    for r in Ledger(root).runs():
        res = rundir.read_run_file(root, r["id"]) or {}
        key = f"{r['params']['lr']:g}/s{r['seed']}"
        runs[key] = {"status": res.get("status"), "score": res.get("score"), "threads": res.get("threads")}
    return {"way": way, "at_once": at_once, "elapsed_s": round(elapsed, 1), "runs": runs}


def report(out: list[dict]) -> None:
    print(f"machine: {threads.cores()} cores, load {os.getloadavg()[0]:.2f} at the end")
    by = {(o["way"], o["at_once"]): o for o in out}
    for o in out:
        done = sum(r["status"] == "done" for r in o["runs"].values())
        pools = sorted({(r["threads"] or {}).get("intra_op") for r in o["runs"].values()}, key=str)
        print(
            f"{o['way']} x{o['at_once']}: {o['elapsed_s']:.1f} s for {len(o['runs'])} runs ({done} done), "
            f"intra-op threads {pools}"
        )
    for way in ("hand", "gpu", "cpu"):
        if (way, 1) in by and (way, 2) in by:
            ratio = by[(way, 2)]["elapsed_s"] / by[(way, 1)]["elapsed_s"]
            goal = "" if way == "hand" else f" (goal <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'})"
            print(f"{way}: two at a time / one at a time = {ratio:.2f}x the time{goal}")
    keys = set.intersection(*(set(o["runs"]) for o in out))
    diffs = [
        abs(a["runs"][k]["score"] - b["runs"][k]["score"])
        for k in keys
        for a in out
        for b in out
        if a["runs"][k]["score"] is not None and b["runs"][k]["score"] is not None
    ]
    print(f"largest score difference of one run between ways: {max(diffs, default=float('nan')):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=96)
    ap.add_argument("--ways", default="hand,gpu,cpu")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None)
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="stilts-threads-"))
    warm = work / "warm-up"  # one run first, not timed: the model's files and the imports in the page cache
    plan = write_plan(warm / "plans", a.train)
    ops.add_plan(plan, warm / "runs")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stilts_tui.train",
            "--device",
            "cpu",
            str(warm / "runs" / Ledger(warm / "runs").runs()[0]["id"]),
        ],
        stdout=subprocess.DEVNULL,
        check=False,
    )
    out = []
    for way in a.ways.split(","):
        for at_once in (1, 2):
            out.append(one_way(work, way, at_once, a.train))
            o = out[-1]
            print(f"  {way} x{at_once}: {o['elapsed_s']:.1f} s", flush=True)
    report(out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
