"""One tick of the queue, the only writer of a run's status, pid, placement and attempt files once it is
queued: requests -> cancels -> reap -> block -> prune -> place -> launch. Clients' requests are carried
out first, in their own transaction (`queue/requests.py`); the cancel steps, the reap, blocking and
pruning are committed together in one transaction; each launch is committed in two (its runs marked
running before the process starts, so a daemon that dies between the two adopts the process and never
launches a run twice; its pid after). The executor returns what changed; it never writes the ledger."""

from __future__ import annotations

import time

from stilts_tui.contract import BLOCKING, FINAL, RANK_STAGE, UNBLOCKING, Status
from stilts_tui.errors import UserError
from stilts_tui.queue import cancels, history, prune, requests
from stilts_tui.queue.executor import Changes, Context, Executor, new_stats
from stilts_tui.queue.executors import local
from stilts_tui.queue.executors import slurm as slurm_exec
from stilts_tui.queue.placement import Launch
from stilts_tui.store.ledger import Ledger, run_problems

ROW_DEFAULTS = {"attempts": 0, "priority": 0, "order": 0, "added": 0}  # a damaged row field is reset to these


def make_executor(context: Context) -> Executor:
    """The executor the settings name."""
    if context.settings.executor == "slurm":
        return slurm_exec.SlurmExecutor(context)
    return local.LocalExecutor(context)


