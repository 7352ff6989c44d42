"""A whole grid through the queue daemon against the reference's loop of one process per run.

A 16-run grid (4 learning rates x 4 seeds, batch 16, 1 epoch) of a randomly initialised RoBERTa
(large by default) on synthetic RTE-like pairs (2,500 examples, lengths log-normal around 60
tokens, max_len 128). Reference: the runs one after another, each its own process, reference-style
(fp32, eager attention, pad to max_len; bench/reference_train.py). Stilts: `queue add` then the
daemon on one GPU, in modes measured in the same invocation: `reference`, `queue` (processes packed
by `--per-gpu`, `--worker-runs` runs a process), `queue+mps` (the same under NVIDIA MPS; "n/a" with the
reason where MPS cannot start) and `fused` (the daemon with `--fuse K|auto`: ready runs of one shape
train as one array of stacked weights). Wall time of each, start-up included, the ratio to the
reference, each run's dev accuracy and how many runs learned, so speed and learning show side by side.

    python bench/grid_throughput.py [--size large] [--runs 16] [--modes reference,queue,queue+mps,fused]
                                    [--fuse auto] [--per-gpu 4] [--worker-runs 4] [--gpus 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stilts_tui.store.ledger import Ledger
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


MODES = ("reference", "queue", "queue+mps", "fused")
ENDED = ("done", "failed", "cancelled", "blocked")


def stilts(*args: str, root: Path) -> str:
    # the CLI as a module: a GPU box with the package on PYTHONPATH has no stilts-tui script
    out = subprocess.run(
        [sys.executable, "-m", "stilts_tui.cli", "--runs-dir", str(root), *args], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"stilts-tui {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def learned(scores: list[float], above: float = 0.75) -> str:
    """Short runs on this task either learn it (~0.95) or stay at chance (0.5): the count says more than a mean."""
    return f"{sum(s > above for s in scores)}/{len(scores)} runs above {above} (learned)"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(workload.SIZES))
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--runs", type=int, default=16, help="a multiple of 4: 4 learning rates x runs/4 seeds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="the model's dropout (default RoBERTa's 0.1); with 0 a fused run's score equals the run alone's",
    )
    ap.add_argument("--lrs", default="5e-6,1e-5,2e-5,3e-5", help="the grid's 4 learning rates")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--per-gpu", type=int, default=4)
    ap.add_argument("--worker-runs", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--fuse", default="auto", help="array size for the fused mode (auto: as many as fit a GPU)")
    ap.add_argument("--gpus", default="0", help="the daemon's --gpus (empty: the CPU)")
    ap.add_argument("--timeout", type=float, default=3600, help="give up on a mode after this many seconds")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or args.runs % 4:
        ap.error(f"--modes: unknown {bad}" if bad else "--runs: a multiple of 4")
    return args


def write_plan(work: Path, args: argparse.Namespace) -> Path:
    model = workload.build_model(work / "model", args.size, dropout=args.dropout)
    train, dev = workload.build_data(work / "data", args.samples, args.dev, max_len=args.max_len)
    plan = work / "grid.toml"
    plan.write_text(
        PLAN.format(
            model=model,
            seeds=list(range(1, args.runs // 4 + 1)),
            batch=args.batch,
            max_len=args.max_len,
            train=train,
            dev=dev,
            epochs=args.epochs,
            lrs=[float(x) for x in args.lrs.split(",")],
        )
    )
    return plan


def run_reference(plan: Path, root: Path) -> tuple[float, list[float]]:
    """The reference's shell loop: one process per run, one after another."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STILTS_NO_DAEMON": "1"}
    stilts("queue", "add", str(plan), "--no-daemon", root=root)
    runs = Ledger(root).runs()
    t = time.time()
    for r in runs:
        subprocess.run([sys.executable, str(HERE / "reference_train.py"), str(root / r["id"])], check=True, env=env)
    wall = time.time() - t
    return wall, [json.loads((root / r["id"] / "reference.json").read_text())["dev_acc"] for r in runs]


