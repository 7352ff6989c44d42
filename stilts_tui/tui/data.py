"""What the queue screen and the log panes show, read from the ledger and run folders (called from
the app's workers and the panes' watcher threads; the UI thread only shows what they read)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import Status
from stilts_tui.fmt import terminal_safe
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.store import files
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.view import Folders, Progress, RunView, Shown, counts, views

__all__ = ["Progress", "QueueReader", "Snapshot", "plural", "snapshot_of", "tail_lines"]

TAIL_CHUNK = 4 << 20  # a log pane reads at most this much a poll
LONG_LINE_SHOWN = 4000  # characters shown of a line longer than a read


def plural(n: int, word: str) -> str:
    """``word`` for one, ``word + "s"`` for any other count ("1 run", "3 runs")."""
    return word if n == 1 else word + "s"


@dataclass
class Snapshot:
    runs: list[dict]
    progress: dict[str, Progress]
    gpus: list
    counts: dict[str, int]
    paused: bool
    eta_s: float | None
    taken: float = field(default_factory=time.time)
    problems: list[str] = field(default_factory=list)  # one line each: runs stuck in Slurm, ...
    waiting: dict[str, int] = field(default_factory=dict)  # run id -> the worker (1, 2, ...) it waits in
    reasons: dict[str, str] = field(default_factory=dict)  # run id -> why it failed, is blocked or stuck
    views: dict[str, RunView] = field(default_factory=dict)  # run id -> what it shows (store/view.py)


class QueueReader:
    """What the queue screen reads each second, kept from one read to the next: one Ledger (its parsed file
    reused while the file on disk is the same), the runs' progress, and what the last snapshot was made
    of. A read that finds nothing new returns None: the screen touches no row and the read makes no
    garbage (a full collection of the app's objects held a key 110-180 ms: tui/gc_policy.py)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ledger = Ledger(self.root)
        self.folders = Folders(self.root)
        self._lock = threading.Lock()  # a read the app's worker group gave up on may still be running
        self._stamp: tuple | None = None
        self._runs: list[dict] = []
        self._made_of: tuple | None = None

    def read(self) -> Snapshot | None:
        """The snapshot, or None when the ledger, the running runs' progress and the GPUs are as they were at
        the last read. A ledger that cannot be read raises LedgerError (one line, with how to recover),
        which the screen shows in place of the totals."""
        with self._lock:
            try:
                return self._read()
            except BaseException:
                self._stamp = self._made_of = None  # the next read that works is shown, whatever it holds
                raise

    def _read(self) -> Snapshot | None:
        stamp = self.ledger.stamp()
        if stamp != self._stamp or self._stamp is None:
            self._runs, self._stamp = self.ledger.runs(), stamp
        runs = self._runs
        every, results = self.folders.read(runs)
        try:
            gpus = gpu_info.list_gpus()
        except Exception:  # noqa: BLE001 - a GPU query must never take the app down
            gpus = []
        made_of = (stamp, every, repr(gpus))
        if made_of == self._made_of:
            return None
        self._made_of = made_of
        return snapshot_of(runs, every, gpus, bool(self.ledger.meta("paused")), results)


def snapshot_of(
    runs: list[dict], every: dict[str, Progress], gpus: list, paused: bool, results: dict[str, str | None] | None = None
) -> Snapshot:
    """Everything the queue screen shows, from the runs read, the running runs' progress and the failed runs'
    result statuses: each run's status and reason as its one view says (store/view.py)."""
    shown = views(runs, every, results)
    waiting = {k: v.worker for k, v in shown.items() if v.status is Shown.WAITING and v.worker is not None}
    progress = {k: v for k, v in every.items() if v.total and k not in waiting}
    from stilts_tui.queue.executors.slurm import stuck_lines

    return Snapshot(
        runs,
        progress,
        gpus,
        counts(shown.values()),
        paused,
        eta_of(runs, progress, counts(shown.values())),
        problems=stuck_lines(runs),
        waiting=waiting,
        reasons={k: v.reason for k, v in shown.items() if v.reason},
        views=shown,
    )


def eta_of(runs: list[dict], progress: dict[str, Progress], c: dict[str, int]) -> float | None:
    """The queue's time left: the longest running run's ETA, then the mean done run's time for each queued or
    waiting run, spread over the workers running now."""
    durations = [
        r["finished"] - r["started"]
        for r in runs
        if r["status"] == Status.DONE and r.get("finished") and r.get("started")
    ]
    running = [r for r in runs if r["status"] == Status.RUNNING]
    if not durations or not (running or c.get(Shown.QUEUED.value)):
        return None
    per = sum(durations) / len(durations)
    slots = max(1, len({r.get("worker") for r in running}))
    left = max((progress[r["id"]].eta_s or 0 for r in running if r["id"] in progress), default=0)
    return left + per * (c.get(Shown.QUEUED.value, 0) + c.get(Shown.WAITING.value, 0)) / slots


def tail_lines(path: Path, pos: int) -> tuple[list[str], int]:
    """New complete lines of a log since byte ``pos``; a ``\\r`` progress update keeps its last state."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return [], pos
    if size < pos:
        pos = 0
    if size == pos:
        return [], pos
    try:
        f = files.open_regular(path)  # a FIFO or a folder in the log's place: nothing to show, never a hang
    except (OSError, files.DamagedFile):
        return [], pos
    with f:
        f.seek(pos)
        chunk = f.read(min(size - pos, TAIL_CHUNK))
    end = chunk.rfind(b"\n")
    if end < 0:
        if len(chunk) < TAIL_CHUNK:
            return [], pos
        # a line longer than a read: shown cut, and the reading goes on past it (never stuck on it)
        head = chunk[:LONG_LINE_SHOWN].decode("utf-8", errors="replace")
        return [terminal_safe(head) + f" … (a line over {TAIL_CHUNK >> 20} MiB, cut)"], pos + len(chunk)
    text = chunk[: end + 1].decode("utf-8", errors="replace")
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line else line for line in text.split("\n")[:-1]]
    return [terminal_safe(line) for line in lines], pos + end + 1
