"""Trainer throughput: the stilts trainer against a reference-style loop, in one invocation.

Workload: a randomly initialised RoBERTa (large by default) on synthetic RTE-like pairs (lengths
log-normal around 60 tokens, max_len 128, batch 16). Reference: fp32, eager attention, pad to
max_len, one process per run (bench/reference_train.py). Stilts: ``python -m stilts_tui.train``
with all runs in one process. Prints steady-state samples/s of each and their ratio, the wall time
of N runs start-up included and that ratio, and the final training losses side by side.

    python bench/trainer_throughput.py [--size large] [--samples 2500] [--runs 4] [--modes inductor]
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

from stilts_tui.train import workload

HERE = Path(__file__).resolve().parent


def stilts_steady_rate(run_dirs: list[Path]) -> float:
    """Median samples/s of the step events of every run but the first (which pays compilation)."""
    rates = []
    for d in run_dirs[1:] or run_dirs:
        events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
        steps = [e["samples_per_s"] for e in events if e["event"] == "step"]
        rates.extend(steps[len(steps) // 5 :] if len(run_dirs) == 1 else steps[1:])
    return statistics.median(rates) if rates else float("nan")


def final_loss(run_dir: Path) -> float:
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    return statistics.mean(losses[-3:]) if losses else float("nan")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(workload.SIZES))
    ap.add_argument("--samples", type=int, default=2500)
    ap.add_argument("--dev", type=int, default=500)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--modes", default="auto", help="stilts compile modes to measure, comma separated")
    ap.add_argument("--pad", default="auto")
    ap.add_argument("--warm", action="store_true", help="also rerun the first mode with a warm compile cache")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return ap.parse_args()


def run_reference(work: Path, model: Path, task: dict, params: list[dict], env: dict) -> dict:
    """The reference loop: one process per run, one after another."""
    runs = len(params)
    ref_dirs = [workload.write_run(work / "reference", f"ref{i:09d}", model, task, params[i], 42) for i in range(runs)]
    t = time.time()
    for d in ref_dirs:
        subprocess.run([sys.executable, str(HERE / "reference_train.py"), str(d)], check=True, env=env)
    ref_wall = time.time() - t
    ref = [json.loads((d / "reference.json").read_text()) for d in ref_dirs]
    figures = {
        "wall_s": ref_wall,
        "samples_per_s": statistics.median(r["samples_per_s"] for r in ref),
        "final_loss": [r["final_loss"] for r in ref],
        "dev_acc": [r["dev_acc"] for r in ref],
        "peak_gpu_mem_gb": ref[0]["peak_gpu_mem_gb"],
    }
    print(f"reference: {ref_wall:.1f} s for {runs} runs, {figures['samples_per_s']:.1f} samples/s steady", flush=True)
    return figures


def run_stilts(
    work: Path, model: Path, task: dict, params: list[dict], env: dict, args: argparse.Namespace, figures: dict
) -> None:
    """The stilts trainer, one process for all the runs, in each compile mode asked for."""
    modes = args.modes.split(",")
    runs_plan = [(m, f"stilts-{m}", None) for m in modes]
    if args.warm:
        runs_plan.append((modes[0], f"stilts-{modes[0]}-warm", work / f"stilts-{modes[0]}" / ".cache"))
    for mode, name, cache in runs_plan:
        dirs = [
            workload.write_run(work / name, f"{name[-3:]}{i:09d}".replace("-", "x"), model, task, params[i], 42)
            for i in range(args.runs)
        ]
        menv = dict(env)
        if cache is not None:
            menv["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
            menv["TRITON_CACHE_DIR"] = str(cache / "triton")
        t = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "stilts_tui.train", *map(str, dirs), "--compile", mode, "--pad", args.pad], env=menv
        )
        wall = time.time() - t
        results = [json.loads((d / "result.json").read_text()) for d in dirs]
        if proc.returncode:
            print(f"stilts {name}: exit {proc.returncode}: {[r['error'] for r in results]}", flush=True)
            continue
        figures[name] = {
            "wall_s": wall,
            "samples_per_s": stilts_steady_rate(dirs),
            "final_loss": [final_loss(d) for d in dirs],
            "dev_acc": [r["score"] for r in results],
            "peak_gpu_mem_gb": results[0]["peak_gpu_mem_gb"],
            "compile": results[0].get("compile"),
            "pad": results[0].get("pad"),
            "first_run_train_s": results[0]["train_seconds"],
        }
        print(
            f"stilts {name}: {wall:.1f} s for {args.runs} runs, {figures[name]['samples_per_s']:.1f} samples/s "
            f"steady (compile {results[0].get('compile')}, pad {results[0].get('pad')})",
            flush=True,
        )


def table(figures: dict) -> None:
    ref = figures.get("reference")
    print()
    print(f"{'':28} {'steady samples/s':>16} {'ratio':>7} {'wall (s)':>9} {'ratio':>7}  final loss / dev acc per run")
    for name, f in figures.items():
        if not isinstance(f, dict):
            continue
        r1 = f"{f['samples_per_s'] / ref['samples_per_s']:6.2f}x" if ref else "     -"
        r2 = f"{ref['wall_s'] / f['wall_s']:6.2f}x" if ref else "     -"
        losses = " ".join(f"{x:.3f}" for x in f["final_loss"])
        accs = " ".join(f"{x:.3f}" for x in f["dev_acc"])
        print(f"{name:28} {f['samples_per_s']:16.1f} {r1:>7} {f['wall_s']:9.1f} {r2:>7}  {losses} / {accs}")


def main() -> None:
    args = parse()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stilts-bench-"))
    t = time.time()
    model = workload.build_model(work / "model", args.size)
    train, dev = workload.build_data(work / "data", args.samples, args.dev, max_len=args.max_len)
    task = workload.task_spec(train, dev)
    print(
        f"workload: RoBERTa-{args.size} random init, {args.samples} train / {args.dev} dev pairs, "
        f"max_len {args.max_len}, batch {args.batch}, {args.runs} runs (set up in {time.time() - t:.0f} s)",
        flush=True,
    )
    lrs = [1e-5, 2e-5, 5e-6, 3e-5, 1.5e-5, 7e-6, 2.5e-5, 4e-5]
    params = [
        {
            "lr": lrs[i % len(lrs)],
            "batch_size": args.batch,
            "warmup": 0.1,
            "epochs": 1,
            "max_len": args.max_len,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "precision": "auto",
        }
        for i in range(args.runs)
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    figures: dict = {"size": args.size, "samples": args.samples, "runs": args.runs}
    if not args.skip_reference:
        figures["reference"] = run_reference(work, model, task, params, env)
    run_stilts(work, model, task, params, env, args, figures)
    table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
