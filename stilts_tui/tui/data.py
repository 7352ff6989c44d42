"""What the queue screen and the log panes show, read from the ledger and run folders (called from
the app's workers and the panes' watcher threads; the UI thread only shows what they read)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stilts_tui.contract import SPEC_FILE, Status
from stilts_tui.fmt import terminal_safe
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.store import files
from stilts_tui.store.ledger import Ledger
from stilts_tui.store.view import Folders, Progress, RunView, Shown, counts, views

if TYPE_CHECKING:
    from stilts_tui.estimate.eta import Eta

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
    eta: Eta | None = None  # the queue's time left (estimate/eta.py): eta_s, or why there is none, or paused


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
        self.eta = EtaReader(self.root)

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
        snap = snapshot_of(runs, every, gpus, bool(self.ledger.meta("paused")), results)
        try:
            snap.eta = self.eta.read(runs, snap, gpus)
        except Exception as e:  # noqa: BLE001 - a damaged history never takes the queue screen down
            from stilts_tui.estimate.eta import Eta

            snap.eta = Eta(None, f"no ETA: {type(e).__name__}")
        snap.eta_s = None if snap.eta.paused else snap.eta.seconds
        return snap


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
        None,  # the ETA: QueueReader's (it keeps what the estimate reads between snapshots)
        problems=stuck_lines(runs),
        waiting=waiting,
        reasons={k: v.reason for k, v in shown.items() if v.reason},
        views=shown,
    )


class EtaReader:
    """The queue's ETA for the screen (estimate/eta.py, the model of `plan show --cost`): this device's
    figures read again only when the set of done runs changes, each run's spec.json read once (a run's id
    is the hash of its spec), the daemon's settings (slots, runs a process, fusion) from daemon.json."""

    def __init__(self, root: Path):
        self.root = root
        self._done: tuple | None = None
        self._rates = None
        self._specs: dict[str, dict] = {}

    def read(self, runs: list[dict], snap: Snapshot, gpus: list) -> Eta:
        from stilts_tui.estimate import eta, figures, history, walltime
        from stilts_tui.queue import ops
        from stilts_tui.store import rundir

        device = history.box_device(gpus)
        done = (device, tuple(sorted(r["id"] for r in runs if r.get("status") == Status.DONE)))
        if done != self._done:
            self._rates, self._done = figures.history(self.root, device), done
        for r in runs:
            if r.get("status") in (Status.QUEUED, Status.RUNNING) and r["id"] not in self._specs:
                try:
                    spec = rundir.read_json(rundir.run_dir(self.root, r["id"]) / SPEC_FILE)
                except Exception:  # noqa: BLE001 - a damaged folder: that run is of unknown size
                    spec = None
                self._specs[r["id"]] = spec if isinstance(spec, dict) else {}
        info = ops.daemon_status(self.root) or {}
        settings = info.get("settings") if isinstance(info.get("settings"), dict) else {}
        box = walltime.box_for(gpus, settings)
        return eta.remaining(
            runs,
            self._specs,
            snap.progress,
            set(snap.waiting),
            self._rates,
            box,
            fuse=eta.fuse_size(settings.get("fuse")),
            paused=snap.paused,
        )


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
