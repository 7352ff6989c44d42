"""A one-line prompt: its input holds every key (ctrl+u clears it) until enter or escape."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from stilts_tui.tui.widgets.inputs import KeyedInput, KeysToInput


class PromptScreen(KeysToInput, ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "Close", id="prompt.close")]
    DEFAULT_CSS = """
    PromptScreen { align: center middle; }
    PromptScreen > Vertical { width: 70; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """

    def __init__(self, label: str, value: str = "", allow_empty: bool = False):
        super().__init__()
        self.label, self.value, self.allow_empty = label, value, allow_empty

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.label)
            # focused at once, the text kept (not selected: the first key types after it, never over it)
            yield KeyedInput(value=self.value, select_on_focus=False)

    def on_mount(self) -> None:
        box = self.query_one(Input)
        box.focus()
        box.cursor_position = len(box.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text if text or self.allow_empty else None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
