"""The queue screen (opens first): every run with its status, GPU, progress, loss, ETA and score."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from stilts_tui.contract import Status
from stilts_tui.fmt import duration, terminal_safe
from stilts_tui.tui.data import ProgressReader, Snapshot
from stilts_tui.tui.widgets.run_table import RunTable

# sorting by status: what needs attention first (running, then failed), what is over last
STATUS_SORT = (Status.RUNNING, Status.FAILED, Status.QUEUED, Status.BLOCKED, Status.DONE, Status.CANCELLED)

STATUS_STYLE = {"queued": "cyan", "running": "bold yellow", "done": "green", "failed": "bold red",
                "cancelled": "magenta", "blocked": "red"}
COLUMNS = ("id", "plan", "stage", "task", "from", "seed", "grid", "status", "gpu", "progress", "loss", "eta",
           "score")
WIDTHS = (12, 10, 12, 12, 10, 4, 20, 11, 3, 15, 7, 8, 7)  # fixed: no re-measuring 1,000 rows each second
SORTS = ("queue", "status", "score", "task")
APPEND_ROWS = 100  # new rows added a frame (1,008 at once keep a key waiting a quarter of a second)


def grid_text(grid: dict | None, params: dict | None = None) -> str:
    from stilts_tui.plan import grid_text as text  # the plan layer loads after the first frame

    return text(grid, params)


def bar(fraction: float | None, width: int = 10) -> str:
    if fraction is None:
        return ""
    full = int(round(fraction * width))
    return "█" * full + "░" * (width - full) + f" {100 * fraction:3.0f}%"


class QueueRead(Message):
    """What the queue screen shows, read from the ledger and the run folders (by the app's worker)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class QueueScreen(Screen):
    """The runs, and the keys that act on them. It reads nothing itself: the app's workers read the
    ledger and carry out the keys' operations (see StiltsApp), and the screen shows what comes back."""

    DEFAULT_CSS = """
    QueueScreen #filter { display: none; }
    QueueScreen #filter.visible { display: block; }
    QueueScreen #totals { height: 1; background: $boost; }
    QueueScreen #gpus { height: 1; }
    QueueScreen DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="queue.filter"),
        Binding("s", "sort", "Sort", id="queue.sort"),
        Binding("a", "add_plan", "Add plan", id="queue.add"),
        Binding("c", "cancel", "Cancel", id="queue.cancel"),
        Binding("r", "retry", "Retry", id="queue.retry"),
        Binding("plus,equals_sign", "priority(1)", "Priority +", id="queue.priority_up", show=False),
        Binding("minus", "priority(-1)", "Priority -", id="queue.priority_down", show=False),
        Binding("p", "toggle_pause", "Pause/resume", id="queue.pause"),
        Binding("space", "mark", "Mark", id="queue.mark", show=False),
        Binding("l,enter", "logs", "Logs", id="queue.logs"),
    ]

    def __init__(self, **kw):
        super().__init__(**kw)
        self.snapshot: Snapshot | None = None
        self.filter = ""
        self.sort = "queue"
        self.marked: list[str] = []
        self._shown: list[str] = []
        self._state: dict[str, tuple] = {}
        self._totals = ""
        self._told: set[str] = set()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="gpus")
            yield Static("loading…", id="totals")
            yield Input(placeholder="filter runs (id, plan, task, status, …); enter to apply", id="filter")
            yield RunTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for c, w in zip(COLUMNS, WIDTHS, strict=True):
            table.add_column(c, key=c, width=w)
        table.focus()
        table.on_cursor = lambda _row: self._totals and self.show_totals()  # same frame as the cursor
        self.reader = ProgressReader(self.app.root)
        # the first frame paints before the runs are read and added (1,000 rows take a while to add)
        self.call_after_refresh(self.refresh_data)
        self.set_interval(1.0, self.refresh_data)

    # -- data -----------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        if self.is_current or self.snapshot is None:  # nothing to do while another screen is on top
            self.app.read_queue()

    def on_queue_read(self, message: QueueRead) -> None:
        self.show(message.snapshot)

    def show_error(self, line: str) -> None:
        """A read that failed: its line in place of the totals (the table keeps the last runs read)."""
        self._totals = f"error: {line}"
        self.show_totals()

    def rows(self, snap: Snapshot) -> list[dict]:
        runs = snap.runs
        if self.filter:
            f = self.filter.lower()
            runs = [r for r in runs if f in " ".join(str(r.get(k, "")) for k in
                                                     ("id", "plan", "stage", "task", "intermediate", "status",
                                                      "name")).lower()
                    or f in grid_text(r.get("grid"), r.get("params")).lower()]
        if self.sort == "status":
            order = {s: i for i, s in enumerate(STATUS_SORT)}
            runs = sorted(runs, key=lambda r: order.get(r["status"], len(order)))
        elif self.sort == "score":
            runs = sorted(runs, key=lambda r: -(r.get("score") if isinstance(r.get("score"), float) else -1))
        elif self.sort == "task":
            runs = sorted(runs, key=lambda r: (str(r.get("task")), str(r.get("intermediate") or "")))
        return runs

    def cells(self, r: dict, snap: Snapshot) -> list:
        prog = snap.progress.get(r["id"])
        status = Text(r["status"], style=STATUS_STYLE.get(r["status"], ""))
        if r["id"] in self.marked:
            status.append(" ●", style="bold")
        score = f"{r['score']:.4f}" if isinstance(r.get("score"), (int, float)) else ""
        where = "" if r.get("gpu") is None else str(r["gpu"])
        waiting = "starting…"
        if r.get("job_id") and r.get("executor") == "slurm":  # on Slurm: the job, and why it waits
            where = f"job {r['job_id']}"
            if r.get("slurm_state") in ("PENDING", "SUBMITTING"):
                waiting = f"pending ({r.get('slurm_reason')})" if r.get("slurm_reason") else "pending"
        names = (terminal_safe(r.get(k) or "") for k in ("id", "plan", "stage", "task", "intermediate"))
        params = r.get("params") if isinstance(r.get("params"), dict) else None
        return [*names, str(r.get("seed", "")), terminal_safe(grid_text(r.get("grid"), params)), status, where,
                (bar(prog.fraction) if prog else waiting) if r["status"] == "running"
                else ("✓" if r["status"] == "done" else ""),
                f"{prog.loss:.4f}" if prog and prog.loss is not None and r["status"] == "running" else "",
                duration(prog.eta_s) if prog and r["status"] == "running" else "", score]

    def show(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self._error = None
        for line in snap.problems:  # e.g. runs Slurm will never start: each said once
            if line not in self._told:
                self._told.add(line)
                self.notify(line, severity="warning", timeout=20)
        gpus = "  ".join(f"GPU{g.index} {g.util or 0:.0f}% {g.total_gb - g.free_gb:.1f}/{g.total_gb:.0f} GiB"
                         for g in snap.gpus if not g.fake) or ""
        gpu_bar = self.query_one("#gpus", Static)
        if gpu_bar.display != bool(gpus):
            gpu_bar.display = bool(gpus)
        gpu_bar.update(gpus, layout=False)
        c = snap.counts
        totals = (f"{c.get('done', 0)} done · {c.get('running', 0)} running · {c.get('queued', 0)} queued · "
                  f"{c.get('failed', 0)} failed · {c.get('blocked', 0)} blocked · {c.get('cancelled', 0)} cancelled")
        if snap.eta_s is not None:
            totals += f" · ETA {duration(snap.eta_s)}"
        if snap.paused:
            totals += " · PAUSED"
        totals += f" · sort: {self.sort}" + (f" · filter: {self.filter}" if self.filter else "")
        self._totals = totals
        table = self.query_one(DataTable)
        rows = self.rows(snap)
        ids = [r["id"] for r in rows]
        had = set(self._shown)
        if had - set(ids):  # runs left (a filter): rebuild
            self.rebuild(table, rows, snap)
            return
        # runs added (a plan queued, a filter cleared): appended a chunk a frame, then one sort puts
        # every row in place (also when only the order changed)
        new = [r for r in rows if r["id"] not in had]
        for r in new[:APPEND_ROWS]:
            table.add_row(*self.cells(r, snap), key=r["id"])
            self._state[r["id"]] = self.state_of(r, snap)
        self._shown += [r["id"] for r in new[:APPEND_ROWS]]
        if len(new) > APPEND_ROWS:  # the next chunk after this frame: a key waits for one chunk at most
            self.call_after_refresh(lambda: self.snapshot and self.show(self.snapshot))
        elif self._shown != ids:
            self.sort_into_place(table, ids)
        for r in rows:  # the rows shown before: touch only the runs whose shown state changed
            state = self.state_of(r, snap)
            if r["id"] not in had or self._state.get(r["id"]) == state:
                continue
            self._state[r["id"]] = state
            old = table.get_row(r["id"])
            for col, (before, after) in enumerate(zip(old, self.cells(r, snap), strict=True)):
                if str(before) != str(after):
                    table.update_cell(r["id"], COLUMNS[col], after)
        self.show_totals()

    def rebuild(self, table: DataTable, rows: list[dict], snap: Snapshot) -> None:
        """Every row again (runs gone: a filter), keeping the cursor on its run."""
        current = self.current_id()
        table.clear()
        self._state = {}
        for r in rows:
            table.add_row(*self.cells(r, snap), key=r["id"])
            self._state[r["id"]] = self.state_of(r, snap)
        self._shown = [r["id"] for r in rows]
        if current in self._shown:
            table.move_cursor(row=self._shown.index(current), animate=False)
        self.show_totals()

    def sort_into_place(self, table: DataTable, ids: list[str]) -> None:
        """Rows in the order ``ids`` has them (one sort), keeping the cursor on its run."""
        current = self.current_id()
        where = {rid: n for n, rid in enumerate(ids)}
        table.sort("id", key=lambda cell: where[str(cell)])
        self._shown = list(ids)
        if current in where:
            table.move_cursor(row=where[current], animate=False)

    def show_totals(self) -> None:
        table = self.query_one(DataTable)
        where = f" · row {table.cursor_row + 1}/{table.row_count}" if table.row_count else ""
        self.query_one("#totals", Static).update(self._totals + where, layout=False)

    def state_of(self, r: dict, snap: Snapshot) -> tuple:
        p = snap.progress.get(r["id"])
        return (r["status"], r.get("gpu"), r.get("job_id"), r.get("slurm_state"), r.get("score"),
                r["id"] in self.marked, (p.step, p.total, p.loss, p.eta_s) if p else None)

    def current_id(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - empty or moving
            return None

    def selected(self) -> list[str]:
        return list(self.marked) or ([self.current_id()] if self.current_id() else [])

    # -- actions --------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.value = self.filter
        box.focus()

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.filter = event.value.strip()
        event.input.remove_class("visible")
        self.query_one(DataTable).focus()
        if self.snapshot:
            self.show(self.snapshot)

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        if self.snapshot:
            self.show(self.snapshot)

    def action_mark(self) -> None:
        rid = self.current_id()
        if rid is None:
            return
        if rid in self.marked:
            self.marked.remove(rid)
        else:
            self.marked.append(rid)
        if self.snapshot:  # only this row's status cell changes
            run = next((r for r in self.snapshot.runs if r["id"] == rid), None)
            if run is not None:
                self.query_one(DataTable).update_cell(rid, "status", self.cells(run, self.snapshot)[7])
                self._state[rid] = self.state_of(run, self.snapshot)
        self.query_one(DataTable).action_cursor_down()

    def _take_selection(self) -> list[str]:
        """The runs a key acts on (the marked ones, else the cursor's); the marks are used up."""
        ids = self.selected()
        if self.marked:
            self.marked = []
            if self.snapshot:
                self.show(self.snapshot)
        return ids

    def action_cancel(self) -> None:
        ids = self._take_selection()
        if ids:
            self.notify(f"cancelling {len(ids)} run(s)…")
            self.app.cancel_runs(ids)

    def action_retry(self) -> None:
        ids = self._take_selection()
        if ids:
            self.app.retry_runs(ids)

    def action_priority(self, delta: int) -> None:
        ids = self._take_selection()
        if ids:
            self.app.change_priority(ids, delta)

    def action_toggle_pause(self) -> None:
        if self.snapshot is None:
            return
        self.snapshot.paused = not self.snapshot.paused  # shown as asked until the next read says
        self.show(self.snapshot)
        self.app.pause_queue(self.snapshot.paused)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_logs()

    def action_logs(self) -> None:
        ids = self.selected()[:4]
        if ids:
            self.app.open_logs(ids)

    def action_add_plan(self) -> None:
        from stilts_tui.tui.screens.prompt import PromptScreen

        def added(path: str | None) -> None:
            if path:
                self.notify(f"queueing {path}…")
                self.app.add_plan(path)

        self.app.push_screen(PromptScreen("Queue a plan file (TOML):", "plans/"), added)
