"""Word when a plan ends: the daemon runs the user's command when a plan finishes or a run fails.

The command is an argument list, run without a shell (no pipes, no variables): the daemon's
``--on-finish`` (passed to the daemon process as ``$STILTS_ON_FINISH``, a JSON list) and a plan's
own ``on_finish = ["cmd", "arg", ...]`` key. Its environment says what happened:

    STILTS_EVENT        plan_finished | run_failed
    STILTS_PLAN         the plan's name
    STILTS_RUNS_DIR     the runs-dir
    STILTS_TOTAL, STILTS_DONE, STILTS_FAILED, STILTS_CANCELLED, STILTS_BLOCKED, STILTS_QUEUED, STILTS_RUNNING,
    STILTS_DEGENERATE, STILTS_PRUNED   the plan's runs by status (every status of the contract)
    STILTS_COUNTS       the same counts as one JSON object
    STILTS_FAILED_RUNS  the ids of the runs that failed (or were stopped as degenerate) since the last
                        word, space-separated
    STILTS_SCORES       the plan's score table as json (<runs-dir>/exports/PLAN.json), "" when it has none yet
    STILTS_SCORES_MD    the same as markdown

A plan is finished when none of its runs is queued or running. Commands start detached (their own
session, output appended to <runs-dir>/notify.log) and the daemon never waits on them. The app rings
the terminal bell from the same :class:`PlanWatch`.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stilts_tui.contract import ACTIVE, STATUSES, Env
from stilts_tui.store import rundir
from stilts_tui.store.view import Folders, RunView, Shown, views

ENV_VAR = Env.ON_FINISH
FAILURES = frozenset({Shown.FAILED, Shown.OOM, Shown.DEGENERATE})  # word of a failure (degenerate: stopped early)
LOG_NAME = "notify.log"


def command_from_env() -> list[str] | None:
    """The daemon's --on-finish command, or None (unset, or not a JSON list of strings)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        cmd = rundir.loads(value)  # nested 30,000 deep: a ValueError, never a RecursionError in the daemon
    except ValueError:
        return None
    return cmd if isinstance(cmd, list) and cmd and all(isinstance(x, str) and x for x in cmd) else None


class PlanWatch:
    """Per plan: its counts by the ledger's status, whether it is finished, and which runs failed (as their
    one view says: failed, oom or degenerate). ``update`` returns what changed since the last call (nothing
    on the first: that is the baseline). With ``root`` a failed run's folder tells an oom apart."""

    def __init__(self, root: Path | None = None) -> None:
        self.seen: dict[str, tuple[bool, set[str]]] | None = None
        self.folders = Folders(root) if root is not None else None
        self.views: dict[str, RunView] = {}  # the last update's views of the runs, by id

    def summarise(self, runs: list) -> dict[str, tuple[dict[str, int], set[str]]]:
        rows = [  # a damaged row says nothing about a plan
            r for r in runs if isinstance(r, dict) and isinstance(r.get("plan"), str) and isinstance(r.get("id"), str)
        ]
        self.views = views(rows, *(self.folders.read(rows) if self.folders is not None else ()))
        out: dict[str, tuple[dict[str, int], set[str]]] = {}
        for r in rows:
            counts, failed = out.setdefault(r["plan"], ({s: 0 for s in STATUSES}, set()))
            if r.get("status") in counts:
                counts[r["status"]] += 1
            if self.views[r["id"]].status in FAILURES:
                failed.add(r["id"])
        return out

    def update(self, runs: list) -> list[dict]:
        """Events since the last call: {"event", "plan", "counts", "failed_runs"}, one a plan at most."""
        now = self.summarise(runs)
        state = {p: (sum(c[s] for s in ACTIVE) == 0, f) for p, (c, f) in now.items()}
        before, self.seen = self.seen, state
        if before is None:
            return []
        events = []
        for plan, (counts, failed) in now.items():
            was_finished, was_failed = before.get(plan, (False, set()))
            new_failed = sorted(failed - was_failed)
            if state[plan][0] and not was_finished:
                event = "plan_finished"
            elif new_failed:
                event = "run_failed"
            else:
                continue
            events.append(
                {
                    "event": event,
                    "plan": plan,
                    "counts": {"total": sum(counts.values()), **counts},
                    "failed_runs": new_failed,
                    # each new failure as its view reads it: "oom: CUDA out of memory ..."
                    "why": {rid: f"{self.views[rid].label}: {self.views[rid].reason}" for rid in new_failed},
                }
            )
        return events


