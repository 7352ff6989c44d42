"""The Slurm executor: each run is one batch job. Every Slurm command is an argument list (never a
shell); the run's ``result.json`` stays the ground truth, Slurm's job state says what happened when
there is none. Accounting is often off on clusters, so state comes from ``squeue`` and ``scontrol``
(finished jobs leave both after MinJobAge), and ``sacct`` only where it answers."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stilts_tui.errors import UserError

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
NEVER = "DependencyNeverSatisfied"  # the reason Slurm gives a child whose parent failed
TIMEOUT_S = 60


class SlurmError(UserError):
    """A Slurm command failed (its one-line message)."""


@dataclass
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ... ("UNKNOWN": Slurm no longer knows the job)
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _run(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: the Slurm executor needs the Slurm client commands on PATH")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer within {timeout:.0f} s") from None


def _one_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stderr or out.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit status {out.returncode}"


def write_script(run_dir: Path, module: str) -> Path:
    """The job's batch script: run the trainer (or the synthesis) on this run folder. Paths are quoted;
    no setting from a plan or the command line is ever written into it (those go to sbatch as arguments)."""
    script = run_dir / "slurm.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# written by stilts-tui's Slurm executor; the same run by hand: python -m "
        f"{module} {shlex.quote(str(run_dir))}\n"
        "export PYTHONUNBUFFERED=1\n"
        f"exec {shlex.quote(sys.executable)} -m {module} {shlex.quote(str(run_dir))}\n",
        encoding="utf-8",
    )
    return script


def sbatch_args(run_id: str, run_dir: Path, settings: dict, dependency: str | None) -> list[str]:
    """sbatch's argument list for one run (without the script)."""
    args = ["sbatch", "--parsable", f"--job-name={run_id}", f"--output={run_dir / 'train.log'}",
            "--open-mode=append", f"--chdir={run_dir.parent}", f"--cpus-per-task={settings.get('cpus', 4)}"]
    if settings.get("gpus", 1):
        args.append(f"--gres=gpu:{settings.get('gpus', 1)}")
    for key in ("partition", "account", "qos", "time", "mem"):
        if settings.get(key):
            args.append(f"--{key}={settings[key]}")
    args += list(settings.get("sbatch_args") or [])
    if dependency:
        args += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    return args


def submit(run_id: str, run_dir: Path, settings: dict, module: str, dependency: str | None = None) -> str:
    """Submit one run; its job id. A parent's job id in ``dependency`` makes Slurm hold the run until
    the parent ends well, and cancel it if the parent fails."""
    script = write_script(run_dir, module)
    out = _run([*sbatch_args(run_id, run_dir, settings, dependency), str(script)])
    if out.returncode != 0:
        raise SlurmError(f"sbatch: {_one_line(out)}")
    job = out.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch: unexpected answer {out.stdout.strip()!r}")
    return job


def states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job Slurm still knows; a job it has forgotten is "UNKNOWN"."""
    job_ids = sorted({j for j in job_ids if j}, key=int)
    found: dict[str, JobState] = {}
    for i in range(0, len(job_ids), 500):
        chunk = job_ids[i:i + 500]
        out = _run(["squeue", "-h", "-t", "all", "-j", ",".join(chunk), "-o", "%i|%T|%r"])
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    found[parts[0]] = JobState(parts[1], parts[2])
        elif "Invalid job id" not in (out.stderr or ""):  # squeue errs only when it knows none of them
            raise SlurmError(f"squeue: {_one_line(out)}")
    for job in job_ids:
        if job not in found:
            found[job] = _scontrol(job) or _sacct(job) or JobState("UNKNOWN", "")
    return found


def _scontrol(job: str) -> JobState | None:
    out = _run(["scontrol", "show", "job", "-o", job])
    if out.returncode != 0:
        return None
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    return JobState(fields["JobState"], fields.get("Reason", "")) if "JobState" in fields else None


def _sacct(job: str) -> JobState | None:
    """sacct, where accounting is on (it often is not: then it fails or knows nothing)."""
    if shutil.which("sacct") is None:
        return None
    out = _run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], timeout=20)
    lines = [x.strip() for x in out.stdout.splitlines() if x.strip()] if out.returncode == 0 else []
    return JobState(lines[0].split()[0], "sacct") if lines else None


def find(run_id: str, runs_dir: Path, since: float) -> str | None:
    """The job of this run (of this runs-dir: its working directory) submitted at or after ``since``.
    A daemon that died between sbatch and recording the job id finds it here instead of submitting again."""
    out = _run(["squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i|%V|%Z"])
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
    out = _run(["scancel", *job_ids])
    if out.returncode != 0:
        raise SlurmError(f"scancel: {_one_line(out)}")
    deadline = time.time() + wait
    while True:
        now = states(job_ids)
        if not any(s.active for s in now.values()) or time.time() > deadline:
            return now
        time.sleep(0.3)
