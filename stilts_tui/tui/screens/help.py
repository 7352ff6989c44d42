"""Every key of every screen (F1 or ?)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from stilts_tui.fmt import terminal_safe
from stilts_tui.tui.actions import bindings


def safe(text: str) -> str:
    """Text from outside (a keymap's key) for the help's markup: escaped, one line."""
    return terminal_safe(text, markup=True)


class HelpScreen(ModalScreen):
    BINDINGS = bindings("help")
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 80; height: 80%; border: round $accent; background: $panel; padding: 1 2; }
    """

    def __init__(self, sections: list[tuple[str, list[tuple[str, str, str]]]]):
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        lines = ["[b]stilts-tui keys[/b]  (remap by id in ~/.config/stilts-tui/keymap.toml)", ""]
        for title, rows in self.sections:
            lines.append(f"[b]{title}[/b]")
            # a key comes from the user's keymap file: "ctrl+[/]" is text here, never markup (an unmatched tag
            # would kill the app), and an escape character in it is shown as \x1b
            lines.extend(f"  {safe(key):<16} {safe(desc):<28} [dim]{safe(bid)}[/dim]" for key, desc, bid in rows)
            lines.append("")
        with VerticalScroll():
            yield Static("\n".join(lines))
