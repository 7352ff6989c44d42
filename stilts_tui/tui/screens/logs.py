"""One to four runs' logs side by side, each following its train.log live.

One pane is active at a time: its title is lit, and the scrolling keys go to it. The panes never
take focus themselves: in Textual a focus change restyles and repaints every live Log on screen
(50-70 ms on a small machine with four panes), while switching the active pane repaints two title
lines.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Log, Static

from stilts_tui.store.notes import one_line
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.log_pane import LogPane


class LogsScreen(Screen):
    BINDINGS = bindings("logs")
    DEFAULT_CSS = """
    LogsScreen #hints { height: 1; background: $footer-background; }
    """

    def __init__(self, run_ids: list[str], **kw):
        super().__init__(**kw)
        self.run_ids = run_ids[:4]
        self._active: LogPane | None = None

    def compose(self) -> ComposeResult:
        snap = getattr(getattr(self.app, "queue_screen", None), "snapshot", None)
        views = snap.views if snap is not None else {}  # each run's note and tags, as the queue last read them
        with Horizontal():
            for rid in self.run_ids:
                v = views.get(rid)
                yield LogPane(self.app.root, rid, note=one_line(v.note, v.tags) if v else "", id=f"pane-{rid}")
        # a static key bar, not a Footer: it changes with every switch, and a Footer rebuilds on each
        yield Static("", id="hints")

    def on_mount(self) -> None:
        self.activate(self.query(LogPane).first())

    def activate(self, pane: LogPane | None) -> None:
        """Make ``pane`` the one the keys go to: its title is lit, the key bar names it."""
        if pane is None or pane is self._active:
            return
        self._active = pane
        for p in self.query(LogPane):
            p.show_active(p is pane)
        keymap = self.app._keymap  # the keys as remapped (by binding id)
        keys = "  ".join(
            f"[b]{keymap.get(b.id, b.key).split(',')[0]}[/b] {b.description}" for b in self.BINDINGS if b.show
        )
        # a fixed-size bar: no layout pass (which would re-render every pane)
        self.query_one("#hints", Static).update(f"{keys}   focus: {pane.run_id}", layout=False)

    def focused_pane(self) -> LogPane | None:
        """The active pane (the keys go to it)."""
        return self._active

    def action_next_pane(self, step: int) -> None:
        panes = list(self.query(LogPane))
        i = panes.index(self._active) if self._active in panes else -1
        self.activate(panes[(i + step) % len(panes)])

    def action_scroll(self, how: str) -> None:
        if self._active is not None:
            getattr(self._active.query_one(Log), how)(animate=False)

    def action_toggle_curves(self) -> None:
        """Show or hide every pane's curves (hidden ones are not drawn)."""
        for pane in self.query(LogPane):
            pane.toggle_curves()

    def action_filter(self) -> None:
        """Ask for the active pane's filter in a prompt that holds the keys until enter or escape."""
        from stilts_tui.tui.screens.prompt import ask

        pane = self.focused_pane() or self.query(LogPane).first()

        def apply(text: str | None) -> None:
            if text is not None:
                pane.set_filter(text)

        label = f"Show only the lines of {pane.run_id} holding (empty: every line):"
        ask(self.app, "log-filter", label, pane.filter, apply, allow_empty=True)
