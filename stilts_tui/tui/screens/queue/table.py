"""The queue table kept in step with each read: rows appended a chunk a frame, put in place with one
sort, and only the cells whose run changed rewritten (docs/tui.md, "The run table"); the GPU bar and
the totals above it. A mixin of QueueScreen."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from stilts_tui.fmt import duration, terminal_safe
from stilts_tui.store.notes import one_line
from stilts_tui.tui.data import Snapshot
from stilts_tui.tui.screens.queue.cells import counts_line, state_of

APPEND_ROWS = 100  # new rows added a frame (1,008 at once keep a key waiting a quarter of a second)


class TableSync:
    """The table, the GPU bar and the totals, drawn from a snapshot."""

    marked: list[str]
    columns: list[str]
    filter: str
    sort: str
    reverse: bool
    adding: list[str]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.snapshot: Snapshot | None = None
        self._shown: list[str] = []  # the run ids in the table, in its order
        self._state: dict[str, tuple] = {}  # what each row shows (cells.state_of)
        self._totals = ""
        self._told: set[str] = set()
        self._settled = False  # the garbage collector set for the app (tui/gc_policy.py)

    def state(self, r: dict, snap: Snapshot) -> tuple:
        return state_of(r, snap, r["id"] in self.marked)

    def show(self, snap: Snapshot) -> None:
        """Draw ``snap``: new rows appended, rows gone rebuilt, changed rows' cells rewritten."""
        self.snapshot = snap
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
        new = [r for r in rows if r["id"] not in had]
        self.append(table, new, ids, snap)
        self.update_changed(table, rows, had, snap)
        self.show_totals()

    def append(self, table: DataTable, new: list[dict], ids: list[str], snap: Snapshot) -> None:
        """Runs added (a plan queued, a filter cleared): appended a chunk a frame, then one sort puts
        every row in place (also when only the order changed)."""
        for r in new[:APPEND_ROWS]:
            table.add_row(*self.shown_cells(r, snap), key=r["id"])
            self._state[r["id"]] = self.state(r, snap)
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

    def update_changed(self, table: DataTable, rows: list[dict], had: set[str], snap: Snapshot) -> None:
        """The rows shown before: touch only the runs whose shown state changed, and only their cells
        that changed."""
        for r in rows:
            state = self.state(r, snap)
            if r["id"] not in had or self._state.get(r["id"]) == state:
                continue
            self._state[r["id"]] = state
            old = table.get_row(r["id"])
            for col, (before, after) in enumerate(zip(old, self.shown_cells(r, snap), strict=True)):
                if str(before) != str(after):
                    table.update_cell(r["id"], self.columns[col], after)

    def rebuild(self, table: DataTable, rows: list[dict], snap: Snapshot) -> None:
        """Every row again (runs gone: a filter), keeping the cursor on its run."""
        current = self.current_id()
        table.clear()
        self._state = {}
        for r in rows:
            table.add_row(*self.shown_cells(r, snap), key=r["id"])
            self._state[r["id"]] = self.state(r, snap)
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
        totals = counts_line(snap.counts) + eta_text(snap)
        totals += f" · sort: {self.sort}{' (reversed)' if self.reverse else ''}"
        return totals + (f" · filter: {self.filter}" if self.filter else "")

    def show_totals(self) -> None:
        """The totals line, the cursor's row and the plans being queued."""
        table = self.query_one(DataTable)
        where = f" · row {table.cursor_row + 1}/{table.row_count}" if table.row_count else ""
        adding = "".join(f" · queueing {path}…" for path in self.adding)  # after the row: cut first
        self.query_one("#totals", Static).update(self._totals + where + self.cursor_note() + adding, layout=False)

    def cursor_note(self) -> str:
        """The cursor's run's tags and note (its view: store/view.py), made safe to show; "" for none."""
        v = self.snapshot.views.get(self.current_id() or "") if self.snapshot else None
        if v is None or not (v.note or v.tags):
            return ""
        return " · " + terminal_safe(one_line(v.note, v.tags))

    def show_error(self, line: str) -> None:
        """A read that failed: its line in place of the totals (the table keeps the last runs read)."""
        self._totals = f"error: {line}"
        self.show_totals()


def eta_text(snap: Snapshot) -> str:
    """The header's ETA (estimate/eta.py): time left; paused: no ETA (nothing launches, so no time of day is
    promised), the work left said instead; none where this device has measured nothing yet."""
    eta = snap.eta
    if snap.paused:
        left = f" ({duration(eta.seconds)} of work left)" if eta is not None and eta.seconds is not None else ""
        return f" · PAUSED: no ETA{left}"
    if eta is None or (eta.seconds is None and not eta.why):
        return ""
    if eta.seconds is None:
        return " · ETA: none until a run of this device finishes" if "nothing measured" in eta.why else ""
    return f" · ETA {duration(eta.seconds)}"
