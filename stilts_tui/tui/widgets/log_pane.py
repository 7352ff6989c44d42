"""A live log pane: follows one run's ``train.log``.

A watcher thread reads what was appended (``tail_lines``), new lines are buffered and flushed a
few times a second into a ``Log`` with ``max_lines``; ``\\r`` progress updates collapse to their
last state; error lines are highlighted; a filter keeps only matching lines. Nothing is written
while the pane is not on screen (the buffer is flushed when it comes back)."""

from __future__ import annotations

import re
import threading
from collections import deque
from pathlib import Path

from rich.highlighter import Highlighter
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from stilts_tui.contract import TRAIN_LOG
from stilts_tui.fmt import terminal_safe
from stilts_tui.store.rundir import RUN_ID_RE
from stilts_tui.tui.data import tail_lines

ERROR_RE = re.compile(r"(error|traceback|exception|failed|out of memory|\boom\b)", re.IGNORECASE)
MAX_LINES = 5000
FLUSH_S = 0.5  # twice a second: each flush scrolls (repaints) the whole pane


class ErrorHighlighter(Highlighter):
    def highlight(self, text: Text) -> None:
        if ERROR_RE.search(text.plain):
            text.stylize("bold red")


class LogPane(Vertical):
    """Follows ``<runs-dir>/<run_id>/train.log``; keeps following when the run restarts."""

    DEFAULT_CSS = """
    LogPane { border: round $primary; height: 1fr; }
    LogPane > .title { height: 1; background: $boost; }
    LogPane > .title.active { background: $accent; color: $text; text-style: bold; }
    LogPane > Log { height: 1fr; }
    """

    def __init__(self, root: Path, run_id: str, note: str = "", **kw):
        super().__init__(**kw)
        self.root, self.run_id = root, run_id
        self.note = note  # the run's tags and note on one line (store/notes.one_line), shown in its title
        # a damaged row's id that is no run id never becomes a path: nothing to follow
        self.path = root / run_id / TRAIN_LOG if RUN_ID_RE.fullmatch(run_id) else root / ".no-such-log"
        self._lines: deque[str] = deque(maxlen=MAX_LINES)
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._pos = 0
        self._stop = threading.Event()
        self.filter = ""

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), classes="title")
        log = Log(max_lines=MAX_LINES, highlight=True, auto_scroll=True)
        log.can_focus = False  # the screen routes keys to the active pane (see screens/logs.py)
        log.highlighter = ErrorHighlighter()
        yield log

    def title_text(self) -> Text:
        """The run id, its tags and note, and the filter: plain text (a note or a filter may hold "["), escaped."""
        parts = (self.run_id, self.note, f"filter: {self.filter}" if self.filter else "")
        return Text(terminal_safe("  ".join(p for p in parts if p)))

    def on_mount(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"tail-{self.run_id}")
        self._thread.start()
        self.set_interval(FLUSH_S, self.flush)

    def on_unmount(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            lines, self._pos = tail_lines(self.path, self._pos)
            if lines:
                with self._lock:
                    self._pending.extend(lines)
                    if len(self._pending) > MAX_LINES:  # backpressure: the pane only shows the last lines
                        del self._pending[: len(self._pending) - MAX_LINES]
            self._stop.wait(0.2)

    def flush(self) -> None:
        """Write buffered lines (only when visible)."""
        if not self.is_on_screen and self._lines:
            return
        with self._lock:
            new, self._pending = self._pending, []
        if not new:
            return
        self._lines.extend(new)
        shown = [x for x in new if self.filter.lower() in x.lower()] if self.filter else new
        if shown:
            self.query_one(Log).write_lines(shown)

    @property
    def is_on_screen(self) -> bool:
        try:
            return self.screen.is_current and self.display
        except Exception:  # noqa: BLE001 - not mounted
            return False

    def show_active(self, active: bool) -> None:
        """Mark this pane as the active one (the screen sends it the scrolling keys; no pane takes
        focus), on its title alone: restyling a title line is cheap, restyling a Log repaints every
        line it shows."""
        self.query_one(".title", Static).set_class(active, "active")

    def on_click(self) -> None:
        activate = getattr(self.screen, "activate", None)
        if activate is not None:
            activate(self)

    def set_filter(self, text: str) -> None:
        """Show only the lines holding ``text`` (case-insensitive); an empty text shows every line."""
        self.filter = text.strip()
        log = self.query_one(Log)
        log.clear()
        lines = [x for x in self._lines if self.filter.lower() in x.lower()] if self.filter else list(self._lines)
        log.write_lines(lines)
        self.query_one(".title", Static).update(self.title_text())
