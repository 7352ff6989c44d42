"""The stilts-tui app: the queue screen first; logs, scores and the plan builder a key away;
every action in the command palette as "area: action"; F1 or ? lists every key."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual import on, work
from textual.app import App
from textual.command import Hit, Hits, Provider
from textual.message import Message
from textual.worker import Worker, WorkerState

from stilts_tui.contract import CANCEL_GRACE_S, Status
from stilts_tui.errors import UserError, first_line
from stilts_tui.fmt import terminal_safe
from stilts_tui.queue.notify import PlanWatch
from stilts_tui.tui import actions
from stilts_tui.tui.data import plural
from stilts_tui.tui.keymap import load_keymap
from stilts_tui.tui.screens.queue import AddEnded, QueueRead, QueueScreen

REPEATING = ("queue-read", "scores")  # worker groups that run on a timer


class StiltsCommands(Provider):
    """The command palette: every action of the registry that has palette text (tui/actions.py), its
    keys as remapped shown beside what it does."""

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, text, action in actions.palette(self.app._keymap):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self.app.run_action, action), help=text)


class QueueChanged(Message):
    """A queue operation ended; ``summary`` says what it did, in one line."""

    def __init__(self, summary: str) -> None:
        super().__init__()
        self.summary = summary


class StiltsApp(App):
    """Every read and every queue operation runs in a worker of the app (off the UI thread, so a
    key is answered while a cancel waits out its grace period or a 1,008-run plan is written); each
    reports back by message, and a worker that fails is shown by one handler, ``show_worker_error``."""

    TITLE = "stilts-tui"
    COMMANDS = App.COMMANDS | {StiltsCommands}
    BINDINGS = actions.bindings("app")

    def __init__(
        self,
        root: Path,
        keymap: dict[str, str] | None = None,
        start_daemon: bool = False,
        cancel_grace: float = CANCEL_GRACE_S,
        confirm: bool | None = None,
        settle_gc: bool | None = None,
    ):
        super().__init__()
        from stilts_tui.tui.screens.confirm import confirm_wanted

        self.confirm = confirm_wanted() if confirm is None else confirm  # destructive keys ask first
        # the garbage collector set once the table holds its runs (tui/gc_policy.py); None: in a terminal,
        # not headless (a test process runs many apps: freezing its objects each time would keep them all)
        self.settle_gc = settle_gc
        self.root = Path(root)
        self.cancel_grace = cancel_grace
        # the user's keys win over the defaults they would meet (actions.resolved)
        self._keymap = actions.resolved(keymap if keymap is not None else load_keymap())
        self._start_daemon = start_daemon
        self.plan_watch = PlanWatch()
        self._plans_ledger, self._plans_stamp = None, None  # watch_plans' own (a thread of its own)
        self.queue_screen = QueueScreen()
        self._said: dict[str, str] = {}  # the error last shown for a repeated read, by worker group

    def on_mount(self) -> None:
        if self._keymap:
            self.set_keymap(self._keymap)
        self.push_screen(self.queue_screen)
        if self._start_daemon:
            self.ensure_daemon()
        self.set_interval(1.0, self.watch_plans)

    @work(thread=True, exclusive=True, group="plans", exit_on_error=False)
    def watch_plans(self) -> None:
        """The terminal bell and a note when a plan finishes (no queued or running run left)."""
        from stilts_tui.store.ledger import Ledger

        if self._plans_ledger is None:
            self._plans_ledger = Ledger(self.root)  # kept: its parsed file is reused while unchanged
        try:
            stamp = self._plans_ledger.stamp()
            if stamp == self._plans_stamp:
                return  # no change since the last look: nothing finished
            runs = self._plans_ledger.runs()
        except Exception:  # noqa: BLE001 - the queue screen shows ledger errors; the bell just waits
            return
        self._plans_stamp = stamp
        for event in self.plan_watch.update(runs):
            if event["event"] == "plan_finished":
                event = {**event, "scored_failed": self._scored_failed(event["plan"])}
                self.call_from_thread(self.plan_finished, event)

    def _scored_failed(self, plan: str) -> tuple[int, int] | None:
        """(failed, scored) as the score table counts them: done runs at or below the majority class, of
        the done runs it scores; None where no table can be built (no target run done)."""
        from stilts_tui import results

        try:
            table = results.build(self.root, plan)
        except Exception:  # noqa: BLE001 - the note then says what the ledger says, nothing more
            return None
        cells = [c for c in table.cells if c.failed is not None]
        return (sum(c.failed for c in cells), sum(c.n for c in cells)) if cells else None

    def notify(self, message: str, *, markup: bool = True, **kwargs) -> None:
        """Every note of the app and its screens (a screen's notify comes here): its text is data — an error
        naming a file, a plan's value — so it goes through the one sanitizer and is shown as written,
        never parsed as markup (an unmatched tag would raise) nor sent to the terminal raw."""
        super().notify(terminal_safe(message), markup=False, **kwargs)

    def plan_finished(self, event: dict) -> None:
        """The bell and a note: the plan's runs by how they ended, in the score table's words too (a run
        that ended with an error is not what the table calls failed: a done run at the majority class)."""
        c = event["counts"]
        said = [f"{c[Status.DONE]} {Status.DONE}", f"{c[Status.FAILED]} ended with an error"]
        said += [f"{c[s]} {s}" for s in (Status.CANCELLED, Status.BLOCKED)]
        if c.get(Status.PRUNED):
            said.append(f"{c[Status.PRUNED]} {Status.PRUNED}")
        failed = event.get("scored_failed")
        if failed is not None:
            said.append(f"scores: fail {failed[0]}/{failed[1]} (at or below the majority class)")
        self.bell()
        self.notify(f"plan {event['plan']!r} finished: " + ", ".join(said), timeout=30)

    @work(thread=True, exclusive=True, group="daemon", exit_on_error=False)
    def ensure_daemon(self) -> None:
        """Start the queue daemon if none serves this runs-dir (off the UI thread: no wait at launch)."""
        from stilts_tui.errors import UserError
        from stilts_tui.queue import ops

        try:
            if ops.daemon_status(self.root) is None:
                info = ops.start_daemon(self.root, [])
                self.call_from_thread(self.notify, f"started the queue daemon (pid {info['pid']})")
        except (UserError, OSError) as e:  # e.g. a read-only runs-dir: say it, never fail silently
            from stilts_tui.errors import failure_from_os

            line = str(failure_from_os(e, "starting the daemon") if isinstance(e, OSError) else e)
            self.call_from_thread(self.notify, line, severity="error", timeout=10)

    # -- workers: reads and queue operations, off the UI thread --------------------------------------

    @work(thread=True, exclusive=True, group="queue-read", exit_on_error=False, name="reading the queue")
    def read_queue(self) -> None:
        """Read what the queue screen shows; the screen gets it as a QueueRead message."""
        screen = self.queue_screen
        snapshot = screen.reader.read()
        if snapshot is not None:  # None: nothing changed since the last read
            screen.post_message(QueueRead(snapshot))

    @work(thread=True, group="queue-ops", exit_on_error=False, name="cancel")
    def cancel_runs(self, run_ids: list[str]) -> None:
        """Cancel runs; the daemon stops a running one's process (``cancel_grace`` seconds between SIGTERM
        and SIGKILL). The UI goes on: the wait for the daemon is in a process of its own (tui/apart.py)."""
        from stilts_tui.tui import apart

        out = apart.run("cancel", self.root, run_ids=run_ids, grace=self.cancel_grace)
        n = len(out["cancelled_ids"])
        line = f"cancelled {n} {plural(n, 'run')}"
        if out["kept"]:  # they finished before the daemon carried the cancel out: their results stand
            line += "; " + ", ".join(f"{rid} had already ended ({st}): kept" for rid, st in out["kept"].items())
        if out["waiting"]:
            w = len(out["waiting"])
            line += f"; {w} running {plural(w, 'run')} wait for the daemon to stop them" + (
                "" if out["daemon"] else " (no daemon is running)"
            )
        self.post_message(QueueChanged(line))

    @work(thread=True, group="queue-ops", exit_on_error=False, name="retry")
    def retry_runs(self, run_ids: list[str]) -> None:
        from stilts_tui.queue import ops

        done = ops.retry(self.root, run_ids)
        self.post_message(QueueChanged(f"requeued {len(done)} {plural(len(done), 'run')}"))

    @work(thread=True, group="queue-ops", exit_on_error=False, name="priority")
    def change_priority(self, run_ids: list[str], delta: int) -> None:
        from stilts_tui.queue import ops

        done = ops.set_priority(self.root, run_ids, delta=delta)
        self.post_message(QueueChanged(f"priority {delta:+d} for {len(done)} {plural(len(done), 'run')}"))

    @work(thread=True, group="queue-ops", exit_on_error=False, name="note")
    def note_runs(self, run_ids: list[str], asked) -> None:
        """Record a note and tags (``asked``: screens/note.NoteChange) on runs, as a request (queue/notes.py)."""
        from stilts_tui.queue import notes

        args = notes.note_args(asked.note, asked.clear, asked.tags, asked.untag)
        out = notes.note(self.root, run_ids, args)
        n = len(run_ids)
        said = "waits for the daemon" if out.get("pending") else "recorded"
        self.post_message(QueueChanged(f"note on {n} {plural(n, 'run')} {said}"))

    @work(thread=True, group="queue-ops", exit_on_error=False, name="pause")
    def pause_queue(self, paused: bool) -> None:
        from stilts_tui.queue import ops

        ops.set_paused(self.root, paused)
        self.post_message(QueueChanged("queue paused" if paused else "queue resumed"))

    @work(thread=True, group="queue-add", exit_on_error=False, name="adding a plan")
    def add_plan(self, path: str | Path) -> None:
        """Queue a plan file (a 1,008-run plan writes 1,008 spec.json files: seconds, in a process of its
        own, see tui/apart.py)."""
        from stilts_tui.tui import apart

        try:
            r = apart.run("add", self.root, path=str(path))
        finally:  # the queue screen's totals stop saying "queueing"
            self.queue_screen.post_message(AddEnded(str(path)))
        self.post_message(
            QueueChanged(f"{r['plan']}: {r['new']} runs queued, {r['runs'] - r['new']} already in the ledger")
        )

    def on_queue_changed(self, message: QueueChanged) -> None:
        self.notify(message.summary)
        self.read_queue()

    @on(Worker.StateChanged)
    def show_worker_error(self, event: Worker.StateChanged) -> None:
        """Any worker of the app that fails: a notification with the error in one line, and, for the
        queue's read, the line in place of the screen's totals ("loading…" until a first read)."""
        group = event.worker.group
        if event.state == WorkerState.SUCCESS:
            self._said.pop(group, None)
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        line = (
            first_line(error)
            if isinstance(error, UserError)
            else f"{event.worker.name} failed: {type(error).__name__}: {first_line(error)}"
        )
        if group in REPEATING:
            if self._said.get(group) == line:  # a read repeats every few seconds: say its error once
                return
            self._said[group] = line
        if group == "queue-read":
            self.queue_screen.show_error(line)
        self.notify(line, severity="error", timeout=10)

    def action_command_palette(self) -> None:
        """The command palette, with an input that applies keys in the order they come (widgets/inputs.py)."""
        from stilts_tui.tui.widgets.inputs import Palette

        if self.use_command_palette and not Palette.is_open(self):
            self.push_screen(Palette(id="--command-palette"))

    def action_ask_quit(self) -> None:
        """Quit (runs go on), after a yes unless questions are off."""
        from stilts_tui.tui.screens.confirm import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen):
            return
        if not self.confirm:
            self.exit()
            return
        self.push_screen(
            ConfirmScreen("Quit the app? (the daemon and the runs go on)"), lambda yes: self.exit() if yes else None
        )

    def open_logs(self, run_ids: list[str]) -> None:
        from stilts_tui.tui.screens.logs import LogsScreen

        self.push_screen(LogsScreen(run_ids))

    def action_scores(self) -> None:
        from stilts_tui.tui.screens.scores import ScoresScreen

        near = None
        run_id = self.queue_screen.current_id() if self.queue_screen.is_mounted else None
        if run_id and self.queue_screen.snapshot:
            near = next((r["plan"] for r in self.queue_screen.snapshot.runs if r["id"] == run_id), None)
        self.push_screen(ScoresScreen(near=near))

    def action_gpus(self) -> None:
        from stilts_tui.tui.screens.gpus import GpuScreen

        self.push_screen(GpuScreen())

    def action_builder(self) -> None:
        from stilts_tui.tui.screens.builder import BuilderScreen

        self.push_screen(BuilderScreen())

    async def action_screen_action(self, action: str) -> None:
        while not isinstance(self.screen, QueueScreen) and len(self.screen_stack) > 2:
            self.pop_screen()
        if isinstance(self.screen, QueueScreen):
            await self.screen.run_action(action)

    async def action_logs_action(self, action: str) -> None:
        from stilts_tui.tui.screens.logs import LogsScreen

        if isinstance(self.screen, LogsScreen):
            await self.screen.run_action(action)
        else:
            self.notify("open a run's logs (l) first", severity="warning")

    def action_export(self, fmt: str) -> None:
        from stilts_tui.tui.screens.scores import ScoresScreen

        screen = self.screen if isinstance(self.screen, ScoresScreen) else None
        if screen is None or screen.table_data is None:
            self.notify("open the scores screen (o) first", severity="warning")
            return
        screen.export(fmt)

    def key_sections(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """What the help screen lists: every key of the registry by screen, as remapped."""
        return actions.help_sections(self._keymap)

    def action_help(self) -> None:
        from stilts_tui.tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(self.key_sections()))
