"""The queue screen (opens first): every run with its status, GPU, progress, loss, ETA and score."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static

from stilts_tui.tui.actions import bindings
from stilts_tui.tui.data import QueueReader, Snapshot
from stilts_tui.tui.screens.queue.column_choice import ColumnChoice
from stilts_tui.tui.screens.queue.marks import Marks
from stilts_tui.tui.screens.queue.operations import QueueOperations
from stilts_tui.tui.screens.queue.order import Ordering
from stilts_tui.tui.screens.queue.table import TableSync
from stilts_tui.tui.widgets.key_bar import KeyBar
from stilts_tui.tui.widgets.run_table import RunTable


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


class QueueScreen(Ordering, Marks, ColumnChoice, QueueOperations, TableSync, Screen):
    """The runs, and the keys that act on them. It reads nothing itself: the app's workers read the
    ledger and carry out the keys' operations (see StiltsApp), and the screen shows what comes back.
    Its concerns are mixins, one module each: the filter and sort (order.py), marks and the cursor
    (marks.py), the columns (column_choice.py), the queue's keys (operations.py), the table drawn from
    a snapshot (table.py); a run's cells are plain functions (cells.py)."""

    DEFAULT_CSS = """
    QueueScreen #totals { height: 1; background: $boost; }
    QueueScreen #gpus { height: 1; }
    QueueScreen DataTable { height: 1fr; }
    """
    BINDINGS = bindings("queue")  # priority bindings: tui/actions.py says why

    def __init__(self, **kw):
        super().__init__(**kw)
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
        self.load_columns()
        self.add_columns(table)
        table.focus()
        table.on_cursor = lambda _row: self._totals and self.show_totals()  # same frame as the cursor
        self.reader = QueueReader(self.app.root)
        # the first frame paints before the runs are read and added (1,000 rows take a while to add)
        self.call_after_refresh(self.refresh_data)
        self.set_interval(1.0, self.refresh_data)

    def refresh_data(self) -> None:
        """Ask the app for a read (not while another screen is on top, once a first read is shown)."""
        if self.is_current or self.snapshot is None:
            self.app.read_queue()

    def on_queue_read(self, message: QueueRead) -> None:
        self.show(message.snapshot)

    def on_add_ended(self, message: AddEnded) -> None:
        if message.path in self.adding:
            self.adding.remove(message.path)
            self.show_totals()
