"""Client-side queue operations on the ledger and run folders. They never signal a run's process:
what needs one (cancelling a running run) is written as a request that the daemon carries out."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import plan as plans
from stilts_tui.contract import (
    AFTER_FIELD,
    CANCEL_GRACE_S,
    CANCELLABLE,
    DAEMON_LOG,
    RANK_STAGE,
    REPORT_TO_KEY,
    RETRYABLE,
    SPEC_FILE,
    TRAINED_STAGES,
    Status,
)
from stilts_tui.errors import PREFIX, Failure, UserError, failure_from_os
from stilts_tui.queue import requests
from stilts_tui.store import rundir
from stilts_tui.store.ledger import INT64, Ledger

ADD_LOCK = "add.lock"  # held for a whole `queue add`: two adds at once run one after the other


def add_plan(
    plan_path: str | Path, root: Path, priority: int = 0, max_runs: int | None = None
) -> tuple[plans.Plan, list, list[str]]:
    """Queue every run of a plan that the ledger does not hold yet.

    Each new run's folder (with its mark, :data:`rundir.ADDED_MARK`) and ``spec.json`` are written before
    the ledger records it, so a queued run always has a spec (and can be rerun by hand with
    ``python -m stilts_tui.train RUN_DIR``); a recorded run of the plan whose spec.json is gone gets it
    again. An add interrupted between the two leaves folders the ledger does not know: the next add of
    the plan removes those (:func:`_remove_orphans`). The whole add holds the runs-dir's add lock, so
    two adds at once (two versions of one plan) never remove each other's folders. The plan is recorded
    as it is now (file, ``on_finish``): the daemon never reads the file again.
    """
    check_priority(priority)
    plan, runs = plans.load_and_expand(plan_path, max_runs=max_runs)
    missing = plans.missing_data(plan, runs)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(missing[0] + more)
    ledger = Ledger(root)
    with _add_lock(root):
        other = (ledger.plans().get(plan.name) or {}).get("file")
        if other is not None and other != str(plan.path):
            raise UserError(
                f"{plan.path}: a plan named '{plan.name}' is already queued from {other}; two plan "
                "files with one name would mix their runs: give this one another name"
            )
        rows = {r["id"]: r for r in ledger.runs()}
        known = set(rows)
        # report_to is in no run id: where the plan's trackers changed, its queued runs' spec.json follow
        tracking = _tracking(plan)
        retrack = tracking != (ledger.plans().get(plan.name) or {}).get(REPORT_TO_KEY, {})
        for r in runs:
            d = rundir.run_dir(root, r.id)
            status = (rows.get(r.id) or {}).get("status")
            # a rank run's top (a done one's too: `queue retry RANK_RUN_ID` ranks again with it); trackers
            refresh = (r.stage == RANK_STAGE and status in (Status.QUEUED, Status.DONE)) or (
                retrack and status == Status.QUEUED
            )
            if r.id not in known or refresh or not (d / SPEC_FILE).exists():
                d.mkdir(parents=True, exist_ok=True)
                rundir.write_text_atomic(d / rundir.ADDED_MARK, r.id + "\n")
                rundir.write_json_atomic(d / SPEC_FILE, plans.spec_for(r, plan, root))
        added = ledger.add_runs([r.record() for r in runs if r.id not in known], priority=priority)
        _update_waits(ledger, rows, runs)
        ledger.set_plan(
            plan.name,
            {
                "file": str(plan.path),
                "updated": time.time(),
                "runs": len(runs),
                "on_finish": plan.finish_command(),
                **({REPORT_TO_KEY: tracking} if tracking else {}),
            },
        )
        _remove_orphans(root, plan.name, {r["id"] for r in ledger.runs()} | {r.id for r in runs})
    return plan, runs, added


def _tracking(plan: plans.Plan) -> dict[str, list[str]]:
    """Each trained stage's trackers (``intermediate.NAME``: its report_to), where it has any."""
    out = {f"{k}.{n}": plans.report_to(plan, k, n) for k in TRAINED_STAGES for n in getattr(plan, k)}
    return {k: v for k, v in out.items() if v}


def _update_waits(ledger: Ledger, rows: dict[str, dict], runs: list) -> None:
    """Known runs still queued wait for what the plan says now (a rank stage added or taken away); a run
    that is pruned, done or anything else is left as it is: an add never brings a pruned run back."""
    with ledger.transaction() as tx:
        for r in runs:
            row = rows.get(r.id)
            if row is not None and row.get("status") == Status.QUEUED and (row.get(AFTER_FIELD) or []) != r.after:
                tx.update_run(r.id, **{AFTER_FIELD: r.after or None})