class Tick:
    """The queue's tick over one runs-dir's ledger, through one executor."""

    def __init__(self, context: Context, ledger: Ledger, executor: Executor):
        self.c, self.ledger, self.executor = context, ledger, executor

    def __call__(self) -> dict:
        """Carry out clients' requests; step cancels; reap; block/unblock and prune; place and launch
        ready runs (not while paused). Returns counts of what it did."""
        stats = new_stats()
        if requests.waiting(self.ledger):
            with self.ledger.transaction() as tx:
                requests.carry_out(tx, self.c.files)
        paused = bool(self.ledger.meta("paused"))
        requests.mirror_pause(self.c.files.root, paused)  # what workers holding runs read (a stat a tick)
        runs = self.checked_runs()
        self.executor.observe(runs)
        changes = cancels.CancelSteps(self.c, self.executor).step(runs, stats)
        if changes:
            runs = [{**r, **changes[r["id"]][1]} if r["id"] in changes else r for r in runs]
        status = {r["id"]: r["status"] for r in runs}
        # a process being stopped for a cancel is the cancel steps', with every run it holds
        stopping = {
            (r["pid"], r.get("pid_started"))
            for r in runs
            if r["status"] == Status.RUNNING and r.get("cancel_requested") and r.get("pid")
        }
        reaped = self.executor.reap(
            [r for r in runs if (r.get("pid"), r.get("pid_started")) not in stopping], status, stats
        )
        for rid, (seen, fields) in reaped.items():
            before = changes.get(rid)
            changes[rid] = (before[0], {**before[1], **fields}) if before else (seen, fields)
        self._block_and_prune(runs, status, changes, stats)
        if changes:
            self.commit(changes)
        if not paused:
            for launch in self.executor.launches(self.checked_runs()):
                self.c.mark(launch.runs[0]["id"])
                launch.ok = self._launch(launch)
                if launch.ok:
                    stats["launched"] += len(launch.runs)
            self.c.mark(None)
        return stats

    def _launch(self, launch: Launch) -> bool:
        """Claim the launch's runs (committed), start them, record what the start gave."""
        with self.ledger.transaction() as tx:
            rows = {r["id"]: tx.get_run(r["id"]) for r in launch.runs}
            claim = self.executor.claim(launch, rows)
            _apply(tx, claim.changes)
            if claim.placement is not None:
                tx.put(tx.db.table("placements"), *claim.placement)
        started, changes = self.executor.start(launch, claim)
        if changes:
            self.commit(changes)
        return started

    def _block_and_prune(self, runs: list[dict], status: dict[str, str], changes: Changes, stats: dict) -> None:
        """Prune after a rank run that ended; block queued children of a failed, cancelled or blocked
        parent; unblock blocked children of a parent queued again (retried), running or done."""
        for rid, (_, f) in changes.items():
            if "status" in f:
                status[rid] = f["status"]
        for r in runs:
            if r["stage"] == RANK_STAGE and (changes.get(r["id"]) or ("", {}))[1].get("status") in FINAL:
                prune.after_rank(r, runs, status, changes, stats, self.c.files)
        for r in runs:
            st, parent = status[r["id"]], r.get("parent")
            if not parent or st not in (Status.QUEUED, Status.BLOCKED):
                continue
            pst = status.get(parent)
            new = (
                Status.BLOCKED
                if st == Status.QUEUED and pst in BLOCKING
                else Status.QUEUED
                if st == Status.BLOCKED and pst in UNBLOCKING
                else None
            )
            if new is None:
                continue
            changes[r["id"]] = (r["status"], {**changes.get(r["id"], ("", {}))[1], "status": new.value})
            status[r["id"]] = new
            stats["blocked" if new == Status.BLOCKED else "unblocked"] += 1

    def commit(self, changes: Changes) -> None:
        """Apply decisions, in one transaction, to runs whose status is still what the decision saw."""
        with self.ledger.transaction() as tx:
            _apply(tx, changes)

    def checked_runs(self) -> list[dict]:
        """The ledger's runs, each row's fields checked: an unfinished run with fields of the wrong type
        (an integer beyond 64 bits, a pid that is text...) is failed with the reason; a finished one is
        used with those fields left out."""
        runs = self.ledger.runs()
        problems = self.ledger.problems()
        if not problems:
            return runs
        out = []
        for r in runs:
            bad = problems.get(r["id"])
            if bad and r["status"] not in FINAL:
                self.fail_run(r["id"], "ledger row damaged: " + "; ".join(bad.values()), clear=list(bad))
                r = {**r, **{k: ROW_DEFAULTS.get(k) for k in bad if k != "id"}, "status": Status.FAILED.value}
            elif bad:
                r = {**r, **{k: ROW_DEFAULTS.get(k) for k in bad if k != "id"}}
            if bad and "id" in bad:
                continue  # an id that is no run id never becomes a path: the tick leaves the row out
            out.append(r)
        return out

    def fail_run(self, run_id: str, reason: str, clear: list[str] | None = None) -> bool:
        """Fail one run the daemon cannot handle: stop its process or Slurm job (first, so that no process
        goes on unseen), then record the one-line reason. Fields named in ``clear`` are reset. False when
        the run is final (or gone): nothing is recorded."""
        reason = " ".join(reason.split())[:300]
        cur = self.ledger.get(run_id)
        if cur is None or cur.get("status") in FINAL:
            return False
        bad = run_problems(cur)
        if cur.get("status") == Status.RUNNING:
            if cur.get("job_id") and "job_id" not in bad:
                try:
                    slurm_exec.cancel([cur["job_id"]], wait=0)
                except UserError as e:
                    self.c.log(f"{run_id}: scancel failed: {e}")
            elif cur.get("pid") and "pid" not in bad and "pid_started" not in bad:
                local.stop(cur["pid"], cur.get("pid_started"), grace=5)
        with self.ledger.transaction() as tx:
            now = tx.get_run(run_id)
            if now is not None and now.get("status") not in FINAL:
                reset = {k: ROW_DEFAULTS.get(k) for k in [*(clear or []), *bad] if k != "id"}
                fields = {"status": Status.FAILED.value, "error": reason, "finished": time.time(), "pid": None}
                fields |= history.ended(self.c.root, now, fields)  # the attempt's end, in its history
                tx.update_run(run_id, **{**reset, **fields})
        self.c.files.forget(run_id)
        self.c.grouper.forget(run_id)
        self.c.log(f"{run_id}: failed by the daemon: {reason}")
        return True


def _apply(tx, changes: Changes) -> None:
    for rid, (seen, fields) in changes.items():
        cur = tx.get_run(rid)
        if cur is not None and (cur["status"] == seen or not seen):
            # an attempt that ends here is kept in the run's history (queue/history.py)
            tx.update_run(rid, **{**fields, **history.ended(tx.path.parent, cur, fields)})
