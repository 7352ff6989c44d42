"""`stilts-tui rank`: each target's starting points in the order LogME predicts, from frozen features.

The starting points of a target: none (the plan's model) and every intermediate run of the plan whose
checkpoint exists. The scores come from ``python -m stilts_tui.train.rank`` (torch stays out of this
process), cached under ``<runs-dir>/.cache/rank/`` per (starting point, target, N): a cache file is used
only when its shape and key check out, else scored again. No torch here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stilts_tui import contract
from stilts_tui import plan as plans
from stilts_tui.errors import Failure, UserError
from stilts_tui.rank.cache import CACHE_DIR, METHOD, Start, cached, job, ranking  # noqa: F401 - names of this command
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger

DEFAULT_EXAMPLES = contract.RANK_DEFAULTS["examples"]  # also a plan's rank stage's
DEVICE_HELP = "cpu (default) | cuda | cuda:N"


def load_plan(root: Path, plan: str) -> plans.Plan:
    """The plan, from its file or its name in the ledger (the file it was queued from)."""
    path = Path(plan)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"plan file not found: {plan}")
        return plans.load(path)
    for r in Ledger(root).runs() if (root / contract.LEDGER_FILE).is_file() else []:
        if r.get("plan") == plan:
            spec = rundir.read_run_file(root, r["id"], contract.SPEC_FILE) or {}
            if isinstance(spec.get("plan_file"), str) and Path(spec["plan_file"]).is_file():
                return plans.load(spec["plan_file"])
            raise UserError(f"plan '{plan}': the file it was queued from is gone; give the plan file")
    raise UserError(f"unknown plan '{plan}': give a plan file or the name of a queued plan")


def check_options(plan: plans.Plan, target: str | None, examples: int, device: str) -> None:
    if target is not None and target not in plan.target:
        raise UserError(f"--target: '{target}' is not a target of plan '{plan.name}' ({', '.join(plan.target)})")
    if examples < 2:
        raise UserError(f"--examples: LogME needs at least 2 examples, got {examples}")
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"--device: expected {DEVICE_HELP}, got {device!r}")


def starts(plan: plans.Plan, runs: list[plans.Run], root: Path) -> list[Start]:
    """none, then each intermediate run whose checkpoint is in its run folder (a done intermediate's)."""
    model = next(r.model for r in runs if r.stage == "target")  # the plan's model, as its baseline runs load it
    out = [Start("none", None, {"source": "path" if model.get("path") else "hub", **model})]
    inters = [r for r in runs if r.stage == "intermediate"]
    for r in inters:
        folder = rundir.run_dir(root, r.id) / contract.CHECKPOINT_DIR
        if not (folder / "model.safetensors").is_file():
            continue
        several = sum(x.name == r.name for x in inters) > 1
        label = f"{r.name} (seed {r.seed})" if several else r.name
        out.append(Start(label, r.id, {"source": "parent", "parent": r.id, "name": plan.model, "path": str(folder)}))
    return out


def jobs_for(plan: plans.Plan, root: Path, target: str | None, examples: int) -> list[dict]:
    """One job per (target, starting point): what the scorer needs and where its score is cached."""
    runs = plans.expand(plan)
    names = list(plan.target) if target is None else [target]
    missing = plans.missing_data(plan, [r for r in runs if r.stage == "target" and r.name in names])
    if missing:  # what the trainer would fail on, said here in one line (bad input, exit 2)
        raise UserError(missing[0])
    points = starts(plan, runs, root)
    out = []
    for name in names:
        first = next(r for r in runs if r.stage == "target" and r.name == name)
        task = plans.spec_for(first, plan, root)["task"]
        out += [job(p, name, task, int(first.params["max_len"]), examples, root) for p in points]
    return out


def score(jobs: list[dict], device: str) -> dict[str, dict]:
    """Every job's record (by key): from the cache, the others scored now in one child process."""
    todo = [j for j in jobs if cached(j) is None]
    if todo:
        (Path(todo[0]["runs_dir"]) / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        request = json.dumps({"device": device, "jobs": todo})
        code = subprocess.run([sys.executable, "-m", "stilts_tui.train.rank", request]).returncode
        if code:
            raise Failure(f"scoring the starting points failed (exit {code}; its line is above)")
    out = {}
    for j in jobs:
        record = cached(j)
        if record is None:
            raise Failure(f"the scorer wrote no valid score for {j['target']} from {j['start']} ({j['cache']})")
        out[j["key"]] = record
    return out


def lines(doc: dict) -> list[str]:
    """The ranking for people: one block a target, best first."""
    out = []
    for t in doc["targets"]:
        out.append(
            f"{t['target']}: {doc['method']} on its first {t['examples']} train examples (higher: predicted better)"
        )
        width = max(len(r["start"]) for r in t["ranking"])
        out += [f"  {r['rank']:>2}  {r['start']:<{width}}  {r['score']:.4f}" for r in t["ranking"]]
    return out
