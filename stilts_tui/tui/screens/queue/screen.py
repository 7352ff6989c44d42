"""The queue screen (opens first): every run with its status, GPU, progress, loss, ETA and score."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static

from stilts_tui.contract import Status
from stilts_tui.fmt import duration, terminal_safe
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.data import QueueReader, Snapshot, plural
from stilts_tui.tui.widgets.key_bar import KeyBar
from stilts_tui.tui.widgets.run_table import RunTable

# sorting by status: what needs attention first (running, then failed), what is over last
STATUS_SORT = (
    Status.RUNNING,
    Status.FAILED,
    Status.QUEUED,
    Status.BLOCKED,
    Status.DONE,
    Status.DEGENERATE,
    Status.PRUNED,
    Status.CANCELLED,
)

STATUS_STYLE = {
    "queued": "cyan",
    "running": "bold yellow",
    "done": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "blocked": "red",
    "degenerate": "dark_orange",  # stopped early by stop_degenerate: by design, not an error
    "pruned": "italic grey62",  # left out by its target's rank run: a saving, not an error (retry --pruned)
    "waiting": "yellow",
}
COLUMNS = (
    "id",
    "plan",
    "stage",
    "task",
    "from",
    "seed",
    "grid",
    "status",
    "gpu",
    "progress",
    "loss",
    "eta",
    "score",
    "reason",
)
WIDTHS = (12, 10, 12, 12, 10, 4, 24, 11, 3, 17, 7, 8, 7, 40)  # fixed: no re-measuring 1,000 rows each second
SORTS = ("queue", "status", "score", "task", *[c for c in COLUMNS if c not in ("status", "score", "task")])
APPEND_ROWS = 100  # new rows added a frame (1,008 at once keep a key waiting a quarter of a second)


def grid_text(grid: dict | None, params: dict | None = None) -> str:
    from stilts_tui.plan import grid_text as text  # the plan layer loads after the first frame

    return text(grid, params)


def params_of(r: dict) -> dict | None:
    """A row's resolved params, or None where a damaged row holds something else."""
    return r.get("params") if isinstance(r.get("params"), dict) else None


def shown_status(r: dict, snap: Snapshot) -> str:
    """The status a run is shown with: a running run that waits its turn in a worker is "waiting"."""
    return "waiting" if r["id"] in snap.waiting else r["status"]


def counts_line(c: dict[str, int]) -> str:
    """The totals' counts by status (degenerate runs only where there are some)."""
    return (
        f"{c.get('done', 0)} done · {c.get('running', 0)} running · "
        + (f"{c['waiting']} waiting in workers · " if c.get("waiting") else "")
        + f"{c.get('queued', 0)} queued · "
        f"{c.get('failed', 0)} failed · {c.get('blocked', 0)} blocked · {c.get('cancelled', 0)} cancelled"
        + (f" · {c['degenerate']} degenerate (stopped early)" if c.get("degenerate") else "")
        + (f" · {c['pruned']} pruned (rank stage)" if c.get("pruned") else "")
    )


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


