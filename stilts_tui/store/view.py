"""One view of a run: what every reader shows of it (`queue ls` and its ``--json``, the app's table and
reason column, notifications, the score table's notes), computed here and nowhere else.

:func:`view` turns a ledger row plus what its run folder says (progress from ``events.jsonl``, read
bounded; ``result.json``'s status for a failed run) into a :class:`RunView`: the status as a person reads
it (:class:`Shown`: a running run that waits its turn in a worker is *waiting in worker N*, a running
Slurm job pending for good is *stuck*, a failed run that ran out of memory is *oom*), its one-line
reason, its progress and its attempts. :func:`views` does it for every run of a ledger read. No textual,
rich or torch here: the CLI, the queue and the app all import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from stilts_tui.contract import AFTER_FIELD, EVENTS_FILE, PRUNED_WHY_FIELD, Event, ResultStatus, Status, waits
from stilts_tui.errors import UserError
from stilts_tui.fmt import duration
from stilts_tui.store import history as run_history
from stilts_tui.store import notes, rundir

TREND = 40  # step losses a running run's progress keeps (a sparkline's worth)
TAIL = 64 << 10  # bytes of events.jsonl read from its end on a first look (then only what is appended)
START_SCAN = 16 << 20  # bytes searched backwards for a run's start event when the tail holds none


class Shown(str, Enum):
    """A run's status as a person reads it: the ledger's :class:`Status`, told apart where it hides
    something (a run waiting in a worker, a stuck Slurm job, an out-of-memory failure)."""

    QUEUED = Status.QUEUED.value
    WAITING = "waiting"  # marked running, but its worker process has not begun it ("waiting in worker N")
    RUNNING = Status.RUNNING.value
    DONE = Status.DONE.value
    FAILED = Status.FAILED.value
    OOM = ResultStatus.OOM.value  # failed: ran out of memory alone on its device (result.json says oom)
    CANCELLED = Status.CANCELLED.value
    DEGENERATE = Status.DEGENERATE.value
    PRUNED = Status.PRUNED.value
    BLOCKED = Status.BLOCKED.value
    STUCK = "stuck"  # a Slurm job pending for a reason that never clears by waiting

    def __str__(self) -> str:
        return self.value


PRUNED_DEFAULT_WHY = "left out by its rank run"  # a pruned row without its line (older ledgers)


@dataclass
class Progress:
    """A run's last step in ``events.jsonl`` (and the pid of the process that started it)."""

    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    began_pid: int | None = None  # the pid of the last "start" event: the process that trains the run
    losses: tuple[float, ...] = ()  # the last TREND step losses read (the app's loss-trend sparkline)

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None


@dataclass(frozen=True)
class RunView:
    """What every reader shows of one run."""

    id: str
    status: Shown
    reason: str = ""  # one line; "" when there is nothing to say
    worker: int | None = None  # waiting: the worker (1, 2, ... in queue order) it waits in
    step: int | None = None  # progress of a training run (None where there is none to show)
    total: int | None = None
    attempts: int = 0  # launches since it was added or retried
    history: tuple[dict, ...] = ()  # every attempt's end and every retry, cleaned (store/history.py)
    note: str | None = None  # a person's note on it, as typed (store/notes.py; shown through terminal_safe)
    tags: tuple[str, ...] = ()

    @property
    def history_lines(self) -> list[str]:
        """The history in words, oldest first (`logs` and the app's log panes)."""
        return [run_history.line(e) for e in self.history]

    @property
    def label(self) -> str:
        """The status in words: "waiting in worker 2", "running", ..."""
        return f"waiting in worker {self.worker}" if self.status is Shown.WAITING else self.status.value

    def record(self) -> dict:
        """The view's fields in `queue ls --json` (beside the ledger's, which keep their names)."""
        return {
            "shown": self.status.value,
            "label": self.label,
            "waiting_in": self.worker,
            "reason": self.reason,
            "step": self.step,
            "total_steps": self.total,
            "attempts": self.attempts,
            "history": [dict(e) for e in self.history],
            "note": self.note,
            "tags": list(self.tags),
        }


@dataclass
class Around:
    """What a run's view needs of the other runs: their statuses (a blocked run names its parent's), the
    workers' numbers, and the run time a pruned run saved (per plan and target)."""

    status: dict[str, str]
    workers: dict[str, int]
    saved: dict[tuple, float] = field(default_factory=dict)


