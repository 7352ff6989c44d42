"""The queue's table: Textual's DataTable with a line cache that survives cursor moves, built on
its public API only (the Line API's ``render_line``, the Rich measuring protocol).

DataTable keys its line caches on the cursor's coordinate, so every cursor move renders every
visible line again (40 lines x 13 cells: most of a key's cost on a small machine). With a row
cursor only two rows look different after a move (the old and the new cursor row), so this table
keeps each rendered line keyed on whether *its* row holds the cursor (or the mouse hover): a move
renders two lines, and scrolling reuses the lines already rendered. An updated cell renders its
row again, not the table.

Its columns have fixed widths, and its cells are ``Cell`` objects that Textual does not measure:
DataTable measures every cell of every new row, even for fixed-width columns (13,000 measures
for 1,000 runs), through the cell's ``__rich_measure__``, which a ``Cell`` does not have.

It also calls ``on_cursor`` as the cursor moves, so whatever shows the cursor's row elsewhere is
repainted in the same frame as the table (a RowHighlighted message arrives a frame later).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets.data_table import CellType, ColumnKey, RowKey


class Cell:
    """A table cell: a plain string (never parsed as markup) or a styled ``Text``, one line high.

    It has no ``__rich_measure__``: Textual measures a cell through that protocol (three terminal
    size queries a cell), and this table's widths are fixed, so a cell that cannot be measured
    counts as one column wide and costs nothing to add."""

    __slots__ = ("value",)

    def __init__(self, value: str | Text):
        self.value = value

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        value = self.value
        if isinstance(value, Text):  # a value wider than its column ends in "…", never silently cut
            value = value.copy()
            value.no_wrap, value.overflow, value.end = True, "ellipsis", ""
            yield value
        else:
            yield Text(value, end="", no_wrap=True, overflow="ellipsis")

    def __str__(self) -> str:
        return self.value.plain if isinstance(self.value, Text) else self.value

    def __repr__(self) -> str:
        return f"Cell({self.value!r})"


def cell(value: object) -> Cell:
    """``value`` as a table cell (a ``Text`` keeps its styles)."""
    if isinstance(value, Cell):
        return value
    return Cell(value if isinstance(value, Text) else str(value))


class RunTable(DataTable):
    """A row-cursor DataTable whose line cache does not depend on where the cursor is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lines: LRUCache[tuple, Strip] = LRUCache(2000)
        self._version = 0  # every line is stale (cleared, restyled)
        self._row_version: dict[RowKey, int] = {}  # one row is stale (a cell changed)
        self.on_cursor: Callable[[int], None] | None = None

    def watch_cursor_coordinate(self, old: Coordinate, new: Coordinate) -> None:
        super().watch_cursor_coordinate(old, new)
        if old == new:
            return
        if self.mouse_hover and 0 <= self.hover_row < self.row_count:  # a key hides the hover highlight
            self._stale(self.coordinate_to_cell_key(Coordinate(self.hover_row, 0)).row_key)
        if self.on_cursor is not None:
            self.on_cursor(new.row)

    def _stale(self, row_key: RowKey) -> None:
        self._row_version[row_key] = self._row_version.get(row_key, 0) + 1

    def add_row(self, *cells: CellType, **kwargs) -> RowKey:
        return super().add_row(*(cell(c) for c in cells), **kwargs)

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: CellType, **kwargs) -> None:
        key = RowKey(row_key) if isinstance(row_key, str) else row_key
        self._stale(key)
        super().update_cell(key, column_key, cell(value), **kwargs)

    def clear(self, columns: bool = False):
        self._version += 1
        self._row_version.clear()
        return super().clear(columns)

    def add_column(self, *args, **kwargs) -> ColumnKey:
        self._version += 1
        return super().add_column(*args, **kwargs)

    def sort(self, *args, **kwargs):
        self._version += 1
        return super().sort(*args, **kwargs)

    def remove_row(self, row_key: RowKey | str) -> None:
        self._version += 1
        super().remove_row(row_key)

    def notify_style_update(self) -> None:
        self._version += 1
        super().notify_style_update()

    def render_line(self, y: int) -> Strip:
        header = self.header_height if self.show_header else 0
        if self.cursor_type != "row" or self.fixed_rows or y < header:
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset
        index = y - header + scroll_y  # every row is one line high (add_row's default)
        if index >= self.row_count:
            return super().render_line(y)
        row_key = self.coordinate_to_cell_key(Coordinate(index, 0)).row_key
        cursor = self.show_cursor and self.cursor_row == index
        hover = self.mouse_hover and self.hover_row == index
        key = (
            index,
            row_key,
            self._row_version.get(row_key, 0),
            self._version,
            scroll_x,
            self.size.width,
            cursor,
            hover,
            self.rich_style,
            self.has_focus,
            self.show_cursor,
        )
        strip = self._lines.get(key)
        if strip is None:
            strip = self._lines[key] = super().render_line(y)
        return strip
