"""One to four runs' logs side by side, each following its train.log live."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer

from stilts_tui.tui.widgets.log_pane import LogPane


class LogsScreen(Screen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="logs.back"),
        Binding("f", "filter", "Filter lines", id="logs.filter"),
        Binding("tab", "focus_next", "Next pane", id="logs.next", show=False),
    ]

    def __init__(self, run_ids: list[str], titles: dict[str, str] | None = None, **kw):
        super().__init__(**kw)
        self.run_ids = run_ids[:4]
        self.titles = titles or {}

    def compose(self) -> ComposeResult:
        with Horizontal():
            for rid in self.run_ids:
                yield LogPane(self.app.root, rid, self.titles.get(rid, rid), id=f"pane-{rid}")
        yield Footer()

    def action_filter(self) -> None:
        focused = self.focused
        panes = list(self.query(LogPane))
        pane = next((p for p in panes if focused is not None and focused in p.walk_children()), panes[0])
        pane.toggle_filter()
