"""The GPU view: per GPU its memory and utilization with a short history, and each process on it named
by its run (run id, plan, stage) or, for a process that is not ours, by its user and command. On a
machine without a GPU, where runs train on the CPU: the cores, memory and load with a short history,
and each of our worker processes with its CPU share, memory and threads, named by its runs."""

from __future__ import annotations

import time
from collections import deque

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from stilts_tui.contract import Env
from stilts_tui.queue import cpu_procs, gpu_procs
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.key_bar import KeyBar

HISTORY = 40  # samples kept a GPU (one every INTERVAL seconds)
INTERVAL = 2.0
FIRST_WINDOW = 0.5  # seconds the first CPU sample measures over (a share needs two readings)
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


def render_cpu(report: cpu_procs.CpuReport, history: deque) -> Group:
    """The CPUs, memory and load, and our worker processes (a machine without a GPU)."""
    cores = " ".join(f"{c:3.0f}%" for c in report.cores)
    head = Text.assemble(
        (f"CPU  {len(report.cores)} cores", "bold"),
        "   busy ",
        (f"{report.busy:.0f}% ", "bold"),
        (spark(list(history), 100.0), "green"),
        f"   ({cores})   memory ",
        (f"{report.mem_used_gb:.1f} / {report.mem_total_gb:.1f} GiB", "bold"),
        "   load " + " ".join(f"{x:.2f}" for x in report.load),
    )
    table = Table("pid", "CPU %", "GiB", "threads", "run ids", "plan", "stage", box=None, padding=(0, 1))
    for p in report.procs:
        ids = " ".join(p.run_ids[:3]) + (f" +{len(p.run_ids) - 3}" if len(p.run_ids) > 3 else "")
        table.add_row(
            str(p.pid),
            f"{p.cpu_percent:.0f}",
            f"{p.rss_gb:.2f}",
            str(p.threads),
            ids,
            Text(p.plan or ""),
            Text(p.stage or ""),
        )
    if not report.procs:
        table.add_row("", "", "", "", Text("no run training", style="dim"), "", "")
    return Group(head, Text("workers (100 % = one core; a worker's children included)", style="dim"), table)


def render(
    report: gpu_procs.GpuReport,
    history: dict[int, deque],
    cpu: cpu_procs.CpuReport | None = None,
    cpu_history: deque | None = None,
) -> Group | Text:
    if not report.gpus:
        note = Text.assemble(
            ("No GPU to show: ", "bold"),
            report.reason or "none found",
            f"\nRuns train on the CPU. For a test or demo of the GPU view: {Env.FAKE_GPUS}=2x24 "
            f"(and {Env.FAKE_GPU_PROCS}=GPU:PID:GiB,...).\n",
        )
        return note if cpu is None else Group(note, render_cpu(cpu, cpu_history or deque()))
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
    BINDINGS = bindings("gpus")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.history: dict[int, deque] = {}
        self.report: gpu_procs.GpuReport | None = None
        self.cpu: cpu_procs.CpuReport | None = None
        self.cpu_history: deque = deque(maxlen=HISTORY)
        self._sampler: cpu_procs.CpuSampler | None = None
        self.shown: Group | Text | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("reading the GPUs…", style="dim"), id="gpus")
        yield KeyBar()

    def on_mount(self) -> None:
        self.sample()
        self.set_interval(INTERVAL, self.sample)

    @work(thread=True, exclusive=True, group="gpus", exit_on_error=False)
    def sample(self) -> None:
        try:
            report = gpu_procs.snapshot(self.app.root)
        except Exception as e:  # noqa: BLE001 - a GPU query must never take the app down
            report = gpu_procs.GpuReport([], f"cannot read the GPUs: {type(e).__name__}: {e}")
        cpu = None
        if not report.gpus:  # the runs train on the CPU: show it and our workers
            try:
                cpu = self.sample_cpu()
            except Exception:  # noqa: BLE001 - a counter that cannot be read leaves the note alone
                cpu = None
        self.app.call_from_thread(self.show, report, cpu)

    def sample_cpu(self) -> cpu_procs.CpuReport:
        """The CPUs and our workers, measured since the last sample. A share is a difference of two
        readings: the first time, a first reading starts the window and the sample follows FIRST_WINDOW
        later (read at once, it said "busy 0%" and 0 % for a worker spinning a core)."""
        if self._sampler is None:
            self._sampler = cpu_procs.CpuSampler()
            self._sampler.sample(self.app.root)  # every worker's first reading
            time.sleep(FIRST_WINDOW)
        return self._sampler.sample(self.app.root)

    def show(self, report: gpu_procs.GpuReport, cpu: cpu_procs.CpuReport | None = None) -> None:
        self.report, self.cpu = report, cpu
        for g in report.gpus:
            self.history.setdefault(g.index, deque(maxlen=HISTORY)).append((g.used_gb, g.util))
        if cpu is not None:
            self.cpu_history.append(cpu.busy)
        self.shown = render(report, self.history, cpu, self.cpu_history)
        self.query_one("#gpus", Static).update(self.shown)
