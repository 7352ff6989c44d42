"""`plan validate`, `plan show` (counts, the matrix, and with --cost what the plan will take) and
`plan rehearse` (every stage end to end on tiny models first)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import bounds
from stilts_tui import plan as plans
from stilts_tui.cli import render
from stilts_tui.cli.root import JsonFlag, PlanPath, console, plan_app, runs_root
from stilts_tui.contract import EXIT_FAILURE, Env
from stilts_tui.errors import UserError
from stilts_tui.fmt import json_text, terminal_safe

MaxRuns = Annotated[
    int | None,
    typer.Option(
        "--max-runs",
        help=f"accept a plan of up to this many runs (default {plans.MAX_RUNS:,}, or ${Env.MAX_RUNS})",
    ),
]


@plan_app.command("validate")
def plan_validate(path: PlanPath, max_runs: MaxRuns = None) -> None:
    """Check a plan: exit 0 if it is valid (missing local data files are warnings)."""
    plan, runs = plans.load_and_expand(path, max_runs=max_runs)
    for line in plans.missing_data(plan, runs):
        typer.echo(f"warning: {terminal_safe(line)}", err=True)
    c = plans.counts(runs)
    typer.echo(
        f"{terminal_safe(path)}: ok — {len(runs)} runs "
        f"({c['synth']} synth, {c['intermediate']} intermediate, {c['target']} target)"
    )
    _echo_on_finish(plan)
    lines, unreachable = _data_sources(runs)
    for line in lines:
        typer.echo(terminal_safe(line))
    if unreachable:  # right but offline: a warning, never a failure
        typer.echo(
            f"warning: the Hugging Face Hub ({terminal_safe(_hub_url())}) is unreachable now: {', '.join(unreachable)} "
            "cannot load their data until it is (or set data_dir to local files)",
            err=True,
        )


def _hub_url() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _data_sources(runs: list) -> tuple[list[str], list[str]]:
    """Where each stage's data comes from and whether it is there now: one line a stage; and the stages
    that need the hub while it is unreachable (checked once, through $HF_ENDPOINT)."""
    from stilts_tui.tasks import data

    lines, offline, hub_ok = [], [], None
    for r in {(r.stage, r.name): r for r in runs}.values():
        where, spec = f"  [{r.stage}.{r.name}]", r.task_spec
        if r.stage == "synth":
            lines.append(
                f"{where} synthesis: GPT-2 writes it (corpus {r.params.get('corpus_file') or r.params.get('corpus')})"
            )
        elif spec.get("from_run"):
            lines.append(f"{where} {r.task}: the output of synth run {spec['from_run']}")
        elif any(data.file_for(spec, s) for s in data.SPLITS):
            missing = data.missing_files(spec)
            files = data.required_files(spec)
            state = "present" if not missing else f"{len(missing)} of {len(files)} missing"
            lines.append(f"{where} {r.task}: local files {os.path.commonpath([str(f) for f in files])} ({state})")
        elif spec.get("hub"):
            hub_ok = data.hub_reachable() if hub_ok is None else hub_ok
            name = data.hub_label(spec["hub"])
            lines.append(
                f"{where} {r.task}: Hugging Face Hub {name} "
                f"({'reachable' if hub_ok else 'unreachable now'}: {_hub_url()})"
            )
            if not hub_ok:
                offline.append(f"[{r.stage}.{r.name}]")
        else:
            lines.append(f"{where} {r.task}: no source (no hub copy, no data_dir)")
    return lines, offline


def _echo_on_finish(plan: plans.Plan) -> None:
    """The plan's on_finish command, as `queue add` records it (the daemon runs that, never a later edit)."""
    cmd = plan.finish_command()
    if cmd:
        typer.echo(f"on_finish: {terminal_safe(json.dumps(cmd))} (recorded by `queue add`, run without a shell)")


@plan_app.command("rehearse")
def plan_rehearse(
    ctx: typer.Context,
    path: PlanPath,
    examples: Annotated[
        int,
        typer.Option(
            "--examples", help="the first N examples of each task", parser=bounds.parser("examples"), metavar="INTEGER"
        ),
    ] = 8,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="a folder with one sub-folder per stage (named as the stage) holding its files in the task's layout",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="the rehearsal's own runs-dir (default: a new temporary folder)")
    ] = None,
    full_grid: Annotated[bool, typer.Option("--full-grid", help="every target run, not one per cell")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="seconds to wait for the runs",
            parser=bounds.parser("rehearse_timeout", "--timeout"),
            metavar="FLOAT",
        ),
    ] = 1800.0,
) -> None:
    """Run every stage of a plan end to end through the queue on tiny models, on the CPU, first."""
    from stilts_tui.cli import rehearse

    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir: {data_dir} is not a folder")
    if out is not None and out.resolve() == runs_root(ctx).resolve():
        raise UserError(f"--out: {out} is the real runs-dir; a rehearsal needs a runs-dir of its own")
    opts = rehearse.Options(examples=examples, data_dir=data_dir, out=out, full_grid=full_grid, timeout=timeout)
    if not rehearse.rehearse(path, opts, typer.echo):
        raise typer.Exit(EXIT_FAILURE)


