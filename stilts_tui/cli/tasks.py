"""`tasks` (the built-in tasks) and `tasks show` (a task's first examples as the model receives them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import bounds, tasks
from stilts_tui import plan as plans
from stilts_tui.cli import render
from stilts_tui.cli.root import JsonFlag, console, runs_root, tasks_app
from stilts_tui.contract import EXIT_FAILURE
from stilts_tui.errors import UserError
from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.tasks.data import hub_label


@tasks_app.callback(invoke_without_command=True)
def tasks_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the built-in tasks (`tasks show TASK`: its first examples as the model receives them)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [
        {
            "name": t.name,
            "aliases": list(t.aliases),
            "kind": t.kind,
            "metric": t.metric,
            "hub": hub_label(t.hub),
            "files": list(t.files) if t.files else None,
            "description": t.description,
        }
        for t in tasks.BUILTIN
    ]
    if as_json:
        typer.echo(json_text(rows, indent=2))
        return
    console().print(render.tasks_table(rows))


@tasks_app.command("show")
def tasks_show(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Argument(help="a built-in task (or alias); with --plan, a stage of the plan", show_default=False)
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="the task's local files, in the official layout (default: the Hugging Face Hub)"
        ),
    ] = None,
    plan_path: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="TASK is a stage of this plan (its own custom, data_dir or synthesized task); --model defaults "
            "to the plan's model",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="whose tokenizer: hub id or local folder (default roberta-large)")
    ] = None,
    n: Annotated[
        int, typer.Option("-n", help="how many examples", parser=bounds.parser("examples", "-n"), metavar="INTEGER")
    ] = 3,
    split: Annotated[str, typer.Option("--split", help="train or dev")] = "train",
    max_len: Annotated[
        int,
        typer.Option(
            "--max-len", help="truncate as a run with this max_len", parser=bounds.parser("max_len"), metavar="INTEGER"
        ),
    ] = 512,
    as_json: JsonFlag = False,
) -> None:
    """The first N examples of a task as the model receives them: text, label, tokens and ids."""
    from stilts_tui.tasks import show

    if split not in ("train", "dev"):
        raise UserError(f"--split: expected train or dev, got '{split}'")
    if plan_path is not None:
        if data_dir is not None:
            raise UserError("--data-dir: a plan's stage has its data where the plan says; give --plan or --data-dir")
        plan, runs = plans.load_and_expand(plan_path)
        spec, plan_model = _plan_stage_spec(plan, runs, task, runs_root(ctx))
        model = model or plan_model
    else:
        spec = show.spec_for(task, data_dir)
    model = model or "roberta-large"
    exs = show.examples(spec, split, n)
    recs = show.records(spec, exs, show.encode(model, spec["kind"], max_len, exs))
    if as_json:
        typer.echo("\n".join(json_text(r) for r in recs))
    else:  # a dataset's texts, labels and tokens are data from outside: nothing in them acts on the terminal
        typer.echo(terminal_safe(show.render(spec, recs), keep_newlines=True))


def _plan_stage_spec(plan, runs: list, name: str, runs_root: Path) -> tuple[dict, str]:
    """The task entry of the plan's intermediate or target stage ``name`` as its runs' spec.json holds
    it (a synthesized task reads its synth run's output folder), and the plan's model (its tokenizer)."""
    from stilts_tui.tasks import data

    stages = {(r.stage, r.name): r for r in runs if r.stage in ("intermediate", "target")}
    run = stages.get(("target", name)) or stages.get(("intermediate", name))
    if run is None:
        known = ", ".join(sorted({n for _, n in stages})) or "none"
        raise UserError(f"{plan.path}: no intermediate or target stage '{name}' (the plan has: {known})")
    spec = plans.spec_for(run, plan, runs_root)
    task = dict(spec["task"])
    if task.get("from_run") and data.missing_files(task):
        raise UserError(
            f"stage '{name}' is synthesized by run {task['from_run']}: its examples exist once that run is done "
            f"(expected in {task['data_dir']})"
        )
    # the model a run of the stage loads its tokenizer from; a run from an intermediate's checkpoint (which
    # may not exist yet) has its base model's tokenizer
    model = (None if run.model.get("parent") else run.model.get("path")) or run.model.get("name") or plan.model
    return task, str(model)


@tasks_app.command("check")
def tasks_check(
    plan_path: Annotated[Path, typer.Argument(metavar="PLAN", help="the plan file")],
    max_runs: Annotated[
        int | None,
        typer.Option(
            "--max-runs", help="accept a plan of more runs", parser=bounds.parser("max_runs"), metavar="INTEGER"
        ),
    ] = None,
) -> None:
    """Open every stage's data source as its runs will (local files read, the hub's builder and split list at
    the pinned revision, without downloading the data): one line a stage; exit 1 unless every stage will load.
    Run it on the box that trains, before `queue add`."""
    from stilts_tui.tasks import check

    _, runs = plans.load_and_expand(plan_path, max_runs=max_runs)
    bad = 0
    for r in {(r.stage, r.name): r for r in runs if r.stage in ("intermediate", "target")}.values():
        answer = check.check(r.task_spec)
        bad += not answer.ok
        typer.echo(terminal_safe(f"[{r.stage}.{r.name}] {answer.state.upper():7} {answer.line}"))
    for r in {r.name: r for r in runs if r.stage == "synth"}.values():
        typer.echo(terminal_safe(f"[synth.{r.name}] {'OK':7} synthesis: written by GPT-2 when the stage runs"))
    if bad:
        typer.echo(f"{terminal_safe(plan_path)}: {bad} stage(s) will not load their data as things stand", err=True)
        raise typer.Exit(EXIT_FAILURE)
