"""The Slurm executor: each run is one batch job. Every Slurm command is an argument list (never a
shell); the run's ``result.json`` stays the ground truth, Slurm's job state says what happened when
there is none. Accounting is often off on clusters, so state comes from ``squeue`` and ``scontrol``
(finished jobs leave both after MinJobAge), and ``sacct`` only where it answers. `SlurmExecutor` (at the
end) is the daemon's executor (see `queue/executor.py`)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stilts_tui.contract import BLOCKING, CANCEL_FILE, RESULT_STATUSES, TRAIN_LOG, Status, ledger_status
from stilts_tui.errors import UserError
from stilts_tui.plan.slurm import (  # the Slurm rules, in one module
    MANAGED,  # noqa: F401 - re-exported for the CLI and daemon
    option_problem,  # noqa: F401 - re-exported for the CLI and daemon
    resolved,
    resource_args,
    settings_problem,
)
from stilts_tui.queue import checks, placement
from stilts_tui.queue.executor import Changes, Claim, Context
from stilts_tui.queue.placement import Launch
from stilts_tui.store import rundir

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
}
NEVER = "DependencyNeverSatisfied"  # the reason Slurm gives a child whose parent failed
TIMEOUT_S = 60


# pending reasons that do not clear by waiting: {reason prefix: what to change}
STUCK = {
    "PartitionConfig": "asks for more CPUs, memory or GPUs than a node of its partition has: lower --cpus-per-run, "
    "--mem or --gpus-per-run (or the plan's [slurm] cpus, mem, gpus)",
    "PartitionTimeLimit": "asks for more time than its partition allows: lower --time (or the plan's [slurm] time)",
    "PartitionNodeLimit": "asks for more nodes than its partition allows: check --sbatch-arg and the plan's [slurm]",
    "PartitionDown": "waits on a partition that is down: choose another --partition or ask the cluster's admins",
    "PartitionInactive": "waits on an inactive partition: choose another --partition or ask the cluster's admins",
    "ReqNodeNotAvail": "needs nodes that are down, drained or reserved (sinfo shows them): choose another "
    "--partition or ask the cluster's admins",
    "BadConstraints": "asks for features or resources no node has: check --sbatch-arg (--constraint) and "
    "--gpus-per-run",
    "InvalidAccount": "names an account Slurm does not know: fix --account (or the plan's [slurm] account)",
    "InvalidQOS": "names a QOS Slurm does not know: fix --qos (or the plan's [slurm] qos)",
    "AccountNotAllowed": "uses an account the partition refuses: fix --account or --partition",
    "QOSNotAllowed": "uses a QOS the partition refuses: fix --qos or --partition",
    "QOSMaxCpuPerJobLimit": "asks for more CPUs than its QOS allows a job: lower --cpus-per-run or change --qos",
    "QOSMaxGRESPerJob": "asks for more GPUs than its QOS allows a job: lower --gpus-per-run or change --qos",
    "QOSMaxMemoryPerJob": "asks for more memory than its QOS allows a job: lower --mem or change --qos",
    "QOSMaxWallDurationPerJobLimit": "asks for more time than its QOS allows: lower --time or change --qos",
    "JobHeldAdmin": "is held by an administrator: ask the cluster's admins (scontrol release)",
}


class SlurmError(UserError):
    """A Slurm command failed (its one-line message)."""


def stuck_hint(state: JobState) -> str | None:
    """For a pending job whose reason never clears by waiting: one line with the reason and what to change."""
    for reason, hint in STUCK.items():
        if state.reason.startswith(reason):
            return f"cannot start ({state.reason}): it {hint}"
    return None


@dataclass
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ... ("UNKNOWN": Slurm no longer knows the job)
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def slurm_command(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: the Slurm executor needs the Slurm client commands on PATH")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer within {timeout:.0f} s") from None


def one_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stderr or out.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit status {out.returncode}"


def write_script(run_dir: Path, module: str) -> Path:
    """The job's batch script: run the trainer (or the synthesis) on this run folder. Paths are quoted;
    no setting from a plan or the command line is ever written into it (those go to sbatch as arguments)."""
    script = run_dir / "slurm.sh"
    rundir.write_text_atomic(  # never through a link planted at slurm.sh
        script,
        "#!/bin/sh\n"
        "# written by stilts-tui's Slurm executor; the same run by hand: python -m "
        f"{module} {shlex.quote(str(run_dir))}\n"
        "export PYTHONUNBUFFERED=1\n"
        f"exec {shlex.quote(sys.executable)} -m {module} {shlex.quote(str(run_dir))}\n",
    )
    return script


def sbatch_args(run_id: str, run_dir: Path, settings: dict, dependency: str | None) -> list[str]:
    """sbatch's argument list for one run (without the script)."""
    args = [
        "sbatch",
        "--parsable",
        f"--job-name={run_id}",
        f"--output={run_dir / TRAIN_LOG}",
        "--open-mode=append",
        f"--chdir={run_dir.parent}",
        *resource_args(settings),
    ]
    extra = list(settings.get("sbatch_args") or [])
    problem = settings_problem({"sbatch_args": extra})
    if problem:  # checked again here: no managed option reaches sbatch, whatever the caller checked
        raise SlurmError(f"sbatch option {problem}")
    args += extra
    if dependency:
        args += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    return args


