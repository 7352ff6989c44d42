"""The GPU view: per GPU its memory and utilization with a short history, and each process on it named
by its run (run id, plan, stage) or, for a process that is not ours, by its user and command."""

from __future__ import annotations

from collections import deque

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stilts_tui.queue import gpu_procs

HISTORY = 40  # samples kept a GPU (one every INTERVAL seconds)
INTERVAL = 2.0
BARS = "▁▂▃▄▅▆▇█"


def spark(values: list[float | None], top: float) -> str:
    """A one-line history: one bar a sample, scaled to ``top``; a gap where a value is unknown."""
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            out.append(BARS[min(len(BARS) - 1, max(0, int(v / top * (len(BARS) - 1) + 0.5)))] if top else BARS[0])
    return "".join(out)


def render(report: gpu_procs.GpuReport, history: dict[int, deque]) -> Group | Text:
    if not report.gpus:
        return Text.assemble(
            ("No GPU to show: ", "bold"),
            report.reason or "none found",
            "\nRuns train on the CPU. For a test or demo of this view: STILTS_FAKE_GPUS=2x24 "
            f"(and {gpu_procs.FAKE_PROCS_VAR}=GPU:PID:GiB,...).",
        )
    parts = []
    for g in report.gpus:
        hist = list(history.get(g.index, []))
        mem = "?" if g.used_gb is None else f"{g.used_gb:.1f}"
        util = "n/a" if g.util is None else f"{g.util:.0f}%"
        name = g.name + (" (fake)" if g.fake and "fake" not in g.name else "")
        head = Text.assemble(
            (f"GPU {g.index}", "bold"),
            f"  {name}   memory ",
            (f"{mem} / {g.total_gb:.1f} GiB ", "bold"),
            (spark([m for m, _ in hist], g.total_gb), "cyan"),
            "   utilization ",
            (f"{util} ", "bold"),
            (spark([u for _, u in hist], 100.0), "green"),
        )
        table = Table("pid", "GiB", "whose", "run ids", "plan", "stage / command", box=None, padding=(0, 1))
        for p in g.procs:
            gb = "" if p.used_gb is None else f"{p.used_gb:.1f}"
            if p.ours:
                ids = " ".join(p.run_ids[:3]) + (f" +{len(p.run_ids) - 3}" if len(p.run_ids) > 3 else "")
                table.add_row(str(p.pid), gb, Text("ours", style="green"), ids, Text(p.plan or ""), Text(p.stage or ""))
            else:
                table.add_row(str(p.pid), gb, Text(p.user or "?", style="yellow"), "", "", Text(p.command or ""))
        if not g.procs:
            table.add_row("", "", Text("no process", style="dim"), "", "", "")
        parts += [head, table, Text("")]
    return Group(*parts)


class GpuScreen(Screen):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="gpus.back")]

    def __init__(self, **kw):
        super().__init__(**kw)
        self.history: dict[int, deque] = {}
        self.report: gpu_procs.GpuReport | None = None
        self.shown: Group | Text | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("reading the GPUs…", style="dim"), id="gpus")
        yield Footer()

    def on_mount(self) -> None:
        self.sample()
        self.set_interval(INTERVAL, self.sample)

    @work(thread=True, exclusive=True, group="gpus", exit_on_error=False)
    def sample(self) -> None:
        try:
            report = gpu_procs.snapshot(self.app.root)
        except Exception as e:  # noqa: BLE001 - a GPU query must never take the app down
            report = gpu_procs.GpuReport([], f"cannot read the GPUs: {type(e).__name__}: {e}")
        self.app.call_from_thread(self.show, report)

    def show(self, report: gpu_procs.GpuReport) -> None:
        self.report = report
        for g in report.gpus:
            self.history.setdefault(g.index, deque(maxlen=HISTORY)).append((g.used_gb, g.util))
        self.shown = render(report, self.history)
        self.query_one("#gpus", Static).update(self.shown)