def around(runs: list[dict]) -> Around:
    """The :class:`Around` of a ledger read (``runs`` in queue order, every run of the ledger)."""
    workers: dict[str, int] = {}
    for r in runs:
        if r.get("status") == Status.RUNNING and (w := r.get("worker") or r.get("job_id")) is not None:
            workers.setdefault(w, len(workers) + 1)
    saved = run_seconds(runs) if any(r.get("status") == Status.PRUNED for r in runs) else {}
    return Around({r["id"]: r.get("status") for r in runs}, workers, saved)


def view(row: Mapping, ctx: Around, progress: Progress | None = None, result_status: str | None = None) -> RunView:
    """The one view of a run: its ledger ``row``, what its folder says (``progress`` from events.jsonl,
    ``result_status``: result.json's status) and ``ctx`` (the other runs)."""
    status = row.get("status")
    shown, worker = _shown(row, ctx, progress, result_status)
    attempts = row.get("attempts")
    training = shown is Shown.RUNNING and progress is not None and bool(progress.total)
    return RunView(
        id=str(row.get("id")),
        status=shown,
        reason=reason(row, ctx) if status != Status.DONE else "",
        worker=worker,
        step=progress.step if training else None,
        total=progress.total if training else None,
        attempts=attempts if type(attempts) is int and attempts >= 0 else 0,
        history=tuple(run_history.entries(row.get("history"))),
        note=notes.note_of(row),
        tags=tuple(notes.tags_of(row)),
    )


def _shown(row: Mapping, ctx: Around, progress: Progress | None, result_status: str | None) -> tuple[Shown, int | None]:
    status = row.get("status")
    if status == Status.RUNNING:
        if isinstance(row.get("stuck"), str) and row["stuck"]:
            return Shown.STUCK, None
        w = row.get("worker") or row.get("job_id")
        began = progress.began_pid if progress is not None else None
        # a worker's run that its process has not begun (no start event from its pid); an array begins all at once
        if w is not None and row.get("pid") and not row.get("fused") and began != row["pid"]:
            return Shown.WAITING, ctx.workers.get(w)
        return Shown.RUNNING, None
    if status == Status.FAILED and result_status == ResultStatus.OOM:
        return Shown.OOM, None
    try:
        return Shown(status), None
    except ValueError:
        return Shown.FAILED, None  # not a ledger status: shape_problem refuses such a file before any read


def reason(row: Mapping, ctx: Around) -> str:
    """Why a run is where it is, in one line ("" for nothing to say): a blocked run's parent, a pruned run's
    rank line (and the run time it saved), what a queued run waits for, else its error or stuck line."""
    status = row.get("status")
    why = None
    if status == Status.BLOCKED and row.get("parent"):
        why = f"parent {row['parent']} {ctx.status.get(row['parent'], 'missing')}"
    elif status == Status.PRUNED:
        why = "pruned: " + (row.get(PRUNED_WHY_FIELD) or PRUNED_DEFAULT_WHY)
        s = ctx.saved.get((row.get("plan"), row.get("name")))
        why += f"; saved ~{duration(s)} (median of {row.get('name')}'s done runs)" if s is not None else ""
    elif status == Status.QUEUED and waits(row, ctx.status):
        why = "waits for rank run " + " ".join(row.get(AFTER_FIELD) or [])
    else:
        why = row.get("error") or row.get("stuck")
    return " ".join(str(why).split()) if why else ""


def run_seconds(runs: Iterable[Mapping]) -> dict[tuple, float]:
    """Per (plan, target): the median run time of its done target runs, what a pruned run of it would
    have taken (the time its pruning saved, estimated; a run's slot on its GPU)."""
    times: dict[tuple, list[float]] = {}
    for r in runs:
        start, end = r.get("started"), r.get("finished")
        if r.get("status") == Status.DONE and r.get("stage") == "target" and _is_num(start) and _is_num(end):
            times.setdefault((r.get("plan"), r.get("name")), []).append(max(0.0, end - start))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) < 1e12


def views(
    runs: list[dict], progress: Mapping[str, Progress] | None = None, results: Mapping[str, str | None] | None = None
) -> dict[str, RunView]:
    """Every run's view, by id. ``runs``: a whole ledger read, in queue order; ``progress`` and ``results``:
    what the run folders say (:meth:`Folders.read`; without them no run shows as waiting or oom)."""
    ctx = around(runs)
    progress, results = progress or {}, results or {}
    return {r["id"]: view(r, ctx, progress.get(r["id"]), results.get(r["id"])) for r in runs}