def mps_missing(args: argparse.Namespace) -> str | None:
    """Why MPS cannot run here, or None."""
    if not args.gpus:
        return "no GPU (the daemon runs on the CPU)"
    if shutil.which("nvidia-cuda-mps-control") is None:
        return "nvidia-cuda-mps-control not on PATH"
    return None


def wait_for(root: Path, timeout: float) -> list[dict]:
    """Poll the ledger until every run has ended (or the daemon died, or the timeout passed)."""
    from stilts_tui.queue import ops

    deadline = time.time() + timeout
    while True:
        runs = Ledger(root).runs()
        if all(r["status"] in ENDED for r in runs):
            return runs
        if time.time() > deadline or ops.daemon_status(root) is None:
            tail = (root / "daemon.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
            raise RuntimeError(f"runs not ended after {timeout:.0f} s or the daemon exited: {tail[0]}")
        time.sleep(0.5)


def run_daemon(plan: Path, root: Path, mode: str, args: argparse.Namespace) -> tuple[float, list[dict]]:
    """`queue add` then the daemon in one mode; wall time from the daemon's start to the last run's end."""
    stilts("queue", "add", str(plan), "--no-daemon", root=root)
    daemon = [
        "daemon",
        "start",
        "--per-gpu",
        str(args.per_gpu),
        "--worker-runs",
        str(args.worker_runs),
        "--interval",
        "0.5",
    ] + (["--gpus", args.gpus] if args.gpus else [])
    daemon += ["--mps"] if mode == "queue+mps" else ["--fuse", args.fuse] if mode == "fused" else []
    t = time.time()
    stilts(*daemon, root=root)
    try:
        runs = wait_for(root, args.timeout)
        return time.time() - t, runs
    finally:
        stilts("daemon", "stop", root=root)


def report(mode: str, wall: float, scores: list[float], ref_wall: float | None, extra: str = "") -> None:
    ratio = f", {ref_wall / wall:.2f}x the reference" if ref_wall else ""
    mean = f"{statistics.mean(scores):.4f}" if scores else "none"
    print(f"{mode}: {wall:.1f} s{ratio}; mean dev acc {mean}, {learned(scores)}{extra}", flush=True)
    print(f"  {mode} scores: {[round(s, 4) for s in scores]}", flush=True)


def daemon_mode(plan: Path, work: Path, mode: str, args: argparse.Namespace, ref_wall: float | None) -> None:
    why = mps_missing(args) if mode == "queue+mps" else None
    if why:
        print(f"{mode}: n/a (no MPS: {why})", flush=True)
        return
    try:
        wall, runs = run_daemon(plan, work / f"stilts-{mode.replace('+', '-')}", mode, args)
    except (SystemExit, RuntimeError) as e:
        if mode != "queue+mps":
            raise
        print(f"{mode}: n/a (no MPS: {e})", flush=True)
        return
    failed = [f"{r['id']} ({r['status']})" for r in runs if r["status"] != "done"]
    arrays = sorted({r.get("fused") or 1 for r in runs}, reverse=True)
    how = f"fuse {args.fuse}, array sizes {arrays}" if mode == "fused" else f"per-gpu {args.per_gpu}"
    report(
        f"{mode} ({how})",
        wall,
        [r["score"] for r in runs if r["status"] == "done"],
        ref_wall,
        f"; {len(failed)} runs not done: {failed}" if failed else "",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stilts-grid-"))
    plan = write_plan(work, args)
    print(
        f"grid: {args.runs} runs of RoBERTa-{args.size} (random init), {args.samples} pairs, {args.epochs} epochs, "
        f"lrs {args.lrs}, batch {args.batch}, max_len {args.max_len}, modes {','.join(args.modes)}",
        flush=True,
    )
    ref_wall = None
    if "reference" in args.modes:
        ref_wall, scores = run_reference(plan, work / "reference")
        report("reference (one process a run)", ref_wall, scores, None)
    for mode in [m for m in args.modes if m != "reference"]:
        daemon_mode(plan, work, mode, args, ref_wall)


if __name__ == "__main__":
    main()