def plan_command(root: Path, plan: str) -> list[str] | None:
    """A plan's own ``on_finish`` list as `queue add` recorded it in the ledger (None without one). The
    plan file is never read again: an edit made after the add does not run."""
    from stilts_tui.store.ledger import Ledger

    cmd = (Ledger(root).plans().get(plan) or {}).get("on_finish")
    if not (isinstance(cmd, list) and cmd and all(isinstance(x, str) and x for x in cmd)):
        return None
    return list(cmd)


def write_scores(root: Path, plan: str) -> tuple[str, str]:
    """The plan's score table written as json and markdown under <runs-dir>/exports ("" when it has none)."""
    from stilts_tui import results
    from stilts_tui.errors import UserError

    try:
        table = results.build(root, plan)
    except UserError:
        return "", ""
    paths = []
    for fmt in ("json", "md"):
        path = results.export_path(root, plan, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        results.write_output(path, results.export_bytes(table, fmt), force=True)
        paths.append(str(path))
    return paths[0], paths[1]


def environment(root: Path, event: dict, scores: tuple[str, str]) -> dict[str, str]:
    counts = event["counts"]
    env = {
        Env.EVENT: event["event"],
        Env.PLAN: event["plan"],
        Env.RUNS_DIR: str(root),
        Env.COUNTS: json.dumps(counts),
        Env.FAILED_RUNS: " ".join(event["failed_runs"]),
        Env.SCORES: scores[0],
        Env.SCORES_MD: scores[1],
    }
    env.update({Env.count(k): str(v) for k, v in counts.items()})
    return env


class Notifier:
    """The daemon's side: each tick, :meth:`check` the ledger and run the commands for what changed."""

    def __init__(self, root: Path, log: Callable[[str], None], command: list[str] | None = None):
        self.root, self.log = Path(root), log
        self.command = command if command is not None else command_from_env()
        self.watch = PlanWatch(self.root)
        self.procs: list[tuple[subprocess.Popen, list[str]]] = []
        if self.command:
            self.log(f"on-finish: {self.command} (when a plan finishes or a run fails)")

    def check(self, ledger) -> list[dict]:
        """Run the commands for this tick's events. Never raises: word of an end must not stop the queue."""
        try:
            return self._check(ledger)
        except Exception as e:  # noqa: BLE001 - logged; the daemon goes on
            self.log(f"on-finish: {type(e).__name__}: {e}")
            return []

    def _check(self, ledger) -> list[dict]:
        self._reap()
        events = self.watch.update(ledger.runs())
        for event in events:
            commands = [c for c in (self.command, plan_command(self.root, event["plan"])) if c]
            if not commands:
                continue
            # the score table may read labels in a subprocess (up to minutes): off the daemon's tick
            threading.Thread(
                target=self._notify, args=(event, commands), daemon=True, name=f"on-finish {event['plan']}"
            ).start()
        return events

    def _notify(self, event: dict, commands: list[list[str]]) -> None:
        """Write the plan's score table, then start the commands (in a thread; never raises)."""
        try:
            scores = write_scores(self.root, event["plan"])
        except Exception as e:  # noqa: BLE001 - the commands still run, without scores
            self.log(f"on-finish: scores of {event['plan']}: {type(e).__name__}: {e}")
            scores = ("", "")
        env = {**os.environ, **environment(self.root, event, scores)}
        env.pop(ENV_VAR, None)
        for cmd in commands:
            self._start(cmd, env, event)

    def _start(self, cmd: list[str], env: dict[str, str], event: dict) -> None:
        try:
            with open(self.root / LOG_NAME, "ab") as out:
                out.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {event['event']} {event['plan']}: {cmd}\n".encode())
                out.writelines(f"  {rid} {why}\n".encode() for rid, why in event.get("why", {}).items())
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # a list, never a shell
        except OSError as e:
            self.log(f"on-finish: cannot run {cmd}: {e.strerror or e}")
            return
        self.procs.append((proc, cmd))
        self.log(f"on-finish: {event['event']} {event['plan']}: started {cmd} (pid {proc.pid})")

    def _reap(self) -> None:
        for proc, cmd in list(self.procs):
            code = proc.poll()
            if code is not None:
                self.procs.remove((proc, cmd))
                if code:
                    self.log(f"on-finish: {cmd} exited with status {code} (its output: {self.root / LOG_NAME})")
