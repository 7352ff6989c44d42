"""`export PLAN --to tensorboard|mlflow|wandb`: a plan's finished runs replayed from their events.jsonl into a
tracker, for a study run before its plan set ``report_to``.

The replay runs as a process, ``python -m stilts_tui.train.trackers`` (as the queue runs the trainer): the
tracker libraries, torch's TensorBoard writer among them, are imported there and never by the CLI, whose
commands stay light (import-linter: nothing outside train/ imports torch). The CLI picks the runs from the
ledger and hands the process their folders and grid values as JSON on its stdin."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Annotated

import typer

from stilts_tui.cli.root import app, runs_root
from stilts_tui.contract import MLFLOW_DIR, REPORT_TO, RESULT_FILE, TENSORBOARD_DIR, TRAINED_STAGES
from stilts_tui.errors import Failure, UserError
from stilts_tui.results.table import find_plan
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # what each tracker imports


@app.command("export")
def export(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a queued plan's name (or its file)", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="tensorboard | mlflow | wandb", show_default=False)],
) -> None:
    """Replay a plan's finished runs (their last attempt's events.jsonl) into a tracker: TensorBoard event
    files in each run's folder, MLflow's file store in the runs-dir, or W&B offline files (`wandb sync`)."""
    if to not in REPORT_TO:
        raise UserError(f"--to: '{to}' is not one of {', '.join(REPORT_TO)}")
    if importlib.util.find_spec(PACKAGES[to]) is None:  # found without importing it
        raise Failure(f"--to {to}: {PACKAGES[to]} is not installed (pip install 'stilts-tui[{to}]')")
    root = runs_root(ctx)
    name = find_plan(root, plan)
    runs = [
        r
        for r in Ledger(root).runs(plan=name)
        if r.get("stage") in TRAINED_STAGES and (rundir.run_dir(root, r["id"]) / RESULT_FILE).is_file()
    ]
    if not runs:
        raise UserError(f"plan '{name}' has no finished runs to export (none has a {RESULT_FILE} yet)")
    request = {
        "to": to,
        "runs": [{"dir": str(rundir.run_dir(root, r["id"])), "grid": r.get("grid") or {}} for r in runs],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stilts_tui.train.trackers"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    states = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    if proc.returncode not in (0, 1) or len(states) != len(runs):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise Failure(f"export to {to} stopped: {tail}")
    for run_id, state in states.items():
        if state != "ok":
            typer.echo(f"{run_id}: {state}", err=True)
    done = sum(s == "ok" for s in states.values())
    where = {
        "tensorboard": f"each run's {TENSORBOARD_DIR}/ folder (tensorboard --logdir {root})",
        "mlflow": f"{(root / MLFLOW_DIR).as_uri()} (mlflow ui --backend-store-uri {(root / MLFLOW_DIR).as_uri()})",
        "wandb": "each run's wandb/ folder (wandb sync RUN/wandb/offline-run-*)",
    }[to]
    typer.echo(f"{name}: {done} of {len(runs)} finished runs exported to {to}: {where}")
    if proc.returncode:
        raise Failure(f"{sum(s.startswith('failed') for s in states.values())} runs failed to export (above)")
