"""Fused arrays with dropout on: are their scores distributed as those of runs trained alone?

N seeds of two configs (a stable learning rate and an unstable, high one where some runs fail), each
seed trained alone and as a member of a fused array (``--fuse K``), by the real trainer
(``python -m stilts_tui.train``), with dropout 0.1. Alone and fused runs of one seed share their
starting weights and data order. With ``--dropout-streams member`` (the trainer's default for an
eager array) each member draws its run's own masks, so the pairs should agree to float rounding;
``--dropout-streams one`` (one stream for the array, what a compiled array draws) measures the
distributions. Per config it prints: the mean of each, the paired mean difference (fused - alone,
paired by seed) with a seeded BCa bootstrap 95% interval (scipy.stats.bootstrap), the Wilcoxon signed-rank and paired
t tests (scipy.stats), and the failed-run counts (dev score at most the majority-class score plus
``--fail-margin``) with McNemar's exact test on the paired failed/not-failed outcomes (a binomial test
on the discordant pairs) and Fisher's exact test on the counts.

Workload: a random-init RoBERTa (``--size``) on the synthetic marker-word pair task
(stilts_tui.train.workload). Default invocation (2 trainer processes at a time, OMP_NUM_THREADS=1):

    python bench/fused_equivalence.py [--seeds 32] [--first-seed 1] [--fuse 8] [--json out.json]
    python bench/fused_equivalence.py --pool a.json b.json   # several invocations' seeds together

Measured figures: docs/fused.md.
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

import numpy as np
from scipy import stats

from stilts_tui.train import workload

TARGET = 0.02  # the interval must contain 0 and lie within +-TARGET


def write_runs(work: Path, model: Path, task: dict, name: str, lr: float, seeds: list[int], args) -> dict:
    """Run folders of one config: the same specs under alone/ and fused/ (paired by seed)."""
    params = {
        "lr": lr,
        "batch_size": args.batch,
        "warmup": 0.1,
        "epochs": args.epochs,
        "max_len": args.max_len,
        "weight_decay": 0.01,
        "grad_accum": 1,
        "precision": "fp32",
        "transfer": "all",
    }
    modes = ("alone", "fused", "eager") if args.baseline else ("alone", "fused")
    return {
        mode: [workload.write_run(work / mode, f"{name}-s{s}", model, task, params, s) for s in seeds] for mode in modes
    }


def run_all(jobs: list[list[str]], parallel: int) -> None:
    """Run trainer processes, ``parallel`` at a time (one thread each: the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            cmd = pending.pop(0)
            running.append(
                subprocess.Popen(
                    [sys.executable, "-m", "stilts_tui.train", *cmd],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for p in list(running):
            if p.poll() is not None:
                running.remove(p)
                if p.returncode:
                    sys.exit(
                        f"fused_equivalence: a trainer process failed ({p.returncode}): "
                        f"{(p.stderr.read() or '').strip()[-500:]}"
                    )
        time.sleep(0.5)


def score(run_dir: Path) -> float:
    result = json.loads((run_dir / "result.json").read_text())
    if result["status"] != "done":
        sys.exit(f"fused_equivalence: {run_dir}: {result['status']}: {result['error']}")
    return float(result["score"])


def compare(alone: np.ndarray, fused: np.ndarray, majority: float, margin: float, seed: int) -> dict:
    """The paired figures of one config."""
    d = fused - alone
    if np.all(d == d[0]):
        lo = hi = float(d[0])
    else:
        ci = stats.bootstrap(
            (d,),
            np.mean,
            confidence_level=0.95,
            n_resamples=10000,
            method="BCa",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    nonzero = d[d != 0]
    wilcoxon = float(stats.wilcoxon(d, zero_method="zsplit").pvalue) if len(nonzero) else 1.0
    ttest = float(stats.ttest_rel(fused, alone).pvalue) if len(nonzero) else 1.0
    fa, ff = alone <= majority + margin, fused <= majority + margin
    b, c = int(np.sum(fa & ~ff)), int(np.sum(ff & ~fa))  # discordant pairs
    mcnemar = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    fisher = float(stats.fisher_exact([[fa.sum(), len(fa) - fa.sum()], [ff.sum(), len(ff) - ff.sum()]]).pvalue)
    return {
        "n": len(d),
        "alone_mean": float(alone.mean()),
        "fused_mean": float(fused.mean()),
        "alone_sd": float(alone.std(ddof=1)),
        "fused_sd": float(fused.std(ddof=1)),
        "diff_mean": float(d.mean()),
        "diff_sd": float(d.std(ddof=1)),
        "ci95": [lo, hi],
        "wilcoxon_p": wilcoxon,
        "paired_t_p": ttest,
        "failed_alone": int(fa.sum()),
        "failed_fused": int(ff.sum()),
        "discordant": [b, c],
        "mcnemar_exact_p": mcnemar,
        "fisher_exact_p": fisher,
        "target_met": bool(lo <= 0 <= hi and -TARGET <= lo and hi <= TARGET),
        "alone": alone.tolist(),
        "fused": fused.tolist(),
    }


def report(name: str, lr: float, r: dict, margin: float) -> None:
    lo, hi = r["ci95"]
    print(f"\n[{name}] lr {lr:g}, {r['n']} seeds")
    print(
        f"  mean score   alone {r['alone_mean']:.4f} (sd {r['alone_sd']:.4f})   "
        f"fused {r['fused_mean']:.4f} (sd {r['fused_sd']:.4f})"
    )
    print(
        f"  fused - alone, paired by seed: {r['diff_mean']:+.4f} (sd {r['diff_sd']:.4f}), "
        f"BCa bootstrap 95% interval [{lo:+.4f}, {hi:+.4f}]"
    )
    print(f"  Wilcoxon signed-rank p = {r['wilcoxon_p']:.3f}, paired t p = {r['paired_t_p']:.3f}")
    b, c = r["discordant"]
    print(
        f"  failed runs (score <= majority + {margin:g}): alone {r['failed_alone']}, fused {r['failed_fused']}; "
        f"discordant pairs {b} alone-only / {c} fused-only: McNemar exact p = {r['mcnemar_exact_p']:.3f}, "
        f"Fisher exact p = {r['fisher_exact_p']:.3f}"
    )
    print(f"  target (interval contains 0, within +-{TARGET}): {'met' if r['target_met'] else 'MISSED'}")


def pool(files: list[Path], margin: float) -> None:
    """The figures of several invocations (other seeds of one workload) together."""
    runs = [json.loads(f.read_text()) for f in files]
    if len({r["majority"] for r in runs}) != 1:
        sys.exit("fused_equivalence: --pool: the files are of different workloads")
    for name in runs[0]["configs"]:
        alone = np.concatenate([r["configs"][name]["alone"] for r in runs])
        fused = np.concatenate([r["configs"][name]["fused"] for r in runs])
        report(
            name, float(runs[0]["args"][f"{name}_lr"]), compare(alone, fused, runs[0]["majority"], margin, 17), margin
        )
        if all("baseline" in r["configs"][name] for r in runs):
            eager = np.concatenate([r["configs"][name]["baseline"]["fused"] for r in runs])
            report_baseline(alone, fused, eager, runs[0]["majority"], margin)


def report_baseline(alone: np.ndarray, fused: np.ndarray, eager: np.ndarray, majority: float, margin: float) -> dict:
    """The run alone against itself with eager attention (the same masks, other rounding), and the fused
    runs against that variant: is fused further from the run alone than its own arithmetic moves it?"""
    b = compare(alone, eager, majority, margin, seed=17)
    v = compare(eager, fused, majority, margin, seed=17)
    print(
        f"  baseline, alone with eager attention - alone (the same masks, other rounding): "
        f"{b['diff_mean']:+.4f} (sd {b['diff_sd']:.4f}), interval [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}], "
        f"paired t p = {b['paired_t_p']:.3f}; failed {b['failed_fused']}; {int(np.sum(eager != alone))} of "
        f"{len(alone)} scores differ (fused: {int(np.sum(fused != alone))})"
    )
    print(
        f"  fused - alone with eager attention: {v['diff_mean']:+.4f} (sd {v['diff_sd']:.4f}), interval "
        f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}], paired t p = {v['paired_t_p']:.3f}"
    )
    return b


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--first-seed", type=int, default=1, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--fuse", type=int, default=8)
    ap.add_argument("--size", default="tiny", choices=sorted(workload.SIZES))
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--dev", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--median", type=int, default=16, help="median tokenized length of an example")
    ap.add_argument("--stable-lr", type=float, default=1e-3)
    ap.add_argument("--unstable-lr", type=float, default=5e-3)
    ap.add_argument("--fail-margin", type=float, default=0.05)
    ap.add_argument(
        "--dropout-streams",
        default="member",
        choices=("member", "one"),
        help="the arrays' masks: each member its run's own (the eager default) or one stream for the "
        "array (what a compiled array draws)",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also train each seed alone with eager attention (the same masks, other rounding): how far "
        "a run alone moves under a mere change of arithmetic, to read the fused difference against",
    )
    ap.add_argument("--parallel", type=int, default=2, help="trainer processes at a time")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: report the seeds of earlier invocations' --json files pooled",
    )
    return ap


