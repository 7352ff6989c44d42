"""``stilts-tui plan rehearse PLAN``: the whole plan end to end on tiny models before any GPU time.

Every stage (synth, intermediates, targets, then the score table) runs through the real queue
daemon (local executor, on the CPU) in a runs-dir of its own, never the real ledger, on:
- a tiny random-init model of the plan model's architecture family, with the plan model's own
  tokenizer where it can be loaded (else a byte-level BPE trained on the rehearsal's texts);
- the first N examples of each task's real files (``max_train_samples``/``max_dev_samples``);
- for a synth stage, a tiny GPT-2 and a few prompts made from the tasks' words.
By default one target run per (starting point, target) cell (first seed, first grid point).

This module imports neither torch nor transformers: the tiny models are built by a process
(``python -m stilts_tui.train.modeltools tiny``) and the runs by the daemon's trainer processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui import tasks, tomlio
from stilts_tui.contract import SETTLED, Env, Status
from stilts_tui.errors import UserError, first_line
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger
from stilts_tui.tasks import data as task_data
from stilts_tui.tasks import inputs
from stilts_tui.tomlio import tomllib

SYNTH_N = 8  # pairs a rehearsed synth stage writes for train (and half as many for dev)
FILLER = (
    "the a of and to in was for on with as by at from that it he she they were is river town "
    "market winter north people water house school road city country history music"
).split()


@dataclass
class Options:
    examples: int = 8
    data_dir: Path | None = None  # one sub-folder per stage name, in the task's layout
    out: Path | None = None
    full_grid: bool = False
    timeout: float = 1800.0
    slots: int = 2


# ---- the rehearsal plan ------------------------------------------------------------------------


def _abs(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def rewrite(data: dict, plan_dir: Path, root: Path, opts: Options) -> dict:
    """The plan's TOML data, rehearsal-sized: tiny models, the first N examples, paths made absolute."""
    d = json.loads(json.dumps(data))  # a deep copy
    d["model"] = str(root / "models" / "encoder")
    for sdef in d.get("synth", {}).values():
        sdef.pop("corpus", None)
        sdef.update(
            corpus_file=str(root / "corpus.txt"), generator=str(root / "models" / "generator"), n=SYNTH_N, batch_size=4
        )
        if sdef.get("dev", plans.SYNTH_DEFAULTS["dev"]):
            sdef["dev"] = SYNTH_N // 2
    for tdef in d.get("tasks", {}).values():
        tdef["train"], tdef["dev"] = _abs(plan_dir, tdef["train"]), _abs(plan_dir, tdef["dev"])
    first_seeds = d.get("target_seeds", [42])[:1]
    for kind in ("intermediate", "target"):
        for name, sdef in d.get(kind, {}).items():
            own = opts.data_dir / name if opts.data_dir else None
            if own is not None and own.is_dir():
                sdef["data_dir"] = str(own.resolve())
            elif sdef.get("data_dir"):
                sdef["data_dir"] = _abs(plan_dir, sdef["data_dir"])
            for key in ("train_file", "dev_file"):
                if sdef.get(key) and not sdef.get("data_dir"):
                    sdef[key] = _abs(plan_dir, sdef[key])
            sdef["max_train_samples"] = sdef["max_dev_samples"] = opts.examples
            if isinstance(sdef.get("rank"), dict):  # the rank stage scores as many examples as the runs train on
                sdef["rank"]["examples"] = max(2, opts.examples)
            if kind == "target" and not opts.full_grid:
                sdef["seeds"] = (sdef.get("seeds") or first_seeds)[:1]
                sdef["grid"] = {k: v[:1] for k, v in sdef.get("grid", {}).items()}
    return d


def to_toml(data: dict) -> str:
    """A plan's data as TOML (tomli_w: scalars, then [defaults]/[slurm], then [kind.NAME] tables)."""
    return tomlio.dumps(data)


# ---- data, texts and tiny models ---------------------------------------------------------------


