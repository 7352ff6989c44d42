"""A whole grid through the queue daemon against the reference's loop of one process per run.

A 16-run grid (4 learning rates x 4 seeds, batch 16, 1 epoch) of a randomly initialised RoBERTa
(large by default) on synthetic RTE-like pairs (2,500 examples, lengths log-normal around 60
tokens, max_len 128). Reference: the runs one after another, each its own process, reference-style
(fp32, eager attention, pad to max_len; bench/reference_train.py). Stilts: `queue add` then the
daemon on one GPU, in one or more modes measured in the same invocation: `queue` (processes packed
by `--per-gpu`, `--worker-runs` runs a process, optional `--mps`) and `fused` (the same daemon with
`--fuse K|auto`: ready runs of one shape train as one array of stacked weights). Wall time of each,
start-up included, the ratio to the reference, and the mean dev accuracy side by side.

    python bench/grid_throughput.py [--size large] [--runs 16] [--modes queue,fused] [--fuse auto]
                                    [--per-gpu 4] [--worker-runs 4] [--mps]
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
epochs = {epochs}
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


def learned(scores: list[float], above: float = 0.75) -> str:
    """Short runs on this task either learn it (~0.95) or stay at chance (0.5): the count says more than a mean."""
    return f"{sum(s > above for s in scores)}/{len(scores)} runs above {above} (learned)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(workload.SIZES))
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--runs", type=int, default=16, help="a multiple of 4: 4 learning rates x runs/4 seeds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=None, help="the model's dropout (default RoBERTa's 0.1); "
                    "with 0 a fused run's score equals the run alone's")
    ap.add_argument("--lrs", default="5e-6,1e-5,2e-5,3e-5", help="the grid's 4 learning rates")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--per-gpu", type=int, default=4)
    ap.add_argument("--worker-runs", type=int, default=4)
    ap.add_argument("--mps", action="store_true")
    ap.add_argument("--modes", default="queue,fused", help="comma-separated: queue, fused")
    ap.add_argument("--fuse", default="auto", help="array size for the fused mode (auto: as many as fit a GPU)")
    ap.add_argument("--gpus", default="0", help="the daemon's --gpus (empty: the CPU)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="stilts-grid-"))
    model = workload.build_model(work / "model", args.size, dropout=args.dropout)
    train, dev = workload.build_data(work / "data", args.samples, args.dev, max_len=args.max_len)
    plan = work / "grid.toml"
    plan.write_text(PLAN.format(model=model, seeds=list(range(1, args.runs // 4 + 1)), batch=args.batch,
                                max_len=args.max_len, train=train, dev=dev, epochs=args.epochs,
                                lrs=[float(x) for x in args.lrs.split(",")]))
    print(f"grid: {args.runs} runs of RoBERTa-{args.size} (random init), {args.samples} pairs, {args.epochs} epochs, "
          f"lrs {args.lrs}, batch "
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
        ref_scores = [json.loads((ref_root / r["id"] / "reference.json").read_text())["dev_acc"] for r in runs]
        ref_acc = statistics.mean(ref_scores)
        print(f"reference: {ref_wall:.1f} s, mean dev acc {ref_acc:.4f}, {learned(ref_scores)}", flush=True)

    results = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        root = work / f"stilts-{mode}"
        stilts("queue", "add", str(plan), "--no-daemon", root=root)
        daemon = ["daemon", "start", "--per-gpu", str(args.per_gpu), "--worker-runs", str(args.worker_runs),
                  "--interval", "0.5"] + (["--gpus", args.gpus] if args.gpus else []) + (["--mps"] if args.mps else [])
        if mode == "fused":
            daemon += ["--fuse", args.fuse]
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
        arrays = sorted({(r.get("worker"), r.get("fused") or 1) for r in runs}, key=lambda x: -x[1])
        how = (f"fuse {args.fuse}: arrays of {[k for _, k in arrays if k > 1] or 'none'}" if mode == "fused"
               else f"per-gpu {args.per_gpu}, worker-runs {args.worker_runs}")
        results[mode] = (wall, acc)
        scores = [r["score"] for r in runs if r["status"] == "done"]
        print(f"stilts {mode} ({how}{', mps' if args.mps else ''}): {wall:.1f} s, mean dev acc {acc}, {learned(scores)}"
              + (f"; {len(failed)} runs not done: {failed}" if failed else ""), flush=True)
    for mode, (wall, acc) in results.items():
        if ref_wall and acc is not None:
            print(f"{mode}: ratio (reference wall / stilts wall) {ref_wall / wall:.2f}x; mean dev acc reference "
                  f"{ref_acc:.4f} vs stilts {acc:.4f}")


if __name__ == "__main__":
    main()