class AddEnded(Message):
    """A plan add ended (queued, or failed: the app says which in a note); ``path`` as it was typed."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class QueueScreen(Screen):
    """The runs, and the keys that act on them. It reads nothing itself: the app's workers read the
    ledger and carry out the keys' operations (see StiltsApp), and the screen shows what comes back."""

    DEFAULT_CSS = """
    QueueScreen #totals { height: 1; background: $boost; }
    QueueScreen #gpus { height: 1; }
    QueueScreen DataTable { height: 1fr; }
    """
    BINDINGS = bindings("queue")  # priority bindings: tui/actions.py says why

    def __init__(self, **kw):
        super().__init__(**kw)
        self.snapshot: Snapshot | None = None
        self.filter = ""
        self.sort = "queue"
        self.reverse = False
        self.marked: list[str] = []
        self.columns: list[str] = list(COLUMNS)  # the columns shown (chosen with C, remembered)
        self._shown: list[str] = []
        self._state: dict[str, tuple] = {}
        self._totals = ""
        self._told: set[str] = set()
        self._settled = False  # the garbage collector set for the app (tui/gc_policy.py)
        self.adding: list[str] = []  # plans being queued from the prompt, said in the totals bar

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="gpus")
            # plain text: a filter, a plan's path or an error line may hold "[" (markup would eat or break it)
            yield Static("loading…", id="totals", markup=False)
            yield RunTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield KeyBar()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        from stilts_tui.tui.keymap import load_columns

        self.columns = [c for c in COLUMNS if c in (load_columns() or COLUMNS) or c == "id"]
        self.add_columns(table)
        table.focus()
        table.on_cursor = lambda _row: self._totals and self.show_totals()  # same frame as the cursor
        self.reader = QueueReader(self.app.root)
        # the first frame paints before the runs are read and added (1,000 rows take a while to add)
        self.call_after_refresh(self.refresh_data)
        self.set_interval(1.0, self.refresh_data)

    # -- data -----------------------------------------------------------------------------------

    def refresh_data(self) -> None:
        if self.is_current or self.snapshot is None:  # nothing to do while another screen is on top
            self.app.read_queue()

    def on_queue_read(self, message: QueueRead) -> None:
        self.show(message.snapshot)

    def on_add_ended(self, message: AddEnded) -> None:
        if message.path in self.adding:
            self.adding.remove(message.path)
            self.show_totals()

    def show_error(self, line: str) -> None:
        """A read that failed: its line in place of the totals (the table keeps the last runs read)."""
        self._totals = f"error: {line}"
        self.show_totals()

    def rows(self, snap: Snapshot) -> list[dict]:
        runs = snap.runs
        if self.filter:
            f = self.filter.lower()
            runs = [
                r
                for r in runs
                if f
                in " ".join(
                    str(r.get(k, "")) for k in ("id", "plan", "stage", "task", "intermediate", "status", "name")
                ).lower()
                or f in grid_text(r.get("grid"), params_of(r)).lower()
                or f in shown_status(r, snap)
                or f in snap.reasons.get(r["id"], "").lower()
            ]
        if self.sort != "queue":
            runs = sorted(runs, key=self.sort_key(snap), reverse=self.reverse)
        elif self.reverse:
            runs = runs[::-1]
        return runs

    def sort_key(self, snap: Snapshot):
        """The key of the chosen sort column: statuses in the order that needs a look first, scores and
        seeds as numbers (missing last), any other column by its text."""
        if self.sort == "status":
            order = {s: i for i, s in enumerate((STATUS_SORT[0], "waiting", *STATUS_SORT[1:]))}
            return lambda r: order.get(shown_status(r, snap), len(order))
        if self.sort == "score":
            return lambda r: -(r["score"] if isinstance(r.get("score"), (int, float)) else -1e9)
        if self.sort == "task":
            return lambda r: (str(r.get("task")), str(r.get("intermediate") or ""))
        col = COLUMNS.index(self.sort)
        return lambda r: str(self.cells(r, snap)[col])

    def cells(self, r: dict, snap: Snapshot) -> list:
        prog = snap.progress.get(r["id"])
        shown = shown_status(r, snap)
        status = Text(shown, style=STATUS_STYLE.get(shown, ""))
        if r["id"] in self.marked:
            status.append(" ●", style="bold")
        score = f"{r['score']:.4f}" if isinstance(r.get("score"), (int, float)) else ""
        where = "" if r.get("gpu") is None else str(r["gpu"])
        waiting = "starting…"
        if r.get("job_id") and r.get("executor") == "slurm":  # on Slurm: the job, and why it waits
            where = f"job {r['job_id']}"
            if r.get("slurm_state") in ("PENDING", "SUBMITTING"):
                waiting = f"pending ({r.get('slurm_reason')})" if r.get("slurm_reason") else "pending"
        training = shown == "running"
        if shown == "waiting":
            progress = f"in worker {snap.waiting[r['id']]}"
        elif training:
            progress = bar(prog.fraction) if prog else waiting
        else:
            progress = "✓" if r["status"] == "done" else ""
        names = (terminal_safe(r.get(k) or "") for k in ("id", "plan", "stage", "task", "intermediate"))
        grid = terminal_safe(grid_text(r.get("grid"), params_of(r)))
        return [
            *names,
            str(r.get("seed", "")),
            grid,
            status,
            where,
            progress,
            f"{prog.loss:.4f}" if prog and prog.loss is not None and training else "",
            duration(prog.eta_s) if prog and training else "",
            score,
            terminal_safe(snap.reasons.get(r["id"], "")),
        ]

    def shown_cells(self, r: dict, snap: Snapshot) -> list:
        """The cells of the columns shown, in their order."""
        cells = self.cells(r, snap)
        return [cells[COLUMNS.index(c)] for c in self.columns]

    def add_columns(self, table: DataTable) -> None:
        for c in self.columns:
            table.add_column(c, key=c, width=WIDTHS[COLUMNS.index(c)])

    def action_choose_columns(self) -> None:
        """Pick the columns shown (remembered for the next session: keymap.save_columns)."""
        from stilts_tui.tui.screens.columns import ColumnsScreen

        def chosen(columns: list[str] | None) -> None:
            if not columns or columns == self.columns:
                return
            from stilts_tui.tui.keymap import save_columns

            self.columns = [c for c in COLUMNS if c in columns or c == "id"]
            try:
                save_columns(self.columns)
            except OSError as e:
                self.notify(f"the columns are not remembered: {e.strerror or e}", severity="warning")
            table = self.query_one(DataTable)
            table.clear(columns=True)
            self.add_columns(table)
            if self.snapshot:
                self.rebuild(table, self.rows(self.snapshot), self.snapshot)

        self.app.push_screen(ColumnsScreen(COLUMNS, self.columns), chosen)

    def show_gpus(self, snap: Snapshot) -> None:
        """The GPU bar: each real GPU's utilization and memory (hidden without one)."""
        gpus = "  ".join(
            f"GPU{g.index} {g.util or 0:.0f}% {g.total_gb - g.free_gb:.1f}/{g.total_gb:.0f} GiB"
            for g in snap.gpus
            if not g.fake
        )
        gpu_bar = self.query_one("#gpus", Static)
        if gpu_bar.display != bool(gpus):
            gpu_bar.display = bool(gpus)
        gpu_bar.update(gpus, layout=False)

    def totals_line(self, snap: Snapshot) -> str:
        """The header: runs by status (only what trains counts as running), ETA, pause, sort and filter."""
        totals = counts_line(snap.counts)
        if snap.eta_s is not None:
            totals += f" · ETA {duration(snap.eta_s)}"
        if snap.paused:
            totals += " · PAUSED"
        totals += f" · sort: {self.sort}{' (reversed)' if self.reverse else ''}"
        return totals + (f" · filter: {self.filter}" if self.filter else "")

    def show(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self._error = None
        for line in snap.problems:  # e.g. runs Slurm will never start: each said once
            if line not in self._told:
                self._told.add(line)
                self.notify(line, severity="warning", timeout=20)
        self.show_gpus(snap)
        self._totals = self.totals_line(snap)
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
            table.add_row(*self.shown_cells(r, snap), key=r["id"])
            self._state[r["id"]] = self.state_of(r, snap)
        self._shown += [r["id"] for r in new[:APPEND_ROWS]]
        if len(new) > APPEND_ROWS:  # the next chunk after this frame: a key waits for one chunk at most
            self.call_after_refresh(lambda: self.snapshot and self.show(self.snapshot))
        elif self._shown != ids:
            self.sort_into_place(table, ids)
        if not self._settled and len(new) <= APPEND_ROWS:  # every run in the table: the app is built
            from stilts_tui.tui import gc_policy

            self._settled = True
            if self.app.settle_gc if self.app.settle_gc is not None else not self.app.is_headless:
                self.call_after_refresh(gc_policy.settle)
        for r in rows:  # the rows shown before: touch only the runs whose shown state changed
            state = self.state_of(r, snap)
            if r["id"] not in had or self._state.get(r["id"]) == state:
                continue
            self._state[r["id"]] = state
            old = table.get_row(r["id"])
            for col, (before, after) in enumerate(zip(old, self.shown_cells(r, snap), strict=True)):
                if str(before) != str(after):
                    table.update_cell(r["id"], self.columns[col], after)
        self.show_totals()

    def rebuild(self, table: DataTable, rows: list[dict], snap: Snapshot) -> None:
        """Every row again (runs gone: a filter), keeping the cursor on its run."""
        current = self.current_id()
        table.clear()
        self._state = {}
        for r in rows:
            table.add_row(*self.shown_cells(r, snap), key=r["id"])
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
        adding = "".join(f" · queueing {path}…" for path in self.adding)  # after the row: cut first
        self.query_one("#totals", Static).update(self._totals + where + adding, layout=False)

    def state_of(self, r: dict, snap: Snapshot) -> tuple:
        p = snap.progress.get(r["id"])
        return (
            shown_status(r, snap),
            snap.reasons.get(r["id"]),
            r.get("gpu"),
            r.get("job_id"),
            r.get("slurm_state"),
            r.get("score"),
            r["id"] in self.marked,
            (p.step, p.total, p.loss, p.eta_s) if p else None,
        )

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
        """Ask for the filter (search) in a prompt that holds the keys until enter or escape."""
        from stilts_tui.tui.screens.prompt import ask

        def apply(text: str | None) -> None:
            if text is None:
                return
            self.filter = text
            if self.snapshot:
                self.show(self.snapshot)

        label = "Show only runs matching (id, plan, task, status, reason…; empty: all):"
        ask(self.app, "queue-filter", label, self.filter, apply, allow_empty=True)

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        if self.snapshot:
            self.show(self.snapshot)

    def action_cursor(self, where: str) -> None:
        table = self.query_one(DataTable)
        (table.action_cursor_down if where == "down" else table.action_cursor_up)()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
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
            if run is not None and "status" in self.columns:
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
        ids = self.selected()
        if not ids:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                ids_now = self._take_selection()
                self.notify(f"cancelling {len(ids_now)} {plural(len(ids_now), 'run')}…")
                self.app.cancel_runs(ids_now)

        if not self.app.confirm:
            answered(True)
            return
        from stilts_tui.tui.screens.confirm import ConfirmScreen

        what = f"the {len(ids)} marked runs" if self.marked else f"run {ids[0]}"
        self.app.push_screen(ConfirmScreen(f"Cancel {what}? (a running run is stopped)"), answered)

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
        from stilts_tui.tui.screens.prompt import ask

        def added(path: str | None) -> None:
            # said in the totals bar, not a toast: a toast's mount lays the whole screen out twice (10-15 ms
            # of CPU each on 2 cores), the second time in the frame of the key that follows the prompt
            if path:
                self.adding.append(path)
                self.show_totals()
                self.app.add_plan(path)

        ask(self.app, "add-plan", "Queue a plan file (TOML):", "plans/", added)
