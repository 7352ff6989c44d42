"""A one-line prompt: its input holds every key (ctrl+u clears it) until enter or escape.

One prompt screen a purpose is installed in the app the first time it is asked for, and kept: a
screen pushed fresh is removed when it closes, and Textual then lays out the screen below again (15 ms
of CPU on 2 cores with 1,000 runs in the queue's table, in the frame of the key after the prompt), while
a kept screen is only suspended (bench/prompt_close.py). :func:`ask` pushes it with its label and text.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.inputs import KeyedInput, KeysToInput


class PromptScreen(KeysToInput, ModalScreen[str | None]):
    BINDINGS = bindings("prompt")
    DEFAULT_CSS = """
    PromptScreen { align: center middle; }
    PromptScreen > Vertical { width: 70; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    PromptScreen Label { width: 100%; }
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
        self._ready()

    def on_screen_resume(self) -> None:
        self._ready()

    def _ready(self) -> None:
        box = self.query_one(Input)
        box.focus()
        box.cursor_position = len(box.value)

    def reset(self, label: str, value: str, allow_empty: bool) -> None:
        """Ask again: this label, this text in the input (a kept screen holds the last answer's)."""
        self.label, self.value, self.allow_empty = label, value, allow_empty
        if self.is_mounted:
            self.query_one(Label).update(label)
            box = self.query_one(Input)
            box.value = value
            box.cursor_position = len(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text if text or self.allow_empty else None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def ask(
    app: App, purpose: str, label: str, value: str, answered: Callable[[str | None], None], allow_empty: bool = False
) -> None:
    """Push the prompt kept for ``purpose`` with ``label`` and ``value``; ``answered`` gets the text
    (None on escape, or on an empty answer unless ``allow_empty``)."""
    name = f"prompt:{purpose}"
    if not app.is_screen_installed(name):
        app.install_screen(PromptScreen(label, value, allow_empty), name)
    screen = app.get_screen(name)
    screen.reset(label, value, allow_empty)
    app.push_screen(screen, answered)
