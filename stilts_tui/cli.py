"""The command line (typer): one small function per command, each calling into the layers below.

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 1 on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import plan as plans
from stilts_tui import rundir, tasks
from stilts_tui.errors import UserError
from stilts_tui.ledger import STATUSES, Ledger

app = typer.Typer(
    name="stilts-tui", no_args_is_help=False, add_completion=False, pretty_exceptions_enable=False,
    help="Plan, queue, watch and score intermediate-task fine-tuning (STILTs) studies.",
)
plan_app = typer.Typer(help="Validate and inspect plan files.", no_args_is_help=True)
queue_app = typer.Typer(help="Add plans to the queue and list its runs.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(queue_app, name="queue")

PlanPath = Annotated[Path, typer.Argument(help="a plan file (TOML)", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output (see README)")]


def _console():
    from rich.console import Console

    return Console()


def _root(ctx: typer.Context) -> Path:
    return ctx.obj["runs_dir"]


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", envvar="STILTS_RUNS_DIR", help="where run folders and the ledger live"),
    ] = None,
) -> None:
    """Plan, queue, watch and score STILTs studies. With no command, opens the terminal app."""
    ctx.obj = {"runs_dir": rundir.runs_dir(runs_dir)}
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command("tasks")
def tasks_cmd(as_json: JsonFlag = False) -> None:
    """List the built-in tasks."""
    rows = [
        {"name": t.name, "aliases": list(t.aliases), "kind": t.kind, "metric": t.metric,
         "hub": "/".join(x for x in t.hub if x) if t.hub else None,
         "files": list(t.files) if t.files else None, "description": t.description}
        for t in tasks.BUILTIN
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("task", "aliases", "kind", "metric", "hub", "local files (train, dev)", box=None)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]), r["kind"], r["metric"], r["hub"] or "(local only)",
                      ", ".join(r["files"] or []))
    _console().print(table)


@plan_app.command("validate")
def plan_validate(path: PlanPath) -> None:
    """Check a plan: exit 0 if it is valid (missing local data files are warnings)."""
    plan, runs = plans.load_and_expand(path)
    for line in plans.missing_data(plan, runs):
        typer.echo(f"warning: {line}", err=True)
    c = plans.counts(runs)
    typer.echo(f"{path}: ok — {len(runs)} runs ({c['synth']} synth, {c['intermediate']} intermediate, "
               f"{c['target']} target)")


@plan_app.command("show")
def plan_show(path: PlanPath, as_json: JsonFlag = False) -> None:
    """Counts by stage and the intermediate x target matrix of a plan."""
    plan, runs = plans.load_and_expand(path)
    warnings = plans.missing_data(plan, runs)
    counts, matrix = plans.counts(runs), plans.matrix(runs)
    if as_json:
        typer.echo(json.dumps({"name": plan.name, "model": plan.model, "counts": counts, "matrix": matrix,
                               "runs": len(runs), "warnings": warnings}, indent=2))
        return
    from rich.table import Table

    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    con = _console()
    con.print(f"[bold]{plan.name}[/] — model {plan.model} — {len(runs)} runs: "
              + ", ".join(f"{n} {s}" for s, n in counts.items()))
    targets = list(plan.target)
    table = Table("starting point \\ target", *targets, "total", title="target runs")
    for row, cells in matrix.items():
        table.add_row(row, *(str(cells.get(t, 0)) for t in targets), str(sum(cells.values())))
    con.print(table)


@queue_app.command("add")
def queue_add(
    ctx: typer.Context,
    path: PlanPath,
    priority: Annotated[int, typer.Option("--priority", help="higher runs first")] = 0,
) -> None:
    """Queue every run of a plan not queued before (re-adding a plan queues nothing new)."""
    from stilts_tui.queue.ops import add_plan

    plan, runs, added = add_plan(path, _root(ctx), priority=priority)
    typer.echo(f"{plan.name}: {len(added)} runs queued, {len(runs) - len(added)} already in the ledger "
               f"({_root(ctx)})")


SHORT_PARAMS = {"lr": "lr", "batch_size": "bs", "warmup": "wu", "epochs": "ep", "max_len": "len"}


@queue_app.command("ls")
def queue_ls(
    ctx: typer.Context,
    plan: Annotated[str | None, typer.Option("--plan", help="only this plan (by name)")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"only runs in this status: {', '.join(STATUSES)}")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List runs in queue order."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status: '{status}' is not one of {', '.join(STATUSES)}")
    ledger = Ledger(_root(ctx))
    if plan is not None and plan not in ledger.plans():
        raise UserError(f"--plan: no plan named '{plan}' in {ledger.path}")
    runs = ledger.runs(plan=plan, status=status)
    if as_json:
        keys = ("id", "plan", "stage", "name", "task", "intermediate", "seed", "params", "grid", "parent",
                "status", "gpu", "score", "priority")
        typer.echo(json.dumps([{k: r.get(k) for k in keys} for r in runs], indent=1))
        return
    from rich.table import Table

    table = Table("id", "plan", "stage", "task", "from", "seed", "grid", "status", "gpu", "score", box=None)
    for r in runs:
        grid = " ".join(f"{SHORT_PARAMS.get(k, k)}={v:g}" if isinstance(v, float) else f"{SHORT_PARAMS.get(k, k)}={v}"
                        for k, v in (r.get("grid") or {}).items())
        score = f"{r['score']:.4f}" if isinstance(r.get("score"), (int, float)) else ""
        table.add_row(r["id"], r["plan"], r["stage"], r["task"], r.get("intermediate") or "", str(r.get("seed", "")),
                      grid, r["status"], "" if r.get("gpu") is None else str(r["gpu"]), score)
    _console().print(table)
    typer.echo(f"{len(runs)} runs", err=True)


@app.command("scores")
def scores(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a queued plan's name (or its file)", show_default=False)],
    metric: Annotated[str | None, typer.Option("--metric", help="a metric in the runs' results (default: each "
                                               "target's primary metric)")] = None,
    by_seed: Annotated[bool, typer.Option("--by-seed", help="one row per starting point and seed")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | md | latex | json | png")] = "table",
    out: Annotated[Path | None, typer.Option("-o", "--output", help="write to this file")] = None,
) -> None:
    """The score table of a plan: mean/std/median/max/min per (intermediate, target), gain over "none"."""
    from stilts_tui import results

    if fmt not in results.FORMATS:
        raise UserError(f"--format: '{fmt}' is not one of {', '.join(results.FORMATS)}")
    if fmt == "png" and out is None:
        raise UserError("--format png needs -o FILE.png")
    table = results.build(_root(ctx), plan, metric=metric, by_seed=by_seed)
    if fmt == "png":
        results.to_png(table, out)
    elif fmt == "table":
        if out is not None:
            raise UserError("--format table prints to the terminal; choose csv, md, latex or json for -o")
        _console().print(results.to_rich(table))
        return
    else:
        text = results.render(table, fmt)
        if out is None:
            typer.echo(text, nl=False)
            return
        out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


def main() -> None:
    """Console entry point: bad input becomes one line on stderr and exit status 2."""
    try:
        app()
    except UserError as e:
        typer.echo(f"stilts-tui: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
