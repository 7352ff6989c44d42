"""Know before you spend (issue 25): one CPU study on the real pretrained MiniLM, run three ways through
the real daemon in one invocation — the full grid; the same plan with a rank stage that trains only
the top-1 intermediate (and none) per target; the full grid with early stop of degenerate runs.

The study: four starting points (none; an intermediate that helps; one that does nothing; one that
hurts) x two targets x 3 seeds x 2 learning rates (the second unstable enough to collapse runs to the
majority class). The tasks are generated (stilts_tui.cli.demo's topic words and frames): a sentence names two
things of two topics, and the label is the topic of the one named first — order matters, which frozen
sentence features do not give for free.
- targets: ``ab`` (fruit vs vehicles) and ``cd`` (weather vs music);
- ``helps``: the same rule over all five topics (5 classes), trained properly;
- ``nothing``: that task at lr 1e-9 for one epoch (the model as it was);
- ``hurts``: the same sentences with random labels at a high learning rate (features spent on noise).

Printed for each way: the study's run time (the sum of every run's wall time, the intermediates and
the rank runs included), the target runs' share, the ratio to the full grid, each target's best
starting point (the highest cell mean) and whether it is the full grid's, LogME's order against the full
grid's measured order (Kendall's tau, scipy), and failed / degenerate / pruned counts; for early stop,
whether every run that was not stopped kept its full-grid score exactly. Figures: docs/results.md.

    python bench/spend_less.py [--train 96] [--seeds 3] [--slots 2] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from stilts_tui import results
from stilts_tui.cli.demo import FRAMES, TOPICS
from stilts_tui.contract import SETTLED, Status
from stilts_tui.estimate.predicted import kendall_tau
from stilts_tui.queue import ops
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TARGETS = {"ab": ("fruit", "vehicles"), "cd": ("weather", "music")}
LRS = [1e-4, 2e-3]  # the second collapses runs to the majority class
WAYS = {
    "full": "",
    "rank": "rank = { top = 1 }",
    "stop": "stop_degenerate = { after_epochs = 1, patience = 1 }",
}
GOAL_RANK_SHARE = 0.10


def first_topic_rows(n: int, seed: int, topics: tuple[str, ...], others: tuple[str, ...] | None = None) -> list[dict]:
    """Sentences naming a thing of one topic, then one of another: the label is the first one's topic."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = topics[i % len(topics)]
        second = rng.choice([t for t in (others or topics) if t != first])
        frame = rng.choice(FRAMES)
        rows.append({"text": frame.format(rng.choice(TOPICS[first]), rng.choice(TOPICS[second])), "label": first})
    rng.shuffle(rows)
    return rows


def noise_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = first_topic_rows(n, seed, tuple(sorted(TOPICS)))
    return [{"text": r["text"], "label": rng.choice(["x", "y"])} for r in rows]


