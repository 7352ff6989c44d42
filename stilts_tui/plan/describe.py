"""What a plan amounts to, in words and counts: a run's grid values in short (``lr=1e-05 bs=16``), runs by
stage, target runs by starting point and target, and the data files the plan names that are missing."""

from __future__ import annotations

from pathlib import Path

from stilts_tui import contract, tasks
from stilts_tui.plan.expand import model_entry
from stilts_tui.plan.model import Plan, Run
from stilts_tui.plan.schema import STAGES

SHORT_PARAMS = {"lr": "lr", "batch_size": "bs", "warmup": "wu", "epochs": "ep", "max_len": "len"}


def grid_text(grid: dict | None, params: dict | None = None) -> str:
    """A run's grid values, short: ``lr=1e-05 bs=16 wu=0.2`` (a damaged row's grid that is no table: as is); a
    LoRA run's begin with its method and rank (``lora r=8``), so that no list of runs and scores shows it as a
    full fine-tune."""
    if grid is not None and not isinstance(grid, dict):
        return str(grid)[:60]
    grid = dict(grid or {})
    lora = contract.is_lora(params)
    if lora:
        grid.pop("method", None)
    text = " ".join(
        f"{SHORT_PARAMS.get(k, k)}={v:g}" if isinstance(v, float) else f"{SHORT_PARAMS.get(k, k)}={v}"
        for k, v in grid.items()
    )
    if not lora:
        return text
    settings = params.get("lora") if isinstance(params.get("lora"), dict) else {}
    return f"lora r={settings.get('r')} {text}".strip()


def counts(runs: list[Run]) -> dict[str, int]:
    """Runs by stage (the rank stage only where a target has one)."""
    return {s: n for s in STAGES if (n := sum(r.stage == s for r in runs)) or s != contract.RANK_STAGE}


def matrix(runs: list[Run]) -> dict[str, dict[str, int]]:
    """Target runs by starting point (rows: "none" and each intermediate) and target (columns)."""
    out: dict[str, dict[str, int]] = {}
    for r in runs:
        if r.stage == "target":
            row = out.setdefault(r.intermediate or "none", {})
            row[r.name] = row.get(r.name, 0) + 1
    return out


def missing_data(plan: Plan, runs: list[Run]) -> list[str]:
    """One line per local data file (or model folder) that the plan names but that is not there."""
    seen: set[str] = set()
    out = []
    for r in runs:
        if r.stage == "synth":
            f = r.params.get("corpus_file")
            files = [Path(f)] if f and not Path(f).is_file() else []
        elif r.task_spec.get("from_run"):
            files = []
        else:
            files = tasks.missing_files(r.task_spec)
            for split in ("train", "dev") if not r.task_spec.get("hub") else ():
                if tasks.file_for(r.task_spec, split) is None:
                    line = (
                        f"{plan.path}: [{r.stage}.{r.name}] task '{r.task}' has no {split} split: it has no "
                        f"Hugging Face Hub copy; set data_dir (or {split}_file) to its local files"
                    )
                    if line not in seen:
                        seen.add(line)
                        out.append(line)
        for f in files:
            line = f"{plan.path}: [{r.stage}.{r.name}] data file not found: {f}"
            if line not in seen:
                seen.add(line)
                out.append(line)
    mpath = model_entry(plan)["path"]
    if mpath and not Path(mpath).exists():
        out.append(f"{plan.path}: model folder not found: {mpath}")
    return out
