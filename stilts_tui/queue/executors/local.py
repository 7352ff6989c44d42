"""The local executor: training processes on this machine, detached from the daemon and the
terminal (own session, output to the run folder), identified by pid *and* process start time.
`LocalExecutor` is the daemon's executor (see `queue/executor.py`); the functions below it are the
process-level steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from stilts_tui.contract import (
    CANCEL_FILE,
    CANCEL_GRACE_S,
    RESULT_STATUSES,
    TRAIN_LOG,
    WORKERS_DIR,
    Env,
    ResultStatus,
    Status,
    ledger_status,
)
from stilts_tui.queue import checks, history, mps, placement, threads
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.queue.executor import Changes, Claim, Context
from stilts_tui.queue.placement import Launch
from stilts_tui.store import rundir


def launch(
    run_dirs: list[Path],
    env: dict[str, str],
    log_path: Path,
    module: str = "stilts_tui.train",
    args: list[str] | None = None,
) -> tuple[int, float]:
    """Start ``python -m MODULE [ARGS] RUN_DIR...`` (the trainer, or the synthesis) in its own session;
    (pid, start time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # an argument list, never a shell
            [sys.executable, "-m", module, *(args or []), *map(str, run_dirs)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
            cwd=str(run_dirs[0].parent),
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid, process_start(proc.pid) or time.time()


_CHILDREN: dict[int, subprocess.Popen] = {}  # our own children, reaped so that none stays a zombie


def process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def alive(pid: int | None, started: float | None) -> bool:
    """Is this exact process (pid and start time) still running? A reused pid is not."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def signal_group(pid: int | None, started: float | None, sig: int) -> bool:
    """Send ``sig`` to the run's whole process group, if this exact process (pid and start time) still
    runs: a reused pid is never signalled. True if it was sent."""
    if not pid or not alive(pid, started):
        return False
    try:
        os.killpg(pid, sig)  # the worker leads its own session and group
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop(pid: int, started: float | None, grace: float = CANCEL_GRACE_S) -> bool:
    """SIGTERM the run's whole process group, SIGKILL after ``grace`` seconds. True if it was running."""
    if not alive(pid, started):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)  # the worker leads its own session and group
    except ProcessLookupError:
        return False
    deadline = time.time() + grace
    while time.time() < deadline:
        if not _group_alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)
    return True


def _group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False


def find_worker(run_dir: Path) -> tuple[int, float] | None:
    """A live training process already working on ``run_dir`` (after a crash between marking a run
    running and recording its pid)."""
    target = str(run_dir)
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = p.info.get("cmdline") or []
        if ("stilts_tui.train" in cmd or "stilts_tui.synth" in cmd) and target in cmd:
            return p.info["pid"], p.info["create_time"]
    return None


TRAINER_MODULES = ("stilts_tui.train", "stilts_tui.synth")


def _queue_trainer(p: psutil.Process, cmd: list[str], root: Path) -> list[str]:
    """The run ids of ``root`` a process trains, if it is a trainer a queue started (its command line runs
    the trainer on folders of ``root``; its environment has the queue's ``STILTS_FUSE``: a trainer a person
    started by hand to debug a run is not the queue's); [] for anything else."""
    if not any(m in cmd for m in TRAINER_MODULES):
        return []
    cwd, out = p.cwd(), []
    for arg in cmd[1:]:
        path = Path(cwd) / arg
        if rundir.RUN_ID_RE.fullmatch(path.name) and path.parent.resolve() == root:
            out.append(path.name)
    return out if out and Env.FUSE in p.environ() else []


def trainers(root: Path) -> list[tuple[int, float, list[str]]]:
    """Every live trainer of ``root``'s runs: (pid, start time, run ids)."""
    root, out = Path(root).resolve(), []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            ids = _queue_trainer(p, p.info.get("cmdline") or [], root)
            if ids and p.status() != psutil.STATUS_ZOMBIE:
                out.append((p.info["pid"], p.info["create_time"], ids))
        except (psutil.Error, OSError):
            continue
    return out


