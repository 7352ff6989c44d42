"""One to four runs' logs side by side, each following its train.log live."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Log, Static

from stilts_tui.tui.widgets.log_pane import LogPane


class LogsScreen(Screen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="logs.back"),
        Binding("f", "filter", "Filter lines", id="logs.filter"),
        Binding("tab", "next_pane(1)", "Next pane", id="logs.next"),
        Binding("shift+tab", "next_pane(-1)", "Previous pane", id="logs.previous", show=False),
    ]
    DEFAULT_CSS = """
    LogsScreen #hints { height: 1; background: $footer-background; }
    """

    def __init__(self, run_ids: list[str], titles: dict[str, str] | None = None, **kw):
        super().__init__(**kw)
        self.run_ids = run_ids[:4]
        self.titles = titles or {}

    def compose(self) -> ComposeResult:
        with Horizontal():
            for rid in self.run_ids:
                yield LogPane(self.app.root, rid, self.titles.get(rid, rid), id=f"pane-{rid}")
        # a static key bar, not a Footer: panes trade focus often, and a Footer rebuilds on each change
        yield Static("", id="hints")

    def on_mount(self) -> None:
        self.query(Log).first().focus()

    def on_descendant_focus(self) -> None:
        pane = self.focused_pane()
        keys = "  ".join(f"[b]{b.key.split(',')[0]}[/b] {b.description}" for b in self.BINDINGS if b.show)
        # a fixed-size bar: no layout pass (which would re-render every pane)
        self.query_one("#hints", Static).update(f"{keys}   focus: {pane.run_id if pane else '-'}", layout=False)

    def focused_pane(self) -> LogPane | None:
        node = self.focused
        while node is not None and not isinstance(node, LogPane):
            node = node.parent
        return node

    def action_next_pane(self, step: int) -> None:
        panes = list(self.query(LogPane))
        current = self.focused_pane()
        i = panes.index(current) if current in panes else -1
        panes[(i + step) % len(panes)].query_one(Log).focus()

    def action_filter(self) -> None:
        pane = self.focused_pane() or self.query(LogPane).first()
        pane.toggle_filter()