@contextmanager
def _add_lock(root: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ADD_LOCK), timeout=600)
    try:
        lock.acquire()
    except Timeout:
        raise Failure(
            f"{root / ADD_LOCK}: another `queue add` has held it for 10 minutes; try again when it is done"
        ) from None
    except OSError as e:
        raise failure_from_os(e, "locking the runs-dir for an add") from None
    try:
        yield
    finally:
        lock.release()


def _remove_orphans(root: Path, plan_name: str, keep: set[str]) -> None:
    """Folders an interrupted add of this plan left, and nothing else: named as a run id that no ledger run
    claims, holding only what `queue add` writes (its mark and a spec.json of this plan for that id).
    A folder a user made (a saved spec, an export) has no mark, and is never removed."""
    for d in root.iterdir():
        if d.name in keep or not rundir.RUN_ID_RE.fullmatch(d.name) or d.is_symlink() or not d.is_dir():
            continue
        try:
            if sorted(x.name for x in d.iterdir()) != sorted([rundir.ADDED_MARK, SPEC_FILE]):
                continue  # something ran here, or it is not ours: keep it
            spec = rundir.read_json(d / SPEC_FILE, nofollow=True)
            mark = (rundir.read_text(d / rundir.ADDED_MARK, 1024, nofollow=True) or "").strip()
            if isinstance(spec, dict) and spec.get("plan") == plan_name and spec.get("run_id") == d.name == mark:
                shutil.rmtree(d)
        except (OSError, ValueError, RecursionError):
            continue


# ---- acting on runs (the CLI and the TUI call these; the daemon carries out what needs a process) --


def _select(ledger: Ledger, run_ids: list[str], plan: str | None, statuses: tuple[str, ...] | None) -> list[dict]:
    if run_ids:
        runs = []
        for rid in run_ids:
            r = ledger.get(rundir.check_id(rid))
            if r is None:
                raise UserError(f"no run '{rid}' in {ledger.path}")
            runs.append(r)
        return runs
    if plan is not None:
        if plan not in ledger.plans():
            raise UserError(f"no plan named '{plan}' in {ledger.path}")
        return [r for r in ledger.runs(plan=plan) if statuses is None or r["status"] in statuses]
    if statuses is not None:
        return [r for r in ledger.runs() if r["status"] in statuses]
    raise UserError("name run ids (or a plan)")


@dataclass
class CancelOutcome:
    """What `cancel` did: runs cancelled at once (nothing ran them), and running runs whose cancel it
    asked the daemon for (the daemon stops them); ``daemon`` says whether one serves the runs-dir now."""

    done: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    daemon: bool = False


def cancel(
    root: Path,
    run_ids: list[str],
    plan: str | None = None,
    grace: float = CANCEL_GRACE_S,
    wait: float = requests.WAIT_S,
) -> CancelOutcome:
    """Ask for queued, blocked and running runs to be cancelled: a request the queue's owner carries out
    (the daemon's next tick; with no daemon, this client under the daemon's lock). A queued or blocked
    run is cancelled at once (no process holds it); a running one gets ``cancel_requested`` (and
    ``cancel_grace``: seconds between SIGTERM and SIGKILL), and the daemon stops its process group or
    scancels its job, then records the cancel. No client ever signals a process or moves a status; with
    no daemon running a running run's cancel waits for the next one, which carries it out first."""
    ledger = Ledger(root)
    targets = [r["id"] for r in _select(ledger, run_ids, plan, tuple(CANCELLABLE))]
    outcome = requests.ask(ledger, "cancel", targets, {"grace": float(grace)}, wait=wait) if targets else {}
    out = CancelOutcome(done=list(outcome.get("done") or []), requested=list(outcome.get("requested") or []))
    if outcome.get("pending"):  # the daemon has not got to it yet: every target is still asked
        out.requested = targets
    out.daemon = bool(out.requested) and daemon_status(root) is not None
    return out


def wait_cancelled(root: Path, run_ids: list[str], timeout: float) -> list[str]:
    """Wait (polling the ledger) until the daemon has carried out the cancel of these runs; the runs
    whose request is still open after ``timeout`` seconds, or as soon as no daemon runs any more."""
    ledger = Ledger(root)
    deadline = time.time() + timeout
    for polls in itertools.count():
        rows = [(rid, ledger.get(rid) or {}) for rid in run_ids]
        open_ = [rid for rid, r in rows if r.get("status") == Status.RUNNING and r.get("cancel_requested")]
        if not open_ or time.time() > deadline or (polls % 10 == 9 and daemon_status(root) is None):
            return open_
        time.sleep(0.1)