def write_data(folder: Path, n_train: int, n_dev: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    every = tuple(sorted(TOPICS))
    sets = {
        "first": (first_topic_rows(4 * n_train, 11, every), first_topic_rows(n_dev, 12, every)),
        "noise": (noise_rows(4 * n_train, 13), noise_rows(n_dev, 14)),
    }
    for i, (name, pair) in enumerate(TARGETS.items()):
        sets[name] = (first_topic_rows(n_train, 21 + 2 * i, pair), first_topic_rows(n_dev, 22 + 2 * i, pair))
    for name, (train, dev) in sets.items():
        for split, rows in (("train", train), ("dev", dev)):
            (folder / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def plan_text(way: str, seeds: int) -> str:
    tasks = "".join(
        f'[tasks.{name}]\nformat = "jsonl"\ntrain = "data/{name}_train.jsonl"\ndev = "data/{name}_dev.jsonl"\n'
        f'kind = "classification"\ntext_fields = ["text"]\n\n'
        for name in ("first", "noise", *TARGETS)
    )
    targets = "".join(f'[target.{name}]\ntask = "{name}"\ngrid = {{ lr = {LRS} }}\n{WAYS[way]}\n\n' for name in TARGETS)
    return (
        f'name = "spend-less-{way}"\nmodel = "{MINILM}"\nbaseline = true\n'
        f"target_seeds = {list(range(1, seeds + 1))}\n\n"
        "[defaults]\nbatch_size = 16\nepochs = 3\nmax_len = 32\nwarmup = 0.1\nlr = 1e-4\n\n"
        + tasks
        + '[intermediate.helps]\ntask = "first"\nlr = 1e-4\nepochs = 2\n\n'
        '[intermediate.nothing]\ntask = "first"\nlr = 1e-9\nepochs = 1\n\n'
        '[intermediate.hurts]\ntask = "noise"\nlr = 1e-3\nepochs = 3\n\n' + targets
    )


def run_way(work: Path, way: str, args) -> dict:
    """The plan of one way queued in its own runs-dir and run to the end by the real daemon."""
    folder = work / way
    (folder / "plans").mkdir(parents=True)
    shutil.copytree(work / "data", folder / "plans" / "data")
    plan = folder / "plans" / f"{way}.toml"
    plan.write_text(plan_text(way, args.seeds))
    root = folder / "runs"
    ops.add_plan(plan, root)
    t0 = time.time()
    ops.start_daemon(root, ["--cpu-slots", str(args.slots), "--worker-runs", "8", "--interval", "0.5"])
    try:
        while not all(r["status"] in SETTLED for r in Ledger(root).runs()):
            time.sleep(1.0)
    finally:
        ops.stop_daemon(root)
    return summarise(root, f"spend-less-{way}", time.time() - t0)


def _wall(root: Path, r: dict) -> float:
    res = rundir.read_run_file(root, r["id"]) or {}
    process = (res.get("timings") or {}).get("process_s") or 0.0
    return float(res.get("wall_seconds") or 0.0) + float(process)


def summarise(root: Path, plan: str, elapsed: float) -> dict:
    runs = Ledger(root).runs()
    walls = {r["id"]: _wall(root, r) for r in runs}
    table = results.build(root, plan)
    best = {}
    for target in TARGETS:
        cells = [c for c in table.cells if c.target == target and c.mean is not None]
        best[target] = max(cells, key=lambda c: c.mean).intermediate
    rank_runs = [r for r in runs if r["stage"] == "rank" and r["status"] == Status.DONE]
    logme = {}
    for r in rank_runs:
        res = rundir.read_run_file(root, r["id"]) or {"ranking": []}
        logme[r["name"]] = {e["start"]: e["score"] for e in res["ranking"]}
    scores = {
        (r["intermediate"], r["name"], r["seed"], r["params"]["lr"]): (r["status"], r.get("score"))
        for r in runs
        if r["stage"] == "target"
    }
    count = lambda s: sum(r["status"] == s for r in runs)  # noqa: E731
    majority = {c.target: c.majority for c in table.cells if c.majority is not None}
    return {
        "majority": majority,
        "elapsed_s": elapsed,
        "run_s": sum(walls.values()),
        "target_s": sum(walls[r["id"]] for r in runs if r["stage"] == "target"),
        "rank_s": sum(walls[r["id"]] for r in runs if r["stage"] == "rank"),
        "means": {f"{c.intermediate}->{c.target}": c.mean for c in table.cells},
        "failed_cells": {f"{c.intermediate}->{c.target}": c.failed for c in table.cells},
        "best": best,
        "logme": logme,
        "statuses": {s: count(s) for s in ("done", "failed", "degenerate", "pruned")},
        "scores": scores,
    }


def report(out: dict) -> dict:
    full = out["full"]
    lines = []
    for way, w in out.items():
        ratio = w["run_s"] / full["run_s"]
        found = all(w["best"][t] == full["best"][t] for t in TARGETS)
        lines.append(
            f"{way:5s}: run time {w['run_s']:7.1f} s (target runs {w['target_s']:6.1f} s, "
            f"rank runs {w['rank_s']:5.1f} s), {ratio:.2f} of the full grid; elapsed {w['elapsed_s']:.0f} s; "
            "best starting point "
            + ", ".join(f"{t} {w['best'][t]}" for t in TARGETS)
            + (" (the full grid's); " if found else " (NOT the full grid's); ")
            + ", ".join(f"{k} {v}" for k, v in w["statuses"].items())
        )
    rank = out["rank"]
    taus = {}
    for t in TARGETS:
        starts = [s for s in rank["logme"].get(t, {}) if f"{s}->{t}" in full["means"]]
        taus[t] = kendall_tau([rank["logme"][t][s] for s in starts], [full["means"][f"{s}->{t}"] for s in starts])
        order = sorted(starts, key=lambda s: -rank["logme"][t][s])
        measured = sorted(starts, key=lambda s: -full["means"][f"{s}->{t}"])
        lines.append(
            f"rank {t}: LogME order {', '.join(order)}; the full grid's measured order {', '.join(measured)}; "
            f"Kendall's tau {taus[t]:+.2f} over {len(starts)} starting points"
        )
    share = rank["rank_s"] / full["target_s"]
    lines.append(
        f"rank: the ranking cost {rank['rank_s']:.1f} s = {share:.1%} of the full target grid's run time "
        f"(goal <= {GOAL_RANK_SHARE:.0%}); top-1 found every target's best: "
        f"{all(rank['best'][t] == full['best'][t] for t in TARGETS)}"
    )
    stop = out["stop"]
    changed = [
        k
        for k, (status, score) in stop["scores"].items()
        if status != Status.DEGENERATE and full["scores"].get(k, (None, None))[1] != score
    ]
    saved = full["run_s"] - stop["run_s"]
    # a stop is false when the run, trained to its end in the full grid, ended above the majority class
    false_stops = [
        k
        for k, (status, _) in stop["scores"].items()
        if status == Status.DEGENERATE and (full["scores"][k][1] or 0) > full["majority"].get(k[1], 1.0)
    ]
    lines.append(
        f"stop: {stop['statuses']['degenerate']} runs stopped as degenerate, {saved:.1f} s of run time saved "
        f"({saved / full['run_s']:.1%}); runs not stopped whose score differs from the full grid's: "
        f"{len(changed)}" + (f" ({changed})" if changed else "") + f"; stopped runs that ended above the majority "
        f"class in the full grid (false stops): {len(false_stops)} of {stop['statuses']['degenerate']}"
    )
    for line in lines:
        print(line, flush=True)
    return {
        "taus": taus,
        "rank_share": share,
        "changed_by_stop": [list(map(str, k)) for k in changed],
        "false_stops": [list(map(str, k)) for k in false_stops],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=96, help="train examples of each target")
    ap.add_argument("--dev", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2, help="the daemon's --cpu-slots")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="work here (kept) instead of a temporary folder")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="stilts-spend-less-"))
    write_data(work / "data", args.train, args.dev)
    load = os.getloadavg()
    print(f"spend_less: MiniLM on {os.cpu_count()} CPUs, load {load[0]:.2f}; work in {work}", flush=True)
    out = {}
    for way in WAYS:
        out[way] = run_way(work, way, args)
        print(f"{way}: done in {out[way]['elapsed_s']:.0f} s", flush=True)
    figures = report(out)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        for w in out.values():
            w["scores"] = {"|".join(map(str, k)): v for k, v in w["scores"].items()}
        args.json.write_text(json.dumps({"ways": out, **figures}, indent=2, default=str))


if __name__ == "__main__":
    main()