def run_ids_of(pid: int, started: float | None, root: Path) -> list[str]:
    """The run ids of ``root`` that this exact process (pid and start time) trains; [] when it is gone or
    is no trainer of ``root``."""
    if not alive(pid, started):
        return []
    try:
        p = psutil.Process(pid)
        return _queue_trainer(p, p.cmdline(), Path(root).resolve())
    except (psutil.Error, OSError):
        return []


class LocalExecutor:
    """Runs on this machine's GPUs (or its CPU): placed by memory estimate and NVML's free memory, each
    launch one detached process (a worker training runs of one shape in sequence, or a fused array)."""

    name = "local"

    def __init__(self, context: Context):
        self.c = context
        self._gpu_problems: list[str] = []
        self._most = 0  # the most processes the devices found last take at once (each process's CPU share)
        self._seen: dict[int, float | None] = {}  # trainer pids this daemon knows of (see ``tidy``)
        self._scanned = False  # the first tick looks at every process for trainers of this runs-dir

    # -- state queries ---------------------------------------------------------------------------------

    def observe(self, runs: list[dict]) -> None:
        """Nothing to query ahead: ``alive`` asks the process table directly."""

    def alive(self, run: dict) -> bool:
        return alive(*self._process(run))

    def pending_reason(self, run: dict) -> str | None:
        return None  # a local run is started at once or not at all

    def cancel(self, run: dict, kill: bool = False) -> None:
        signal_group(*self._process(run), signal.SIGKILL if kill else signal.SIGTERM)

    def _process(self, run: dict) -> tuple[int | None, float | None]:
        """The run's process (pid, start time); one launched just before a crash, before its pid was
        recorded, is found by its command line."""
        if run.get("pid") or run.get("status") != Status.RUNNING:
            return run.get("pid"), run.get("pid_started")
        return find_worker(self.c.root / run["id"]) or (None, None)

    # -- reap ------------------------------------------------------------------------------------------

    def reap(self, runs: list[dict], status: dict[str, str], stats: dict) -> Changes:
        """What to change for running runs that ended. A finished attempt's result.json is retired when
        the run is launched again, not here: a daemon killed between the two steps must find the result,
        never a run without one. A run whose cancel was asked is the requests' step's, not this one's."""
        changes: Changes = {}
        for r in runs:
            if r["status"] != Status.RUNNING or r.get("cancel_requested"):
                continue
            self.c.mark(r["id"])
            res = self.c.files.result(r["id"])
            if res and res.get("status") in RESULT_STATUSES:
                changes[r["id"]] = (Status.RUNNING, self._finished(r, res, stats))
            elif not alive(r.get("pid"), r.get("pid_started")):
                if not r.get("pid"):
                    found = find_worker(self.c.root / r["id"])
                    if found or time.time() - (r.get("started") or 0) < 30:
                        if found:  # launched just before a crash: adopt it
                            changes[r["id"]] = (Status.RUNNING, {"pid": found[0], "pid_started": found[1]})
                        continue
                changes[r["id"]] = (Status.RUNNING, self._vanished(r, stats))
        self.c.mark(None)
        return changes

    def _finished(self, r: dict, res: dict, stats: dict) -> dict:
        fields = {
            "finished": time.time(),
            "score": checks.clean_score(res.get("score")),
            "error": res.get("error"),
            "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb"),
            "timings": checks.clean_timings(res.get("timings")),
            "data": checks.clean_data(res.get("data")),
            "pid": None,
        }
        if res["status"] == ResultStatus.OOM and not r.get("alone"):
            fields.update(self._after_oom(r))
            stats["requeued"] += 1
        else:
            fields["status"] = ledger_status(res["status"]).value
            stats["reaped"] += 1
        return fields

    def _vanished(self, r: dict, stats: dict) -> dict:
        """A process that exited without a result: requeued while retries are left, else failed."""
        attempt = r.get("attempts") or 1
        why = "process exited without result" + self.c.files.last_line(r)
        if attempt <= self.c.settings.max_retries:
            fields = {"status": Status.QUEUED.value, "error": why, "pid": None, "gpu": None}
            stats["requeued"] += 1
        else:
            fields = {"status": Status.FAILED.value, "error": why, "pid": None, "finished": time.time()}
            stats["reaped"] += 1
        self.c.log(f"{r['id']}: {why} (attempt {attempt}) -> {fields['status']}")
        return fields

    def _after_oom(self, r: dict) -> dict:
        """The fields of a run whose process ran out of memory: an array's runs are requeued to join
        arrays of half its size (down to 1: alone on a GPU); a run alone in its process, to run alone."""
        k = r.get("fused") or 0
        half = k // 2
        if half >= 2:
            self.c.log(
                f"{r['id']}: out of memory in an array of {k} on GPU {r.get('gpu')}; requeued for arrays "
                f"of at most {half}"
            )
            return {"status": Status.QUEUED.value, "gpu": None, "fuse_max": half}
        self.c.log(
            f"{r['id']}: out of memory on GPU {r.get('gpu')}"
            + (f" in an array of {k}" if k > 1 else "")
            + "; requeued to run alone"
        )
        return {"status": Status.QUEUED.value, "gpu": None, "alone": True, "fuse_max": 1}

    # -- children and strays -----------------------------------------------------------------------------

    def tidy(self, runs: list[dict]) -> None:
        """Once a tick: every child that ended is reaped (none stays a zombie: a long queue would run the
        box out of process ids), and a trainer of this runs-dir whose runs the ledger no longer holds as
        running (its row deleted, or set queued, by hand) is stopped: left alone it would train beside the
        placement's count, and the run would be launched twice. Trainers are known by the pids the ledger
        named, the daemon's children, and (on the first tick) every process training a folder here."""
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                _CHILDREN.pop(pid, None)
        rows = {r["id"]: r for r in runs}
        held = {r.get("pid") for r in runs if r["status"] == Status.RUNNING and r.get("pid")}
        for r in runs:
            if r["status"] == Status.RUNNING and checks.is_int(r.get("pid")) and r["pid"] > 0:
                self._seen[r["pid"]] = r.get("pid_started")
        for pid in list(_CHILDREN):
            self._seen.setdefault(pid, process_start(pid))
        if not self._scanned:
            self._scanned = True
            for pid, started, _ in trainers(self.c.root):
                self._seen.setdefault(pid, started)
        for pid, started in list(self._seen.items()):
            if pid in held:
                continue
            ids = run_ids_of(pid, started, self.c.root)
            if not ids:  # gone, or no trainer of this runs-dir
                self._seen.pop(pid, None)
                continue
            if any((rows.get(i) or {}).get("status") not in (None, Status.QUEUED, Status.BLOCKED) for i in ids):
                continue  # running under another record, or finished and on its way out
            self._seen.pop(pid, None)
            stop(pid, started, grace=5)
            self.c.log(
                f"pid {pid} trained {', '.join(ids)}, which the ledger does not hold as running (its row was "
                "deleted or changed by hand): stopped it, so that nothing runs beyond the slots"
            )

    # -- placement ---------------------------------------------------------------------------------------

    def launches(self, runs: list[dict]) -> Iterator[Launch]:
        devs = self.devices(runs)
        if not any(d.procs < d.slots and not d.alone for d in devs):
            return
        self.c.grouper.learned.update(runs, self.c.files.final_result)
        yield from self.c.grouper.launches(runs, devs, self.c.mark)

    def devices(self, runs: list[dict]) -> list[placement.Device]:
        """The devices runs may go to now, with what this queue already runs on each. A GPU NVML cannot
        query is left out (the others are used); the CPU stands in only on a machine without GPUs."""
        s = self.c.settings
        probe = gpu_info.probe()
        self._report_gpus(probe)
        found = probe.usable
        if s.gpus is not None:
            found = [g for g in found if g.index in s.gpus]
        devs = [placement.Device(g.index, g.total_gb, g.free_gb, s.per_gpu) for g in found]
        if not devs and not probe.gpus and probe.error is None and not probe.seen_gpus:
            devs = [placement.Device(None, float("inf"), float("inf"), s.cpu_slots)]
        self._most = sum(d.slots for d in devs)
        by_index = {d.index: d for d in devs}
        running = [r for r in runs if r["status"] == Status.RUNNING]
        workers: set[str] = set()
        for r in running:
            d = by_index.get(r.get("gpu"))
            if d is None:
                continue
            if r.get("worker") not in workers:  # runs of one worker take one process, its largest estimate
                workers.add(r.get("worker"))
                d.procs += 1
                d.reserved_gb += max((x.get("est_gb") or 0) for x in running if x.get("worker") == r.get("worker"))
            d.alone = d.alone or bool(r.get("alone"))
            d.run_ids.append(r["id"])
        return devs

    def _report_gpus(self, probe: gpu_info.Probe) -> None:
        """Log NVML's failures when they change (not every tick)."""
        gpus = self.c.settings.gpus
        lines = [f"GPU {g.index} unusable, left out: {g.error}" for g in probe.gpus if g.error]
        if probe.error:
            lines.append(
                f"{probe.error}; no run is placed until NVML answers" if probe.seen_gpus or gpus else probe.error
            )
        if gpus is not None and probe.gpus and not [g for g in probe.usable if g.index in gpus]:
            lines.append(f"no usable GPU among --gpus {','.join(map(str, gpus))}")
        if lines != self._gpu_problems:
            for line in lines or ["every GPU answers NVML again"]:
                self.c.log(line)
            self._gpu_problems = lines

    # -- launch ------------------------------------------------------------------------------------------

    def claim(self, launch: Launch, rows: dict[str, dict | None]) -> Claim:
        """Mark the launch's runs still queued as running, with the placement (its record for the
        ``placements`` table). Committed by the tick before the process starts: a daemon that dies after
        it adopts the process, never launches it twice."""
        dev, now, why, worker = launch.device, time.time(), launch.why or None, uuid.uuid4().hex[:10]
        fresh = [r for r in launch.runs if (rows.get(r["id"]) or {}).get("status") == Status.QUEUED]
        fused = len(fresh) if launch.fused and len(fresh) > 1 else 0
        out = Claim(runs=[rows[r["id"]] or r for r in fresh], worker=worker)
        for r in out.runs:
            out.changes[r["id"]] = (
                Status.QUEUED,
                {
                    "status": Status.RUNNING.value,
                    "gpu": dev.index,
                    "worker": worker,
                    "started": now,
                    "pid": None,
                    "pid_started": None,
                    "attempts": (r.get("attempts") or 0) + 1,
                    "est_gb": launch.est_gb,
                    "shape": launch.shape,
                    "error": None,
                    "score": None,
                    "fused": fused,
                    "fuse_why": why,
                    "executor": self.name,
                    "cancel_requested": None,
                    "cancel_signalled": None,
                },
            )
        if fresh:
            out.placement = (
                f"{now:.6f}-{worker}",
                {
                    "t": now,
                    "gpu": dev.index,
                    "runs": [r["id"] for r in fresh],
                    "est_gb": launch.est_gb,
                    "reserved_before_gb": dev.reserved_gb,
                    "procs_before": dev.procs,
                    "slots": dev.slots,
                    "total_gb": None if dev.index is None else dev.total_gb,
                    "alone": bool(fresh[0].get("alone")),
                    "others_on_gpu": list(dev.run_ids),
                    "fused": fused,
                    "fuse_why": why,
                },
            )
        return out

    def start(self, launch: Launch, claim: Claim) -> tuple[bool, Changes]:
        """Start the claimed runs' process; the pid to record. The runs' folders are readied first."""
        dev, fresh, worker = launch.device, claim.runs, claim.worker
        if not fresh:
            return False, {}
        fused = len(fresh) if launch.fused and len(fresh) > 1 else 0
        env, args, note = self.run_env(dev, fused)
        for r in fresh:  # a cancel request or a result left from an earlier attempt must not end this one
            self.c.mark(r["id"])  # a folder that cannot be readied is that run's (the tick fails it alone)
            (self.c.root / r["id"] / CANCEL_FILE).unlink(missing_ok=True)
            self.c.files.retire_result(r["id"], r.get("attempts") or 0)
            # each attempt begins with its own line: a log read later shows where a new attempt starts
            _append_line(self.c.root / r["id"] / TRAIN_LOG, history.attempt_header(r, note))  # N+1 and why
        self.c.mark(fresh[0]["id"])
        dirs = [self.c.root / r["id"] for r in fresh]
        log = dirs[0] / TRAIN_LOG if len(dirs) == 1 else self.c.root / WORKERS_DIR / f"{worker}.log"
        synth = fresh[0]["stage"] == "synth"
        pid, started = self.spawn(
            dirs, env, log, "stilts_tui.synth" if synth else "stilts_tui.train", [] if synth else args
        )
        dev.procs += 1
        dev.reserved_gb += launch.est_gb
        dev.run_ids.extend(r["id"] for r in fresh)
        dev.alone = dev.alone or bool(fresh[0].get("alone"))
        where = "CPU" if dev.index is None else f"GPU {dev.index}"
        how = f", fused as one array of {fused}" if fused else ""
        self.c.log(
            f"launched {', '.join(r['id'] for r in fresh)} on {where} (pid {pid}, est {launch.est_gb} GB{how})"
            + (f" [{launch.why}]" if launch.why else "")
        )
        return True, {r["id"]: (Status.RUNNING, {"pid": pid, "pid_started": started}) for r in fresh}

    def run_env(self, dev: placement.Device, fused: int) -> tuple[dict[str, str], list[str], str]:
        """The environment, trainer flags and a train.log line for a process placed on ``dev``. A real
        GPU placement asks for ``--device cuda``: a CUDA failure then fails the run instead of training
        on the CPU unnoticed. NVML and CUDA number GPUs alike only in PCI bus order."""
        env = {"PYTHONUNBUFFERED": "1", Env.FUSE: str(fused), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        # every placement its share of the cores, GPU or not (queue/threads.py)
        env.update(threads.environment(self._most or (dev.slots if dev.index is None else self.c.settings.per_gpu)))
        if dev.index is None:
            env.update({Env.DEVICE: "cpu", "CUDA_VISIBLE_DEVICES": ""})
            return env, ["--device", "cpu"], "queue: placed on the CPU (no GPU on this machine)"
        env["CUDA_VISIBLE_DEVICES"] = str(dev.index)
        if self.c.mps_dir is not None:
            env.update(mps.environment(self.c.mps_dir))
        if gpu_info.fake_spec() is not None:
            env[Env.DEVICE] = "cpu"
            return (
                env,
                ["--device", "cpu"],
                (
                    f"queue: placed on fake GPU {dev.index} ({Env.FAKE_GPUS}="
                    f"{os.environ.get(Env.FAKE_GPUS)}): training on the CPU"
                ),
            )
        env[Env.DEVICE] = "cuda"
        return (
            env,
            ["--device", "cuda"],
            (
                f"queue: placed on GPU {dev.index} (CUDA_VISIBLE_DEVICES={dev.index}, "
                f"--device cuda{', under MPS' if self.c.mps_dir else ''})"
            ),
        )

    def spawn(
        self, dirs: list[Path], env: dict[str, str], log: Path, module: str, args: list[str]
    ) -> tuple[int, float]:
        """Start the process; (pid, start time). (Tests replace this to start a stand-in.)"""
        return launch(dirs, env, log, module, args)


def _append_line(path: Path, text: str) -> None:
    """One stamped line in a run's train.log (the trainer appends after it)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    except OSError:
        pass  # the log line is a courtesy; the launch goes on
