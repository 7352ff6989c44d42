"""The study's figure: one panel per target, per starting point its runs' scores, mean, n and gain.
matplotlib is imported only inside :func:`figure_bytes` (an optional extra; the app opens without it)."""

from __future__ import annotations

import io
import textwrap

import numpy as np

from stilts_tui.errors import UserError
from stilts_tui.results.cell import Cell, ScoreTable
from stilts_tui.tasks.majority import is_failed

TITLE_CHARS_PER_INCH = 13  # 9 pt text: about 13 characters an inch, so a title wraps inside its figure
FIGURE_DPI = 300  # print resolution for the png; pdf and svg are vector
MISSING_MATPLOTLIB = "figure export needs matplotlib, which is not installed: pip install 'stilts-tui[plot]'"


class MissingDependency(UserError):
    """An optional dependency that is not installed: a failure of the installation, exit 1."""

    exit_code = 1


def figures_available() -> bool:
    """Can figures be drawn here (is matplotlib installed)?"""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def png_bytes(t: ScoreTable) -> bytes:
    """The figure as a 300 dpi png."""
    return figure_bytes(t, "png")


def figure_bytes(t: ScoreTable, fmt: str = "png") -> bytes:
    """The study's figure: one panel per target; per starting point its runs' scores as points (failed
    runs as red crosses, equal scores side by side), the mean ± std, n, and the gain over "none" (dagger:
    the paired test says significant); a dotted line at the majority-class score; a legend.
    ``fmt``: png (300 dpi), pdf or svg (vector)."""
    if not figures_available():
        raise MissingDependency(MISSING_MATPLOTLIB)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text stays text in vector figures (editable, searchable), fonts embedded as TrueType in the pdf
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        return _figure(plt, t, fmt)


def _figure(plt, t: ScoreTable, fmt: str) -> bytes:
    fig = draw(plt, t)
    n = len(t.targets)
    failed = ", ".join(f"{c.intermediate}->{c.target} {c.failed}/{c.n}" for c in t.cells if c.failed)
    buf = io.BytesIO()
    meta = (
        {"Title": f"{t.plan} scores"}
        if fmt != "png"
        else {
            "Title": f"{t.plan} scores",
            "Description": f"panels: {n}",
            "Comment": f"failed runs (dotted line: majority class): {failed or 'none'}",
        }
    )
    fig.savefig(buf, format=fmt, dpi=FIGURE_DPI, metadata=meta)
    plt.close(fig)
    return buf.getvalue()


def draw(plt, t: ScoreTable):
    """The figure itself (one panel per target, a shared legend, a title wrapped to the figure's width)."""
    n = len(t.targets)
    width = 2.2 + 1.0 * max(2, len(t.rows)) * n
    fig, axes = plt.subplots(1, n, figsize=(width, 4.2), squeeze=False)
    for ax, tg in zip(axes[0], t.targets, strict=True):
        _panel(ax, t, tg)
    seen: dict = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    ncol = max(1, min(len(seen), int(width // 2.2)))
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=ncol, frameon=False, fontsize=7)
    title = f"{t.plan}: score of each run by starting point (gain: mean over none, † significant)"
    fig.suptitle(textwrap.fill(title, max(20, int(width * TITLE_CHARS_PER_INCH))), fontsize=9)
    rows = -(-len(seen) // ncol)
    fig.tight_layout(rect=(0, 0.05 + 0.04 * rows, 1, 0.9))
    return fig


def _runs(c: Cell) -> list[tuple[float, bool]]:
    """A cell's runs as (score x100, failed), failed: stopped as degenerate or at or below the majority."""
    flags = c.stopped_flags or [False] * len(c.values)
    return [
        (100 * v, stopped or (c.majority is not None and is_failed(v, c.majority)))
        for v, stopped in zip(c.values, flags, strict=True)
    ]


def _spread(p: float, runs: list[tuple[float, bool]]) -> list[float]:
    """The x of each run: equal scores side by side (never one point hiding others), alone at ``p``."""
    xs, count = [], {}
    same = {v: sum(1 for w, _ in runs if w == v) for v, _ in runs}
    for v, _ in runs:
        k, i = same[v], count.get(v, 0)
        count[v] = i + 1
        xs.append(p + (0.0 if k == 1 else (i - (k - 1) / 2) * min(0.08, 0.3 / (k - 1))))
    return xs


def _label(c: Cell) -> str:
    """A starting point's tick label: its name, n, and the gain over none (dagger: significant)."""
    gain = (
        "" if c.gain is None or c.intermediate == "none" else f" {100 * c.gain:+.1f}{'†' if c.gain_significant else ''}"
    )
    pred = "" if c.predicted_rank is None else f" pred #{c.predicted_rank}"
    return f"{c.intermediate}\nn={c.n}{gain}{pred}"


def _panel(ax, t: ScoreTable, target: str) -> None:
    """One target's panel, per starting point: every run as a point (failed ones apart, equal ones side by
    side), the mean with its std as a bar (two runs or more), n and gain under its name; the accuracy axis
    ends at 100 where no score passes it."""
    cells = [c for r in t.rows for c in t.cells if c.target == target and c.intermediate == r and c.values]
    pos = np.arange(1, len(cells) + 1)
    top = 0.0
    for p, c in zip(pos, cells, strict=True):
        runs = _runs(c)
        xs = _spread(p - 0.15, runs)
        ok = [(x, v) for x, (v, f) in zip(xs, runs, strict=True) if not f]
        bad = [(x, v) for x, (v, f) in zip(xs, runs, strict=True) if f]
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=12, color="black", zorder=3, clip_on=False, label="one run")
        if bad:
            ax.scatter(
                *zip(*bad, strict=True), s=22, marker="x", color="tab:red", zorder=3, clip_on=False, label="failed run"
            )
        std = 100 * c.std if c.n >= 2 and c.std is not None else None
        ax.errorbar(
            [p + 0.15],
            [100 * c.mean],
            yerr=None if std is None else [[std], [std]],
            fmt="D",
            ms=5,
            color="tab:blue",
            ecolor="tab:blue",
            capsize=3,
            zorder=4,
            label="mean ± std (std: 2 runs or more)",
        )
        top = max(top, *(v for v, _ in runs))
    ax.set_xticks(pos, [_label(c) for c in cells], fontsize=7)
    ax.set_xlim(0.4, len(cells) + 0.6)
    majority = next((c.majority for c in t.cells if c.target == target and c.majority is not None), None)
    if majority is not None:
        ax.axhline(
            100 * majority, color="grey", linestyle=":", linewidth=1, label="majority class (runs on or below: failed)"
        )
    ax.margins(y=0.1)
    if top <= 100:  # scores of a metric in [0, 1]: nothing above 100 to show (a std bar past it is cut there)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, 100.0))
    rk = t.rankings.get(target)
    tau = f" (tau {rk.tau:+.2f} with {rk.method}'s order)" if rk is not None and rk.tau is not None else ""
    ax.set_title(target + tau, fontsize=9)
    ax.set_ylabel(f"{t.metrics.get(target, t.metric)} (x100)")
