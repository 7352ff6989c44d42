"""The queue table's columns: which are shown (``C`` chooses; remembered for the next session in the
settings folder, tui/keymap.py) and each row's cells in their order. A mixin of QueueScreen."""

from __future__ import annotations

from textual.widgets import DataTable

from stilts_tui.errors import UserError, first_line
from stilts_tui.tui.data import Snapshot
from stilts_tui.tui.screens.queue.cells import COLUMNS, HIDDEN, WIDTHS, cells


class ColumnChoice:
    """The columns shown, in COLUMNS' order ("id" always: the rows' key)."""

    snapshot: Snapshot | None
    marked: list[str]
    _shown: list[str]

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.columns: list[str] = list(COLUMNS)

    def load_columns(self) -> None:
        """The columns chosen last time (the first time: all but those hidden until chosen)."""
        from stilts_tui.tui.keymap import load_columns

        chosen = load_columns(warn=lambda line: self.notify(line, severity="warning", markup=False))
        chosen = chosen or [c for c in COLUMNS if c not in HIDDEN]
        self.columns = [c for c in COLUMNS if c in chosen or c == "id"]

    def shown_cells(self, r: dict, snap: Snapshot) -> list:
        """The cells of the columns shown, in their order."""
        row = cells(r, snap, r["id"] in self.marked)
        return [row[COLUMNS.index(c)] for c in self.columns]

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
            except (OSError, UserError) as e:  # UserError: files.DamagedFile, columns.json a folder
                self.notify(f"the columns are not remembered: {first_line(e)}", severity="warning", markup=False)
            current = self.current_id()  # the cursor stays on its run (cleared columns lose it)
            table = self.query_one(DataTable)
            table.clear(columns=True)
            self.add_columns(table)
            if self.snapshot:
                self.rebuild(table, self.rows(self.snapshot), self.snapshot)
                if current in self._shown:
                    table.move_cursor(row=self._shown.index(current), animate=False)

        self.app.push_screen(ColumnsScreen(COLUMNS, self.columns), chosen)
