"""The reference plan's modes, measured on this box and turned into a prediction (issue 27 item 4).

At the reference's shapes (RoBERTa-large random init, batch 16, max_len 100, fp32 with TF32 on a GPU,
every batch padded to max_len), short calibration runs measure each mode's steady samples/s a run and
fixed cost a run (the trainer's ``timings``: process start and imports, loading, first step):
- ``reference``: the reference's loop (bench/reference_train.py, one process a run);
- ``eager``: one stilts run alone, eager;
- ``graphs``: one run alone with CUDA graphs of the eager kernels (``compile = "cudagraphs"``; on the
  CPU the backend runs without graphs, the branch still taken);
- ``packed``: K runs at once on the device (under MPS where it starts), eager;
- ``fused``: K runs as one fused array.
K comes from the queue's memory estimate and the GPU's memory (2 on the CPU). From these figures
(stilts_tui.estimate.walltime, what `plan show --cost` uses) the predicted wall time of the reference plan's RTE
targets (144 runs) and of the whole plan, per mode; then one real grid of 8 runs of ``--grid-steps``
steps through the daemon (packed K a device) against its prediction from the calibration runs. Every
figure on one line.

    python bench/mode_rates.py [--size large] [--gpus 0] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.contract import SETTLED, shape_key
from stilts_tui.estimate import figures, walltime
from stilts_tui.queue import ops
from stilts_tui.store.ledger import Ledger
from stilts_tui.train import workload

HERE = Path(__file__).resolve().parent
REFERENCE_PLAN = HERE.parent / "plans" / "chang_lu_2021.toml"
GOAL = 0.20
PLAN = """name = "{name}"
model = "{model}"
baseline = true
target_seeds = {seeds}
[defaults]
batch_size = {batch}
epochs = 1
max_len = {max_len}
warmup = 0.1
precision = "fp32"
pad = "max"
compile = "{compile}"
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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(workload.SIZES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=100)
    ap.add_argument("--calib-steps", type=int, default=30, help="steps of each calibration run")
    ap.add_argument("--grid-steps", type=int, default=200, help="steps of each of the real grid's 8 runs")
    ap.add_argument("--dev", type=int, default=64)
    ap.add_argument("--k", type=int, default=0, help="runs packed or fused (0: from the memory estimate)")
    ap.add_argument("--gpus", default="0", help="the daemon's --gpus (empty: the CPU)")
    ap.add_argument("--smoke", action="store_true", help="the CPU with a tiny model (CI)")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.smoke:
        a.size, a.batch, a.max_len, a.calib_steps, a.grid_steps, a.dev, a.gpus = "tiny", 8, 40, 6, 12, 16, ""
    return a


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.work = a.workdir or Path(tempfile.mkdtemp(prefix="stilts-modes-"))
        self.model = workload.build_model(self.work / "model", a.size)
        self.gpu = bool(a.gpus)
        self.mps = self.gpu and shutil.which("nvidia-cuda-mps-control") is not None

    def plan(self, name: str, runs: int, steps: int, compile_mode: str = "off") -> Path:
        """A grid of ``runs`` runs (2 learning rates x seeds) of ``steps`` steps of one epoch."""
        folder = self.work / name
        train, dev = workload.build_data(folder / "data", steps * self.a.batch, self.a.dev, max_len=self.a.max_len)
        path = folder / "plan.toml"
        path.write_text(
            PLAN.format(
                name=name,
                model=self.model,
                seeds=list(range(1, max(1, runs // 2) + 1)),
                batch=self.a.batch,
                max_len=self.a.max_len,
                compile=compile_mode,
                train=train,
                dev=dev,
                lrs=[1e-5, 2e-5] if runs > 1 else [1e-5],
            )
        )
        return path

    def daemon(self, plan: Path, root: Path, slots: int, extra: list[str] = ()) -> float:
        """The plan through the real daemon, ``slots`` processes a device; elapsed seconds."""
        ops.add_plan(plan, root)
        where = ["--gpus", self.a.gpus, "--per-gpu", str(slots)] if self.gpu else ["--cpu-slots", str(slots)]
        t0 = time.time()
        ops.start_daemon(root, [*where, "--worker-runs", "1", "--interval", "0.5", *extra])
        try:
            while not all(r["status"] in SETTLED for r in Ledger(root).runs()):
                time.sleep(0.5)
        finally:
            ops.stop_daemon(root)
        return time.time() - t0


def timings(root: Path) -> list[dict]:
    """Each done run's result (timings, threads, score) in ``root``."""
    out = []
    for r in Ledger(root).runs():
        path = root / r["id"] / "result.json"
        res = json.loads(path.read_text()) if path.is_file() else {}
        if res.get("status") == "done":
            out.append(res)
    return out


def line(mode: str, results: list[dict], k: int = 1) -> dict:
    """One figure line for a mode: steady samples/s a run, the aggregate, the fixed cost a run."""

    def med(*keys: str) -> float:
        return statistics.median(sum(r["timings"].get(x, 0) for x in keys) for r in results)

    rate, process, load = med("steady_samples_per_s"), med("process_s"), med("data_s", "model_s", "compile_s")
    print(
        f"{mode}: steady {rate:.1f} samples/s a run, {k * rate:.1f} for the {k} at once; fixed cost "
        f"{process + load:.1f} s a run (process start and imports {process:.1f} s, loading and compile "
        f"{load:.1f} s); {len(results)} runs",
        flush=True,
    )
    return {"rate": rate, "process": process, "load": load, "k": k}


def reference(b: Bench) -> dict:
    plan = b.plan("reference", 1, b.a.calib_steps)
    root = b.work / "reference" / "runs"
    ops.add_plan(plan, root)
    got = []
    for r in Ledger(root).runs():
        subprocess.run([sys.executable, str(HERE / "reference_train.py"), str(root / r["id"])], check=True)
        got.append(json.loads((root / r["id"] / "reference.json").read_text()))
    rate = statistics.median(g["samples_per_s"] for g in got)
    fixed = statistics.median(g["process_seconds"] - g["train_seconds"] for g in got)
    print(f"reference: steady {rate:.1f} samples/s a run; fixed cost {fixed:.1f} s a run (one process a run)")
    return {"rate": rate, "process": fixed, "load": 0.0, "k": 1}


def memory_k(b: Bench, spec: dict) -> int:
    """Runs that fit the GPU by the queue's estimate (at most 8), 2 on the CPU."""
    if b.a.k:
        return b.a.k
    if not b.gpu:
        return 2
    from stilts_tui.queue import gpus
    from stilts_tui.queue.placement import formula_gb

    total = next((g.total_gb for g in gpus.list_gpus() if str(g.index) == b.a.gpus.split(",")[0]), 80.0)
    return max(2, min(8, int(0.9 * total // formula_gb(spec))))


def calibrate(b: Bench) -> dict[str, dict]:
    figures = {"reference": reference(b)}
    for mode, compile_mode in (("eager", "off"), ("graphs", "cudagraphs")):
        root = b.work / mode / "runs"
        b.daemon(b.plan(mode, 1, b.a.calib_steps, compile_mode), root, 1)
        figures[mode] = line(mode, timings(root))
        if mode == "eager":
            spec = json.loads((root / Ledger(root).runs()[0]["id"] / "spec.json").read_text())
            k = memory_k(b, spec)
    root = b.work / "packed" / "runs"
    b.daemon(b.plan("packed", k, b.a.calib_steps), root, k, ["--mps"] if b.mps else [])
    figures["packed"] = line(f"packed x{k}{' under MPS' if b.mps else ''}", timings(root), k)
    root = b.work / "fused" / "runs"
    b.daemon(b.plan("fused", k, b.a.calib_steps), root, 1, ["--fuse", str(k)])
    figures["fused"] = line(f"fused x{k}", timings(root), k)
    figures["k"] = k
    return figures


def rates_for(plan: plans.Plan, runs: list[plans.Run], base: dict, f: dict, b: Bench) -> walltime.Rates:
    """The calibration figures for every shape of ``plan``: samples/s scaled by the tokens a sample
    (max_len x choices) against the calibration's; fixed costs as measured."""
    shapes = {}
    for r in runs:
        if r.stage not in ("intermediate", "target"):
            continue
        spec = {"model": {"name": plan.model, **r.model}, "params": r.params, "task": r.task_spec}
        tokens = int(r.params["max_len"]) * (r.task_spec.get("num_choices") or 1)
        shapes[shape_key(spec)] = {
            "samples_per_s": base["rate"] * b.a.max_len / tokens,
            "process_s": base["process"],
            "load_s": base["load"],
            "eval_per_example": 1 / (figures.EVAL_SPEEDUP * base["rate"] * b.a.max_len / tokens),
        }
    k = f["k"]
    packing = {k: f["packed"]["rate"] * k / f["eager"]["rate"]}
    fused = {k: f["fused"]["rate"] * k / f["eager"]["rate"]}
    return walltime.Rates(shapes=shapes, packing=packing, fused=fused, runs=0)


def predict_reference_plan(b: Bench, f: dict) -> None:
    plan, runs = plans.load_and_expand(REFERENCE_PLAN)
    rte = [r for r in runs if r.stage == "target" and r.task == "rte"]
    box = walltime.Box(gpu=b.gpu, devices=1, slots=f["k"], worker_runs=4, fuse=f["k"])
    for label, subset in ((f"the RTE targets ({len(rte)} runs)", rte), (f"the whole plan ({len(runs)} runs)", runs)):
        out = []
        for mode, base in (("reference", "reference"), ("queue", "eager"), ("queue+graphs", "graphs")):
            pred = walltime.predict(plan, subset, rates_for(plan, runs, f[base], f, b), box)
            key = "reference" if mode == "reference" else "queue"
            out.append(f"{mode} {pred.seconds[key] / 3600:.1f} h")
            if mode == "queue":
                out.append(f"fused x{f['k']} {pred.seconds['fused'] / 3600:.1f} h")
                if pred.seconds["mps"] is not None and b.mps:
                    out.append(f"MPS x{f['k']} {pred.seconds['queue'] / 3600:.1f} h")
        print(f"predicted wall time of the reference plan, {label}, on one device: {', '.join(out)}", flush=True)


def real_grid(b: Bench, f: dict) -> dict:
    """8 runs of ``--grid-steps`` steps through the daemon, packed K a device, against the prediction
    from the calibration runs' own history (the same shape)."""
    plan_path = b.plan("grid", 8, b.a.grid_steps)
    plan, runs = plans.load_and_expand(plan_path)
    history = walltime.history(b.work / "packed" / "runs")
    alone = walltime.history(b.work / "eager" / "runs")
    for key, fig in alone.shapes.items():  # the rate alone and the fixed costs from the runs alone
        history.shapes[key] = {**history.shapes.get(key, {}), **{k: v for k, v in fig.items() if v is not None}}
    history.packing = {f["k"]: f["packed"]["rate"] * f["k"] / f["eager"]["rate"]}
    box = walltime.Box(gpu=b.gpu, devices=1, slots=f["k"], worker_runs=1, fuse=f["k"])
    pred = walltime.predict(plan, runs, history, box).seconds["queue"]
    took = b.daemon(plan_path, b.work / "grid" / "runs", f["k"], ["--mps"] if b.mps else [])
    err = pred / took - 1
    done = len(timings(b.work / "grid" / "runs"))
    print(
        f"real grid: 8 runs of {b.a.grid_steps} steps packed x{f['k']}: predicted {pred:.1f} s, measured "
        f"{took:.1f} s: {err:+.1%} (within {GOAL:.0%}: {'met' if abs(err) <= GOAL else 'NOT met'}); {done} of 8 done",
        flush=True,
    )
    return {"predicted": pred, "measured": took, "error": err}


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    b = Bench(a)
    os.environ.setdefault("STILTS_NO_DAEMON", "1")
    print(
        f"# mode_rates: RoBERTa-{a.size} random init, batch {a.batch}, max_len {a.max_len}, fp32, pad max; "
        f"{'GPU ' + a.gpus if b.gpu else 'the CPU'}{', MPS' if b.mps else ''}",
        flush=True,
    )
    f = calibrate(b)
    predict_reference_plan(b, f)
    real_grid(b, f)
    if not math.isfinite(f["eager"]["rate"]):
        raise SystemExit("no steady rate measured")


if __name__ == "__main__":
    main()
