"""The executor interface: what the daemon's one tick asks of the place runs execute (this machine's
GPUs, or a Slurm cluster). The tick itself (ledger -> requests -> reap -> block -> place -> launch) is
`Daemon.tick`; an executor answers for its runs' processes or jobs and nothing else:

- ``observe(runs)``: query the state of the active runs once a tick (``squeue``; nothing locally).
- ``alive(run)``, ``pending_reason(run)``: state queries about one running run.
- ``reap(runs, status, stats)``: which running runs ended and how (the fields to record).
- ``launches(runs)``: ready runs grouped and placed (`placement.py`), one `Launch` at a time.
- ``launch(launch)``: mark the runs running in the ledger, then start their process or submit their job.
- ``cancel(run, kill)``: signal a run's process group (SIGTERM; SIGKILL with ``kill``), or ``scancel``.

Only the daemon calls these: clients write requests to the ledger (see `ops.cancel`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from stilts_tui.queue.placement import Launch

# a tick's decisions: run id -> (the status the decision saw, the fields to record)
Changes = dict[str, tuple[str, dict]]
NEW_STATS = ("reaped", "requeued", "blocked", "unblocked", "launched", "cancelled", "pruned")


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

    def launch(self, launch: Launch) -> bool:
        """Mark the launch's runs running, then start them; True if any started."""

    def cancel(self, run: dict, kill: bool = False) -> None:
        """Signal the run's process group (SIGTERM, or SIGKILL with ``kill``), or scancel its job.
        Never waits: the tick checks ``alive`` again on the next pass."""


def new_stats() -> dict[str, int]:
    return dict.fromkeys(NEW_STATS, 0)