def submit(run_id: str, run_dir: Path, settings: dict, module: str, dependency: str | None = None) -> str:
    """Submit one run; its job id. A parent's job id in ``dependency`` makes Slurm hold the run until
    the parent ends well, and cancel it if the parent fails."""
    script = write_script(run_dir, module)
    out = slurm_command([*sbatch_args(run_id, run_dir, settings, dependency), str(script)])
    if out.returncode != 0:
        raise SlurmError(f"sbatch: {one_line(out)}")
    job = out.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch: unexpected answer {out.stdout.strip()!r}")
    return job


def states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job Slurm still knows; a job it has forgotten is "UNKNOWN"."""
    job_ids = sorted({j for j in job_ids if j}, key=int)
    found: dict[str, JobState] = {}
    for i in range(0, len(job_ids), 500):
        chunk = job_ids[i : i + 500]
        out = slurm_command(["squeue", "-h", "-t", "all", "-j", ",".join(chunk), "-o", "%i|%T|%r"])
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    found[parts[0]] = JobState(parts[1], parts[2])
        elif "Invalid job id" not in (out.stderr or ""):  # squeue errs only when it knows none of them
            raise SlurmError(f"squeue: {one_line(out)}")
    for job in job_ids:
        if job not in found:
            found[job] = _scontrol(job) or _sacct(job) or JobState("UNKNOWN", "")
    return found


def _scontrol(job: str) -> JobState | None:
    out = slurm_command(["scontrol", "show", "job", "-o", job])
    if out.returncode != 0:
        return None
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    return JobState(fields["JobState"], fields.get("Reason", "")) if "JobState" in fields else None


def _sacct(job: str) -> JobState | None:
    """sacct, where accounting is on (it often is not: then it fails or knows nothing)."""
    if shutil.which("sacct") is None:
        return None
    out = slurm_command(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], timeout=20)
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()] if out.returncode == 0 else []
    return JobState(lines[0].split()[0], "sacct") if lines else None


def find(run_id: str, runs_dir: Path, since: float) -> str | None:
    """The job of this run (of this runs-dir: its working directory) submitted at or after ``since``.
    A daemon that died between sbatch and recording the job id finds it here instead of submitting again."""
    out = slurm_command(["squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i|%V|%Z"])
    best = None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job, submitted, workdir = (line.strip().split("|") + ["", ""])[:3]
        if Path(workdir) != Path(runs_dir):
            continue
        try:
            t = time.mktime(time.strptime(submitted, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            t = since
        if job.isdigit() and t >= since - 2 and (best is None or int(job) > int(best)):
            best = job
    return best


def cancel(job_ids: list[str], wait: float = 15.0) -> dict[str, JobState]:
    """scancel the jobs, then check: scancel exits 0 even for a job id it does not know. The state of
    each job afterwards (still active only if Slurm did not stop it within ``wait`` seconds)."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    out = slurm_command(["scancel", *job_ids])
    if out.returncode != 0:
        raise SlurmError(f"scancel: {one_line(out)}")
    deadline = time.time() + wait
    while True:
        now = states(job_ids)
        if not any(s.active for s in now.values()) or time.time() > deadline:
            return now
        time.sleep(0.3)


def stuck_lines(runs: list[dict]) -> list[str]:
    """One line per distinct reason that keeps runs pending in Slurm for good (with the setting to change),
    from the ``stuck`` field the daemon records; for `queue ls`, `doctor` and the app."""
    by_reason: dict[str, list[str]] = {}
    for r in runs:
        if r.get("status") == Status.RUNNING and isinstance(r.get("stuck"), str):
            by_reason.setdefault(r["stuck"], []).append(str(r.get("id")))
    return [
        f"{len(ids)} run(s) pending in Slurm ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}) {why}"
        for why, ids in by_reason.items()
    ]


# -- the daemon's Slurm executor -------------------------------------------------------------------------

