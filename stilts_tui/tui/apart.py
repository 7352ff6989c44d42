"""The app's long queue operations in a process of their own; its worker thread only waits.

Adding a 1,008-run plan (expanding it, a spec.json per run, the ledger) and a cancel's wait for the
daemon to stop a process (reading the ledger ten times a second, for up to the grace period) are
Python work that holds the GIL for seconds: in a thread of the app, every key waits on it (bench/tui.py
measured 110 ms a key while adding). In a child process the UI thread keeps the GIL to itself.

    python -m stilts_tui.tui.apart OP '{"root": ..., ...}'  ->  a JSON result on stdout; bad input or
    a failure: its one ``stilts-tui: error:`` line on stderr and exit status 2 or 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stilts_tui.contract import EXIT_OK, Status
from stilts_tui.errors import PREFIX, UserError, report


def add(root: str, path: str) -> dict:
    from stilts_tui.queue import ops

    plan, runs, added = ops.add_plan(path, Path(root))
    return {"plan": plan.name, "runs": len(runs), "new": len(added)}


def cancel(root: str, run_ids: list[str], grace: float) -> dict:
    """Ask for the cancel and wait (polling the ledger) for the daemon to carry it out; with no daemon
    running, return at once (the request waits for the next daemon)."""
    from stilts_tui.queue import ops
    from stilts_tui.store.ledger import Ledger

    out = ops.cancel(Path(root), run_ids, grace=grace)
    left = ops.wait_cancelled(Path(root), out.requested, grace + 30.0) if out.daemon else out.requested
    ledger = Ledger(Path(root))
    status = {rid: (ledger.get(rid) or {}).get("status") for rid in out.requested if rid not in left}
    # a run that wrote its result before the daemon carried the cancel out keeps it (done, failed)
    kept = {rid: ("ended" if st == Status.RUNNING else st) for rid, st in status.items() if st != Status.CANCELLED}
    return {
        "cancelled_ids": out.done + [rid for rid in status if rid not in kept],
        "waiting": left,
        "kept": kept,
        "daemon": out.daemon,
    }


OPS = {"add": add, "cancel": cancel}


def run(op: str, root: Path, **kwargs) -> dict:
    """``OPS[op](root, **kwargs)`` in a child process; its UserError is raised here as a UserError."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stilts_tui.tui.apart", op, json.dumps({"root": str(root), **kwargs})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # at once, from here: the child's own call comes only after Python's start and its imports (20-30 ms
    # of CPU at normal priority, the moment the prompt closes and the next key comes)
    background(proc.pid)
    stdout, stderr = proc.communicate()
    if proc.returncode == EXIT_OK:
        return json.loads(stdout)
    line = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if line.startswith(PREFIX):  # the child's UserError (or Failure), said in one line
        raise UserError(line.removeprefix(PREFIX), exit_code=proc.returncode)
    raise RuntimeError(line)


def background(pid: int = 0) -> None:
    """Run process ``pid`` (0: this one) only when the CPU has nothing else to run: Linux's SCHED_IDLE,
    which any waking process preempts at once (at nice 10, a 1,008-run add still delayed each of the
    app's wake-ups on 2 cores: keys took 43 ms at the median during an add against 15 ms idle); nice 19
    where it is missing."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, refused, or the child already gone
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
        except (AttributeError, OSError):
            pass


def main(argv: list[str]) -> int:
    background()  # the app's own process (keys, repaints) comes first for the CPU
    op, args = argv[0], json.loads(argv[1])
    try:
        result = OPS[op](**args)
    except UserError as e:
        return report(e)
    print(json.dumps(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
