"""The tick's cancel steps: carrying out ``cancel_requested`` on running runs (the cancel request sets it;
see `queue/requests.py`). Returns the fields to record; the tick commits them with the rest of its tick."""

from __future__ import annotations

import time

from stilts_tui.contract import CANCEL_FILE, CANCEL_GRACE_S, RESULT_FILE, Status
from stilts_tui.queue import checks
from stilts_tui.queue.executor import Changes, Context, Executor
from stilts_tui.store import rundir


def _num(x: object) -> float:
    return x if checks.is_num(x) else 0.0


class CancelSteps:
    """One step a tick for each running run whose cancel was asked. A run that wrote its result before
    the cancel is carried out keeps it (the request is dropped, the reap records the result). A run sharing
    its process with others (a fused array, or a worker's runs in turn) gets the request file its trainer
    reads before it begins and at each step, so the process and the other runs go on: one that has not
    begun is cancelled at once, one that trains is cancelled once its trainer has written its cancelled
    result (signals only if it has not within the grace). A run alone in its process: SIGTERM to its group
    (Slurm: scancel), SIGKILL once the grace has passed, cancelled once the process is gone. Never waits."""

    def __init__(self, context: Context, executor: Executor):
        self.c, self.executor = context, executor

    def step(self, runs: list[dict], stats: dict) -> Changes:
        """The fields to record for this tick's cancels."""
        changes: Changes = {}
        running = [r for r in runs if r["status"] == Status.RUNNING]
        for r in running:
            if not r.get("cancel_requested"):
                continue
            self.c.mark(r["id"])
            ended = self._ended(r)
            if ended is not None:
                dropped = {"cancel_requested": None, "cancel_signalled": None}
                changes[r["id"]] = (Status.RUNNING, ended if ended.get("status") else dropped)
                continue
            mates = [o for o in running if o is not r and _same_process(o, r) and not o.get("cancel_requested")]
            if self.executor.alive(r):
                if mates and not self._past_grace(r):
                    self._ask_trainer(r, changes, stats)
                else:
                    self._signal(r, changes)
                continue
            changes[r["id"]] = (Status.RUNNING, self._cancelled(r, stats))
            for m in mates:  # they waited in the stopped worker: back to the queue, the attempt not counted
                if self.c.files.result(m["id"]) is None:
                    back = {"status": Status.QUEUED.value, "pid": None, "gpu": None}
                    changes[m["id"]] = (Status.RUNNING, {**back, "attempts": max(0, (m.get("attempts") or 1) - 1)})
        self.c.mark(None)
        return changes

    def _ended(self, r: dict) -> dict | None:
        """A cancelled run whose attempt already ended: the cancelled fields when its trainer stopped it
        for the request, ``{}`` when it finished first (its result is kept: the reap records it), else None."""
        res = rundir.read_json(self.c.files.run_path(r["id"], RESULT_FILE))  # the reap checks it; here: whose
        if not res or res.get("status") not in (*checks.RESULT_STATUSES, Status.CANCELLED):
            return None
        if res["status"] == Status.CANCELLED:
            return self._cancelled(r, {"cancelled": 0})
        self.c.log(f"{r['id']}: cancel asked after it ended ({res['status']}): its result is kept")
        return {}

    def _ask_trainer(self, r: dict, changes: Changes, stats: dict) -> None:
        """The request file for a run that shares its process; one still waiting its turn is cancelled now
        (the worker skips it), one that trains when its trainer says so (``_ended``)."""
        request = self.c.files.run_path(r["id"], CANCEL_FILE)
        if not request.exists():
            request.touch()
            self.c.log(f"{r['id']}: cancel asked: its trainer drops it, the other runs of its process go on")
        # an array drops it at its next step; a waiting one never begins
        if r.get("fused") or not self.c.files.began(r):
            changes[r["id"]] = (Status.RUNNING, self._cancelled(r, stats))

    def _past_grace(self, r: dict) -> bool:
        return time.time() - _num(r.get("cancel_requested")) > _grace(r) + 5.0

    def _signal(self, r: dict, changes: Changes) -> None:
        """The next step of stopping a cancelled run still alive: SIGTERM once, SIGKILL after the grace."""
        if not r.get("cancel_signalled"):
            self.executor.cancel(r)
            changes[r["id"]] = (Status.RUNNING, {"cancel_signalled": time.time()})
            self.c.log(f"{r['id']}: cancel asked: stopping it (grace {_grace(r):g} s)")
        elif time.time() - _num(r["cancel_signalled"]) >= _grace(r):
            self.executor.cancel(r, kill=True)

    def _cancelled(self, r: dict, stats: dict) -> dict:
        stats["cancelled"] += 1
        self.c.log(f"{r['id']}: cancelled")
        return {
            "status": Status.CANCELLED.value,
            "finished": time.time(),
            "pid": None,
            "cancel_requested": None,
            "cancel_signalled": None,
        }


def _grace(r: dict) -> float:
    """Seconds between SIGTERM and SIGKILL the cancel asked for."""
    return _num(r.get("cancel_grace")) if r.get("cancel_grace") is not None else CANCEL_GRACE_S


def _same_process(o: dict, r: dict) -> bool:
    return bool(r.get("pid")) and o.get("pid") == r.get("pid") and o.get("pid_started") == r.get("pid_started")
