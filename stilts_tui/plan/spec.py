"""A run's ``spec.json``: everything the trainer needs for one run of an expanded plan (the task with its
data paths resolved, the model or the parent run's checkpoint, params, seed, the plan's sbatch settings)."""

from __future__ import annotations

from pathlib import Path

from stilts_tui import contract
from stilts_tui.plan.expand import report_to
from stilts_tui.plan.model import Plan, Run
from stilts_tui.store import rundir


def spec_for(run: Run, plan: Plan, runs_root: Path) -> dict:
    """Everything the trainer needs for one run: the contents of ``<run dir>/spec.json``."""
    task = dict(run.task_spec)
    # paths inside the runs-dir are built from run ids only (checked: never from names in the plan)
    if task.get("from_run"):  # the output of a synth run of this plan
        task["data_dir"] = str(rundir.run_dir(runs_root, task["from_run"]) / contract.SYNTH_DATA_DIR)
    if run.parent and run.stage == "target":  # an intermediate's parent (a synth run) gives data, not weights
        model = {
            "source": "parent",
            "parent": run.parent,
            "name": plan.model,
            "path": str(rundir.run_dir(runs_root, run.parent) / contract.CHECKPOINT_DIR),
        }
        if run.params.get("transfer") == "adapter":  # the frozen base is the intermediate's own (unmerged) base
            model["base"] = {"source": "path" if run.model.get("path") else "hub", **run.model}
    else:
        model = {"source": "path" if run.model.get("path") else "hub", **run.model}
    if run.stage == "synth":
        task = {"name": "synth"}
    extra = {}
    trackers = report_to(plan, run.stage, run.name) if run.stage in contract.TRAINED_STAGES else []
    if trackers:  # not in the run's id: spec.json alone carries it (as slurm); without it, the spec as before
        extra[contract.REPORT_TO_KEY] = trackers
        extra["grid"] = dict(run.grid)  # what varies in its target's grid: the trackers' group names
    if run.stage == contract.RANK_STAGE:  # what it scores: each starting point's weights
        extra["starts"] = [
            {**s, "model": model if s["run_id"] is None else _parent_model(plan, runs_root, s["run_id"])}
            for s in run.starts
        ]
    return {
        "run_id": run.id,
        "plan": plan.name,
        "plan_file": str(plan.path),
        "stage": run.stage,
        "name": run.name,
        "intermediate": run.intermediate,
        "task": task,
        "model": model,
        "params": run.params,
        "seed": run.seed,
        "parent": run.parent,  # precision: in params alone
        "keep_checkpoint": run.params.get("keep_checkpoint") is True,  # expansion sets it for intermediates
        "slurm": dict(plan.slurm),
        **extra,
    }


def _parent_model(plan: Plan, runs_root: Path, parent: str) -> dict:
    """The model entry of weights an intermediate run leaves: its checkpoint folder."""
    path = rundir.run_dir(runs_root, parent) / contract.CHECKPOINT_DIR
    return {"source": "parent", "parent": parent, "name": plan.model, "path": str(path)}