def read_views(root: Path, runs: list[dict]) -> dict[str, RunView]:
    """Every run's view, reading its folder once (for a one-shot reader: `queue ls`, a notification)."""
    return views(runs, *Folders(root).read(runs))


def counts(shown: Iterable[RunView]) -> dict[str, int]:
    """Runs by shown status (for totals and score-table notes)."""
    out: dict[str, int] = {}
    for v in shown:
        out[v.status.value] = out.get(v.status.value, 0) + 1
    return out


class Folders:
    """Reads the run folders a view needs, kept from one read to the next: each running run's progress
    (only what ``events.jsonl`` grew by since the last read; the first read its last :data:`TAIL` bytes)
    and each failed run's result status (read again only when its row's ``finished`` changes)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._state: dict[str, tuple[int, Progress]] = {}
        self._results: dict[str, tuple[object, str | None]] = {}

    def read(self, runs: Iterable[Mapping]) -> tuple[dict[str, Progress], dict[str, str | None]]:
        """The progress of each running run and the result status of each failed one, by id."""
        progress, results = {}, {}
        for r in runs:
            if r.get("status") == Status.RUNNING:
                progress[r["id"]] = self.progress(r["id"])
            elif r.get("status") == Status.FAILED:
                results[r["id"]] = self.result_status(r)
        return progress, results

    def progress(self, run_id: str) -> Progress:
        pos, prog = self._state.get(run_id, (0, Progress()))
        try:
            path = rundir.run_dir(self.root, run_id) / EVENTS_FILE  # a damaged row's id never becomes a path
            size = path.stat().st_size
        except (OSError, UserError):
            return prog
        if size < pos:  # the file was replaced (a retried run): start over
            pos, prog = 0, Progress()
        if size > pos:
            try:
                prog = _read_events(path, pos, size, prog)
            except OSError:
                return prog
            pos = size
        self._state[run_id] = (pos, prog)
        return prog

    def result_status(self, row: Mapping) -> str | None:
        """result.json's status of a run (None: none, damaged, or a row whose id is not a run id)."""
        run_id, finished = row["id"], row.get("finished")
        kept = self._results.get(run_id)
        if kept is not None and kept[0] == finished:
            return kept[1]
        data = rundir.read_run_file(self.root, run_id)
        status = data.get("status") if isinstance(data, dict) and isinstance(data.get("status"), str) else None
        self._results[run_id] = (finished, status)
        return status


def _read_events(path: Path, pos: int, size: int, prog: Progress) -> Progress:
    """``prog`` moved on by the events from byte ``pos`` to ``size`` (at most the last :data:`TAIL` bytes);
    a first look whose tail holds no start event finds the last one further back."""
    start = max(pos, size - TAIL)
    with open(path, "rb") as f:
        f.seek(start)
        chunk = f.read(size - start)
        seen_start = False
        for line in chunk.splitlines():
            e = _event(line)
            if e is None:
                continue
            kind = e.get("event")
            if kind == Event.STEP:
                step, total = e.get("step", 0), e.get("total_steps", 0)
                loss = e.get("loss")
                trend = (*prog.losses[1 - TREND :], loss) if isinstance(loss, (int, float)) else prog.losses
                prog = Progress(step, total, loss, e.get("eta_s"), prog.began_pid, trend)
            elif kind == Event.BEGIN:
                prog = Progress(0, e.get("total_steps", 0), began_pid=prog.began_pid)
            elif kind == Event.START:
                prog, seen_start = Progress(began_pid=e.get("pid")), True
        if start > pos and not seen_start:  # the start event lies before the tail read
            prog.began_pid = _last_start_pid(f, start)
    return prog


def _event(line: bytes) -> dict | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None
    return e if isinstance(e, dict) else None


def _last_start_pid(f: BinaryIO, end: int) -> int | None:
    """The pid of the last start event before byte ``end``, searched backwards (at most :data:`START_SCAN`)."""
    pos, carry = end, b""
    while pos > 0 and end - pos < START_SCAN:
        n = min(TAIL, pos)
        pos -= n
        f.seek(pos)
        lines = (f.read(n) + carry).split(b"\n")
        carry = lines.pop(0) if pos > 0 else b""  # cut by the block's start: read whole with the next block
        for line in reversed(lines):
            if b"start" in line and (e := _event(line)) is not None and e.get("event") == Event.START:
                return e.get("pid")
    return None
