"""The ledger's run row as one typed record: every field any writer puts on a run, with its type, once.

Writers go through :meth:`Tx.update_run` / :meth:`Ledger.add_runs`, which refuse a field not named here
(a misspelt key would otherwise be stored and never read: a bug). Readers take any row: one written by an
older version may lack fields, or hold fields no longer written; both still read. ``None`` is always
allowed (a field cleared, or never set). Which of these fields the queue checks on every tick, and how,
is :data:`RUN_FIELDS` below (derived from :data:`ROW_TYPES`).
"""

from __future__ import annotations

from typing import TypedDict, get_type_hints

from stilts_tui.contract import AFTER_FIELD, PRUNED_WHY_FIELD
from stilts_tui.store.rundir import RUN_ID_RE, WORKER_RE

INT64 = 2**63


class RunRow(TypedDict, total=False):
    """One run in ``ledger.json``'s ``runs`` table (keyed by its id). Grouped by who writes the field."""

    # -- what `queue add` records (plan.Run.record(); spec.json holds the rest) --
    id: str  # 12 hex digits: the hash of the run's resolved config
    plan: str
    stage: str  # synth | intermediate | rank | target
    name: str  # the stage's name in the plan ([target.rte] -> "rte")
    task: str
    intermediate: str | None  # the starting point of a target run ("none" for the baseline)
    seed: int | None
    params: dict  # resolved hyperparameters (every training default)
    grid: dict | None  # the grid point of a target run
    parent: str | None  # the run whose checkpoint it starts from
    order: float  # plan order (the queue's last sort key)
    after: list[str] | None  # runs it waits for, settled however they end (the rank stage)
    # -- the queue's own bookkeeping (add, retry, priority) --
    status: str  # contract.Status
    priority: float
    added: float  # unix time of the add
    attempts: int  # launches of this run since it was added or retried
    alone: bool  # must train alone on its device (after an out-of-memory in a shared process)
    fuse_max: int  # the largest array it may join (halved by each out-of-memory in an array)
    # -- a launch (executors) --
    executor: str  # local | slurm
    worker: str  # the process (hex name) that trains it; several runs may share one
    gpu: int | None  # None on the CPU, or under Slurm
    started: float
    pid: int | None
    pid_started: float | None  # the process's start time: a pid reused by another process is not it
    est_gb: float  # the memory the placement planned for it
    shape: str  # contract.shape_key
    fused: int  # runs in its array; 0 alone
    fuse_why: str | None  # why its array has the size it has
    # -- a reap --
    finished: float
    score: float | None
    error: str | None  # one line
    peak_gpu_mem_gb: float | None
    timings: dict | None  # where its time went (docs/architecture.md)
    data: dict | None  # per split: its source, example count and fingerprint (docs/tasks.md)
    # -- a cancel (client's request, the daemon's carrying out) --
    cancel_requested: float | None
    cancel_grace: float | None  # seconds between SIGTERM and SIGKILL
    cancel_signalled: float | None
    cancel_by: str | None  # who asked for the cancel of a running run (the request's ``by``), for its history
    # -- Slurm --
    job_id: str | None
    slurm_state: str | None
    slurm_reason: str | None
    stuck: str | None  # a pending reason that never clears by waiting, with what to change
    submit_failures: int
    # -- the rank stage --
    pruned_why: str | None  # contract.pruned_why's line
    # -- its history (queue/history.py appends, store/history.py reads) --
    history: list | None  # every attempt's end and every retry, the last 50: store/history.py's entries
    # -- a person's words on it (a note request, store/notes.py) --
    note: str | None  # at most store.notes.MAX_NOTE characters, as typed
    tags: list[str] | None  # at most MAX_TAGS tags matching store.notes.TAG_RE


ROW_TYPES: dict[str, object] = get_type_hints(RunRow)  # field -> its type, for checks and the tests
ROW_FIELDS: frozenset[str] = frozenset(ROW_TYPES)


def unknown_fields(fields: dict) -> list[str]:
    """The keys of ``fields`` that a run row does not have (sorted): what a writer must not store."""
    return sorted(k for k in fields if k not in ROW_FIELDS)


# fields the queue reads from a run on every tick, with what each must hold (None is always allowed); their
# types are the typed row's (store/row.py), so a field is typed once
_INT, _NUM, _STR = "an integer", "a number", "a string"
_KINDS = {int: _INT, float: _NUM, str: _STR}
CHECKED_FIELDS = (
    "priority", "attempts", "pid", "pid_started", "started", "finished", "added", "order", "gpu", "est_gb",
    "peak_gpu_mem_gb", "fused", "score", "job_id", "parent", "worker", "error", "shape", "slurm_state",
    "slurm_reason", PRUNED_WHY_FIELD,
)  # fmt: skip


def _kind(tp: object) -> str:
    """A row field's check, from its type (``int | None`` -> "an integer")."""
    base = next(t for t in getattr(tp, "__args__", (tp,)) if t is not type(None))
    return _KINDS[base]


RUN_FIELDS = {name: _kind(ROW_TYPES[name]) for name in CHECKED_FIELDS}


# fields that become paths (the run's folder, its parent's, its worker's log): they must match their rule
NAME_FIELDS = {"id": RUN_ID_RE, "parent": RUN_ID_RE, "worker": WORKER_RE}


def run_problems(run: dict) -> dict[str, str]:
    """Fields of a run that do not hold what the queue expects: ``{field: what is wrong}``. Integers
    must fit in 64 bits, numbers be finite, a pid be one the system can have; the id, the parent and
    the worker match their names' rules (they become paths under the runs-dir). (Called on every run
    each daemon tick: the common cases are decided by type alone.)"""
    bad = {}
    for name, rule in NAME_FIELDS.items():
        v = run.get(name)
        if v is not None and not (type(v) is str and rule.fullmatch(v)):
            bad[name] = f"{name} = {str(v)[:40]!r} is not a name the queue writes ({rule.pattern})"
    for name, kind in RUN_FIELDS.items():
        v = run.get(name)
        t = type(v)
        if v is None or (t is str and kind is _STR) or name in bad:
            continue
        if kind is not _STR:
            if t is int and -INT64 <= v < INT64 and (name != "pid" or 0 < v < 2**22):
                continue
            if t is float and kind is _NUM and -INT64 <= v < INT64:  # also false for NaN; inf is out of range
                continue
        what = f"{kind} in range" if kind is not _STR else kind
        bad[name] = f"{name} = {str(v)[:40]!r} is not {what}"
    after = run.get(AFTER_FIELD)  # the runs it waits for (the rank stage): a list of run ids
    if after is not None and not (
        type(after) is list and all(type(x) is str and RUN_ID_RE.fullmatch(x) for x in after)
    ):
        bad[AFTER_FIELD] = f"{AFTER_FIELD} = {str(after)[:40]!r} is not a list of run ids"
    return bad
