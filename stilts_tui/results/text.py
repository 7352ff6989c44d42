"""The score table as text: CSV, JSON, markdown, LaTeX (booktabs) and a rich table for the terminal.
Each reads the cells and their words (:mod:`.notes`); none computes a statistic."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict

from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.results.cell import ScoreTable
from stilts_tui.results.failed import FAILED_NOTE
from stilts_tui.results.notes import (
    STD_NOTE,
    cell_text,
    footnotes,
    gain_style,
    legend,
    row_keys,
    row_label,
    target_label,
    test_note,
)
from stilts_tui.results.stats import BOOT

CSV_FIELDS = [
    "intermediate",
    "target",
    "seed",
    "metric",
    "n",
    "missing",
    "mean",
    "std_ddof0",
    "median",
    "max",
    "min",
    "best_of_grid",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "gain_significant",
    "majority_score",
    "failed",
    "failed_rate",
    "mean_without_failed",
    "std_without_failed",
    "stopped",
    "pairs",
    "paired_gain",
    "paired_ci_low",
    "paired_ci_high",
    "p_value",
    "test",
    "min_attainable_p",
    "verdict",
    "setup_note",
    "method",
    "pruned",
    "predicted_rank",
    "transferability",
    "plan_note",  # the plan's note and tags (`stilts-tui note --plan`), the same on every row
    "plan_tags",
]


def plan_lines(t: ScoreTable) -> list[str]:
    """The plan's note (each of its lines, made safe to print) and tags, as lines above an export's table."""
    lines = [f"note: {terminal_safe(x)}" for x in (t.plan_note or "").splitlines() if x.strip()]
    return lines + ([f"tags: {' '.join(t.plan_tags)}"] if t.plan_tags else [])


def _csv_value(v: object) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else terminal_safe(v)


def _notes(t: ScoreTable) -> list[str]:
    """The legend and footnotes, each one line with nothing a terminal acts on: a saved ranking's method
    is data from a file (a newline in it would end a LaTeX comment and land in the document's body)."""
    return [terminal_safe(line) for line in (legend(t), *footnotes(t))]


def to_csv(t: ScoreTable) -> str:
    """One row a cell, every statistic (floats exact: repr), columns :data:`CSV_FIELDS`."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_FIELDS)
    for c in t.cells:
        lo, hi = c.gain_ci or (None, None)
        plo, phi = c.paired_ci or (None, None)
        w.writerow(
            [
                c.intermediate,
                c.target,
                "" if c.seed is None else c.seed,
                t.metrics.get(c.target, ""),
                c.n,
                c.missing,
                *map(_csv_value, (c.mean, c.std, c.median, c.max, c.min, c.best_of_grid, c.gain, lo, hi)),
                str(c.gain_significant).lower(),
                *map(
                    _csv_value,
                    (
                        c.majority,
                        c.failed,
                        c.failed_rate,
                        c.mean_ok,
                        c.std_ok,
                        c.stopped,
                        c.pairs,
                        c.paired_gain,
                        plo,
                        phi,
                        c.p_value,
                        c.test,
                        c.min_p,
                        c.verdict,
                        c.setup_note,
                        c.method,
                        c.pruned,
                        c.predicted_rank,
                        c.transferability,
                    ),
                ),
                terminal_safe(t.plan_note or "", keep_newlines=True),
                " ".join(t.plan_tags),
            ]
        )
    return out.getvalue()


def to_json(t: ScoreTable) -> str:
    """The whole table with how each statistic is computed; no NaN or Infinity (strict JSON)."""
    cells = []
    for c in t.cells:
        d = asdict(c)
        d.pop("keyed")
        d.pop("stopped_flags")
        d["std_ddof"] = 0
        d["metric"] = t.metrics.get(c.target)
        d["gain_ci"] = list(c.gain_ci) if c.gain_ci else None
        d["paired_ci"] = list(c.paired_ci) if c.paired_ci else None
        d["mean_without_failed"], d["std_without_failed"] = d.pop("mean_ok"), d.pop("std_ok")
        d["n_without_failed"] = d.pop("n_ok")
        d["majority_score"] = d.pop("majority")
        d["min_attainable_p"] = d.pop("min_p")
        d["method"] = c.method
        cells.append(d)
    doc = {
        "plan": t.plan,
        "metric": t.metric,
        "metrics": t.metrics,
        "by_seed": t.by_seed,
        "std": STD_NOTE,
        "bootstrap": BOOT,
        "failed_rule": FAILED_NOTE,
        "test": test_note(t),
        "alpha": t.alpha,
        "without_failed": t.without_failed,
        "rows": t.rows,
        "targets": t.targets,
        "notes": t.notes,
        "plan_note": t.plan_note,
        "plan_tags": t.plan_tags,
        "cells": cells,
        "rankings": {
            target: {
                "method": rk.method,
                "examples": rk.examples,
                "source": rk.source,
                "kendall_tau": rk.tau,
                "tau_points": rk.tau_points,
                "pending": rk.pending,
            }
            for target, rk in t.rankings.items()
        },
    }
    return json_text(doc, indent=2)  # a mean of scores near 1e308 overflows: null, never Infinity


def to_markdown(t: ScoreTable) -> str:
    """A markdown table, its legend and footnotes under it."""
    head = ["from \\ target"] + [target_label(t, tg) for tg in t.targets]
    said = plan_lines(t)
    lines = [
        *(f"> {x}  " for x in said),
        *([""] if said else []),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for inter, seed in row_keys(t):
        cells = [_cell_text(t, inter, tg, seed) for tg in t.targets]
        lines.append("| " + " | ".join([row_label(inter, seed), *cells]) + " |")
    legend_line, *notes = _notes(t)
    return "\n".join(lines) + f"\n\n{legend_line}\n" + "".join(f"\n{line}\n" for line in notes)


def _cell_text(t: ScoreTable, inter: str, target: str, seed: int | None, latex: bool = False) -> str:
    """One cell's line, its gain over its target's "none" cell."""
    base = t.cell("none", target, seed)
    return cell_text(t.cell(inter, target, seed), latex=latex, without_failed=t.without_failed, base=base)


def _tex(s: str) -> str:
    """``s`` with LaTeX's special characters escaped."""
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(t: ScoreTable) -> str:
    """A booktabs tabular, the legend and footnotes above it as comments."""
    lines = [
        *(f"% {x}" for x in plan_lines(t)),  # one comment a line: a note's newline never ends the comment
        *(f"% {_tex(line)}" for line in _notes(t)),
        r"\begin{tabular}{l" + "c" * len(t.targets) + "}",
        r"\toprule",
        " & ".join(["from"] + [_tex(target_label(t, tg)) for tg in t.targets]) + r" \\",
        r"\midrule",
    ]
    for inter, seed in row_keys(t):
        cells = [_cell_text(t, inter, tg, seed, latex=True).replace(" n=", r" \tiny{n=") for tg in t.targets]
        cells = [c + "}" if r"\tiny{" in c else c for c in cells]
        lines.append(" & ".join([_tex(row_label(inter, seed)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_rich(t: ScoreTable):
    """A rich Table for the terminal (rich imported here only: the queue's notifications never need it)."""
    from rich.table import Table
    from rich.text import Text

    shown = "mean without failed runs" if t.without_failed else "mean"
    over = "grid" if t.by_seed else "seeds x grid"
    table = Table(
        title=Text(f"{t.plan} — {t.metric} (x100), {shown} ± std over {over}; gain over 'none'"),
        caption=Text("\n".join([*plan_lines(t), *_notes(t)])),
    )
    table.add_column("from \\ target")
    for tg in t.targets:
        table.add_column(Text(target_label(t, tg).replace(" (", "\n(", 1)), justify="right")
    for inter, seed in row_keys(t):
        row = [Text(row_label(inter, seed))]
        for tg in t.targets:
            c = t.cell(inter, tg, seed)
            row.append(Text(_cell_text(t, inter, tg, seed), style=gain_style(c)))
        table.add_row(*row)
    return table


def render(t: ScoreTable, fmt: str) -> str:
    """The table as text in ``fmt`` (csv, md, latex, json)."""
    return {"csv": to_csv, "md": to_markdown, "latex": to_latex, "json": to_json}[fmt](t)
