"""Choose the queue's columns: space toggles one, enter keeps the choice, escape leaves it as it was."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, SelectionList

from stilts_tui.tui.actions import bindings


class ColumnsScreen(ModalScreen[list[str] | None]):
    BINDINGS = bindings("columns")
    DEFAULT_CSS = """
    ColumnsScreen { align: center middle; }
    ColumnsScreen > Vertical { width: 40; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    ColumnsScreen SelectionList { height: auto; max-height: 20; }
    ColumnsScreen Label { width: 100%; }
    """

    def __init__(self, columns: tuple[str, ...], shown: list[str]):
        super().__init__()
        self.all, self.shown = columns, shown

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Columns (space: show/hide, enter: keep)")
            yield SelectionList[str](*[(c, c, c in self.shown) for c in self.all if c != "id"])

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_keep(self) -> None:
        self.dismiss(["id", *self.query_one(SelectionList).selected])

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
