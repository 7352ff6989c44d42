"""A live log pane: follows one run's ``train.log``, under its history of attempts (how each ended, who
cancelled or retried it: the one view's words, store/view.py), read from the ledger as it changes.

A watcher thread reads what was appended (``tail_lines``), new lines are buffered and flushed a
few times a second into a ``Log`` with ``max_lines``; ``\\r`` progress updates collapse to their
last state; error lines are highlighted; a filter keeps only matching lines. Nothing is written
while the pane is not on screen (the buffer is flushed when it comes back).

The same thread follows the run's ``events.jsonl`` for its curves (tui/widgets/curves.py): it feeds the
events to a :class:`RunCurves` and, while the curves are on screen, builds their frames at most once a
:data:`CURVES_S`; the UI thread shows the frames at its next flush."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from pathlib import Path

from rich.highlighter import Highlighter
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from stilts_tui.contract import EVENTS_FILE, SPEC_FILE, TRAIN_LOG
from stilts_tui.errors import UserError
from stilts_tui.fmt import terminal_safe
from stilts_tui.results.curves import RunCurves
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.rundir import RUN_ID_RE
from stilts_tui.store.view import around, view
from stilts_tui.tui.data import tail_lines
from stilts_tui.tui.widgets.curves import Built, CurvesView

ERROR_RE = re.compile(r"(error|traceback|exception|failed|out of memory|\boom\b)", re.IGNORECASE)
MAX_LINES = 5000
FLUSH_S = 0.5  # twice a second: each flush scrolls (repaints) the whole pane
HISTORY_S = 1.0  # how often the pane looks whether the ledger changed (a cheap stat when it did not)
HISTORY_SHOWN = 6  # entries shown above the log (the last ones; `logs --history` prints every one)
CURVES_S = 3.0  # a pane's curves are drawn again at most this often (plotext: a few ms a plot, off the UI thread)


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
    LogPane > .history { height: auto; max-height: 8; color: $text-muted; display: none; }
    LogPane > .history.some { display: block; }
    LogPane > Log { height: 1fr; }
    """

    def __init__(self, root: Path, run_id: str, note: str = "", **kw):
        super().__init__(**kw)
        self.root, self.run_id = root, run_id
        self.note = note  # the run's tags and note on one line (store/notes.one_line), shown in its title
        # a damaged row's id that is no run id never becomes a path: nothing to follow
        self.path = root / run_id / TRAIN_LOG if RUN_ID_RE.fullmatch(run_id) else root / ".no-such-log"
        self.events_path = self.path.with_name(EVENTS_FILE)
        self.curves = RunCurves()  # the reader thread's alone (it feeds and draws them)
        self._events_pos = 0
        self._curves_changed = True
        # panes opened together draw at different moments: one pane's plots at a time hold the GIL
        self._curves_at = time.monotonic() - random.uniform(0, CURVES_S)
        self._curves_shown = False  # set by the UI thread: are the curves on screen (else none are drawn)
        self._built: Built | None = None
        self.view = CurvesView()
        self._lines: deque[str] = deque(maxlen=MAX_LINES)
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._pos = 0
        self._stop = threading.Event()
        self.filter = ""
        self.history: list[str] = []  # the run's history in words, as last shown

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), classes="title")
        yield Static("", classes="history", markup=False)
        log = Log(max_lines=MAX_LINES, highlight=True, auto_scroll=True)
        log.can_focus = False  # the screen routes keys to the active pane (see screens/logs.py)
        log.highlighter = ErrorHighlighter()
        yield log
        yield self.view

    def title_text(self) -> Text:
        """The run id, its tags and note, and the filter: plain text (a note or a filter may hold "["), escaped."""
        parts = (self.run_id, self.note, f"filter: {self.filter}" if self.filter else "")
        return Text(terminal_safe("  ".join(p for p in parts if p)))

    def on_mount(self) -> None:
        self._curves_shown = self.is_on_screen and self.view.display
        threading.Thread(target=self._task_facts, daemon=True, name=f"majority-{self.run_id}").start()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"tail-{self.run_id}")
        self._thread.start()
        self.set_interval(FLUSH_S, self.flush)

    def _task_facts(self) -> None:
        """The run's primary metric and its task's majority-class score (read once, from the dev set's local
        files: not in the reader thread). A hub task's labels would take a process loading the datasets
        library (seconds of a core, for each pane opened): the pane draws no line for it; the score
        table and the compare view (``v``) read them."""
        from stilts_tui import tasks
        from stilts_tui.store import rundir
        from stilts_tui.tasks.majority import majority_score

        spec = rundir.read_json(self.path.with_name(SPEC_FILE))
        task = spec.get("task") if isinstance(spec, dict) else None
        if not isinstance(task, dict):
            return
        view = self.view
        metric = task.get("metric") if isinstance(task.get("metric"), str) else "acc"
        view.metric_name = metric
        params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
        limit = params.get("max_dev_samples") if isinstance(params.get("max_dev_samples"), int) else None
        try:
            if task.get("hub") and not tasks.required_files(task):
                return
            majority, _why = majority_score(task, metric, limit)
        except Exception:  # noqa: BLE001 - a line the curves cannot draw; the curves go on
            return
        view.majority = majority
        self._curves_changed = True

    def on_unmount(self) -> None:
        self._stop.set()

    def read_history(self, ledger: Ledger) -> list[str]:
        """The run's history in words (store/view.py), from the ledger (re-parsed only when it changed)."""
        try:
            row = ledger.get(self.run_id)
        except (UserError, OSError):  # a damaged ledger: the queue screen says so; the log still shows
            return self.history
        return view(row, around([row])).history_lines if row is not None else []

    def show_history(self, lines: list[str]) -> None:
        """The history block above the log: the last entries, with how many earlier ones are not shown."""
        self.history = lines
        shown = lines[-HISTORY_SHOWN:]
        if len(lines) > len(shown):
            shown = [f"({len(lines) - len(shown)} earlier: stilts-tui logs {self.run_id} --history)", *shown]
        block = self.query_one(".history", Static)
        block.update("\n".join(shown))
        block.set_class(bool(shown), "some")

    def _watch(self) -> None:
        ledger, looked = Ledger(self.root), 0.0
        while not self._stop.is_set():
            if time.monotonic() - looked >= HISTORY_S:
                looked = time.monotonic()
                lines = self.read_history(ledger)
                if lines != self.history:
                    try:
                        self.app.call_from_thread(self.show_history, lines)
                    except RuntimeError:  # the app is closing
                        return
            lines, self._pos = tail_lines(self.path, self._pos)
            if lines:
                with self._lock:
                    self._pending.extend(lines)
                    if len(self._pending) > MAX_LINES:  # backpressure: the pane only shows the last lines
                        del self._pending[: len(self._pending) - MAX_LINES]
            self._follow_events()
            self._stop.wait(0.2)

    def _follow_events(self) -> None:
        """The run's new events into its curves; their frames drawn again when they changed (or a plot's
        size did), the curves are on screen and the last drawing is :data:`CURVES_S` old."""
        try:
            if self.events_path.stat().st_size < self._events_pos:  # a retried run's new file
                self.curves, self._events_pos = RunCurves(), 0
        except OSError:
            pass
        lines, self._events_pos = tail_lines(self.events_path, self._events_pos)
        if lines and self.curves.feed_lines(lines):
            self._curves_changed = True
        if not self._curves_shown or time.monotonic() - self._curves_at < CURVES_S:
            return
        view = self.view
        sizes = view.sizes()
        if self._curves_changed or view.needs_build(sizes):
            self._curves_changed = False
            self._curves_at = time.monotonic()
            try:
                built = view.build(self.curves, sizes)
            except Exception:  # noqa: BLE001 - a plot that cannot be drawn never stops the log's reader
                return
            with self._lock:  # frames not shown yet are kept where this drawing left their plot as it was
                if self._built is not None:
                    built.frames = {**self._built.frames, **built.frames}
                self._built = built

    def flush(self) -> None:
        """Write buffered lines and show the curves drawn since (only when visible)."""
        view = self.view
        self._curves_shown = self.is_on_screen and view.display
        if self._curves_shown:
            with self._lock:
                built, self._built = self._built, None
            if built is not None:
                view.show_built(built)
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

    def toggle_curves(self) -> None:
        """Show or hide the curves (hidden: none drawn; the log takes their rows)."""
        view = self.view
        view.display = not view.display
        self._curves_shown = self.is_on_screen and view.display
        self._curves_changed = True

    def set_filter(self, text: str) -> None:
        """Show only the lines holding ``text`` (case-insensitive); an empty text shows every line."""
        self.filter = text.strip()
        log = self.query_one(Log)
        log.clear()
        lines = [x for x in self._lines if self.filter.lower() in x.lower()] if self.filter else list(self._lines)
        log.write_lines(lines)
        self.query_one(".title", Static).update(self.title_text())