@plan_app.command("show")
def plan_show(
    ctx: typer.Context,
    path: PlanPath,
    as_json: JsonFlag = False,
    cost: Annotated[
        bool,
        typer.Option(
            "--cost",
            help="training steps and estimated GPU-hours per stage, from throughput measured in the runs-dir's ledger",
        ),
    ] = False,
    per_gpu: Annotated[
        int | None,
        typer.Option(
            "--per-gpu",
            parser=bounds.parser("per_gpu"),
            metavar="INTEGER",
            help="--cost: processes a GPU (default: the daemon's)",
        ),
    ] = None,
    cpu_slots: Annotated[
        int | None,
        typer.Option(
            "--cpu-slots",
            parser=bounds.parser("cpu_slots"),
            metavar="INTEGER",
            help="--cost: processes without a GPU (default: the daemon's)",
        ),
    ] = None,
    worker_runs: Annotated[
        int | None,
        typer.Option(
            "--worker-runs",
            parser=bounds.parser("worker_runs"),
            metavar="INTEGER",
            help="--cost: runs a process (default: the daemon's)",
        ),
    ] = None,
    fuse: Annotated[
        int,
        typer.Option(
            "--fuse", parser=bounds.parser("fuse"), metavar="INTEGER", help="--cost: the fused mode's array size"
        ),
    ] = 4,
) -> None:
    """Counts by stage and the intermediate x target matrix of a plan (and with --cost what it will take:
    GPU-hours per stage, and the wall time on this box per mode)."""
    plan, runs = plans.load_and_expand(path)
    warnings = plans.missing_data(plan, runs)
    counts, matrix = plans.counts(runs), plans.matrix(runs)
    estimate = wall = None
    if cost:
        from stilts_tui.estimate import cost as costs
        from stilts_tui.estimate import walltime

        box = _box(ctx, per_gpu, cpu_slots, worker_runs, fuse)
        rates = walltime.history(runs_root(ctx), box.device)  # this device's runs only (cost and wall alike)
        estimate = costs.estimate(plan, runs, rates)
        wall = (box, walltime.predict(plan, runs, rates, box))
    if as_json:
        cost_json = {"cost": {**estimate.as_dict(), "wall": _wall_dict(*wall)}} if estimate else {}
        # strict JSON: every figure is finite (clamped), and a NaN or infinity would be written as null
        typer.echo(json_text(_plan_dict(plan, runs, warnings) | cost_json, indent=2))
        return
    for line in warnings:
        typer.echo(f"warning: {terminal_safe(line)}", err=True)
    con = console()
    render.print_plan(con, plan, runs, counts, matrix)
    _echo_on_finish(plan)
    if estimate is not None:
        render.print_cost(con, estimate)
        render.print_wall(con, *wall)


def _plan_dict(plan, runs: list, warnings: list[str]) -> dict:
    """`plan show --json` without the cost."""
    return {
        "name": plan.name,
        "model": plan.model,
        "counts": plans.counts(runs),
        "matrix": plans.matrix(runs),
        "runs": len(runs),
        "warnings": warnings,
        "on_finish": plan.finish_command(),
    }


def _box(ctx: typer.Context, per_gpu: int | None, cpu_slots: int | None, worker_runs: int | None, fuse: int):
    """This box for the wall-time prediction (walltime.box_for): its GPUs, and the running daemon's settings
    where not given, else the defaults."""
    from stilts_tui.estimate import walltime
    from stilts_tui.queue import gpus, ops

    info = ops.daemon_status(runs_root(ctx)) or {}
    running = info.get("settings") if isinstance(info.get("settings"), dict) else {}
    return walltime.box_for(gpus.probe().gpus, running, per_gpu, cpu_slots, worker_runs, fuse)


def _wall_dict(box, pred) -> dict:
    """`plan show --cost --json`'s wall time: the box it was predicted for and each mode's seconds."""
    return {
        "box": {
            "device": box.device,
            "gpu": box.gpu,
            "devices": box.devices,
            "slots": box.slots,
            "worker_runs": box.worker_runs,
            "fuse": box.fuse,
        },
        "seconds": {m: None if v is None else round(v, 1) for m, v in pred.seconds.items()},
        "runs": pred.runs,
        "measured": pred.measured,
        "notes": pred.notes,
    }