def retry(
    root: Path,
    run_ids: list[str],
    failed: bool = False,
    pruned: bool = False,
    plan: str | None = None,
    wait: float = requests.WAIT_S,
) -> list[str]:
    """Ask for failed, cancelled (or blocked) runs to be queued again, as fresh attempts; ``pruned``: every
    pruned run (of ``plan``) to train (a pruned run is otherwise brought back only by its id). A run
    brought back from pruned keeps its pruned.json, marked ``retried``: no rank run prunes it again. The
    queue's owner carries the request out (`queue/requests.py`); the runs it queued again."""
    ledger = Ledger(root)
    wanted = tuple(s for s, on in ((Status.FAILED, failed), (Status.PRUNED, pruned)) if on) or None
    targets = [
        r["id"] for r in _select(ledger, run_ids, plan, wanted) if r["status"] in RETRYABLE or _reranks(r, run_ids)
    ]
    if not targets:
        return []
    return list(requests.ask(ledger, "retry", targets, wait=wait).get("done") or [])


def _reranks(r: dict, run_ids: list[str]) -> bool:
    """A done rank run named by its id: retrying it ranks again (docs/plans.md), its pruned runs wait on it."""
    return r["id"] in run_ids and r.get("stage") == RANK_STAGE and r["status"] == Status.DONE


def check_priority(priority: object) -> int:
    """A priority the ledger keeps: an integer of 64 bits (beyond, the daemon would fail the run)."""
    if not (isinstance(priority, int) and not isinstance(priority, bool) and -INT64 <= priority < INT64):
        raise UserError(f"priority: expected an integer from -2^63 to 2^63-1, got {str(priority)[:40]}")
    return priority


def set_priority(
    root: Path, run_ids: list[str], priority: int | None = None, delta: int = 0, plan: str | None = None
) -> list[str]:
    """Set (or shift by ``delta``) the priority of runs; a value beyond 64 bits is refused, nothing changed.
    A request the queue's owner carries out; the runs named."""
    ledger = Ledger(root)
    targets = _select(ledger, run_ids, plan, None)
    for r in targets:  # checked here: a refused value changes nothing
        old = r.get("priority", 0)
        check_priority(priority if priority is not None else (old if isinstance(old, int) else 0) + delta)
    if targets:
        requests.ask(ledger, "priority", [r["id"] for r in targets], {"priority": priority, "delta": delta})
    return [r["id"] for r in targets]


def set_paused(root: Path, paused: bool) -> None:
    """Pause or resume launching (runs already running go on): a request the queue's owner carries out."""
    requests.ask(Ledger(root), "pause", [], {"paused": paused})


# ---- the daemon ---------------------------------------------------------------------------------


def daemon_status(root: Path) -> dict | None:
    from stilts_tui.queue.daemon import running_daemon

    return running_daemon(root)


def start_daemon(root: Path, args: list[str], wait: float = 15.0) -> dict:
    """Start the daemon detached (own session, output to <runs-dir>/daemon.log); its daemon.json."""
    from stilts_tui.queue.daemon import read_info, running_daemon

    other = running_daemon(root)
    if other is not None:
        raise UserError(f"a daemon is already running on {root} (pid {other.get('pid')})")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / DAEMON_LOG, "ab") as log:
        proc = subprocess.Popen(  # an argument list, never a shell
            [sys.executable, "-m", "stilts_tui.queue.daemon", "--runs-dir", str(root), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + wait
    while time.time() < deadline:
        info = read_info(root)
        if info is not None and info.get("pid") == proc.pid and proc.poll() is None:
            return info
        if proc.poll() is not None:
            raise Failure(f"the daemon did not start: {_why_not_started(root, proc.returncode)}")
        time.sleep(0.05)
    raise UserError(f"the daemon did not start within {wait:.0f} s (see {root / DAEMON_LOG})")


def _why_not_started(root: Path, code: int) -> str:
    """The daemon's last error line in daemon.log, or what kept it from writing one."""
    lines = (rundir.read_tail(root / DAEMON_LOG) or "").strip().splitlines()
    tail = [x for x in lines if x.startswith(PREFIX)][-1:]
    if tail:
        return tail[0].removeprefix(PREFIX)

    if shutil.disk_usage(root).free < 1 << 20:
        return f"no space left on the device holding {root} (free some space and start it again)"
    return lines[-1] if lines else f"it exited with status {code} and wrote nothing to {root / DAEMON_LOG}"


def stop_daemon(root: Path, wait: float = 15.0, force: bool = False) -> int | None:
    """SIGTERM (``force``: SIGKILL) the daemon and wait until its process is gone; runs go on (a new daemon
    adopts them). Its pid, or None if none ran; a :class:`Failure` saying what was sent and what to do when
    it is still there after ``wait`` seconds (see `queue.daemon.stop`).

    Only a process checked to be this runs-dir's daemon (its pid, its start time, its command line) is
    signalled: a stale daemon.json's pid may belong to any process by now."""
    from stilts_tui.queue.daemon import stop

    return stop(root, wait, force)
