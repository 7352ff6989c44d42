"""`scores` (the score table of a plan, printed or exported) and `rank` (LogME's predicted order of each
target's starting points)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import bounds
from stilts_tui.cli.root import JsonFlag, app, console, runs_root
from stilts_tui.errors import UserError
from stilts_tui.estimate import predicted
from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.rank import ranking


@app.command("scores")
def scores(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a queued plan's name (or its file)", show_default=False)],
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="a metric in the runs' results (default: each target's primary metric)"),
    ] = None,
    by_seed: Annotated[bool, typer.Option("--by-seed", help="one row per starting point and seed")] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="table | csv | md | latex | json | png | pdf | svg (default: from -o's extension, else table)",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--output", help="write to this file")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing -o file")] = False,
    alpha: Annotated[
        float,
        typer.Option(
            "--alpha", help="level of the paired sign-flip test", parser=bounds.parser("alpha"), metavar="FLOAT"
        ),
    ] = 0.05,
    without_failed: Annotated[
        bool,
        typer.Option(
            "--without-failed",
            help="show the mean and std without the failed runs (at or below the majority-class score)",
        ),
    ] = False,
    curves: Annotated[
        bool,
        typer.Option(
            "--curves",
            help="with -o FILE.pdf|png|svg: the runs' curves instead (a column per target, a line per starting "
            "point: mean over grid and seeds, band min-max)",
        ),
    ] = False,
) -> None:
    """The score table of a plan: mean/std/median/max/min per (intermediate, target), failed-run rate,
    gain over "none" with a paired test."""
    from stilts_tui import results

    if curves:
        _curves(ctx, plan, fmt, out, force)
        return

    named = results.format_for(out) if out is not None else None
    if fmt is None:
        fmt = named or ("table" if out is None else "")
        if not fmt:
            raise UserError(
                f"-o {out}: name the format with --format (csv, md, latex, json, png, pdf, svg) or use "
                "one of the extensions .csv .md .tex .json .png .pdf .svg"
            )
    if fmt not in results.FORMATS:
        raise UserError(f"--format: '{fmt}' is not one of {', '.join(results.FORMATS)}")
    if fmt in results.FIGURES and out is None:
        raise UserError(f"--format {fmt} needs -o FILE.{fmt}")
    if fmt == "table" and out is not None:
        raise UserError("--format table prints to the terminal; choose csv, md, latex or json for -o")
    if out is not None and out.suffix and named != fmt:
        raise UserError(
            f"-o {out}: the extension '{out.suffix}' does not match --format {fmt} (use .{results.EXTENSIONS[fmt]})"
        )
    if out is not None and out.is_file() and not force:
        raise UserError(f"-o {out}: the file exists; add --force to overwrite it")
    root = runs_root(ctx)
    table = results.build(root, plan, metric=metric, by_seed=by_seed, alpha=alpha, without_failed=without_failed)
    if fmt == "table":
        console().print(results.to_rich(table))
        return
    if out is None:
        typer.echo(results.render(table, fmt), nl=False)
        return
    results.write_output(out, results.export_bytes(table, fmt), force=force)
    typer.echo(f"wrote {terminal_safe(out)}", err=True)


def _curves(ctx: typer.Context, plan: str, fmt: str | None, out: Path | None, force: bool) -> None:
    """``scores PLAN --curves -o curves.pdf``: the plan's curves figure (results/curves.py)."""
    from stilts_tui import results
    from stilts_tui.results import curves

    if out is None:
        raise UserError("--curves draws a figure: give -o FILE.pdf (or .png, .svg)")
    fmt = fmt or results.format_for(out)
    if fmt not in results.FIGURES:
        raise UserError(f"--curves -o {out}: a figure is pdf, png or svg (use one of .pdf .png .svg)")
    if out.is_file() and not force:
        raise UserError(f"-o {out}: the file exists; add --force to overwrite it")
    data = curves.plan_curves(runs_root(ctx), plan)
    results.write_output(out, curves.curves_figure_bytes(data, fmt), force=force)
    typer.echo(f"wrote {out}", err=True)


@app.command("rank")
def rank_cmd(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a plan file (or a queued plan's name)", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", help="rank for this target only")] = None,
    examples: Annotated[
        int,
        typer.Option(
            "--examples",
            help="the target's first N train examples",
            parser=bounds.parser("rank.examples", "--examples"),
            metavar="INTEGER",
        ),
    ] = ranking.DEFAULT_EXAMPLES,
    device: Annotated[str, typer.Option("--device", help=ranking.DEVICE_HELP)] = "cpu",
    as_json: JsonFlag = False,
) -> None:
    """Each target's starting points (none and every intermediate with a checkpoint) in the order LogME
    predicts from their frozen features; scores cached per (starting point, target, N)."""
    root = runs_root(ctx)
    loaded = ranking.load_plan(root, plan)
    ranking.check_options(loaded, target, examples, device)
    jobs = ranking.jobs_for(loaded, root, target, examples)
    doc = ranking.ranking(loaded.name, jobs, ranking.score(jobs, device), examples)
    predicted.save(root, doc)  # the plan's score table shows it beside the measured gains
    if as_json:
        typer.echo(json_text(doc, indent=2))
        return
    for line in ranking.lines(doc):
        typer.echo(terminal_safe(line))
