"""Every key of every screen (F1 or ?)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from stilts_tui.tui.actions import bindings


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
            lines.extend(f"  {key:<16} {desc:<28} [dim]{bid}[/dim]" for key, desc, bid in rows)
            lines.append("")
        with VerticalScroll():
            yield Static("\n".join(lines))
