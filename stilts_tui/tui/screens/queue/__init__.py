"""The queue screen (opens first), split by concern: the screen itself (screen.py), what a run's cells
show (cells.py), the rows' filter and order (order.py), marks and the cursor (marks.py), the keys that
act on the queue (operations.py), the columns shown (column_choice.py) and the table kept in step with
each read (table.py)."""

from stilts_tui.tui.screens.queue.cells import COLUMNS, STATUS_STYLE, WIDTHS, counts_line, shown_status
from stilts_tui.tui.screens.queue.order import SORTS
from stilts_tui.tui.screens.queue.screen import AddEnded, QueueRead, QueueScreen

__all__ = [
    "COLUMNS",
    "SORTS",
    "STATUS_STYLE",
    "WIDTHS",
    "AddEnded",
    "QueueRead",
    "QueueScreen",
    "counts_line",
    "shown_status",
]
