"""The note dialog (``n`` on the queue): a note and tags for the selected or marked runs.

Two inputs, filled with what the runs share (their note when they all have the same one, the tags they
all have); enter saves, escape closes, tab moves between them. What comes back is what changed: the
note set or cleared (left alone when its text was not touched) and the tags added and taken out, so
marking runs with different notes and adding a tag keeps each run's own note. The app then writes it
as a request (queue/notes.py). Kept in the app once opened, as the prompts are (screens/prompt.py says
why)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from stilts_tui.store import notes
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.inputs import KeyedInput, KeysToInput

TAG_KEYS = r"[A-Za-z0-9_.:# ,-]*"  # what the tags input lets through: tags, and what separates them


@dataclass
class NoteChange:
    """What the dialog asks for: ``note`` (None: leave it), ``clear``, and the tags added and removed."""

    note: str | None = None
    clear: bool = False
    tags: list[str] | None = None
    untag: list[str] | None = None

    def __bool__(self) -> bool:
        return self.note is not None or self.clear or bool(self.tags) or bool(self.untag)


def split_tags(text: str) -> list[str]:
    """Tags as typed: separated by blanks or commas, a leading ``#`` dropped."""
    return [t.lstrip("#") for t in re.split(r"[\s,]+", text) if t.lstrip("#")]


def shared(rows: list[dict]) -> tuple[str, list[str]]:
    """The note all ``rows`` have ("" unless they all have the same one) and the tags they all have."""
    said = {notes.note_of(r) or "" for r in rows}
    note = said.pop() if len(said) == 1 else ""
    tags = notes.tags_of(rows[0]) if rows else []
    return note, [t for t in tags if all(t in notes.tags_of(r) for r in rows[1:])]


def change(note_before: str, tags_before: list[str], note_text: str, tags_text: str) -> NoteChange:
    """What the dialog's answer changes; bad tags or a note too long raise UserError (nothing written)."""
    out = NoteChange()
    text = note_text.strip()
    if text != note_before.strip():
        if text:
            out.note = notes.check_note(text)
        else:
            out.clear = True
    new = notes.check_tags(split_tags(tags_text), "tags")
    out.tags = [t for t in new if t not in tags_before]
    out.untag = [t for t in tags_before if t not in new]
    return out


class NoteScreen(KeysToInput, ModalScreen[tuple[str, str] | None]):
    BINDINGS = bindings("prompt")  # escape closes it, as it closes a prompt
    DEFAULT_CSS = """
    NoteScreen { align: center middle; }
    NoteScreen > Vertical { width: 80; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    NoteScreen Label { width: 100%; }
    """

    def __init__(self, label: str, note: str = "", tags: str = ""):
        super().__init__()
        self.label, self.note, self.tags = label, note, tags

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.label, id="what", markup=False)  # a run id, never markup
            yield KeyedInput(value=self.note, max_length=notes.MAX_NOTE, select_on_focus=False, id="note")
            yield Label(f"Tags (blank or comma between; {notes.TAG_RULE}; enter saves, escape closes):", markup=False)
            yield KeyedInput(value=self.tags, restrict=TAG_KEYS, select_on_focus=False, id="tags")

    def on_mount(self) -> None:
        self._ready()

    def on_screen_resume(self) -> None:
        self._ready()

    def _ready(self) -> None:
        box = self.query_one("#note", Input)
        box.focus()
        box.cursor_position = len(box.value)

    def reset(self, label: str, note: str, tags: str) -> None:
        """Ask again with this label and these values (a kept screen holds the last answer's)."""
        self.label, self.note, self.tags = label, note, tags
        if self.is_mounted:
            self.query_one("#what", Label).update(label)
            for wid, value in (("#note", note), ("#tags", tags)):
                box = self.query_one(wid, Input)
                box.value = value
                box.cursor_position = len(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss((self.query_one("#note", Input).value, self.query_one("#tags", Input).value))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def ask(app: App, label: str, note: str, tags: list[str], answered: Callable[[tuple[str, str] | None], None]) -> None:
    """Push the kept note dialog; ``answered`` gets (note text, tags text), or None on escape."""
    if not app.is_screen_installed("note"):
        app.install_screen(NoteScreen(label, note, " ".join(tags)), "note")
    screen = app.get_screen("note")
    screen.reset(label, note, " ".join(tags))
    app.push_screen(screen, answered)
