"""What the queue table shows of a run: its columns, the status as shown (and its style), each cell,
and the totals' counts. Plain functions of a ledger row and the snapshot read with it (tui/data.py)."""

from __future__ import annotations

from rich.text import Text

from stilts_tui.contract import Status
from stilts_tui.fmt import duration, sparkline, terminal_safe
from stilts_tui.store import notes
from stilts_tui.store.view import Shown
from stilts_tui.tui.data import Snapshot

# a running run that its worker process has not begun: shown as waiting (not a ledger status)
WAITING = Shown.WAITING.value

# sorting by status: what needs attention first (running, then failed), what is over last
STATUS_SORT = (
    Status.RUNNING,
    Shown.STUCK.value,
    Status.FAILED,
    Shown.OOM.value,
    Status.QUEUED,
    Status.BLOCKED,
    Status.DONE,
    Status.DEGENERATE,
    Status.PRUNED,
    Status.CANCELLED,
)

STATUS_STYLE = {
    Status.QUEUED: "cyan",
    Status.RUNNING: "bold yellow",
    Status.DONE: "green",
    Status.FAILED: "bold red",
    Status.CANCELLED: "magenta",
    Status.BLOCKED: "red",
    Status.DEGENERATE: "dark_orange",  # stopped early by stop_degenerate: by design, not an error
    Status.PRUNED: "italic grey62",  # left out by its target's rank run: a saving, not an error (retry --pruned)
    WAITING: "yellow",
    Shown.OOM.value: "bold red",  # failed: out of memory alone on its device
    Shown.STUCK.value: "red",  # a Slurm job pending for a reason that waiting never clears
}
COLUMNS = (
    "id",
    "plan",
    "stage",
    "task",
    "from",
    "seed",
    "grid",
    "status",
    "gpu",
    "progress",
    "loss",
    "eta",
    "score",
    "reason",
    "notes",
    "trend",
)
WIDTHS = (12, 10, 12, 12, 10, 4, 24, 11, 3, 17, 7, 8, 7, 40, 30, 10)  # fixed: no re-measuring 1,000 rows each second
STATUS_COLUMN = COLUMNS.index("status")
HIDDEN = ("trend",)  # columns shown only once chosen (C): the first session shows the others


def grid_text(grid: dict | None, params: dict | None = None) -> str:
    """A run's grid values as one line (plan.grid_text)."""
    from stilts_tui.plan import grid_text as text  # the plan layer loads after the first frame

    return text(grid, params)


def params_of(r: dict) -> dict | None:
    """A row's resolved params, or None where a damaged row holds something else."""
    return r.get("params") if isinstance(r.get("params"), dict) else None


def shown_status(r: dict, snap: Snapshot) -> str:
    """The status a run is shown with: the one view of a run's (store/view.py), as `queue ls` shows it."""
    v = snap.views.get(r["id"])
    if v is not None:
        return v.status.value
    return WAITING if r["id"] in snap.waiting else r["status"]


def counts_line(c: dict[str, int]) -> str:
    """The totals' counts by status (degenerate runs only where there are some)."""
    return (
        f"{c.get(Status.DONE, 0)} done · {c.get(Status.RUNNING, 0)} running · "
        + (f"{c[WAITING]} waiting in workers · " if c.get(WAITING) else "")
        + f"{c.get(Status.QUEUED, 0)} queued · "
        f"{c.get(Status.FAILED, 0)} failed · "
        + (f"{c[Shown.OOM.value]} out of memory · " if c.get(Shown.OOM.value) else "")
        + (f"{c[Shown.STUCK.value]} stuck · " if c.get(Shown.STUCK.value) else "")
        + f"{c.get(Status.BLOCKED, 0)} blocked · "
        f"{c.get(Status.CANCELLED, 0)} cancelled"
        + (f" · {c[Status.DEGENERATE]} degenerate (stopped early)" if c.get(Status.DEGENERATE) else "")
        + (f" · {c[Status.PRUNED]} pruned (rank stage)" if c.get(Status.PRUNED) else "")
    )


def bar(fraction: float | None, width: int = 10) -> str:
    """A progress bar with its percentage ("" where the progress is unknown)."""
    if fraction is None:
        return ""
    full = int(round(fraction * width))
    return "█" * full + "░" * (width - full) + f" {100 * fraction:3.0f}%"


def where_and_wait(r: dict) -> tuple[str, str]:
    """Where a run is (its GPU, or its Slurm job) and what its progress says before a first step."""
    where = "" if r.get("gpu") is None else str(r["gpu"])
    waiting = "starting…"
    if r.get("job_id") and r.get("executor") == "slurm":  # on Slurm: the job, and why it waits
        where = f"job {r['job_id']}"
        if r.get("slurm_state") in ("PENDING", "SUBMITTING"):
            waiting = f"pending ({r.get('slurm_reason')})" if r.get("slurm_reason") else "pending"
    return where, waiting


def cells(r: dict, snap: Snapshot, marked: bool) -> list:
    """Every column's cell of run ``r`` (in COLUMNS' order); ``marked`` adds the mark to its status."""
    prog = snap.progress.get(r["id"])
    shown = shown_status(r, snap)
    status = Text(shown, style=STATUS_STYLE.get(shown, ""))
    if marked:
        status.append(" ●", style="bold")
    score = f"{r['score']:.4f}" if isinstance(r.get("score"), (int, float)) else ""
    where, waiting = where_and_wait(r)
    training = shown == Status.RUNNING
    if shown == WAITING:
        progress = f"in worker {snap.waiting[r['id']]}"
    elif training:
        progress = bar(prog.fraction) if prog else waiting
    else:
        progress = "✓" if r["status"] == Status.DONE else ""
    names = (terminal_safe(r.get(k) or "") for k in ("id", "plan", "stage", "task", "intermediate"))
    grid = terminal_safe(grid_text(r.get("grid"), params_of(r)))
    return [
        *names,
        str(r.get("seed", "")),
        grid,
        status,
        where,
        progress,
        f"{prog.loss:.4f}" if prog and prog.loss is not None and training else "",
        duration(prog.eta_s) if prog and training else "",
        score,
        terminal_safe(snap.reasons.get(r["id"], "")),
        notes_text(r),
        sparkline(list(prog.losses)) if prog and training else "",
    ]


def notes_text(r: dict) -> str:
    """A run's tags (``#tag``) and note on one line, as a terminal may show it ("" for none)."""
    if not (r.get("note") or r.get("tags")):  # most runs: no words to check (1,000 rows rebuilt on a filter)
        return ""
    return terminal_safe(notes.one_line(notes.note_of(r), notes.tags_of(r)))


def state_of(r: dict, snap: Snapshot, marked: bool) -> tuple:
    """What a run's row shows, in a tuple: its row is touched only when this changes."""
    p = snap.progress.get(r["id"])
    return (
        shown_status(r, snap),
        snap.reasons.get(r["id"]),
        r.get("gpu"),
        r.get("job_id"),
        r.get("slurm_state"),
        r.get("score"),
        marked,
        (p.step, p.total, p.loss, p.eta_s) if p else None,
        r.get("note"),
        str(r.get("tags")),
    )
