"""The words of the score table: a cell's text, its gain and failed-run parts, the legend and the lines
under the table, and what a run not yet scored is shown as. Every export and the app's scores screen
read them from here, so the table says one thing in every format.
"""

from __future__ import annotations

from pathlib import Path

from stilts_tui.results.cell import LORA_MARK, Cell, ScoreTable
from stilts_tui.results.failed import FAILED_NOTE
from stilts_tui.results.stats import EXACT_MAX_PAIRS, MC_RESAMPLES, TOO_FEW
from stilts_tui.store import view

STD_NOTE = "std: population standard deviation (ddof 0), as the reference computes it"
LATEX_DAGGER = r"$^\dagger$"


# ---- a run as the table's notes show it ---------------------------------------------------------


def run_status(root: Path, row: dict) -> str:
    """A run's status as the score table's notes say it: the one view of a run (stilts_tui/store/view.py)."""
    return view.read_views(root, [row])[row["id"]].label


def status_counts(root: Path, rows: list[dict]) -> str:
    """``3 queued, 2 waiting`` : how many of ``rows`` show each status of the one view of a run, by status."""
    shown = view.counts(view.read_views(root, rows).values())
    return ", ".join(f"{n} {status}" for status, n in sorted(shown.items()))


# ---- a cell ------------------------------------------------------------------------------------


def pct(v: float | None, digits: int = 1) -> str:
    """A score as a percentage with ``digits`` decimals, or a dash for none."""
    return "–" if v is None else f"{100 * v:.{digits}f}"


def test_note(t: ScoreTable) -> str:
    """How the paired test is done, at the table's level."""
    return (
        f"gain paired by (seed, grid point) with 'none': two-sided sign-flip permutation test, exact up to "
        f"{EXACT_MAX_PAIRS} pairs, else {MC_RESAMPLES} seeded Monte Carlo patterns; marked at p < {t.alpha:g} "
        f"only where the pairs can reach it (smallest exact p 2/2^n), else '{TOO_FEW}'"
    )


def _shown(c: Cell, without_failed: bool) -> tuple[float | None, float | None]:
    return (c.mean_ok, c.std_ok) if without_failed and c.failed is not None else (c.mean, c.std)


VIEWS = ("mean", "max", "best")  # the statistic a cell shows: mean ± std, the max, the best of grid


def view_value(c: Cell, view: str = "mean", without_failed: bool = False) -> tuple[float | None, float | None]:
    """The value a cell shows in ``view`` and its spread (std for the mean only, None for one run): a
    spread of one run is no spread, so "70.3 ± 0.0" is never shown for n = 1."""
    mean, std = _shown(c, without_failed)
    n = c.n_ok if without_failed and c.failed is not None else c.n
    if view != "mean":
        return {"max": c.max, "best": c.best_of_grid}[view], None
    return mean, (std if (n or 0) >= 2 else None)


def view_gain(c: Cell, base: Cell | None, view: str = "mean", without_failed: bool = False, dagger: str = "†") -> str:
    """The gain beside the value a cell shows: the gain of the mean over all runs with its paired test
    (:func:`gain_text`) where the cell shows that mean, else the shown value minus none's same value
    ("over none's max"); nothing where either value is missing (no gain beside a dash)."""
    value, _ = view_value(c, view, without_failed)
    if c.gain is None or value is None:
        return ""
    if view == "mean" and not (without_failed and c.failed is not None):
        return gain_text(c, dagger)
    ref = None if base is None else view_value(base, view, without_failed)[0]
    if ref is None:
        return ""
    what = {"mean": "mean without failed", "max": "max", "best": "best of grid"}[view]
    diff = value - ref
    return f"{'+' if diff >= 0 else ''}{pct(diff)} over none's {what}"


def target_label(t: ScoreTable, target: str) -> str:
    """A target's column head: its name and metric, the name alone where no run scored it yet (never "t ()")."""
    metric = t.metrics.get(target)
    return f"{target} ({metric})" if metric else target


def gain_text(c: Cell, dagger: str = "†") -> str:
    """The gain part of a cell: ``+20.0† p=0.031``, ``+2.0 p=0.41``, ``+20.0, too few pairs``."""
    if c.gain is None:
        return ""
    text = f"{'+' if c.gain >= 0 else ''}{pct(c.gain)}"
    if c.verdict == TOO_FEW:
        return text + f", {TOO_FEW}"
    if c.verdict is not None:
        return text + (dagger if c.gain_significant else "") + f" p={c.p_value:.2g}"
    return text


def failed_text(c: Cell) -> str:
    """ " fail k/n (s stopped) (p pruned)": the cell's failed runs, those stopped as degenerate, the pruned."""
    stopped = f" ({c.stopped} stopped)" if c.stopped else ""
    return ("" if c.failed is None else f" fail {c.failed}/{c.n}{stopped}") + pruned_text(c)


def pruned_text(c: Cell) -> str:
    """ " (k pruned)" for a cell with runs a rank stage left out (they are among the missing), else ""."""
    return f" ({c.pruned} pruned)" if c.pruned else ""


