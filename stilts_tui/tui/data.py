"""What the queue screen and the log panes show, read from the ledger and run folders (called from
the app's workers and the panes' watcher threads; the UI thread only shows what they read)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, waits
from stilts_tui.errors import UserError
from stilts_tui.fmt import duration, terminal_safe
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger

TAIL_CHUNK = 4 << 20  # a log pane reads at most this much a poll
LONG_LINE_SHOWN = 4000  # characters shown of a line longer than a read


def plural(n: int, word: str) -> str:
    """``word`` for one, ``word + "s"`` for any other count ("1 run", "3 runs")."""
    return word if n == 1 else word + "s"


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    began_pid: int | None = None  # the pid of the last "start" event: the process that trains the run

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None


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


class ProgressReader:
    """The last step event of each running run, reading only what was appended since last time."""

    def __init__(self, root: Path):
        self.root = root
        self._state: dict[str, tuple[int, Progress]] = {}

    def read(self, run_id: str) -> Progress:
        pos, prog = self._state.get(run_id, (0, Progress()))
        try:
            path = rundir.run_dir(self.root, run_id) / EVENTS_FILE  # a damaged row's id never becomes a path
            size = path.stat().st_size
        except (FileNotFoundError, UserError):
            return prog
        if size < pos:  # the file was replaced (a retried run): start over
            pos, prog = 0, Progress()
        if size > pos:
            with open(path, "rb") as f:
                f.seek(max(pos, size - 65536))
                chunk = f.read()
            for line in chunk.splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(e, dict):
                    continue
                if e.get("event") == "step":
                    prog = Progress(
                        e.get("step", 0), e.get("total_steps", 0), e.get("loss"), e.get("eta_s"), prog.began_pid
                    )
                elif e.get("event") == "begin":
                    prog = Progress(0, e.get("total_steps", 0), began_pid=prog.began_pid)
                elif e.get("event") == "start":
                    prog = Progress(began_pid=e.get("pid"))
            pos = size
        self._state[run_id] = (pos, prog)
        return prog


class QueueReader:
    """What the queue screen reads each second, kept from one read to the next: one Ledger (its parsed file
    reused while the file on disk is the same), the runs' progress, and what the last snapshot was made
    of. A read that finds nothing new returns None: the screen touches no row and the read makes no
    garbage (a full collection of the app's objects held a key 110-180 ms: tui/gc_policy.py)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.ledger = Ledger(self.root)
        self.progress = ProgressReader(self.root)
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
        every = {r["id"]: self.progress.read(r["id"]) for r in runs if r["status"] == "running"}
        try:
            gpus = gpu_info.list_gpus()
        except Exception:  # noqa: BLE001 - a GPU query must never take the app down
            gpus = []
        made_of = (stamp, every, repr(gpus))
        if made_of == self._made_of:
            return None
        self._made_of = made_of
        return snapshot_of(runs, every, gpus, bool(self.ledger.meta("paused")))


def snapshot_of(runs: list[dict], every: dict[str, Progress], gpus: list, paused: bool) -> Snapshot:
    """Everything the queue screen shows, from the runs read and the running runs' progress."""
    waiting = waiting_in_workers([r for r in runs if r["status"] == "running"], every)
    counts: dict[str, int] = {}
    for r in runs:
        shown = "waiting" if r["id"] in waiting else r["status"]
        counts[shown] = counts.get(shown, 0) + 1
    progress = {k: v for k, v in every.items() if v.total and k not in waiting}
    durations = [
        r["finished"] - r["started"] for r in runs if r["status"] == "done" and r.get("finished") and r.get("started")
    ]
    eta = None
    running = [r for r in runs if r["status"] == "running"]
    if durations and (running or counts.get("queued")):
        per = sum(durations) / len(durations)
        slots = max(1, len({r.get("worker") for r in running}))
        left = (
            max((progress[r["id"]].eta_s or 0) for r in running if r["id"] in progress)
            if any(r["id"] in progress for r in running)
            else 0
        )
        eta = left + per * (counts.get("queued", 0) + counts.get("waiting", 0)) / slots
    from stilts_tui.queue.executors.slurm import stuck_lines

    return Snapshot(
        runs,
        progress,
        gpus,
        counts,
        paused,
        eta,
        problems=stuck_lines(runs),
        waiting=waiting,
        reasons=reasons_of(runs),
    )


def waiting_in_workers(running: list[dict], progress: dict[str, Progress]) -> dict[str, int]:
    """Running runs that wait their turn in a worker process (the worker has not begun them: no start
    event from its pid), each with the worker's number among this queue's workers (1, 2, ... in queue
    order). A fused array trains all its runs at once: none of them waits."""
    numbers: dict[str, int] = {}
    out: dict[str, int] = {}
    for r in running:
        worker = r.get("worker") or r.get("job_id")
        if worker is None:
            continue
        n = numbers.setdefault(worker, len(numbers) + 1)
        began = progress.get(r["id"], Progress()).began_pid
        if r.get("pid") and not r.get("fused") and began != r["pid"]:
            out[r["id"]] = n
    return out


def run_seconds(runs: list[dict]) -> dict[tuple, float]:
    """Per (plan, target): the median run time of its done target runs, what a pruned run of it would
    have taken (the time its pruning saved, estimated; a run's slot on its GPU)."""
    times: dict[tuple, list[float]] = {}
    for r in runs:
        start, end = r.get("started"), r.get("finished")
        if r["status"] == "done" and r.get("stage") == "target" and _is_num(start) and _is_num(end):
            times.setdefault((r.get("plan"), r.get("name")), []).append(max(0.0, end - start))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) < 1e12


def reasons_of(runs: list[dict]) -> dict[str, str]:
    """Why each failed, blocked, stuck or pruned run is where it is, in one line (a pruned run: with the
    run time it saved, estimated from its target's done runs)."""
    status = {r["id"]: r["status"] for r in runs}
    saved = run_seconds(runs) if any(r["status"] == "pruned" for r in runs) else {}
    out: dict[str, str] = {}
    for r in runs:
        why = r.get("error") or r.get("stuck")
        if r["status"] == "blocked" and r.get("parent"):
            why = f"parent {r['parent']} {status.get(r['parent'], 'missing')}"
        elif r["status"] == "pruned":
            why = "pruned: " + (r.get("pruned_why") or "left out by the rank stage")
            s = saved.get((r.get("plan"), r.get("name")))
            why += f"; saved ~{duration(s)} (median of {r.get('name')}'s done runs)" if s is not None else ""
        elif r["status"] == "queued" and not why and waits(r, status):
            why = "waits for rank run " + " ".join(r.get("after") or [])
        if why and r["status"] in ("failed", "blocked", "pruned", "degenerate", "cancelled", "queued", "running"):
            out[r["id"]] = " ".join(str(why).split())
    return out


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
    with open(path, "rb") as f:
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
