"""A whole grid through the queue daemon against the reference's loop of one process per run.

A 16-run grid (4 learning rates x 4 seeds, batch 16, 1 epoch) of a randomly initialised RoBERTa
(large by default) on synthetic RTE-like pairs (2,500 examples, lengths log-normal around 60
tokens, max_len 128). Reference: the runs one after another, each its own process, reference-style
(fp32, eager attention, pad to max_len; bench/reference_train.py). Stilts: `queue add` then the
daemon on one GPU (`--per-gpu`, `--worker-runs`, optional `--mps`). Wall time of each, start-up
included, their ratio, and the mean dev accuracy of both side by side.

    python bench/grid_throughput.py [--size large] [--runs 16] [--per-gpu 4] [--worker-runs 4] [--mps]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stilts_tui.ledger import Ledger
from stilts_tui.train import workload

HERE = Path(__file__).resolve().parent

PLAN = """name = "grid"
model = "{model}"
baseline = true
target_seeds = {seeds}
[defaults]
batch_size = {batch}
epochs = 1
max_len = {max_len}
warmup = 0.1
[tasks.pairs]
format = "jsonl"
train = "{train}"
dev = "{dev}"
kind = "classification"
text_fields = ["s1", "s2"]
label_field = "label"
labels = ["0", "1"]
[target.pairs]
task = "pairs"
grid = {{ lr = {lrs} }}
"""


def stilts(*args: str, root: Path) -> str:
    exe = Path(sys.executable).parent / "stilts-tui"
    out = subprocess.run([str(exe), "--runs-dir", str(root), *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"stilts-tui {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(workload.SIZES))
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--runs", type=int, default=16, help="a multiple of 4: 4 learning rates x runs/4 seeds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--per-gpu", type=int, default=4)
    ap.add_argument("--worker-runs", type=int, default=4)
    ap.add_argument("--mps", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stilts-grid-"))
    model = workload.build_model(work / "model", args.size)
    train, dev = workload.build_data(work / "data", args.samples, args.dev, max_len=args.max_len)
    plan = work / "grid.toml"
    plan.write_text(PLAN.format(model=model, seeds=list(range(1, args.runs // 4 + 1)), batch=args.batch,
                                max_len=args.max_len, train=train, dev=dev, lrs=[5e-6, 1e-5, 2e-5, 3e-5]))
    print(f"grid: {args.runs} runs of RoBERTa-{args.size} (random init), {args.samples} pairs, 1 epoch, batch "
          f"{args.batch}, max_len {args.max_len}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STILTS_NO_DAEMON": "1"}

    ref_wall = ref_acc = None
    if not args.skip_reference:
        ref_root = work / "reference"
        stilts("queue", "add", str(plan), "--no-daemon", root=ref_root)
        runs = Ledger(ref_root).runs()
        t = time.time()
        for r in runs:  # the reference's shell loop: one process per run, one after another
            subprocess.run([sys.executable, str(HERE / "reference_train.py"), str(ref_root / r["id"])], check=True,
                           env=env)
        ref_wall = time.time() - t
        ref_acc = statistics.mean(json.loads((ref_root / r["id"] / "reference.json").read_text())["dev_acc"]
                                  for r in runs)
        print(f"reference: {ref_wall:.1f} s, mean dev acc {ref_acc:.4f}", flush=True)

    root = work / "stilts"
    stilts("queue", "add", str(plan), "--no-daemon", root=root)
    daemon = ["daemon", "start", "--gpus", "0", "--per-gpu", str(args.per_gpu), "--worker-runs",
              str(args.worker_runs), "--interval", "0.5"] + (["--mps"] if args.mps else [])
    t = time.time()
    stilts(*daemon, root=root)
    try:
        while True:
            runs = Ledger(root).runs()
            if all(r["status"] in ("done", "failed", "cancelled", "blocked") for r in runs):
                break
            time.sleep(0.5)
        wall = time.time() - t
    finally:
        stilts("daemon", "stop", root=root)
    failed = [r["id"] for r in runs if r["status"] != "done"]
    acc = statistics.mean(r["score"] for r in runs if r["status"] == "done") if len(failed) < len(runs) else None
    print(f"stilts (daemon, per-gpu {args.per_gpu}, worker-runs {args.worker_runs}{', mps' if args.mps else ''}): "
          f"{wall:.1f} s, mean dev acc {acc}" + (f"; {len(failed)} runs not done: {failed}" if failed else ""))
    if ref_wall:
        print(f"ratio (reference wall / stilts wall): {ref_wall / wall:.2f}x; dev acc {ref_acc:.4f} vs {acc:.4f}")


if __name__ == "__main__":
    main()
