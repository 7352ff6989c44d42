"""Rich tables and text for the commands (the table of `queue ls` sits with its command, queue_ls.py)."""

from __future__ import annotations

from stilts_tui.fmt import duration, terminal_safe

WALL_MODES = {
    "reference": "reference loop (one process a run, one at a time)",
    "queue": "queue",
    "mps": "queue under MPS",
    "fused": "fused arrays",
}


def print_plan(con, plan, runs: list, counts: dict, matrix: dict) -> None:
    """`plan show`: the plan's counts by stage, then the starting point x target matrix of target runs."""
    from rich.table import Table

    con.print(
        f"[bold]{terminal_safe(plan.name, markup=True)}[/] — model {terminal_safe(plan.model, markup=True)} — "
        f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    targets = list(plan.target)
    table = Table("starting point \\ target", *targets, "total", title="target runs")
    for row, cells in matrix.items():
        table.add_row(row, *(str(cells.get(t, 0)) for t in targets), str(sum(cells.values())))
    con.print(table)


def print_wall(con, box, pred) -> None:
    """`plan show --cost`: the predicted wall time on this box, per mode, and its notes (no number where
    nothing was measured on the box's device)."""
    from rich.table import Table
    from rich.text import Text

    from stilts_tui.estimate.figures import label

    gpu = label(box.device) if box.device and box.device != "cpu" else "GPU"
    where = f"{box.devices} x {gpu}" if box.gpu else "the CPU"
    how = f"{box.slots} process{'es' if box.slots > 1 else ''} a device, {box.worker_runs} runs a process"
    table = Table("mode", "wall time", "speed-up", title=Text(f"predicted wall time on this box ({where}: {how})"))
    ref = pred.seconds["reference"]
    nothing = all(v is None for v in pred.seconds.values())
    for mode, name in WALL_MODES.items():
        v = pred.seconds[mode]
        if mode == "fused":
            name = f"fused arrays of {box.fuse}"
        ratio = "" if v is None or not v or not ref else f"{ref / v:.2f}x"
        shown = "— (nothing measured)" if nothing else "n/a (no GPU)" if v is None else duration(v)
        table.add_row(name, shown, ratio)
    con.print(table)
    for note in pred.notes:
        con.print(Text(terminal_safe(note), style="dim"))


def print_cost(con, estimate) -> None:
    """`plan show --cost`: steps, samples and device-hours per stage (GPU-hours on a GPU, CPU-hours on the
    CPU), and how each was timed."""
    from rich.table import Table
    from rich.text import Text

    table = Table("stage", "runs", "training steps", "samples", estimate.unit, "timed from", title="estimated cost")
    for s in [*(s for s in estimate.stages.values() if s.runs), estimate.total]:
        how = ", ".join(
            f"{n} {w}"
            for n, w in ((s.measured, "measured"), (s.unmeasured, "not measured"), (s.unknown, "unknown size"))
            if n
        )
        hours = "—" if s.hours is None else f"{s.hours:.2f}"
        table.add_row(s.stage, str(s.runs), f"{s.steps:,}", f"{s.samples:,}", hours, how)
    con.print(table)
    for note in estimate.notes:
        con.print(Text(terminal_safe(note), style="dim"))


def tasks_table(rows: list[dict]):
    """`tasks`: one row a built-in task."""
    from rich.table import Table

    table = Table("task", "aliases", "kind", "metric", "hub", "local files (train, dev)", box=None)
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(r["aliases"]),
            r["kind"],
            r["metric"],
            r["hub"] or "(local only)",
            ", ".join(r["files"] or []),
        )
    return table
