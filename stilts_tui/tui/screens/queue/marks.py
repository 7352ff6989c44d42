"""The runs a key acts on: the marked ones (space), else the one under the cursor. A mixin of
QueueScreen."""

from __future__ import annotations

from textual.widgets import DataTable

from stilts_tui.tui.data import Snapshot
from stilts_tui.tui.screens.queue.cells import STATUS_COLUMN, cells, state_of


class Marks:
    """Marks and the cursor of the queue table."""

    snapshot: Snapshot | None
    columns: list[str]
    _state: dict[str, tuple]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.marked: list[str] = []

    def current_id(self) -> str | None:
        """The run under the cursor (None in an empty table)."""
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - empty or moving
            return None

    def selected(self) -> list[str]:
        """The marked runs, else the cursor's."""
        return list(self.marked) or ([self.current_id()] if self.current_id() else [])

    def _take_selection(self) -> list[str]:
        """The runs a key acts on (the marked ones, else the cursor's); the marks are used up."""
        ids = self.selected()
        if self.marked:
            self.marked = []
            if self.snapshot:
                self.show(self.snapshot)
        return ids

    def action_cursor(self, where: str) -> None:
        """Move the row cursor: one row down or up, or to the first or last row (home, end and G: the
        table's own home and end move between columns, which a row cursor never shows)."""
        table = self.query_one(DataTable)
        if where in ("top", "bottom"):
            if table.row_count:
                table.move_cursor(row=0 if where == "top" else table.row_count - 1, animate=False)
            return
        (table.action_cursor_down if where == "down" else table.action_cursor_up)()

    def action_mark(self) -> None:
        """Mark the cursor's run (or unmark it) and move down."""
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
                marked = rid in self.marked
                status = cells(run, self.snapshot, marked)[STATUS_COLUMN]
                self.query_one(DataTable).update_cell(rid, "status", status)
                self._state[rid] = state_of(run, self.snapshot, marked)
        self.query_one(DataTable).action_cursor_down()