def stage_key(run: plans.Run) -> str:
    return f"{run.stage}.{run.name}"


def read_stages(runs: list[plans.Run], n: int) -> tuple[list[str], dict[str, str]]:
    """The texts of the first N examples of every stage's task, and a one-line error per stage
    whose data cannot be read (checked here, before any run starts)."""
    texts: list[str] = []
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for r in runs:
        if r.stage == "synth" or r.task_spec.get("from_run") or stage_key(r) in seen:
            continue
        seen.add(stage_key(r))
        spec = r.task_spec
        try:
            if (
                not spec.get("data_dir")
                and not spec.get("train_file")
                and spec.get("hub")
                and not task_data.hub_reachable()
            ):
                raise UserError(
                    "its task reads the Hugging Face Hub, which is unreachable: pass --data-dir "
                    f"with a '{r.name}' folder, or set data_dir in the plan"
                )
            for split in ("train", "dev"):
                for e in tasks.load_examples(spec, split, limit=n):
                    for part in (e["a"], e["b"]):
                        for x in part if isinstance(part, list) else [part]:
                            if x:
                                texts.append(x.replace(inputs.SEP, " "))
        except UserError as e:
            errors[stage_key(r)] = first_line(e, 300)
    return texts, errors


def corpus(texts: list[str], sentences: int) -> str:
    """Paragraphs of 24-word sentences made from the tasks' words (a synth stage's prompts)."""
    words = [w for t in texts for w in t.split() if w.isalpha()] or FILLER
    words = (words * (1 + 24 * sentences // len(words)))[: 24 * sentences]
    lines = [" ".join(words[i : i + 24]) for i in range(0, len(words), 24)]
    return "\n".join(lines) + "\n"


def build_models(root: Path, model: str, texts: list[str]) -> dict:
    """The tiny encoder (and GPT-2) under root/models, built by a process (torch, transformers)."""
    (root / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stilts_tui.train.modeltools",
            "tiny",
            str(root / "models"),
            model,
            str(root / "texts.json"),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"building the tiny models failed: {tail}")
    return json.loads(proc.stdout)


# ---- running it --------------------------------------------------------------------------------


def _wait(root: Path, plan_name: str, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        runs = Ledger(root).runs(plan=plan_name)
        if all(r["status"] in SETTLED for r in runs) or time.time() > deadline:
            return runs
        time.sleep(0.5)


def _run_daemon(root: Path, plan_name: str, opts: Options) -> list[dict]:
    """The real daemon on this runs-dir, on the CPU (fake GPUs place runs but train on the CPU)."""
    from stilts_tui.queue import ops

    saved = {k: os.environ.get(k) for k in (Env.FAKE_GPUS, "OMP_NUM_THREADS")}
    os.environ.update({Env.FAKE_GPUS: "1x80", "OMP_NUM_THREADS": "1"})
    try:
        ops.start_daemon(
            root,
            ["--per-gpu", str(opts.slots), "--cpu-slots", str(opts.slots), "--worker-runs", "8", "--interval", "0.2"],
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        return _wait(root, plan_name, opts.timeout)
    finally:
        ops.stop_daemon(root)


def _error_of(root: Path, run: dict) -> str:
    err = (rundir.read_run_file(root, run["id"]) or {}).get("error")
    return first_line(Exception(err or run.get("error") or run["status"]), 300)


def stage_lines(root: Path, runs: list[dict]) -> tuple[list[str], bool]:
    """One line per stage, in plan order: ok (runs, seconds) or the first failure in one line."""
    by_stage: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r.get("order", 0)):
        by_stage.setdefault(f"{r['stage']}.{r['name']}", []).append(r)
    lines, ok = [], True
    for key, members in by_stage.items():
        # a degenerate run trained and was evaluated: the plan works, its stop_degenerate rule ended it early;
        # a pruned run is the rank stage doing its work (its rank run is a stage line of its own)
        bad = [r for r in members if r["status"] not in (Status.DONE, Status.DEGENERATE, Status.PRUNED)]
        if not bad:
            trained = [r for r in members if r["status"] != Status.PRUNED]
            secs = sum((r.get("finished") or 0) - (r.get("started") or 0) for r in trained)
            stopped = sum(r["status"] == Status.DEGENERATE for r in members)
            pruned = len(members) - len(trained)
            also = (f"; {stopped} stopped as degenerate" if stopped else "") + (
                f"; {pruned} pruned by the rank stage" if pruned else ""
            )
            lines.append(f"ok    {key}: {len(members)} run{'s' * (len(members) != 1)} ({secs:.0f} s of runs{also})")
            continue
        ok = False
        first = next((r for r in bad if r["status"] == Status.FAILED), bad[0])
        what = "blocked (a parent failed)" if first["status"] == Status.BLOCKED else _error_of(root, first)
        lines.append(f"FAIL  {key}: {len(bad)} of {len(members)} runs not done: {what}")
    return lines, ok


def score_line(root: Path, plan_name: str) -> tuple[str, bool]:
    from stilts_tui import results

    try:
        t = results.build(root, plan_name)
    except UserError as e:
        return f"FAIL  scores: {e}", False
    empty = sum(1 for c in t.cells if not c.values)
    shape = f"{len(t.rows)} starting points x {len(t.targets)} targets ({', '.join(t.rows)} x {', '.join(t.targets)})"
    if empty:
        return f"FAIL  scores: {shape}, {empty} cells without a score", False
    return f"ok    scores: {shape}, every cell scored", True


def rehearse(plan_path: Path, opts: Options, echo: Callable[[str], None]) -> bool:
    """Rehearse a plan; prints one line per stage and the score table's shape. True if all passed."""
    plan, real_runs = plans.load_and_expand(plan_path)
    root = opts.out or Path(tempfile.mkdtemp(prefix=f"stilts-rehearse-{plan.name}-"))
    if root.exists() and any(root.iterdir()):
        raise UserError(f"--out: {root} is not empty (a rehearsal needs a runs-dir of its own)")
    root.mkdir(parents=True, exist_ok=True)
    data = tomllib.loads(plan.text)
    small = rewrite(data, plan.dir, root, opts)
    rplan = root / "plan.toml"
    rplan.write_text(to_toml(small), encoding="utf-8")
    _, runs = plans.load_and_expand(rplan)
    echo(
        f"rehearsing {plan.name} in {root}: {len(runs)} runs (the plan has {len(real_runs)}), "
        f"the first {opts.examples} examples of each task"
    )
    if not opts.full_grid:
        echo(
            "one target run per (starting point, target) cell: first seed, first grid point (--full-grid for every run)"
        )
    texts, errors = read_stages(runs, opts.examples)
    if errors:
        for key, err in errors.items():
            echo(f"FAIL  {key}: {err}")
        echo(f"stopped before training: {len(errors)} stage(s) cannot read their data")
        return False
    (root / "corpus.txt").write_text(corpus(texts, 3 * SYNTH_N), encoding="utf-8")
    model = plan.model if not plans.model_entry(plan)["path"] else plans._model(plan)["path"]
    info = build_models(root, model, texts)
    echo(f"tiny {info['family']} encoder, tokenizer: {info['tokenizer']}")
    from stilts_tui.queue import ops

    ops.add_plan(rplan, root)
    t0 = time.time()
    final = _run_daemon(root, plan.name, opts)
    lines, ok = stage_lines(root, final)
    for line in lines:
        echo(line)
    if all(r["stage"] != "target" or r["status"] in SETTLED for r in final):
        line, scored = score_line(root, plan.name)
        echo(line)
        ok = ok and scored
    echo(f"{'rehearsal passed' if ok else 'rehearsal FAILED'} in {time.time() - t0:.0f} s (runs-dir {root})")
    return ok