SUBMIT_TRIES = 5  # sbatch refusing one run this many times in a row fails the run
RETRY_STATES = ("UNKNOWN", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL")  # a job that ended so is requeued


class SlurmExecutor:
    """Each run one batch job. A run is Status.RUNNING from the moment it is marked for submission until its
    result is in; its ``job_id`` is recorded after sbatch answers, and a daemon that died in between finds
    the job by name rather than submitting it again. A child is submitted while its parent is still in
    Slurm, with ``--dependency=afterok``, so Slurm holds it and cancels it if the parent fails."""

    name = "slurm"

    def __init__(self, context: Context):
        self.c = context
        self.jobs: dict[str, JobState] = {}

    # -- state queries ---------------------------------------------------------------------------------

    def observe(self, runs: list[dict]) -> None:
        self.jobs = states([r["job_id"] for r in runs if r["status"] == Status.RUNNING and r.get("job_id")])

    def state(self, run: dict) -> JobState:
        job = run.get("job_id")
        return self.jobs.get(job, JobState("UNKNOWN")) if job else JobState("UNKNOWN")

    def alive(self, run: dict) -> bool:
        if not run.get("job_id"):  # submitted before a restart, its id never recorded
            return self._found(run) is not None
        return self.state(run).active

    def pending_reason(self, run: dict) -> str | None:
        st = self.state(run)
        return st.reason if st.state == "PENDING" else None

    def cancel(self, run: dict, kill: bool = False) -> None:
        """scancel the run's job (Slurm sends SIGTERM, then SIGKILL after its KillWait); never waits."""
        job = run.get("job_id") or self._found(run)
        if job:
            cancel([job], wait=0)

    def _found(self, run: dict) -> str | None:
        return find(run["id"], self.c.root, run.get("started") or 0)

    # -- reap ------------------------------------------------------------------------------------------

    def reap(self, runs: list[dict], status: dict[str, str], stats: dict) -> Changes:
        """What to change for runs in Slurm: ended (from result.json, else the job's state), blocked by a
        failed parent, or pending for good (``stuck``: reported, left pending)."""
        changes: Changes = {}
        for r in runs:
            if r["status"] != Status.RUNNING or r.get("cancel_requested"):
                continue
            self.c.mark(r["id"])
            res, job, st = self.c.files.result(r["id"]), r.get("job_id"), self.state(r)
            if res and res.get("status") in RESULT_STATUSES:
                changes[r["id"]] = (
                    Status.RUNNING,
                    {
                        "status": ledger_status(res["status"]).value,
                        "finished": time.time(),
                        "score": checks.clean_score(res.get("score")),
                        "error": res.get("error"),
                        "slurm_state": st.state if job else None,
                        "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb"),
                        "timings": checks.clean_timings(res.get("timings")),
                        "data": checks.clean_data(res.get("data")),
                        "stuck": None,
                    },
                )
                stats["reaped"] += 1
            elif not job:
                self._unrecorded(r, changes, stats)
            elif st.active and st.reason != NEVER:
                self._pending(r, st, changes)
            elif st.reason == NEVER or status.get(r.get("parent")) in BLOCKING:
                if st.active:
                    cancel([job], wait=0)
                changes[r["id"]] = (
                    Status.RUNNING,
                    {"status": Status.BLOCKED.value, "slurm_state": "CANCELLED", "slurm_reason": NEVER, "stuck": None},
                )
                stats[Status.BLOCKED] += 1
                self.c.log(f"{r['id']}: parent failed; Slurm job {job} cancelled, run blocked")
            else:
                changes[r["id"]] = (Status.RUNNING, self._ended(r, job, st, stats))
        self.c.mark(None)
        return changes

    def _unrecorded(self, r: dict, changes: Changes, stats: dict) -> None:
        """A run marked for submission whose job id was never recorded: find its job, or queue it again."""
        found = self._found(r)
        if found:
            changes[r["id"]] = (Status.RUNNING, {"job_id": found})
            self.c.log(f"{r['id']}: found job {found} submitted before a restart")
        elif time.time() - (r.get("started") or 0) > 30:  # marked, never submitted
            back = {"status": Status.QUEUED.value, "attempts": max(0, (r.get("attempts") or 1) - 1)}
            changes[r["id"]] = (Status.RUNNING, back)
            stats["requeued"] += 1

    def _pending(self, r: dict, st: JobState, changes: Changes) -> None:
        """Record a job's state as it changes; a pending reason that never clears is reported once."""
        stuck = stuck_hint(st) if st.state == "PENDING" else None
        if (st.state, st.reason, stuck) != (r.get("slurm_state"), r.get("slurm_reason"), r.get("stuck")):
            changes[r["id"]] = (Status.RUNNING, {"slurm_state": st.state, "slurm_reason": st.reason, "stuck": stuck})
            if stuck and stuck != r.get("stuck"):
                self.c.log(f"{r['id']}: Slurm job {r['job_id']} {stuck}")

    def _ended(self, r: dict, job: str, st: JobState, stats: dict) -> dict:
        """The fields of a run whose job left Slurm without a result: requeued (node failure, preemption,
        a job Slurm forgot) while retries are left, else failed."""
        why = f"Slurm job {job} ended {st.state}" + (f" ({st.reason})" if st.reason else "")
        why += " without a result" + self.c.files.last_line(r)
        retry = st.state in RETRY_STATES and (r.get("attempts") or 1) <= self.c.settings.max_retries
        fields = {
            "status": (Status.QUEUED if retry else Status.FAILED).value,
            "error": why,
            "job_id": None,
            "slurm_state": st.state,
            "slurm_reason": st.reason,
            "stuck": None,
        }
        if not retry:
            fields["finished"] = time.time()
        stats["requeued" if retry else "reaped"] += 1
        self.c.log(f"{r['id']}: {why} -> {fields['status']}")
        return fields

    # -- placement and submission ------------------------------------------------------------------------

    def launches(self, runs: list[dict]) -> Iterator[Launch]:
        yield from placement.slurm_launches(runs, self.c.settings.max_jobs)

    def claim(self, launch: Launch, rows: dict[str, dict | None]) -> Claim:
        """Mark the launch's one run running before sbatch (a crash after this finds the job, never
        resubmits). A run whose sbatch settings are refused (a plan's [slurm] sbatch_args naming an option
        the executor manages) is failed instead."""
        (run,) = launch.runs
        cur = rows.get(run["id"])
        if (cur or {}).get("status") != Status.QUEUED:
            return Claim()
        problem = settings_problem(self._settings(run))
        if problem:
            why = f"not submitted to Slurm: {problem}"
            self.c.log(f"{run['id']}: failed by the daemon: {why}")
            fields = {"status": Status.FAILED.value, "error": why, "finished": time.time(), "pid": None}
            return Claim(changes={run["id"]: (Status.QUEUED, fields)})
        fields = {
            "status": Status.RUNNING.value,
            "executor": self.name,
            "gpu": None,
            "started": time.time(),
            "pid": None,
            "job_id": None,
            "slurm_state": "SUBMITTING",
            "slurm_reason": "",
            "stuck": None,
            "attempts": (cur.get("attempts") or 0) + 1,
            "error": None,
            "score": None,
            "cancel_requested": None,
            "cancel_signalled": None,
        }
        return Claim(runs=[cur], changes={run["id"]: (Status.QUEUED, fields)})

    def _settings(self, run: dict) -> dict:
        return resolved(self.c.settings.slurm, self.c.files.spec(run["id"]).get("slurm"))

    def start(self, launch: Launch, claim: Claim) -> tuple[bool, Changes]:
        """Submit the claimed run (after its parent's job, if any); sets ``launch.job_id``."""
        if not claim.runs:
            return False, {}
        (cur,) = claim.runs
        rid = cur["id"]
        self.c.files.retire_result(rid, cur.get("attempts") or 0)  # a result left from an earlier attempt
        (self.c.root / rid / CANCEL_FILE).unlink(missing_ok=True)  # ... or a cancel request
        module = "stilts_tui.synth" if cur["stage"] == "synth" else "stilts_tui.train"
        try:
            job = submit(rid, self.c.root / rid, self._settings(cur), module, launch.dependency)
        except UserError as e:
            return False, {rid: (Status.RUNNING, self._refused(cur, e))}
        launch.job_id = job
        self.c.log(
            f"submitted {rid} as Slurm job {job}" + (f" (after job {launch.dependency})" if launch.dependency else "")
        )
        return True, {rid: (Status.RUNNING, {"job_id": job, "slurm_state": "PENDING", "submit_failures": 0})}

    def _refused(self, before: dict, e: UserError) -> dict:
        """sbatch refused the run (e.g. the parent's job left Slurm between our read and sbatch): queued to
        try again next tick; an sbatch that keeps refusing it (a bad account, QOS...) fails it."""
        tries = (before.get("submit_failures") or 0) + 1
        fields = {
            "status": Status.QUEUED.value,
            "slurm_state": None,
            "error": str(e),
            "submit_failures": tries,
            "attempts": before.get("attempts") or 0,  # the claim's attempt is not counted
        }
        if tries >= SUBMIT_TRIES:
            fields.update(
                status=Status.FAILED.value, finished=time.time(), error=f"sbatch refused the run {tries} times: {e}"
            )
        self.c.log(f"{before['id']}: not submitted: {e}")
        return fields
