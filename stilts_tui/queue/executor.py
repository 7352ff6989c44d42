"""The executor interface: what the tick (`queue/tick.py`: requests -> reap -> block -> prune -> place ->
launch) asks of the place runs execute (this machine's GPUs, or a Slurm cluster). An executor answers for
its runs' processes or jobs and nothing else; it never writes the ledger: it RETURNS the fields to record
and the tick commits them.

- ``observe(runs)``: query the state of the active runs once a tick (``squeue``; nothing locally).
- ``alive(run)``, ``pending_reason(run)``: state queries about one running run.
- ``reap(runs, status, stats)``: which running runs ended and how (the fields to record).
- ``launches(runs)``: ready runs grouped and placed (`placement.py`), one `Launch` at a time.
- ``claim(launch, rows)``: the fields that mark the launch's still-queued runs running (and the placement
  record); the tick commits them BEFORE the process starts, so a daemon that dies after it adopts the
  process and never launches a run twice.
- ``start(launch, claim)``: start the process or submit the job; the fields to record (pid, job id).
- ``cancel(run, kill)``: signal a run's process group (SIGTERM; SIGKILL with ``kill``), or ``scancel``.

Only the tick calls these; an executor sees a narrow :class:`Context`, never the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stilts_tui.queue.placement import Grouper, Launch
from stilts_tui.queue.runfiles import RunFiles
from stilts_tui.queue.settings import Settings

# a tick's decisions: run id -> (the status the decision saw, the fields to record)
Changes = dict[str, tuple[str, dict]]
NEW_STATS = ("reaped", "requeued", "blocked", "unblocked", "launched", "cancelled", "pruned")


@dataclass
class Context:
    """What an executor may use: the runs-dir, the run folders, daemon.log, the settings, the grouper
    (learned estimates, worker groups), MPS's pipe folder while MPS runs; ``mark`` names the run the tick
    handles (an error there is blamed on it)."""

    root: Path
    settings: Settings
    files: RunFiles
    log: Callable[[str], None]
    mark: Callable[[str | None], None]
    grouper: Grouper
    mps_dir: Path | None = None


@dataclass
class Claim:
    """A launch's runs marked running: the rows as they were (``runs``), the fields that mark them
    (``changes``), and the placement record (the ``placements`` table: what the estimate saw)."""

    runs: list[dict] = field(default_factory=list)
    changes: Changes = field(default_factory=dict)
    placement: tuple[str, dict] | None = None
    worker: str | None = None


class Executor(Protocol):
    """Where runs execute. ``name`` is recorded in each run's ``executor`` field."""

    name: str

    def observe(self, runs: list[dict]) -> None:
        """Query the state of the running runs once, for this tick's ``alive``/``reap`` answers."""

    def alive(self, run: dict) -> bool:
        """Is the run's process (pid and start time) or Slurm job still there?"""

    def pending_reason(self, run: dict) -> str | None:
        """Why a started run waits (Slurm's pending reason), or None when it does not."""

    def reap(self, runs: list[dict], status: dict[str, str], stats: dict) -> Changes:
        """The fields to record for running runs that ended, were requeued, or changed state."""

    def launches(self, runs: list[dict]) -> Iterator[Launch]:
        """Ready runs grouped and placed, one launch at a time (each launched before the next is chosen)."""

    def claim(self, launch: Launch, rows: dict[str, dict | None]) -> Claim:
        """The fields marking the launch's runs still queued in ``rows`` (the ledger now) running."""

    def start(self, launch: Launch, claim: Claim) -> tuple[bool, Changes]:
        """Start the claimed runs (a process, a job); whether any started, and the fields to record."""

    def cancel(self, run: dict, kill: bool = False) -> None:
        """Signal the run's process group (SIGTERM, or SIGKILL with ``kill``), or scancel its job.
        Never waits: the tick checks ``alive`` again on the next pass."""


def new_stats() -> dict[str, int]:
    return dict.fromkeys(NEW_STATS, 0)
