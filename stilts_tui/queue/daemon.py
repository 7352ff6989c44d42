"""The queue daemon: one per runs-dir, and the only process that signals runs. Each tick it carries
out clients' requests (cancels), reaps ended runs, blocks and unblocks children, and launches ready
runs, through an executor (local processes or Slurm jobs: queue/executor.py). It owns no state of its
own: everything is in the ledger and the run folders, so a restarted daemon adopts the processes still
alive and carries out the requests written while none ran.

    python -m stilts_tui.queue.daemon --runs-dir DIR [--gpus 0,1] [--per-gpu N] [--mps] ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from stilts_tui.contract import (
    AFTER_FIELD,
    BLOCKING,
    CANCEL_FILE,
    CANCEL_GRACE_S,
    DAEMON_FILE,
    DAEMON_LOCK,
    DAEMON_LOG,
    DAEMON_TICKS_FILE,
    EVENTS_FILE,
    FINAL,
    PRUNED_FILE,
    PRUNED_WHY_FIELD,
    RANK_METHOD,
    RANK_STAGE,
    RESULT_FILE,
    SPEC_FILE,
    TRAIN_LOG,
    UNBLOCKING,
    WORKERS_DIR,
    Status,
    pruned_why,
)
from stilts_tui.errors import UserError, first_line, report
from stilts_tui.queue import checks, mps, notify, placement
from stilts_tui.queue.executor import Changes, Executor, new_stats
from stilts_tui.queue.executors import local
from stilts_tui.queue.executors import slurm as slurm_exec
from stilts_tui.queue.settings import EXECUTORS, Settings, check_interval, help_of, parse_fuse, parse_gpus
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger, LedgerError, run_problems

MAX_ARRAY = placement.MAX_ARRAY  # --fuse auto: at most this many runs in one array
ROW_DEFAULTS = {"attempts": 0, "priority": 0, "order": 0, "added": 0}  # a damaged row field is reset to these
MAX_BACKOFF_S = 60.0  # a tick that keeps failing is retried at most this far apart


def _num(x: object) -> float:
    return x if checks.is_num(x) else 0.0


class BadRun(Exception):
    """A run the daemon cannot handle (a damaged spec.json or result.json, a ledger row of the wrong
    types): that run is failed with the one-line reason; the queue goes on."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"{run_id}: {reason}")
        self.run_id, self.reason = run_id, reason


def lock_path(root: Path) -> Path:
    return root / DAEMON_LOCK


def info_path(root: Path) -> Path:
    return root / DAEMON_FILE


def running_daemon(root: Path) -> dict | None:
    """The daemon serving ``root`` (its daemon.json), or None when none holds the lock. Where the lock
    cannot be taken at all (a read-only runs-dir), daemon.json is believed only if its process checks out."""
    lock = FileLock(str(lock_path(root)), timeout=0)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        return read_info(root) or {"pid": None}
    except OSError:
        info = read_info(root)
        return info if info is not None and is_daemon(info, root) else None
    lock.release()
    # daemon.lock deleted under a live daemon: the lock was free, yet daemon.json's process checks out
    info = read_info(root)
    return info if info is not None and is_daemon(info, root) else None


