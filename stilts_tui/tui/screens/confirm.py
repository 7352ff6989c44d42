"""A yes/no question before a destructive key does its work (cancel, quit, overwrite a plan file).
``STILTS_CONFIRM=0`` turns the questions off (see docs/tui.md)."""

from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from stilts_tui.contract import Env
from stilts_tui.tui.actions import bindings


def confirm_wanted() -> bool:
    """Ask before destructive keys unless ``$STILTS_CONFIRM`` is 0, no, off or false."""
    return os.environ.get(Env.CONFIRM, "1").strip().lower() not in ("0", "no", "off", "false")


class ConfirmScreen(ModalScreen[bool]):
    """``question`` and y / n: dismissed with True for y (or enter), False for n (or escape); every other
    key is swallowed, so a key typed ahead never acts behind the question."""

    BINDINGS = bindings("confirm")
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 70; height: auto; border: round $warning; padding: 1 2; background: $panel; }
    ConfirmScreen Label { width: 100%; }  /* a long question (a plan file's path) wraps, never cut */
    """

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Label("[b]y[/b] yes   [b]n[/b] no", id="answers")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