def main() -> None:
    args = _parser().parse_args()
    if args.pool:
        return pool(args.pool, args.fail_margin)

    t0 = time.time()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fused_equiv_"))
    model = workload.build_model(work / "model", args.size, dropout=args.dropout)
    train_file, dev_file = workload.build_data(
        work / "data", args.train, args.dev, median=args.median, max_len=args.max_len
    )
    task = workload.task_spec(train_file, dev_file)
    labels = [json.loads(x)["label"] for x in dev_file.read_text().splitlines()]
    majority = max(labels.count(v) for v in set(labels)) / len(labels)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    configs = {"stable": args.stable_lr, "unstable": args.unstable_lr}
    dirs = {name: write_runs(work / name, model, task, name, lr, seeds, args) for name, lr in configs.items()}
    jobs = []
    for name in configs:  # the alone runs in 2 processes a config, each array size K in one
        alone = [str(d) for d in dirs[name]["alone"]]
        jobs += [alone[: len(alone) // 2], alone[len(alone) // 2 :]]
        jobs.append(
            ["--fuse", str(args.fuse), "--dropout-streams", args.dropout_streams, *map(str, dirs[name]["fused"])]
        )
        if args.baseline:  # the runs alone again, with eager attention: the same masks, other rounding
            eager = [str(d) for d in dirs[name]["eager"]]
            jobs += [["--attn", "eager", *eager[: len(eager) // 2]], ["--attn", "eager", *eager[len(eager) // 2 :]]]
    print(
        f"workload: random-init RoBERTa {args.size}, dropout {args.dropout}, marker pairs {args.train} train / "
        f"{args.dev} dev (majority class {majority:.3f}), batch {args.batch}, {args.epochs} epochs, "
        f"max_len {args.max_len}, fp32, CPU; {args.seeds} seeds alone and in arrays of {args.fuse} "
        f"(dropout streams: {args.dropout_streams}); in {work}",
        flush=True,
    )
    run_all([j for j in jobs if j], args.parallel)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "majority": majority, "configs": {}}
    for name, lr in configs.items():
        alone = np.array([score(d) for d in dirs[name]["alone"]])
        fused = np.array([score(d) for d in dirs[name]["fused"]])
        out["configs"][name] = r = compare(alone, fused, majority, args.fail_margin, seed=17)
        report(name, lr, r, args.fail_margin)
        if args.baseline:
            eager = np.array([score(d) for d in dirs[name]["eager"]])
            r["baseline"] = report_baseline(alone, fused, eager, majority, args.fail_margin)
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(f"\nwall time {out['wall_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
