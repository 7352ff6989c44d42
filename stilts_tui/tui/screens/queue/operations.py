"""The queue screen's keys that act on the queue: cancel (asks first), retry, priority, pause, add a
plan, open the logs. Each hands its runs to a worker of the app (StiltsApp), which carries it out off
the UI thread; the screen shows what the next read says. A mixin of QueueScreen."""

from __future__ import annotations

from textual.widgets import DataTable

from stilts_tui.tui.data import Snapshot, plural


class QueueOperations:
    """The keys that ask the queue to act."""

    snapshot: Snapshot | None
    adding: list[str]

    def action_cancel(self) -> None:
        """Cancel the selection, after a yes unless questions are off."""
        ids = self.selected()
        if not ids:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                ids_now = self._take_selection()
                self.notify(f"cancelling {len(ids_now)} {plural(len(ids_now), 'run')}…")
                self.app.cancel_runs(ids_now)

        if not self.app.confirm:
            answered(True)
            return
        from stilts_tui.tui.screens.confirm import ConfirmScreen

        what = f"the {len(ids)} marked runs" if self.marked else f"run {ids[0]}"
        self.app.push_screen(ConfirmScreen(f"Cancel {what}? (a running run is stopped)"), answered)

    def action_retry(self) -> None:
        ids = self._take_selection()
        if ids:
            self.app.retry_runs(ids)

    def action_priority(self, delta: int) -> None:
        ids = self._take_selection()
        if ids:
            self.app.change_priority(ids, delta)

    def action_toggle_pause(self) -> None:
        if self.snapshot is None:
            return
        self.snapshot.paused = not self.snapshot.paused  # shown as asked until the next read says
        self.show(self.snapshot)
        self.app.pause_queue(self.snapshot.paused)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_logs()

    def action_logs(self) -> None:
        """Follow the logs of the marked (up to 4) or the cursor's run."""
        ids = self.selected()[:4]
        if ids:
            self.app.open_logs(ids)

    def action_note(self) -> None:
        """A note and tags for the selection (the dialog: screens/note.py); written as a request."""
        from stilts_tui.errors import UserError
        from stilts_tui.tui.screens import note

        ids = self.selected()
        if not ids or self.snapshot is None:
            return
        rows = [r for r in self.snapshot.runs if r["id"] in ids]
        before, tags = note.shared(rows)

        def answered(answer: tuple[str, str] | None) -> None:
            if answer is None:
                return
            try:
                asked = note.change(before, tags, *answer)
            except UserError as e:
                self.notify(str(e), severity="error", markup=False)
                return
            if asked:
                self.app.note_runs(self._take_selection(), asked)

        what = f"the {len(ids)} marked runs" if self.marked else f"run {ids[0]}"
        note.ask(self.app, f"Note on {what} (empty: no note):", before, tags, answered)

    def action_compare(self) -> None:
        """The marked runs' (else the cursor's run's) curves on one plot (tui/screens/compare.py)."""
        from stilts_tui.tui.screens.compare import CompareScreen

        ids = self.selected()
        rows = [r for r in self.snapshot.runs if r["id"] in ids] if self.snapshot else []
        if rows:
            self.app.push_screen(CompareScreen(f"curves of {len(rows)} {plural(len(rows), 'run')}", rows=rows))

    def action_add_plan(self) -> None:
        """Ask for a plan file and queue it (in a worker); the totals say so until it ends."""
        from stilts_tui.tui.screens.prompt import ask

        def added(path: str | None) -> None:
            # said in the totals bar, not a toast: a toast's mount lays the whole screen out twice (10-15 ms
            # of CPU each on 2 cores), the second time in the frame of the key that follows the prompt
            if path:
                self.adding.append(path)
                self.show_totals()
                self.app.add_plan(path)

        ask(self.app, "add-plan", "Queue a plan file (TOML):", "plans/", added)
