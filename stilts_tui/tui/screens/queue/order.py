"""Which runs the queue table shows and in what order: the filter (``/``), the sort column (``s``) and
its direction (``S``). A mixin of QueueScreen: it holds the state, the screen redraws with it."""

from __future__ import annotations

from collections.abc import Callable

from stilts_tui.tui.data import Snapshot
from stilts_tui.tui.screens.queue.cells import (
    COLUMNS,
    STATUS_SORT,
    WAITING,
    cells,
    grid_text,
    notes_text,
    params_of,
    shown_status,
)

SORTS = ("queue", "status", "score", "task", *[c for c in COLUMNS if c not in ("status", "score", "task")])
FILTERED_FIELDS = ("id", "plan", "stage", "task", "intermediate", "status", "name")


def matches(r: dict, snap: Snapshot, text: str) -> bool:
    """Whether run ``r`` holds ``text`` (lower case) in its names, grid, status as shown or reason."""
    return (
        text in " ".join(str(r.get(k, "")) for k in FILTERED_FIELDS).lower()
        or text in grid_text(r.get("grid"), params_of(r)).lower()
        or text in shown_status(r, snap)
        or text in snap.reasons.get(r["id"], "").lower()
        or text in notes_text(r).lower()  # its note and #tags
    )


def sort_key(sort: str, snap: Snapshot) -> Callable[[dict], object]:
    """The key of sort column ``sort``: statuses in the order that needs a look first, scores and
    seeds as numbers (missing last), any other column by its text."""
    if sort == "status":
        order = {s: i for i, s in enumerate((STATUS_SORT[0], WAITING, *STATUS_SORT[1:]))}
        return lambda r: order.get(shown_status(r, snap), len(order))
    if sort == "score":
        return lambda r: -(r["score"] if isinstance(r.get("score"), (int, float)) else -1e9)
    if sort == "task":
        return lambda r: (str(r.get("task")), str(r.get("intermediate") or ""))
    if sort == "grid":  # by each value as a number: lr = 5e-05 before lr = 0.0001 (as text it came after)
        return lambda r: grid_order(r.get("grid"))
    if sort == "seed":
        return lambda r: _number_first(r.get("seed"))
    col = COLUMNS.index(sort)
    return lambda r: str(cells(r, snap, False)[col])


def _number_first(v: object) -> tuple:
    """Numbers by value before anything else by its text (a damaged value never stops the sort)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
        return (0, float(v), "")
    return (1, 0.0, str(v))


def grid_order(grid: object) -> tuple:
    """A run's grid point as a sort key: its keys in name order, each value as a number where it is one."""
    if not isinstance(grid, dict):
        return ((str(grid), _number_first(None)),)
    return tuple((str(k), _number_first(grid[k])) for k in sorted(grid, key=str))


class Ordering:
    """The filter and the sort of the queue screen, and their keys."""

    snapshot: Snapshot | None

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.filter = ""
        self.sort = "queue"
        self.reverse = False

    def rows(self, snap: Snapshot) -> list[dict]:
        """The runs shown, filtered and in the chosen order (the queue's own order by default)."""
        runs = snap.runs
        if self.filter:
            text = self.filter.lower()
            runs = [r for r in runs if matches(r, snap, text)]
        if self.sort != "queue":
            runs = sorted(runs, key=sort_key(self.sort, snap), reverse=self.reverse)
        elif self.reverse:
            runs = runs[::-1]
        return runs

    def redraw(self) -> None:
        """Show the last snapshot again, in the new filter or order."""
        if self.snapshot:
            self.show(self.snapshot)

    def action_filter(self) -> None:
        """Ask for the filter (search) in a prompt that holds the keys until enter or escape."""
        from stilts_tui.tui.screens.prompt import ask

        def apply(text: str | None) -> None:
            if text is None:
                return
            self.filter = text
            self.redraw()

        label = "Show only runs matching (id, plan, task, status, note, #tag, reason…; empty: all):"
        ask(self.app, "queue-filter", label, self.filter, apply, allow_empty=True)

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.redraw()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.redraw()
