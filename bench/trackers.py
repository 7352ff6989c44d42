"""The trainer's step time with ``report_to = ["tensorboard"]`` against without, in one invocation.

Workload: a random-init RoBERTa (``--size tiny`` by default: the shortest steps, where a tracker's cost
weighs most) on synthetic pairs, on the CPU. The runs alternate, with and without the tracker (ABBA), in one
trainer process (so both kinds share its warm model, kernels and caches), after one warm-up run. A run's
step time is its steady training time (result.json's timings: ``steps_s`` less the first step) over its
steps after the first; the figure of each kind is the median over its runs. Prints both and their ratio
(the issue's target: within 2 %).

    python bench/trackers.py [--size tiny] [--samples 4000] [--pairs 4] [--tracker tensorboard]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stilts_tui.train import workload


def step_time(run_dir: Path) -> float:
    """Seconds an optimizer step of the run, the first (first kernels, caches) left out."""
    r = json.loads((run_dir / "result.json").read_text())
    assert r["status"] == "done", r
    t = r["timings"]
    return (t["steps_s"] - t["first_step_s"]) / max(1, r["steps"] - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=sorted(workload.SIZES))
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=4, help="runs of each kind, alternating")
    ap.add_argument("--tracker", default="tensorboard", help="report_to of the runs with a tracker")
    ap.add_argument("--threads", type=int, default=None, help="OMP threads (default: torch's)")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="stilts-bench-trackers-"))
    model = workload.build_model(work / "model", a.size, dropout=0.0)
    train_file, dev_file = workload.build_data(work / "data", a.samples, 64, max_len=a.max_len, median=a.max_len // 2)
    task = workload.task_spec(train_file, dev_file)
    params = {"lr": 1e-4, "batch_size": a.batch, "epochs": 1, "max_len": a.max_len, "precision": "fp32"}
    runs = work / "runs"
    # ABBA: every other pair starts with the tracker, so neither kind always runs second
    kinds = ["warm-up"] + [k for i in range(a.pairs) for k in (("without", "with"), ("with", "without"))[i % 2]]
    dirs: list[tuple[str, Path]] = []
    for i, kind in enumerate(kinds):
        d = workload.write_run(runs, f"{i:012x}", model, task, params, seed=1)
        if kind == "with":
            spec = json.loads((d / "spec.json").read_text())
            spec.update(report_to=[a.tracker], grid={})
            (d / "spec.json").write_text(json.dumps(spec, indent=2))
        dirs.append((kind, d))
    env = {**os.environ, "STILTS_DEVICE": "cpu"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    subprocess.run([sys.executable, "-m", "stilts_tui.train", *(str(d) for _, d in dirs)], check=True, env=env)
    times = {k: [step_time(d) for kind, d in dirs if kind == k] for k in ("without", "with")}
    for kind, d in dirs[1:]:
        r = json.loads((d / "result.json").read_text())
        assert (kind == "with") == (r.get("trackers") == {a.tracker: "ok"}), (kind, r.get("trackers"))
    first = json.loads((dirs[1][1] / "result.json").read_text())
    steps = first["steps"]
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"workload: {a.size} RoBERTa, {a.samples} samples, batch {a.batch}, max_len {a.max_len}, {steps} steps a run")
    for label, kind in (("without trackers", "without"), (f"report_to [{a.tracker}]", "with")):
        each = ", ".join(f"{t * 1000:.2f}" for t in times[kind])
        print(f"{label}: {statistics.median(times[kind]) * 1000:.2f} ms a step (runs: {each})")
    print(f"ratio with / without: {with_ / without:.4f} ({(with_ / without - 1) * 100:+.2f} %)")
    pairs = [w / o for o, w in zip(times["without"], times["with"], strict=True)]  # neighbours in time
    print(f"median ratio of neighbouring runs: {statistics.median(pairs):.4f} ({', '.join(f'{p:.3f}' for p in pairs)})")
    # the tracker's own cost, apart from the noise of a shared machine: a step event's time through RunLog
    every = max(1, min(50, steps // 20))  # the trainer's cadence of step events (train/step.py's StepLog)
    cost = {k: event_cost(work / "events", k == "with", a.tracker) for k in ("without", "with")}
    extra = (cost["with"] - cost["without"]) / every
    print(
        f"a step event: {cost['without'] * 1e6:.0f} us without, {cost['with'] * 1e6:.0f} us with {a.tracker}; one "
        f"every {every} steps: {extra * 1e6:.1f} us a step, "
        f"{extra / without * 100:.3f} % of a {without * 1000:.2f} ms step"
    )


def event_cost(folder: Path, tracked: bool, tracker: str, n: int = 2000) -> float:
    """Seconds one step event takes through a run's RunLog (events.jsonl, and the tracker where tracked)."""
    import time

    from stilts_tui.contract import Event
    from stilts_tui.train.events import RunLog

    d = workload.write_run(folder, f"{int(tracked):012x}", Path("model"), {"name": "pairs"}, {}, seed=1)
    if tracked:
        spec = json.loads((d / "spec.json").read_text())
        spec.update(report_to=[tracker], grid={})
        (d / "spec.json").write_text(json.dumps(spec))
    log = RunLog(d, echo=False)
    log.event(Event.START, run_id=d.name)
    log.event(Event.BEGIN, total_steps=n, epochs=1)
    assert (log.tracker_states == {tracker: "ok"}) if tracked else log.tracker_states is None
    t0 = time.perf_counter()
    for step in range(1, n + 1):
        log.event(Event.STEP, step=step, total_steps=n, epoch=1, loss=1.0 / step, lr=1e-4, samples_per_s=300.0)
    spent = (time.perf_counter() - t0) / n
    log.event(Event.END, status="done")
    log.close()
    return spent


if __name__ == "__main__":
    main()
