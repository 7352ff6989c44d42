"""Runs' curves on one plot: the queue's marked runs (``v``) or the runs behind a score cell (``v`` on
the scores screen). One line per run, or (``g``) one per group of runs that differ only by their seed:
the mean, with the group's min and max as the band's edges. Read and drawn in a worker (each run's
events.jsonl, plotext frames); the UI thread only shows the frames."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker

from stilts_tui.results.curves import Band, Comparison, RunCurves, compare, primary_metric, read_run
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.curves import CurvePlot, Frame, thin
from stilts_tui.tui.widgets.key_bar import KeyBar

COLORS = ("cyan", "green", "orange", "magenta", "blue", "red", "yellow", "white")
STYLES = ("cyan", "green", "dark_orange", "magenta", "blue", "red", "yellow", "white")  # rich's names of COLORS


class CompareScreen(Screen):
    BINDINGS = bindings("compare")
    DEFAULT_CSS = """
    CompareScreen #title { height: 1; background: $boost; }
    CompareScreen Horizontal { height: 1fr; }
    CompareScreen #legend { height: auto; max-height: 12; }
    """

    def __init__(
        self,
        title: str,
        rows: list[dict] | None = None,
        find: Callable[[], list[dict]] | None = None,
        grouped: bool = False,
        **kw,
    ):
        super().__init__(**kw)
        self.title_text, self.rows, self.find, self.grouped = title, rows, find, grouped
        self.curves: dict[str, RunCurves] = {}
        self.comparison: Comparison | None = None
        self.majority: float | None = None
        self.metric: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title_text), id="title")
        with Horizontal():
            yield CurvePlot(id="loss")
            yield CurvePlot(id="metric")
        with Vertical(id="legend-box"):
            yield Static("reading the runs' events…", id="legend")
        yield KeyBar()

    def on_mount(self) -> None:
        self.plots = {p.id: p for p in self.query(CurvePlot)}  # the worker never queries the DOM
        self.call_after_refresh(self.load)  # the plots have their sizes after the first layout

    @on(Worker.StateChanged)
    def forward_worker_errors(self, event: Worker.StateChanged) -> None:
        self.app.show_worker_error(event)

    def action_toggle_group(self) -> None:
        self.grouped = not self.grouped
        self.load()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def load(self) -> None:
        """Read the runs' curves (once), compare them as asked and draw both plots."""
        root = self.app.root
        if self.rows is None:
            self.rows = self.find() if self.find else []
        rows = self.rows
        for r in rows:
            if r["id"] not in self.curves:
                self.curves[r["id"]] = read_run(root, r["id"])
        if rows and self.metric is None:
            self.metric = primary_metric(root, rows[0]["id"])
            self.majority = _majority(root, rows)
        comparison = compare(rows, self.curves, self.metric, self.grouped)
        if comparison.majority is None:
            comparison.majority = self.majority
        plots = self.plots
        frames = {key: plots[key].build(draw, plots[key].wanted()) for key, draw in _drawers(comparison).items()}
        self.app.call_from_thread(self.show, comparison, frames)

    def show(self, comparison: Comparison, frames: dict[str, Frame]) -> None:
        self.comparison = comparison
        for key, frame in frames.items():
            self.plots[key].show(frame)
        self.query_one("#legend", Static).update(legend(comparison, self.grouped))
        how = "grouped by all settings but the seed (mean, band: min-max)" if self.grouped else "one line per run"
        self.query_one("#title", Static).update(Text(f"{self.title_text} — {how}  (g: group / ungroup, esc: back)"))


def _majority(root, rows: list[dict]) -> float | None:
    """The majority-class score of the runs' task, where they share one and it can be computed."""
    from stilts_tui.contract import SPEC_FILE
    from stilts_tui.store import rundir
    from stilts_tui.tasks.majority import majority_score

    if len({r.get("name") for r in rows}) != 1:
        return None
    spec = rundir.read_run_file(root, rows[0]["id"], SPEC_FILE)
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(task, dict):
        return None
    params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    limit = params.get("max_dev_samples") if isinstance(params.get("max_dev_samples"), int) else None
    try:
        return majority_score(task, str(task.get("metric", "acc")), limit)[0]
    except Exception:  # noqa: BLE001 - no line to draw, the curves go on
        return None


def _draw_bands(plt, drawn: dict, bands: list[Band], title: str, majority: float | None = None) -> None:
    drawn["title"], drawn["series"], drawn["hlines"] = title, {}, []
    plt.title(title)
    for k, band in enumerate(bands):
        if not band.x:
            continue
        color = COLORS[k % len(COLORS)]
        xs, mean = thin(band.x, band.mean)
        drawn["series"][band.label] = (band.x, band.mean, band.lo, band.hi)
        if band.n > 1 and band.lo != band.hi:  # the band's edges, dotted
            plt.plot(*thin(band.x, band.lo), marker="dot", color=color)
            plt.plot(*thin(band.x, band.hi), marker="dot", color=color)
        plt.plot(xs, mean, marker="braille" if len(xs) > 1 else "●", color=color)
    if majority is not None:
        drawn["hlines"].append(majority)
        plt.hline(majority, "red")


def _drawers(c: Comparison) -> dict[str, Callable]:
    major = "" if c.majority is None else f" · majority {c.majority:.4f}"
    return {
        "loss": lambda plt, drawn: _draw_bands(plt, drawn, c.loss, "training loss by epoch"),
        "metric": lambda plt, drawn: _draw_bands(
            plt, drawn, c.metrics, f"dev {c.metric or 'metric'} by epoch{major}", c.majority
        ),
    }


def legend(c: Comparison, grouped: bool) -> Text:
    """A line per run or group, in its plot colour: its last dev metric (mean and min-max) and loss."""
    text = Text()
    for k, (loss, dev) in enumerate(zip(c.loss, c.metrics, strict=True)):
        if k:
            text.append("\n")
        text.append("■ ", style=STYLES[k % len(STYLES)])
        text.append(loss.label)
        if dev.x:
            text.append(f"  dev {c.metric or 'metric'} {dev.mean[-1]:.4f}")
            if grouped and dev.n > 1:
                text.append(f" [{dev.lo[-1]:.4f}, {dev.hi[-1]:.4f}]")
            text.append(f" at epoch {dev.x[-1]:g}")
        if loss.x:
            text.append(f"  loss {loss.mean[-1]:.4f}")
        if not dev.x and not loss.x:
            text.append("  no curves yet", style="dim")
    return text