def _file_id(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_info(root: Path) -> dict | None:
    """daemon.json, if it holds an object."""
    try:
        info = json.loads(info_path(root).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_daemon(info: dict, root: Path) -> bool:
    """Is the process daemon.json names this runs-dir's daemon: same pid, same process start time, and
    a command line that is the daemon's for this runs-dir? (A stale file's pid may now be anyone's.)"""
    pid = info.get("pid")
    if not checks.is_int(pid) or not 0 < pid < 2**22:
        return False
    try:
        p = psutil.Process(pid)
        started, cmd = p.create_time(), p.cmdline()
    except (psutil.Error, OSError):
        return False
    if "pid_started" in info and not (checks.is_num(info["pid_started"]) and abs(started - info["pid_started"]) <= 1.0):
        return False  # (a daemon.json from before pid_started was recorded is judged by its command line)
    if "stilts_tui.queue.daemon" not in cmd or "--runs-dir" not in cmd[:-1]:
        return False
    try:
        where = Path(p.cwd()) / cmd[cmd.index("--runs-dir") + 1]
        return where.resolve() == Path(root).resolve()
    except (psutil.Error, OSError):
        return False


class Daemon:
    """The queue's one loop: each `tick` reads the ledger, carries out what clients asked (cancels),
    reaps through the executor, blocks and unblocks children, then places and launches ready runs
    through the executor (`LocalExecutor` or `SlurmExecutor`, see queue/executor.py)."""

    def __init__(self, root: Path, settings: Settings, executor: Executor | None = None):
        self.root, self.s = Path(root), settings
        self.ledger = Ledger(self.root)
        self._specs: dict[str, dict] = {}
        self._ignored: set[str] = set()  # final runs whose damaged result.json was logged once
        self._lock: FileLock | None = None  # daemon.lock, held while serving
        self._lock_id: tuple | None = None  # (device, inode) of the lock file held
        self._stop = False
        self._current: str | None = None  # the run the tick is handling: an error there is that run's
        self.mps_dir: Path | None = None
        self.log_file = open(self.root / DAEMON_LOG, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.grouper = placement.Grouper(self.spec, self.s.fuse, self.s.worker_runs, self.log)
        if executor is None:
            executor = slurm_exec.SlurmExecutor(self) if self.s.executor == "slurm" else local.LocalExecutor(self)
        self.executor: Executor = executor

    def log(self, text: str) -> None:
        try:
            self.log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
        except (OSError, ValueError):  # a full disk must not stop the queue through its log
            pass

    def mark(self, run_id: str | None) -> None:
        """The run the tick handles now: an error that is not the machine's is blamed on it."""
        self._current = run_id

    # -- helpers ----------------------------------------------------------------------------------

    def spec(self, run_id: str) -> dict:
        """The run's spec.json, checked; a missing, unreadable or damaged one is a :class:`BadRun`."""
        if run_id not in self._specs:
            path = self.run_path(run_id, SPEC_FILE)
            try:
                spec = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise BadRun(
                    run_id,
                    f"{path} is missing (`queue add` of a version of its plan that holds the run writes it again)",
                ) from None
            except (OSError, ValueError, RecursionError) as e:
                raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
            problem = checks.spec_problem(spec)
            if not problem and spec.get("run_id", run_id) != run_id:
                problem = f"spec.json names run {str(spec.get('run_id'))[:40]!r}, not the folder's {run_id}"
            if problem:
                raise BadRun(run_id, problem)
            self._specs[run_id] = spec
        return self._specs[run_id]

    def run_path(self, run_id: str, name: str) -> Path:
        """A file of a run's folder; an id that is not a run id (it would name a path outside the
        runs-dir) is a :class:`BadRun`."""
        try:
            return rundir.run_dir(self.root, run_id) / name
        except UserError as e:
            raise BadRun(str(run_id), str(e)) from None

    def result(self, run_id: str) -> dict | None:
        """The run's result.json, checked; None while there is none. A damaged one is a :class:`BadRun`."""
        path = self.run_path(run_id, RESULT_FILE)
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
        problem = checks.result_problem(res)
        if problem:
            raise BadRun(run_id, problem)
        return res

    def final_result(self, run_id: str) -> dict | None:
        """A finished run's result, for what it measured: a damaged one is read as none (logged once).
        A final run is never failed again, so its record must not stop a tick."""
        try:
            return self.result(run_id)
        except BadRun as e:
            if run_id not in self._ignored:
                self._ignored.add(run_id)
                self.log(f"{run_id}: its result.json is ignored (the run is final): {e.reason}")
            return None

    def retire_result(self, run_id: str, attempt: int) -> None:
        """Keep a finished attempt's result beside the run, out of the way of the next attempt."""
        rundir.retire_result(self.run_path(run_id, RESULT_FILE).parent, attempt)

    def last_line(self, run: dict) -> str:
        """ ": " and the last line its worker or the run wrote, for an error; "" when there is none."""
        worker = run.get("worker")
        paths = (
            [self.root / WORKERS_DIR / f"{worker}.log"]
            if isinstance(worker, str) and rundir.WORKER_RE.fullmatch(worker)
            else []
        )
        for path in [*paths, self.run_path(run["id"], TRAIN_LOG)]:
            try:
                lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
            except OSError:
                continue
            if lines:
                return f": {lines[-1].strip()[:200]}"
        return ""

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
                r = {**r, **{k: ROW_DEFAULTS.get(k) for k in bad if k != "id"}, "status": "failed"}
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
        if cur.get("status") == "running":
            if cur.get("job_id") and "job_id" not in bad:
                try:
                    slurm_exec.cancel([cur["job_id"]], wait=0)
                except UserError as e:
                    self.log(f"{run_id}: scancel failed: {e}")
            elif cur.get("pid") and "pid" not in bad and "pid_started" not in bad:
                local.stop(cur["pid"], cur.get("pid_started"), grace=5)
        with self.ledger.transaction() as tx:
            now = tx.get_run(run_id)
            if now is not None and now.get("status") not in FINAL:
                reset = {k: ROW_DEFAULTS.get(k) for k in [*(clear or []), *bad] if k != "id"}
                tx.update_run(run_id, **reset, status="failed", error=reason, finished=time.time(), pid=None)
        self._specs.pop(run_id, None)
        self.grouper.forget(run_id)
        self.log(f"{run_id}: failed by the daemon: {reason}")
        return True

    # -- one tick ---------------------------------------------------------------------------------

    def tick(self) -> dict:
        """Read the ledger; carry out clients' requests; reap; block/unblock; place and launch ready runs
        (not while paused). The executor answers for processes and jobs. Returns counts of what it did."""
        stats = new_stats()
        runs = self.checked_runs()
        self.executor.observe(runs)
        if self._carry_out_requests(runs, stats):
            runs = self.checked_runs()
        status = {r["id"]: r["status"] for r in runs}
        # a process being stopped for a cancel is the requests' step's, with every run it holds
        stopping = {
            (r["pid"], r.get("pid_started"))
            for r in runs
            if r["status"] == "running" and r.get("cancel_requested") and r.get("pid")
        }
        changes = self.executor.reap(
            [r for r in runs if (r.get("pid"), r.get("pid_started")) not in stopping], status, stats
        )
        self._block_and_commit(runs, status, changes, stats)
        if self.ledger.meta("paused"):
            return stats
        for launch in self.executor.launches(self.checked_runs()):
            self.mark(launch.runs[0]["id"])
            launch.ok = self.executor.launch(launch)
            if launch.ok:
                stats["launched"] += len(launch.runs)
        self.mark(None)
        return stats

    def _carry_out_requests(self, runs: list[dict], stats: dict) -> bool:
        """Cancels that clients asked for (``cancel_requested`` on a running run). A run that wrote its
        result before the cancel is carried out keeps it (the request is dropped, the reap records the
        result). A run sharing its process with others (a fused array, or a worker's runs in turn) gets
        the request file its trainer reads before it begins and at each step, so the process and the
        other runs go on: one that has not begun is cancelled at once, one that trains is cancelled once
        its trainer has written its cancelled result (signals only if it has not within the grace).
        A run alone in its process: SIGTERM to its group (Slurm: scancel), SIGKILL once the grace has
        passed, cancelled once the process is gone. Never waits. True if anything was recorded."""
        changes: Changes = {}
        running = [r for r in runs if r["status"] == "running"]
        for r in running:
            if not r.get("cancel_requested"):
                continue
            self.mark(r["id"])
            mates = [
                o
                for o in running
                if o is not r
                and r.get("pid")
                and o.get("pid") == r.get("pid")
                and o.get("pid_started") == r.get("pid_started")
                and not o.get("cancel_requested")
            ]
            ended = self._ended(r)
            if ended is not None:
                changes[r["id"]] = (
                    "running",
                    ended if ended.get("status") else {"cancel_requested": None, "cancel_signalled": None},
                )
                continue
            if self.executor.alive(r):
                if mates and not self._past_grace(r):
                    self._ask_trainer(r, changes, stats)
                else:
                    self._signal(r, changes)
                continue
            changes[r["id"]] = ("running", self._cancelled(r, stats))
            for m in mates:  # they waited in the stopped worker: back to the queue, the attempt not counted
                if self.result(m["id"]) is None:
                    changes[m["id"]] = (
                        "running",
                        {
                            "status": "queued",
                            "pid": None,
                            "gpu": None,
                            "attempts": max(0, (m.get("attempts") or 1) - 1),
                        },
                    )
        self.mark(None)
        if changes:
            self._commit(changes)
        return bool(changes)

    def _ended(self, r: dict) -> dict | None:
        """A cancelled run whose attempt already ended: the cancelled fields when its trainer stopped it
        for the request, ``{}`` when it finished first (its result is kept: the reap records it), else None."""
        res = rundir.read_json(self.run_path(r["id"], RESULT_FILE))  # the reap checks it; here: whose is it
        if not res or res.get("status") not in (*checks.RESULT_STATUSES, Status.CANCELLED):
            return None
        if res["status"] == Status.CANCELLED:
            return self._cancelled(r, {"cancelled": 0})
        self.log(f"{r['id']}: cancel asked after it ended ({res['status']}): its result is kept")
        return {}

    def _ask_trainer(self, r: dict, changes: Changes, stats: dict) -> None:
        """The request file for a run that shares its process; one still waiting its turn is cancelled now
        (the worker skips it), one that trains when its trainer says so (``_ended``)."""
        request = self.run_path(r["id"], CANCEL_FILE)
        if not request.exists():
            request.touch()
            self.log(f"{r['id']}: cancel asked: its trainer drops it, the other runs of its process go on")
        if r.get("fused") or not self._began(r):  # an array drops it at its next step; a waiting one never begins
            changes[r["id"]] = ("running", self._cancelled(r, stats))

    def _past_grace(self, r: dict) -> bool:
        grace = _num(r.get("cancel_grace")) if r.get("cancel_grace") is not None else CANCEL_GRACE_S
        return time.time() - _num(r.get("cancel_requested")) > grace + 5.0

    def _began(self, r: dict) -> bool:
        """Has the run's process begun training it (a start event from that pid in events.jsonl)? A run
        that waits in a worker has none yet; one from an earlier attempt names another pid."""
        try:
            lines = self.run_path(r["id"], EVENTS_FILE).read_text(errors="replace").splitlines()
        except OSError:
            return False
        for line in reversed(lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "start":
                return event.get("pid") == r.get("pid")
        return False

    def _signal(self, r: dict, changes: Changes) -> None:
        """The next step of stopping a cancelled run still alive: SIGTERM once, SIGKILL after the grace."""
        grace = _num(r.get("cancel_grace")) if r.get("cancel_grace") is not None else CANCEL_GRACE_S
        if not r.get("cancel_signalled"):
            self.executor.cancel(r)
            changes[r["id"]] = ("running", {"cancel_signalled": time.time()})
            self.log(f"{r['id']}: cancel asked: stopping it (grace {grace:g} s)")
        elif time.time() - _num(r["cancel_signalled"]) >= grace:
            self.executor.cancel(r, kill=True)

    def _cancelled(self, r: dict, stats: dict) -> dict:
        stats["cancelled"] += 1
        self.log(f"{r['id']}: cancelled")
        return {
            "status": "cancelled",
            "finished": time.time(),
            "pid": None,
            "cancel_requested": None,
            "cancel_signalled": None,
        }

    def _block_and_commit(self, runs: list[dict], status: dict[str, str], changes: Changes, stats: dict) -> None:
        """Block queued children of a failed, cancelled or blocked parent; unblock blocked children of a
        parent queued again (retried), running or done; then commit the tick's decisions."""
        for rid, (_, f) in changes.items():
            if "status" in f:
                status[rid] = f["status"]
        for r in runs:
            if r["stage"] == RANK_STAGE and (changes.get(r["id"]) or ("", {}))[1].get("status") in FINAL:
                self._after_rank(r, runs, status, changes, stats)
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
            changes[r["id"]] = (r["status"], {**changes.get(r["id"], ("", {}))[1], "status": new})
            status[r["id"]] = new
            stats["blocked" if new == Status.BLOCKED else "unblocked"] += 1
        if changes:
            self._commit(changes)

    def _after_rank(self, rank: dict, runs: list[dict], status: dict[str, str], changes: Changes, stats: dict) -> None:
        """A rank run ended this tick. Done: the target's queued runs whose starting point it ranked below
        the top K intermediates are pruned (none always trains), each with the ranking in its folder
        (``pruned.json``) and the reason in the ledger, in this tick's commit, before any of them could be
        launched. Failed or cancelled: nothing is pruned, every run trains (a failed saving is not a lost
        study). A run a person brought back from pruned (``retried`` in its pruned.json) is never pruned again."""
        rid, name = rank["id"], rank.get("name")
        res = self.final_result(rid) if status[rid] == Status.DONE else None
        ranking = res.get("ranking") if isinstance(res, dict) else None
        top = res.get("top") if isinstance(res, dict) else None
        if not isinstance(ranking, list) or not checks.is_int(top) or not all(isinstance(e, dict) for e in ranking):
            self.log(f"{rid}: rank run of {name} {status[rid]} without a ranking: nothing pruned, every run trains")
            return
        starts = [e.get("run_id") for e in ranking if e.get("run_id")]
        kept, of = set(starts[:top]), len(ranking)
        now, n = time.time(), 0
        for r in runs:
            parent = r.get("parent")
            if rid not in (r.get(AFTER_FIELD) or ()) or status[r["id"]] != Status.QUEUED or parent in kept:
                continue
            entry = next((e for e in ranking if parent is not None and e.get("run_id") == parent), None)
            if entry is None or self._brought_back(r["id"]):
                continue  # a starting point not ranked (no weights): its run waits on its parent as ever
            why = pruned_why(entry.get("rank"), of, str(name), top)
            record = {"by": rid, "target": name, "method": RANK_METHOD, "top": top, "start": entry.get("start")}
            rundir.write_json_atomic(
                self.run_path(r["id"], PRUNED_FILE), {**record, "why": why, "ranking": ranking, "t": now}
            )
            changes[r["id"]] = (Status.QUEUED, {"status": Status.PRUNED.value, PRUNED_WHY_FIELD: why, "finished": now})
            status[r["id"]] = Status.PRUNED
            n += 1
        stats["pruned"] += n
        self.log(
            f"{rid}: rank run of {name} done: the top {top} of {len(starts)} intermediate starting points kept "
            f"(and none), {n} runs pruned"
        )

    def _brought_back(self, run_id: str) -> bool:
        """Whether a person retried this run out of pruned (its pruned.json says so)."""
        record = rundir.read_json(self.run_path(run_id, PRUNED_FILE))
        return isinstance(record, dict) and record.get("retried") is not None

    def _commit(self, changes: Changes) -> None:
        """Apply the tick's decisions to runs whose status is still what the decision saw."""
        with self.ledger.transaction() as tx:
            for rid, (seen, fields) in changes.items():
                cur = tx.get_run(rid)
                if cur is not None and (cur["status"] == seen or not seen):
                    tx.update_run(rid, **fields)

    # -- lifetime ---------------------------------------------------------------------------------

    def start_mps(self) -> None:
        """Run MPS for the daemon's lifetime where it can start; never raises. On failure the daemon goes
        on without MPS and says why (daemon.log, ``daemon status``, ``doctor``)."""
        try:
            state, notes = mps.start(self.root)
        except Exception as e:  # noqa: BLE001 - MPS is an optimisation: nothing in it may end the daemon
            state, notes = mps.State(False, f"{type(e).__name__}: {e}"), []
        for line in notes:
            self.log(line)
        self.mps_dir = mps.base_dir(self.root) if state.on else None
        mps.write_status(self.root, mps.stamp(state))
        self.log(
            f"MPS on: {state.reason} (pipe {state.pipe_dir})"
            if state.on
            else f"MPS off, runs go on without it: {state.reason}"
        )

    def stop_mps(self) -> None:
        """Ask the MPS control daemon to quit; never raises."""
        if self.mps_dir is None:
            return
        try:
            how = mps.stop(self.mps_dir)
            mps.write_status(self.root, mps.stamp(mps.State(False, f"the daemon stopped it ({how})")))
            self.log(f"MPS control daemon: {how}")
        except Exception as e:  # noqa: BLE001 - a daemon on its way out must get there
            self.log(f"MPS stop failed: {type(e).__name__}: {e}")
        self.mps_dir = None

    def serve(self) -> int:
        """Hold the runs-dir's lock and tick until SIGTERM. Nothing a tick meets ends the daemon; its
        clean-up (MPS, daemon.json) runs whatever ends it."""
        lock = self._lock = FileLock(str(lock_path(self.root)), timeout=0)
        try:
            lock.acquire()
            self._lock_id = _file_id(lock_path(self.root))
        except Timeout:
            other = running_daemon(self.root) or {}
            return report(UserError(f"a daemon is already running on {self.root} (pid {other.get('pid')})"))
        except OSError as e:
            return report(e)
        try:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
            signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
            if self.s.mps:
                self.start_mps()
            me = psutil.Process()
            info = {
                "pid": me.pid,
                "pid_started": me.create_time(),
                "cmdline": me.cmdline(),
                "started": time.time(),
                "settings": asdict(self.s),
            }
            rundir.write_json_atomic(info_path(self.root), info)
            (self.root / DAEMON_TICKS_FILE).unlink(missing_ok=True)  # this daemon counts from 0
            self.log(f"daemon started (pid {os.getpid()}, settings {asdict(self.s)})")
            self.loop(notify.Notifier(self.root, self.log))  # --on-finish and plans' on_finish
            self.log("daemon stopping (running runs go on; a new daemon adopts them)")
            return 0
        except (UserError, OSError) as e:  # could not start: one line
            self.log(f"daemon could not start: {first_line(e)}")
            return report(e)
        finally:
            try:
                self.stop_mps()
            except Exception as e:  # noqa: BLE001 - clean-up goes on
                self.log(f"stopping MPS failed: {first_line(e)}")
            if (read_info(self.root) or {}).get("pid") == os.getpid():
                info_path(self.root).unlink(missing_ok=True)
            self._lock.release()

    def loop(self, notifier: notify.Notifier | None = None) -> None:
        """Tick every interval. A damaged run is failed and the tick goes on; any other error is logged
        with its traceback (once while it repeats) and the tick retried with back-off. After each tick the
        notifier (never raising) runs the commands of plans that finished."""
        failures, last, ticks = 0, "", 0
        while not self._stop:
            t = time.time()
            delay = self.s.interval
            self.hold_lock()
            if self._stop:
                break
            try:
                stats = self.tick()
                if notifier is not None:
                    notifier.check(self.ledger)
                if any(stats.values()):
                    self.log(f"tick {1000 * (time.time() - t):.0f} ms: {stats}")
                if failures:
                    self.log(f"tick works again after {failures} failures")
                failures, last = 0, ""
            except BadRun as e:
                self._current = None
                if self._blame(e.run_id, e.reason):
                    delay = 0.05  # that run is out of the way: go on at once
                else:  # a final run's record (nothing to fail) or an unwritable ledger: back off
                    failures += 1
                    line = f"{e.run_id}: {e.reason}"
                    if line != last:
                        self.log(f"tick failed: {line}")
                    last = line
            except Exception as e:  # noqa: BLE001 - nothing a tick meets may end the daemon
                run_id, self._current = self._current, None
                failures += 1
                line = f"{type(e).__name__}: {first_line(e)}"
                if line != last:
                    self.log(f"tick failed: {line}\n{traceback.format_exc().rstrip()}")
                else:
                    self.log(f"tick failed again ({failures} in a row): {line}")
                last = line
                if run_id and not isinstance(e, (OSError, LedgerError)):  # the run's data, not the machine
                    self._blame(run_id, f"the daemon could not handle this run: {line}")
            if failures:
                delay = min(MAX_BACKOFF_S, self.s.interval * 2 ** min(failures, 10))
            ticks = self._count_tick(ticks)
            deadline = t + delay
            while not self._stop and time.time() < deadline:
                time.sleep(min(0.1, max(0.01, deadline - time.time())))

    def _count_tick(self, ticks: int) -> int:
        """Record that one more tick is over (``daemon.ticks``): what a client waits on to know the daemon
        has looked at the queue since a moment (a test's "nothing happens", the app's refresh)."""
        try:
            (self.root / DAEMON_TICKS_FILE).write_text(str(ticks + 1))
        except OSError:
            pass  # a full disk: the tick itself says so
        return ticks + 1

    def hold_lock(self) -> None:
        """Keep holding daemon.lock as a file others can see: one deleted (or replaced) under the daemon
        would let a second daemon start. The daemon locks the new file; if another daemon already holds
        it, this one stops (its runs go on, and that daemon adopts them)."""
        if self._lock is None:
            return
        path = lock_path(self.root)
        now = _file_id(path)
        if now is not None and now == self._lock_id:
            return
        fresh = FileLock(str(path), timeout=0)
        try:
            fresh.acquire()
        except Timeout:
            other = read_info(self.root) or {}
            if other.get("pid") not in (None, os.getpid()) and is_daemon(other, self.root):
                self.log(f"{path} was removed and daemon {other.get('pid')} holds the new one: stopping")
                self._stop = True
            return  # a client checking the lock: try again next tick
        except OSError as e:
            self.log(f"{path} was removed and cannot be made again ({first_line(e)})")
            return
        self._lock.release()
        self._lock, self._lock_id = fresh, _file_id(path)
        self.log(f"{path} was removed under the daemon: locked it again")

    def _blame(self, run_id: str, reason: str) -> bool:
        """Fail one run; False if it is final or even that failed (the ledger cannot be written): the tick
        backs off."""
        try:
            return self.fail_run(run_id, reason)
        except Exception as e:  # noqa: BLE001
            self.log(f"{run_id}: could not mark it failed ({first_line(e)}); reason was: {reason}")
            return False


def arg_parser() -> argparse.ArgumentParser:
    """The daemon's command line: one flag a setting, each made from queue/settings.py's table of flags."""
    from stilts_tui.queue import settings as flags

    ap = argparse.ArgumentParser(prog="python -m stilts_tui.queue.daemon")
    ap.add_argument("--runs-dir", type=Path, default=None)
    flags.add_arguments(ap)
    return ap


def parse_settings(argv: list[str] | None) -> tuple[Path, Settings]:
    """The runs-dir and settings a command line gives (bad ones: UserError or ValueError)."""
    from stilts_tui.queue import settings as flags

    a = vars(arg_parser().parse_args(argv))
    return rundir.runs_dir(a["runs_dir"]), flags.from_arguments(a)


def main(argv: list[str] | None = None) -> int:
    try:
        return Daemon(*parse_settings(argv)).serve()
    except (UserError, OSError, ValueError) as e:  # bad settings, an unwritable runs-dir: one line
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
