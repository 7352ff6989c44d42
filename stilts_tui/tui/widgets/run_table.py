"""The queue's table: Textual's DataTable with line caching that survives cursor moves.

DataTable keys its line and row caches on the cursor's coordinate, so every cursor move renders
every visible line again (40 lines x 13 cells: most of a key's cost on a small machine). With a row
cursor only two rows look different after a move (the old and the new cursor row), so this table
keys each line on whether *its* row holds the cursor (or the mouse hover): a move renders two
lines, and scrolling reuses the lines already rendered.

Its columns have fixed widths, so new rows are not measured cell by cell (DataTable measures
every cell of every new row, even for fixed-width columns: 13,000 measures for 1,000 runs).

It also calls ``on_cursor`` as the cursor moves, so whatever shows the cursor's row elsewhere is
repainted in the same frame as the table (a RowHighlighted message arrives a frame later).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

from rich.style import Style
from textual._segment_tools import line_crop
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.geometry import Size
from textual.strip import Strip
from textual.widgets import DataTable

_NOWHERE = Coordinate(-10, 0)  # a coordinate no row or header has


class RunTable(DataTable):
    """A row-cursor DataTable whose line cache does not depend on where the cursor is."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lines: LRUCache[tuple, Strip] = LRUCache(2000)
        self.on_cursor: Callable[[int], None] | None = None

    def watch_cursor_coordinate(self, old: Coordinate, new: Coordinate) -> None:
        super().watch_cursor_coordinate(old, new)
        if old != new and self.on_cursor is not None:
            self.on_cursor(new.row)

    def _update_dimensions(self, new_rows) -> None:
        if any(c.auto_width for c in self.columns.values()) or any(
                (row := self.rows.get(k)) is not None and (row.auto_height or row.label is not None) for k in new_rows):
            super()._update_dimensions(new_rows)
            return
        width = sum(c.get_render_width(self) for c in self.columns.values()) + self._row_label_column_width
        self.virtual_size = Size(width, self._total_row_height + (self.header_height if self.show_header else 0))

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        if self.cursor_type != "row":
            return super()._render_line(y, x1, x2, base_style)
        width = self.size.width
        try:
            row_key, line_no = self._get_offsets(y)
        except LookupError:
            return Strip.blank(width, base_style)
        row_index = -1 if row_key is self._header_row_key else self._row_locations.get(row_key)
        if row_index is None:
            row_index = -1
        cursor = self.show_cursor and self.cursor_coordinate.row == row_index
        hover = self._show_hover_cursor and self.hover_coordinate.row == row_index
        key = (row_key, line_no, x1, x2, width, cursor, hover, base_style, self.show_cursor, self._show_hover_cursor,
               self._update_count, self._pseudo_class_state, self.fixed_columns)
        strip = self._lines.get(key)
        if strip is not None:
            return strip
        fixed, scrollable = self._render_line_in_row(
            row_key, line_no, base_style,
            cursor_location=self.cursor_coordinate if cursor else _NOWHERE,
            hover_location=self.hover_coordinate if hover else _NOWHERE,
        )
        fixed_width = sum(column.get_render_width(self) for column in self.ordered_columns[: self.fixed_columns])
        fixed_line = list(chain.from_iterable(fixed)) if fixed else []
        scrollable_line = list(chain.from_iterable(scrollable))
        segments = fixed_line + line_crop(scrollable_line, x1 + fixed_width, x2, width)
        strip = Strip(segments).adjust_cell_length(width, base_style).simplify()
        self._lines[key] = strip
        return strip