def cell_text(c: Cell | None, latex: bool = False, without_failed: bool = False, base: Cell | None = None) -> str:
    """A whole cell in one line (markdown, LaTeX, the terminal): mean ± std, gain, n, failed, predicted rank.
    ``base``: the "none" cell of its target (the gain of a mean without failed runs is over its mean)."""
    if c is None:
        return "–"
    if c.mean is None:
        return f"missing {c.missing}" + pruned_text(c) + predicted_text(c, latex)
    pm = r"$\pm$" if latex else "±"
    mean, std = view_value(c, "mean", without_failed)
    star = "*" if c.setup_note else ""
    mark = f"{LORA_MARK} " if c.method == "lora" else ""
    text = f"{mark}{pct(mean)}{star}" + ("" if std is None else f" {pm} {pct(std)}")
    gain = view_gain(c, base, "mean", without_failed, LATEX_DAGGER if latex else "†")
    if gain:
        text += f" ({gain})"
    text += f" n={c.n}" + (f"/{c.n + c.missing}" if c.missing else "") + failed_text(c)
    return text + predicted_text(c, latex)


def predicted_text(c: Cell, latex: bool = False) -> str:
    """ " pred #k" for a cell whose starting point a ranking placed k-th for its target, else ""."""
    if c.predicted_rank is None:
        return ""
    hash_sign = "\\#" if latex else "#"
    return f" pred {hash_sign}{c.predicted_rank}"


def row_label(inter: str, seed: int | None) -> str:
    """A row's name: its starting point, and its seed with --by-seed."""
    return inter if seed is None else f"{inter} (seed {seed})"


def gain_style(c: Cell | None) -> str:
    """The rich style of a cell: green for a gain, red for a loss, bold where the paired test says significant."""
    if c is None or c.gain is None:
        return ""
    return ("bold " if c.gain_significant else "") + ("green" if c.gain > 0 else "red")


# ---- around the table --------------------------------------------------------------------------


def row_keys(t: ScoreTable) -> list[tuple[str, int | None]]:
    """The table's rows in order: (starting point, seed), the seed None unless --by-seed."""
    seeds = sorted({c.seed for c in t.cells if c.seed is not None}) if t.by_seed else [None]
    return [(r, s) for r in t.rows for s in seeds]


def footnotes(t: ScoreTable) -> list[str]:
    """Lines under the table: mixed training setups, majority scores that could not be computed."""
    lines = []
    if any(c.method == "lora" for c in t.cells):
        lines.append(f'cells marked {LORA_MARK} are LoRA runs (method = "lora"); the others are full fine-tunes')
    mixed = [c for c in t.cells if c.setup_note]
    if mixed:
        lines.append(
            "cells marked * mix training setups or data: "
            + "; ".join(f"{row_label(c.intermediate, c.seed)} -> {c.target}: {c.setup_note}" for c in mixed)
        )
    stopped = [c for c in t.cells if c.stopped]
    if stopped:
        lines.append(
            "runs stopped as degenerate (stop_degenerate; counted as failed, scored at the epoch they stopped): "
            + "; ".join(f"{row_label(c.intermediate, c.seed)} -> {c.target}: {c.stopped}/{c.n}" for c in stopped)
        )
    pruned = [c for c in t.cells if c.pruned]
    if pruned:
        lines.append(
            "runs pruned by a rank stage (not trained: missing, never failed; `stilts-tui queue retry --pruned` "
            "trains them): "
            + "; ".join(
                f"{row_label(c.intermediate, c.seed)} -> {c.target}: {c.pruned}/{c.n + c.missing}" for c in pruned
            )
        )
    return lines + rank_lines(t) + t.notes


def rank_lines(t: ScoreTable) -> list[str]:
    """Per ranked target: the predicted order (pred #k in the cells), where it comes from, and Kendall's
    tau against the measured order (or why not yet)."""
    out = []
    for target in t.targets:
        rk = t.rankings.get(target)
        if rk is None:
            continue
        cells = [c for c in t.cells if c.target == target and c.seed is None] or [
            c for c in t.cells if c.target == target
        ]
        order = sorted({(c.predicted_rank, c.intermediate) for c in cells if c.predicted_rank is not None})
        shown = ", ".join(f"#{k} {inter}" for k, inter in order)
        n = f" on its first {rk.examples} train examples" if rk.examples else ""
        if rk.tau is not None:
            verdict = f"Kendall's tau with the measured order {rk.tau:+.2f} over {rk.tau_points} starting points"
        elif rk.pending:
            verdict = f"Kendall's tau once its {rk.pending} runs still to come are done"
        else:
            verdict = f"Kendall's tau undefined ({rk.tau_points} starting points with a measured mean)"
        out.append(f"predicted order for {target} ({rk.method}{n}, {rk.source}): {shown}; {verdict}")
    return out


def legend(t: ScoreTable) -> str:
    """The line that says how to read every cell."""
    shown = "mean without failed runs" if t.without_failed else "mean"
    return (
        f"{t.plan}: {shown} {'' if t.by_seed else 'over seeds x grid '}x100 ± std; (gain of the mean over "
        f"'none'; † paired sign-flip test p < {t.alpha:g}; '{TOO_FEW}': the pairs cannot reach p < {t.alpha:g}); "
        f"n=done/all; fail k/n: {FAILED_NOTE}; {STD_NOTE}"
    )
