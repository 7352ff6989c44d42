"""A run's curves beside its log: training loss per step, the dev metric at each evaluation (with the
majority-class line where the task has one) and the learning rate, drawn with textual-plotext.

A plot's frame is built off the UI thread (plotext draws a 40-column plot in a few ms; twelve of them
in one frame would hold a key): the pane's reader thread builds frames (:meth:`CurvesView.build`) and
the UI thread only shows what was built (:meth:`CurvesView.show_built`). Nothing is built while the
curves are not on screen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.containers import Vertical
from textual.strip import Strip
from textual.widgets import Static
from textual_plotext import PlotextPlot

from stilts_tui.fmt import sparkline
from stilts_tui.results.curves import RunCurves

PLOT_POINTS = 160  # points drawn of a curve (plotext's time grows with them): two a column at most (braille)
LR_POINTS = 200  # the learning-rate sparkline's values (a cell each, at most)
NO_DATA = "waiting for the first {what}…"


def thin(xs: list[float], ys: list[float], n: int = PLOT_POINTS) -> tuple[list[float], list[float]]:
    """At most ``n`` points of a curve, evenly spaced, the last one kept."""
    if len(xs) <= n:
        return list(xs), list(ys)
    idx = sorted({int(i * (len(xs) - 1) / (n - 1)) for i in range(n)})
    return [xs[i] for i in idx], [ys[i] for i in idx]


@dataclass
class Frame:
    """A plot drawn: its text, the data behind it, its size and its lines as Textual draws them."""

    text: Text
    drawn: dict
    size: tuple[int, int]
    strips: list[Strip]


@dataclass
class Built:
    """What the reader thread built for the UI thread to show."""

    frames: dict[str, Frame]  # plot id -> its frame
    lr: list[float]
    lr_label: str
    lr_line: str  # the schedule as a sparkline


class CurvePlot(PlotextPlot):
    """A plotext plot that shows a frame built elsewhere (the reader thread) and never builds in render.
    ``drawn`` says what the last frame holds (the data behind it: series, horizontal lines, title)."""

    DEFAULT_CSS = "CurvePlot { height: 1fr; width: 1fr; }"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.frame: Text | None = None
        self.built_size: tuple[int, int] = (0, 0)
        self.theme_name = "pro"
        self.drawn: dict = {}
        self.strips: list[Strip] = []
        self._plot_console: Console | None = None  # the building thread's own

    def on_mount(self) -> None:
        super().on_mount()
        self.theme_name = self._get_plotext_theme_name(self.app.theme)  # read by the reader thread

    def render(self) -> RenderResult:
        return self.frame if self.frame is not None else Text("")

    def render_line(self, y: int) -> Strip:
        """The built frame's line ``y``: drawn and cut into strips in the thread that built it, so a repaint
        costs the UI thread no text layout."""
        if y < len(self.strips) and self.strips[y].cell_length == self.size.width:
            return self.strips[y]
        return Strip.blank(self.size.width)

    def wanted(self) -> tuple[int, int]:
        return self.size.width, self.size.height

    def build(self, draw: Callable, size: tuple[int, int]) -> Frame:
        """A frame of ``size`` drawn by ``draw(plot, drawn)``, as text and as the strips shown (in the
        building thread: the plot and its console are that thread's alone)."""
        plt, drawn = self.plt, {}
        plt.clear_figure()
        plt.theme(self.theme_name)
        plt.plotsize(*size)
        plt._set_size(*size)  # as PlotextPlot.render does (textual-plotext issue 5)
        draw(plt, drawn)
        text = Text.from_ansi(plt.build(), no_wrap=True, overflow="crop")
        width, height = size
        if self._plot_console is None:
            self._plot_console = Console(width=width, height=height, color_system="truecolor", force_terminal=True)
        options = self._plot_console.options.update(width=width, height=height, no_wrap=True, overflow="crop")
        lines = self._plot_console.render_lines(text, options, pad=True)
        return Frame(text, drawn, size, [Strip(line, width) for line in lines[:height]])

    def show(self, frame: Frame) -> None:
        """Show a frame built by :meth:`build` (on the UI thread)."""
        self.frame, self.drawn, self.built_size, self.strips = frame.text, frame.drawn, frame.size, frame.strips
        self.refresh()


class CurvesView(Vertical):
    """Loss and dev-metric plots and a learning-rate sparkline of one run."""

    DEFAULT_CSS = """
    CurvesView { height: 17; border-top: solid $primary-darken-2; }
    CurvesView > #loss { height: 8; }
    CurvesView > #metric { height: 7; }
    CurvesView > .lr-line { height: 1; layout: horizontal; }
    CurvesView #lr { height: 1; width: 1fr; color: $accent; }
    CurvesView #lr-label { width: auto; max-width: 18; }
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.metric_name: str | None = None  # the run's primary metric (spec.json), else the first evaluated
        self.majority: float | None = None  # the majority-class score of the task's dev set, where known
        self._built: dict[str, tuple[int, int]] = {}  # plot id -> the size of its frame shown
        self.plots: dict[str, CurvePlot] = {}
        self.lr: list[float] = []  # the learning rates shown (thinned)
        self._drawn: dict[str, tuple] = {}  # plot id -> what its last frame drew (the reader thread's alone)

    def compose(self) -> ComposeResult:
        yield CurvePlot(id="loss")
        yield CurvePlot(id="metric")
        with Vertical(classes="lr-line"):
            yield Static("lr", id="lr-label")
            yield Static("", id="lr")

    def on_mount(self) -> None:
        self.plots = {p.id: p for p in self.query(CurvePlot)}  # the reader thread never queries the DOM

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Each plot's size on screen (read by the reader thread before it builds)."""
        return {k: p.wanted() for k, p in self.plots.items()}

    def needs_build(self, sizes: dict[str, tuple[int, int]]) -> bool:
        """Is a plot shown at another size than its last frame (a resize, the first frame)?"""
        return any(self._built.get(k) != s for k, s in sizes.items())

    def build(self, c: RunCurves, sizes: dict[str, tuple[int, int]]) -> Built:
        """Frames of the run's curves at ``sizes``, and the learning rate's last values (in the reader thread)."""
        plots = self.plots
        majority = c.majority if c.majority is not None else self.majority
        metric = self.metric_name if self.metric_name in c.metric_names() else next(iter(c.metric_names()), None)

        def loss(plt, drawn: dict) -> None:
            xs, ys = thin(c.steps, c.loss, max(2, min(PLOT_POINTS, 2 * sizes.get("loss", (PLOT_POINTS, 0))[0])))
            drawn["series"] = {"loss": (xs, ys)}
            drawn["title"] = f"loss {ys[-1]:.4f} at step {xs[-1]}" if xs else NO_DATA.format(what="step")
            plt.title(drawn["title"])
            if xs:
                plt.plot(xs, ys, marker="braille", color="cyan")

        def dev(plt, drawn: dict) -> None:
            xs, ys = c.metric(metric)
            drawn["series"] = {metric or "metric": (xs, ys)}
            drawn["hlines"] = [] if majority is None else [majority]
            head = f"dev {metric} {ys[-1]:.4f} (epoch {xs[-1]:g})" if xs else NO_DATA.format(what="evaluation")
            drawn["title"] = head + ("" if majority is None else f" · majority {majority:.4f}")
            plt.title(drawn["title"])
            if xs:
                plt.plot(xs, ys, marker="braille", color="green")
            if majority is not None:
                plt.hline(majority, "red")  # the majority-class score: at or below it, the run has failed
                if not xs:
                    plt.ylim(majority - 0.1, majority + 0.1)
            if xs:
                plt.xticks(xs)

        # a plot is built again only where what it draws changed: the metric moves once an epoch, the loss
        # every step (plotext's build is ~10 ms of Python a plot, taken from the UI thread's share of the GIL)
        what = {
            "loss": (len(c.steps), c.loss[-1] if c.loss else None),
            "metric": (metric, len(c.metric(metric)[0]), majority),
        }
        frames = {}
        for key, draw in (("loss", loss), ("metric", dev)):
            size = sizes.get(key, (0, 0))
            drawn = (what[key], size)
            if key in plots and size[0] > 4 and size[1] > 2 and self._drawn.get(key) != drawn:
                frames[key] = plots[key].build(draw, size)
                self._drawn[key] = drawn
        lr = thin(c.steps, c.lr, LR_POINTS)[1]  # the whole schedule (warmup, decay), at most LR_POINTS of it
        width = max(1, sizes.get("loss", (40, 0))[0] - 12)
        return Built(frames, lr, f"lr {c.lr[-1]:.2g} " if c.lr else "lr ", sparkline(lr, width))

    def show_built(self, built: Built) -> None:
        """Show frames built by :meth:`build` (on the UI thread)."""
        for key, frame in built.frames.items():
            self.plots[key].show(frame)
            self._built[key] = frame.size
        if built.lr:
            self.lr = built.lr
            self.query_one("#lr", Static).update(built.lr_line, layout=False)
            self.query_one("#lr-label", Static).update(built.lr_label)
