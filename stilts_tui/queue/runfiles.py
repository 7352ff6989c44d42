"""The run folders as the tick reads them: each run's spec.json (checked, cached), result.json (checked),
its log's last line, and the files a request or a launch moves (a retired result, pruned.json). A run
whose files are damaged is a :class:`BadRun`: the tick fails that run and goes on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, PRUNED_FILE, RESULT_FILE, SPEC_FILE, TRAIN_LOG, WORKERS_DIR, Event
from stilts_tui.errors import UserError, first_line
from stilts_tui.queue import checks
from stilts_tui.store import rundir


class BadRun(Exception):
    """A run the daemon cannot handle (a damaged spec.json or result.json, a ledger row of the wrong
    types): that run is failed with the one-line reason; the queue goes on."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"{run_id}: {reason}")
        self.run_id, self.reason = run_id, reason


class RunFiles:
    """The run folders under one runs-dir, read for the tick; ``log`` writes daemon.log."""

    def __init__(self, root: Path, log: Callable[[str], None]):
        self.root, self.log = Path(root), log
        self._specs: dict[str, dict] = {}
        self._ignored: set[str] = set()  # final runs whose damaged result.json was logged once

    def spec(self, run_id: str) -> dict:
        """The run's spec.json, checked; a missing, unreadable or damaged one is a :class:`BadRun`."""
        if run_id not in self._specs:
            path = self.run_path(run_id, SPEC_FILE)
            try:
                spec = rundir.load_json(path, nofollow=True, shape=None)
            except FileNotFoundError:
                raise BadRun(
                    run_id,
                    f"{path} is missing (`queue add` of a version of its plan that holds the run writes it again)",
                ) from None
            except (OSError, rundir.DamagedFile) as e:  # a FIFO, a folder, too large, too deep: never blocks
                raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
            problem = checks.spec_problem(spec)
            if not problem and spec.get("run_id", run_id) != run_id:
                problem = f"spec.json names run {str(spec.get('run_id'))[:40]!r}, not the folder's {run_id}"
            if problem:
                raise BadRun(run_id, problem)
            self._specs[run_id] = spec
        return self._specs[run_id]

    def forget(self, run_id: str) -> None:
        """Drop a run's cached spec (it failed: a fixed spec.json is read afresh on a retry)."""
        self._specs.pop(run_id, None)

    def run_path(self, run_id: str, name: str) -> Path:
        """A file of a run's folder; an id that is not a run id (it would name a path outside the
        runs-dir) is a :class:`BadRun`."""
        try:
            return rundir.run_dir(self.root, run_id) / name
        except UserError as e:
            raise BadRun(str(run_id), str(e)) from None

    def result(self, run_id: str) -> dict | None:
        """The run's result.json, checked; None while there is none. A damaged one is a :class:`BadRun`."""
        path = self.run_path(run_id, RESULT_FILE)
        try:
            res = rundir.load_json(path, nofollow=True, shape=None)
        except FileNotFoundError:
            return None
        except (OSError, rundir.DamagedFile) as e:
            raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
        problem = checks.result_problem(res)
        if problem:
            raise BadRun(run_id, problem)
        return res

    def final_result(self, run_id: str) -> dict | None:
        """A finished run's result, for what it measured: a damaged one is read as none (logged once).
        A final run is never failed again, so its record must not stop a tick."""
        try:
            return self.result(run_id)
        except BadRun as e:
            if run_id not in self._ignored:
                self._ignored.add(run_id)
                self.log(f"{run_id}: its result.json is ignored (the run is final): {e.reason}")
            return None

    def retire_result(self, run_id: str, attempt: int) -> None:
        """Keep a finished attempt's result beside the run, out of the way of the next attempt."""
        rundir.retire_result(self.run_path(run_id, RESULT_FILE).parent, attempt)

    def last_line(self, run: dict) -> str:
        """ ": " and the last line its worker or the run wrote, for an error; "" when there is none."""
        worker = run.get("worker")
        paths = (
            [self.root / WORKERS_DIR / f"{worker}.log"]
            if isinstance(worker, str) and rundir.WORKER_RE.fullmatch(worker)
            else []
        )
        for path in [*paths, self.run_path(run["id"], TRAIN_LOG)]:
            lines = [x for x in (rundir.read_tail(path, nofollow=True) or "").splitlines() if x.strip()]
            if lines:
                return f": {lines[-1].strip()[:200]}"
        return ""

    def began(self, r: dict) -> bool:
        """Has the run's process begun training it (a start event from that pid in events.jsonl)? A run
        that waits in a worker has none yet; one from an earlier attempt names another pid."""
        path = self.run_path(r["id"], EVENTS_FILE)  # read whole, as ever (the start event may be far back)
        lines = (rundir.read_text(path, 1 << 30, nofollow=True) or "").splitlines()
        for line in reversed(lines):
            try:
                event = rundir.loads(line)  # a line nested 100,000 deep is a ValueError here
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == Event.START:
                return event.get("pid") == r.get("pid")
        return False

    def brought_back(self, run_id: str) -> bool:
        """Whether a person retried this run out of pruned (its pruned.json says so)."""
        record = rundir.read_json(self.run_path(run_id, PRUNED_FILE), nofollow=True)
        return isinstance(record, dict) and record.get("retried") is not None
