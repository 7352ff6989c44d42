"""The study's figure: one panel per target, per starting point its runs' scores, mean, n and gain.
matplotlib is imported only inside :func:`figure_bytes` (an optional extra; the app opens without it)."""

from __future__ import annotations

import io

import numpy as np

from stilts_tui.errors import UserError
from stilts_tui.results.cell import ScoreTable

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
    """The study's figure: one panel per target; per starting point its runs' scores as points (with a
    box where there are enough of them), the mean, n, and the gain over "none" (dagger: the paired test
    says significant); a dotted line at the majority-class score (runs on or below it failed); a legend.
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
    n = len(t.targets)
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 1.0 * max(2, len(t.rows)) * n, 3.8), squeeze=False)
    for ax, tg in zip(axes[0], t.targets, strict=True):
        _panel(ax, t, tg)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=len(seen), frameon=False, fontsize=8)
    fig.suptitle(f"{t.plan}: score of each run by starting point (gain: mean over none, † significant)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
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


def _panel(ax, t: ScoreTable, target: str) -> None:
    """One target's panel: points, box (5 runs or more), mean, n and gain per starting point."""
    rng = np.random.default_rng(0)
    cells = [c for r in t.rows for c in t.cells if c.target == target and c.intermediate == r and c.values]
    pos = np.arange(1, len(cells) + 1)
    for p, c in zip(pos, cells, strict=True):
        v = [100 * x for x in c.values]
        if len(v) >= 5:
            ax.boxplot([v], positions=[p], widths=0.5, showfliers=False, medianprops={"color": "tab:blue"})
        ax.scatter(p + rng.uniform(-0.1, 0.1, len(v)), v, s=10, color="black", alpha=0.7, zorder=3, label="one run")
        ax.scatter([p], [100 * c.mean], marker="D", s=28, color="tab:red", zorder=4, label="mean")
        gain = (
            ""
            if c.gain is None or c.intermediate == "none"
            else f"\n{100 * c.gain:+.1f}{'†' if c.gain_significant else ''}"
        )
        pred = "" if c.predicted_rank is None else f"\npred #{c.predicted_rank}"
        ax.annotate(
            f"n={c.n}{gain}{pred}",
            (p, max(v)),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(pos, [c.intermediate for c in cells], rotation=30, ha="right")
    ax.set_xlim(0.4, len(cells) + 0.6)
    majority = next((c.majority for c in t.cells if c.target == target and c.majority is not None), None)
    if majority is not None:
        ax.axhline(
            100 * majority, color="grey", linestyle=":", linewidth=1, label="majority class (runs on or below: failed)"
        )
    ax.margins(y=0.2)
    rk = t.rankings.get(target)
    tau = f" (tau {rk.tau:+.2f} with {rk.method}'s order)" if rk is not None and rk.tau is not None else ""
    ax.set_title(target + tau, fontsize=9)
    ax.set_ylabel(f"{t.metrics.get(target, t.metric)} (x100)")
