"""One tick of the queue, the only writer of a run's status, pid, placement and attempt files once it is
queued: requests -> cancels -> reap -> block -> prune -> place -> launch. Clients' requests are carried
out first, in their own transaction (`queue/requests.py`); the cancel steps, the reap, blocking and
pruning are committed together in one transaction; each launch is committed in two (its runs marked
running before the process starts, so a daemon that dies between the two adopts the process and never
launches a run twice; its pid after). The executor returns what changed; it never writes the ledger."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from stilts_tui.contract import BLOCKING, FINAL, RANK_STAGE, UNBLOCKING, Status
from stilts_tui.errors import UserError, first_line
from stilts_tui.queue import cancels, history, prune, requests
from stilts_tui.queue.executor import Changes, Context, Executor, new_stats
from stilts_tui.queue.executors import local
from stilts_tui.queue.executors import slurm as slurm_exec
from stilts_tui.queue.faults import machine_error
from stilts_tui.queue.placement import Launch
from stilts_tui.queue.runfiles import BadRun
from stilts_tui.store.ledger import Ledger, run_problems

ROW_DEFAULTS = {"attempts": 0, "priority": 0, "order": 0, "added": 0}  # a damaged row field is reset to these
REQUIRED = ("status", "stage")  # fields every row must hold: the tick decides by them
T = TypeVar("T")


def _line(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


def make_executor(context: Context) -> Executor:
    """The executor the settings name."""
    if context.settings.executor == "slurm":
        return slurm_exec.SlurmExecutor(context)
    return local.LocalExecutor(context)


class Tick:
    """The queue's tick over one runs-dir's ledger, through one executor."""

    def __init__(self, context: Context, ledger: Ledger, executor: Executor):
        self.c, self.ledger, self.executor = context, ledger, executor
        self._current: str | None = None  # the run the tick handles now: an error there is that run's
        self._failed: dict[str, Status] = {}  # runs this tick failed (their rows in memory are stale)
        self._last_request_error = ""
        outer = context.mark

        def mark(run_id: str | None) -> None:
            self._current = run_id
            outer(run_id)

        context.mark = mark

    def __call__(self) -> dict:
        """Carry out clients' requests; step cancels; reap; block/unblock and prune; place and launch
        ready runs (not while paused). Returns counts of what it did. One rule in every phase: an error
        while the tick handles one run is that run's (it is failed with one line and the phase goes on
        without it); only an error of the machine (a full disk, an unwritable ledger) ends the tick."""
        stats, self._failed = new_stats(), {}
        if requests.waiting(self.ledger):
            self._requests()
        paused = bool(self.ledger.meta("paused"))
        requests.mirror_pause(self.c.files.root, paused)  # what workers holding runs read (a stat a tick)
        runs = self.checked_runs()
        self.executor.observe(runs)
        changes, runs = self._phase(
            "step its cancel", runs, lambda rs: cancels.CancelSteps(self.c, self.executor).step(rs, stats)
        )
        if changes:
            runs = [{**r, **changes[r["id"]][1]} if r["id"] in changes else r for r in runs]
        # a process being stopped for a cancel is the cancel steps', with every run it holds
        stopping = {
            (r["pid"], r.get("pid_started"))
            for r in runs
            if r["status"] == Status.RUNNING and r.get("cancel_requested") and r.get("pid")
        }

        def reap(rs: list[dict]) -> Changes:
            status = {r["id"]: r["status"] for r in rs}
            return self.executor.reap(
                [r for r in rs if (r.get("pid"), r.get("pid_started")) not in stopping], status, stats
            )

        reaped, runs = self._phase("reap", runs, reap)
        changes = {k: v for k, v in changes.items() if k in {r["id"] for r in runs}}
        for rid, (seen, fields) in reaped.items():
            before = changes.get(rid)
            changes[rid] = (before[0], {**before[1], **fields}) if before else (seen, fields)
        status = {r["id"]: r["status"] for r in runs}
        status.update(self._failed)
        self._block_and_prune(runs, status, changes, stats)
        if changes:
            self.commit(changes)
        if hasattr(self.executor, "tidy"):  # children reaped, trainers the ledger lost found (local)
            self.executor.tidy(self.checked_runs())
        if not paused:
            self._launches(stats)
        self.c.mark(None)
        return stats

    def _requests(self) -> None:
        """Clients' requests, in their own transaction. One that cannot be carried out (a damaged row it
        names) is logged and tried again next tick; the rest of the tick goes on."""
        try:
            with self.ledger.transaction() as tx:
                requests.carry_out(tx, self.c.files)
        except Exception as e:
            if machine_error(e):
                raise
            line = f"requests could not be carried out (tried again next tick): {_line(e)}"
            if line != self._last_request_error:
                self.c.log(line)
            self._last_request_error = line
        else:
            self._last_request_error = ""

    def _phase(self, what: str, runs: list[dict], step: Callable[[list[dict]], T]) -> tuple[T, list[dict]]:
        """``step(runs)``; an error while it handles one run (the run marked) fails that run with one line
        and the step runs again without it (at most once a run). The runs left, with the step's answer."""
        while True:
            self._current = None
            try:
                return step(runs), runs
            except Exception as e:
                rid = e.run_id if isinstance(e, BadRun) else self._current
                if rid is None or machine_error(e) or rid not in {r["id"] for r in runs}:
                    raise
                self._fail_for(rid, what, e)
                runs = [r for r in runs if r["id"] != rid]

    def _fail_for(self, rid: str, what: str, e: BaseException) -> None:
        """The one line an error handling run ``rid`` leaves: the run failed with it (a final run is only
        logged: it is never failed again)."""
        reason = e.reason if isinstance(e, BadRun) else f"the daemon could not {what} it: {_line(e)}"
        self._failed[rid] = Status.FAILED
        self.c.mark(None)
        if not self.fail_run(rid, reason):
            self.c.log(f"{rid}: {reason} (the run is final: left as it is)")

    def _launches(self, stats: dict) -> None:
        """Place and launch ready runs; a run whose launch fails is failed with the reason (the runs it
        would have shared its process with go back to the queue) and placing goes on."""
        for _ in range(1000):  # each pass fails one run more: at most that many passes
            self._current = None
            try:
                for launch in self.executor.launches(self.checked_runs()):
                    self.c.mark(launch.runs[0]["id"])
                    launch.ok = self._launch(launch)
                    if launch.ok:
                        stats["launched"] += len(launch.runs)
                self.c.mark(None)
                return
            except Exception as e:
                rid = e.run_id if isinstance(e, BadRun) else self._current
                if rid is None or machine_error(e) or rid in self._failed:  # (the same run again: not its own)
                    raise
                self._fail_for(rid, "launch", e)

    def _launch(self, launch: Launch) -> bool:
        """Claim the launch's runs (committed), start them, record what the start gave."""
        with self.ledger.transaction() as tx:
            rows = {r["id"]: tx.get_run(r["id"]) for r in launch.runs}
            claim = self.executor.claim(launch, rows)
            _apply(tx, claim.changes)
            if claim.placement is not None:
                tx.put(tx.db.table("placements"), *claim.placement)
        try:
            started, changes = self.executor.start(launch, claim)
        except Exception:  # the run it was readying is failed by the caller; the others wait again
            back = {"status": Status.QUEUED.value, "pid": None, "gpu": None, "worker": None}
            self.commit(
                {
                    r["id"]: (Status.RUNNING, {**back, "attempts": r.get("attempts") or 0})
                    for r in claim.runs
                    if r["id"] != self._current
                }
            )
            raise
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
            if r.get("stage") == RANK_STAGE and (changes.get(r["id"]) or ("", {}))[1].get("status") in FINAL:
                self._prune(r, runs, status, changes, stats)
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

    def _prune(self, rank: dict, runs: list[dict], status: dict[str, str], changes: Changes, stats: dict) -> None:
        """The prune step of one rank run that ended. A target run whose folder cannot take its pruned.json
        is pruned all the same, the error on its row (`prune.after_rank`); any other error ends the step
        for this rank run only: what it pruned so far stays pruned, every other run of the target trains
        (as after a rank run that failed: a lost saving, never a lost study), and the rank run's row says so."""
        try:
            prune.after_rank(rank, runs, status, changes, stats, self.c.files)
        except Exception as e:
            if machine_error(e):
                raise
            why = f"its prune step failed, every run not pruned yet trains: {_line(e)}"
            seen, fields = changes[rank["id"]]
            changes[rank["id"]] = (seen, {**fields, "error": " ".join(why.split())[:300]})
            self.c.log(f"{rank['id']}: {why}")

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
        missing = {r["id"]: m for r in runs if (m := [k for k in REQUIRED if not isinstance(r.get(k), str)])}
        if not problems and not missing:
            return runs
        out = []
        for r in runs:
            wrong = problems.get(r["id"]) or {}
            bad = {**wrong, **{k: f"{k} is missing" for k in missing.get(r["id"], ())}}
            if bad and r.get("status") not in FINAL:  # (a missing field stays missing: the ledger holds no None there)
                self.fail_run(r["id"], "ledger row damaged: " + "; ".join(bad.values()), clear=list(wrong))
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
