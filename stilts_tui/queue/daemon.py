"""The queue daemon: one per runs-dir. Each tick it reaps finished processes, blocks and unblocks
children, and launches ready runs on devices with room. It owns no state of its own: everything
is in the ledger and the run folders, so a restarted daemon adopts the processes still alive.

    python -m stilts_tui.queue.daemon --runs-dir DIR [--gpus 0,1] [--per-gpu N] [--mps] ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from stilts_tui import rundir
from stilts_tui.errors import UserError
from stilts_tui.ledger import Ledger
from stilts_tui.plan import SLURM_DEFAULTS
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.queue import mps, placement
from stilts_tui.queue.executors import local
from stilts_tui.queue.executors import slurm as slurm_exec

FINAL_RESULT = ("done", "failed", "oom")
MAX_ARRAY = placement.MAX_ARRAY  # --fuse auto: at most this many runs in one array


@dataclass
class Settings:
    gpus: list[int] | None = None  # None: every GPU found
    per_gpu: int = 4
    cpu_slots: int = 1  # concurrent runs where there is no GPU
    max_retries: int = 2
    worker_runs: int = 4  # ready runs of one shape given to one process, trained in sequence
    mps: bool = False
    interval: float = 1.0
    executor: str = "local"  # local | slurm
    slurm: dict = field(default_factory=dict)  # sbatch settings from the command line (a plan's [slurm] wins)
    fuse: str = "off"  # off | auto | K: ready runs of one shape and batch train as one array of up to K runs
    max_jobs: int = 1000  # Slurm: at most this many of our jobs in Slurm at once (clusters cap submissions)


def lock_path(root: Path) -> Path:
    return root / "daemon.lock"


def info_path(root: Path) -> Path:
    return root / "daemon.json"


def running_daemon(root: Path) -> dict | None:
    """The daemon serving ``root`` (its daemon.json), or None when none holds the lock."""
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(root)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            return json.loads(info_path(root).read_text())
        except (FileNotFoundError, ValueError):
            return {"pid": None}
    lock.release()
    return None


class Daemon:
    def __init__(self, root: Path, settings: Settings):
        self.root, self.s = Path(root), settings
        self.ledger = Ledger(self.root)
        self._specs: dict[str, dict] = {}
        self._array_keys: dict[str, str | None] = {}
        self._stop = False
        self.mps_dir: Path | None = None
        self.log_file = open(self.root / "daemon.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def log(self, text: str) -> None:
        self.log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")

    # -- helpers ----------------------------------------------------------------------------------

    def spec(self, run_id: str) -> dict:
        if run_id not in self._specs:
            try:
                self._specs[run_id] = json.loads((self.root / run_id / "spec.json").read_text())
            except (OSError, ValueError):
                self._specs[run_id] = {}
        return self._specs[run_id]

    def result(self, run_id: str) -> dict | None:
        try:
            return json.loads((self.root / run_id / "result.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _retire_result(self, run_id: str, attempt: int) -> None:
        """Keep a finished attempt's result beside the run, out of the way of the next attempt."""
        src = self.root / run_id / "result.json"
        if src.exists():
            os.replace(src, src.with_name(f"result.attempt{attempt}.json"))

    def devices(self, runs: list[dict]) -> list[placement.Device]:
        """The devices runs may go to now, with what this queue already runs on each. A GPU NVML cannot
        query is left out (the others are used); the CPU stands in only on a machine without GPUs."""
        probe = gpu_info.probe()
        self._report_gpus(probe)
        found = probe.usable
        if self.s.gpus is not None:
            found = [g for g in found if g.index in self.s.gpus]
        devs = [placement.Device(g.index, g.total_gb, g.free_gb, self.s.per_gpu) for g in found]
        if not devs and not probe.gpus and probe.error is None and not probe.seen_gpus:
            devs = [placement.Device(None, float("inf"), float("inf"), self.s.cpu_slots)]
        by_index = {d.index: d for d in devs}
        workers: set[str] = set()
        for r in runs:
            if r["status"] != "running":
                continue
            d = by_index.get(r.get("gpu"))
            if d is None:
                continue
            if r.get("worker") not in workers:  # runs of one worker take one process, its largest estimate
                workers.add(r.get("worker"))
                d.procs += 1
                d.reserved_gb += max((x.get("est_gb") or 0) for x in runs
                                     if x["status"] == "running" and x.get("worker") == r.get("worker"))
            d.alone = d.alone or bool(r.get("alone"))
            d.run_ids.append(r["id"])
        return devs

    def _report_gpus(self, probe: gpu_info.Probe) -> None:
        """Log NVML's failures when they change (not every tick)."""
        lines = [f"GPU {g.index} unusable, left out: {g.error}" for g in probe.gpus if g.error]
        if probe.error:
            lines.append(f"{probe.error}; no run is placed until NVML answers" if probe.seen_gpus or self.s.gpus
                         else probe.error)
        if self.s.gpus is not None and probe.gpus and not [g for g in probe.usable if g.index in self.s.gpus]:
            lines.append(f"no usable GPU among --gpus {','.join(map(str, self.s.gpus))}")
        if lines != getattr(self, "_gpu_problems", []):
            for line in lines or ["every GPU answers NVML again"]:
                self.log(line)
            self._gpu_problems = lines

    def _measure(self, runs: list[dict]) -> placement.Measurements:
        """What finished runs measured (peak memory a run, samples/s fused and alone), by shape."""
        if not hasattr(self, "_measurements"):
            self._measurements = placement.Measurements()
        self._measurements.update(runs, self.result)
        return self._measurements

    def estimate(self, run: dict, learned: placement.Measurements) -> tuple[float, str]:
        """A run's memory estimate (GB) and its shape: the measured peak a run of its shape (an
        array's peak / K) with a margin, else the formula."""
        spec = self.spec(run["id"])
        key = placement.shape_key(run, spec)
        share = learned.shape(key).share_gb
        if share is not None:
            return round(share * placement.MARGIN + 0.25, 2), key
        return placement.formula_gb(spec), key

    # -- one tick ---------------------------------------------------------------------------------

    def tick(self) -> dict:
        """Reap, block/unblock, launch. Returns counts of what it did."""
        if self.s.executor == "slurm":
            return self.tick_slurm()
        stats = {"reaped": 0, "requeued": 0, "blocked": 0, "unblocked": 0, "launched": 0}
        runs = self.ledger.runs()
        status = {r["id"]: r["status"] for r in runs}
        changes: dict[str, tuple[str, dict]] = {}  # id -> (status it had, new fields)

        # 1. reap
        for r in runs:
            if r["status"] != "running":
                continue
            res = self.result(r["id"])
            attempt = r.get("attempts", 1)
            if res and res.get("status") in FINAL_RESULT:
                fields = {"finished": time.time(), "score": res.get("score"), "error": res.get("error"),
                          "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb"), "pid": None}
                if res["status"] == "oom" and not r.get("alone"):
                    self._retire_result(r["id"], attempt)
                    fields.update(self._after_oom(r))
                    stats["requeued"] += 1
                else:
                    fields["status"] = "done" if res["status"] == "done" else "failed"
                    stats["reaped"] += 1
                changes[r["id"]] = ("running", fields)
            elif not local.alive(r.get("pid"), r.get("pid_started")):
                if not r.get("pid"):
                    found = local.find_worker(self.root / r["id"])
                    if found or time.time() - r.get("started", 0) < 30:
                        if found:  # launched just before a crash: adopt it
                            changes[r["id"]] = ("running", {"pid": found[0], "pid_started": found[1]})
                        continue
                why = "process exited without result" + self._last_line(r)
                if attempt <= self.s.max_retries:
                    self._retire_result(r["id"], attempt)
                    fields = {"status": "queued", "error": why, "pid": None, "gpu": None}
                    stats["requeued"] += 1
                else:
                    fields = {"status": "failed", "error": why, "pid": None, "finished": time.time()}
                    stats["reaped"] += 1
                self.log(f"{r['id']}: {why} (attempt {attempt}) -> {fields['status']}")
                changes[r["id"]] = ("running", fields)
        # 2. a failed or cancelled parent blocks its children; a retried one unblocks them
        self._block_and_commit(runs, status, changes, stats)

        # 3. launch ready runs where they fit
        if self.ledger.meta("paused"):
            return stats
        runs = self.ledger.runs()
        status = {r["id"]: r["status"] for r in runs}
        devs = self.devices(runs)
        if not any(d.procs < d.slots and not d.alone for d in devs):
            return stats
        learned = self._measure(runs)
        ready = [r for r in runs
                 if r["status"] == "queued" and (not r.get("parent") or status.get(r["parent"]) == "done")]
        taken: set[str] = set()
        by_key = self._array_mates(ready)  # ready runs that may share an array, once a tick (not once a run)
        for r in ready:
            if r["id"] in taken:
                continue
            if not any(d.procs < d.slots and not d.alone for d in devs):
                break
            est, key = self.estimate(r, learned)
            group, dev, why = self._array(r, by_key, taken, devs, est, learned)
            fused = len(group) if dev is not None else 0
            if dev is None:
                dev = placement.choose(devs, est, bool(r.get("alone")))
                if dev is None:
                    continue
                group = [r]
                if not r.get("alone") and r["stage"] != "synth":  # runs of one shape, trained in sequence
                    for other in ready:
                        if len(group) >= self.s.worker_runs:
                            break
                        if other["id"] in taken or other is r or other.get("alone") or other["stage"] == "synth":
                            continue
                        if self.estimate(other, learned)[1] == key:
                            group.append(other)
            else:
                est = round(est * len(group), 2)
            taken.update(x["id"] for x in group)
            if self._launch(group, dev, est, key, fused, why):
                stats["launched"] += len(group)
        return stats

    def array_key(self, run_id: str) -> str | None:
        if run_id not in self._array_keys:
            self._array_keys[run_id] = rundir.array_key(self.spec(run_id))
        return self._array_keys[run_id]

    def fuse_mode(self, run: dict) -> tuple[str, str] | None:
        """How a run may be fused: (sizing "auto" or "K", why), or None when it trains in its own process.
        A plan's ``fuse = true`` asks for it (sized as the daemon's --fuse says, auto when off); an
        explicit daemon --fuse fuses every run of a shape, the operator's override."""
        asked = (self.spec(run["id"]).get("params") or {}).get("fuse") is True
        if asked:
            sizing = "auto" if self.s.fuse == "off" else self.s.fuse
            return sizing, f"the plan asks (fuse = true), --fuse {sizing} sizing"
        if self.s.fuse != "off":
            return self.s.fuse, f"daemon --fuse {self.s.fuse} (the operator's override: the plan did not ask)"
        return None

    def _array_mates(self, ready: list[dict]) -> dict[str, list[dict]]:
        """Ready runs that may share an array, by array key (runs that must be alone, never)."""
        by_key: dict[str, list[dict]] = {}
        for r in ready:
            if r.get("alone") or (r.get("fuse_max") or MAX_ARRAY) < 2 or self.fuse_mode(r) is None:
                continue
            k = self.array_key(r["id"])
            if k is not None:
                by_key.setdefault(k, []).append(r)
        return by_key

    def _array(self, r: dict, by_key: dict[str, list[dict]], taken: set[str], devs: list[placement.Device],
               est: float, learned: placement.Measurements | None = None
               ) -> tuple[list[dict], placement.Device | None, str]:
        """Ready runs to train with ``r`` as one fused array, the device they fit on together, and why:
        up to K runs (``--fuse K``), or as many as fit by the measured peak a run (``--fuse auto``, GPUs
        only; at most PROBE_ARRAY before a run of the shape has finished, and packing where fused runs
        measured slower). An OOM halves the array a run may join (its ``fuse_max``)."""
        mode = self.fuse_mode(r)
        key = self.array_key(r["id"])
        cap = r.get("fuse_max") or MAX_ARRAY
        if mode is None or key is None or r.get("alone") or cap < 2:
            return [r], None, ""
        sizing, why = mode
        shape = placement.shape_key(r, self.spec(r["id"]))
        measured = (learned or placement.Measurements()).shape(shape)
        if sizing == "auto":
            if all(d.index is None for d in devs):
                return [r], None, ""  # on the CPU an array gains little: runs go alone
            pack = (learned or placement.Measurements()).packing_reason(shape)
            if pack:
                if pack != getattr(self, "_packing", {}).get(shape):
                    self._packing = {**getattr(self, "_packing", {}), shape: pack}
                    self.log(f"{shape}: {pack}")
                return [r], None, pack
            limit = MAX_ARRAY if measured.share_gb is not None else placement.PROBE_ARRAY
        else:
            limit = int(sizing)
        mates = [r] + [o for o in by_key.get(key, []) if o is not r and o["id"] not in taken]
        for k in range(min(len(mates), limit, cap), 1, -1):  # the largest array that fits somewhere
            group = [m for m in mates if (m.get("fuse_max") or MAX_ARRAY) >= k][:k]
            dev = placement.choose(devs, est * k, False) if len(group) == k else None
            if dev is not None:
                size = (f"{measured.share_gb:.2f} GB a run measured by {measured.share_from}"
                        if measured.share_gb is not None else "no run of this shape measured yet"
                        + (f" (at most {placement.PROBE_ARRAY} until one is)" if sizing == "auto" else "")
                        + f", formula {est} GB a run")
                return group, dev, f"{why}; {k} runs: {size}" + (f"; capped at {cap} after an OOM" if cap < MAX_ARRAY
                                                                    else "")
        return [r], None, ""

    def _after_oom(self, r: dict) -> dict:
        """The fields of a run whose process ran out of memory: an array's runs are requeued to join
        arrays of half its size (down to 1: alone on a GPU); a run alone in its process, to run alone."""
        k = r.get("fused") or 0
        half = k // 2
        if half >= 2:
            self.log(f"{r['id']}: out of memory in an array of {k} on GPU {r.get('gpu')}; requeued for arrays "
                     f"of at most {half}")
            return {"status": "queued", "gpu": None, "fuse_max": half}
        self.log(f"{r['id']}: out of memory on GPU {r.get('gpu')}"
                 + (f" in an array of {k}" if k > 1 else "") + "; requeued to run alone")
        return {"status": "queued", "gpu": None, "alone": True, "fuse_max": 1}

    def _last_line(self, run: dict) -> str:
        for path in (self.root / ".workers" / f"{run.get('worker')}.log", self.root / run["id"] / "train.log"):
            try:
                lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
            except OSError:
                continue
            if lines:
                return f": {lines[-1].strip()[:200]}"
        return ""

    def _block_and_commit(self, runs: list[dict], status: dict[str, str], changes: dict[str, tuple[str, dict]],
                          stats: dict) -> None:
        """Block queued children of a failed, cancelled or blocked parent; unblock blocked children of a
        parent queued again (retried), running or done; then commit the tick's decisions."""
        for rid, (_, f) in changes.items():
            if "status" in f:
                status[rid] = f["status"]
        for r in runs:
            st, parent = status[r["id"]], r.get("parent")
            if not parent or st not in ("queued", "blocked"):
                continue
            pst = status.get(parent)
            new = ("blocked" if st == "queued" and pst in ("failed", "cancelled", "blocked") else
                   "queued" if st == "blocked" and pst in ("queued", "running", "done") else None)
            if new is None:
                continue
            changes[r["id"]] = (r["status"], {**changes.get(r["id"], ("", {}))[1], "status": new})
            status[r["id"]] = new
            stats["blocked" if new == "blocked" else "unblocked"] += 1
        if changes:
            self._commit(changes)

    def _commit(self, changes: dict[str, tuple[str, dict]]) -> None:
        """Apply the tick's decisions to runs whose status is still what the decision saw."""
        with self.ledger.transaction() as tx:
            for rid, (seen, fields) in changes.items():
                cur = tx.get_run(rid)
                if cur is not None and (cur["status"] == seen or not seen):
                    tx.update_run(rid, **fields)

    def _launch(self, group: list[dict], dev: placement.Device, est: float, key: str, fused: int = 0,
                why: str = "") -> bool:
        """Mark the runs running (and the placement) in the ledger, then start their process."""
        worker = uuid.uuid4().hex[:10]
        now = time.time()
        with self.ledger.transaction() as tx:  # mark first: a crash after this adopts, never relaunches
            fresh = [r for r in group if (tx.get_run(r["id"]) or {}).get("status") == "queued"]
            fused = len(fresh) if fused and len(fresh) > 1 else 0
            for r in fresh:
                cur = tx.get_run(r["id"])
                tx.update_run(r["id"], status="running", gpu=dev.index, worker=worker, started=now, pid=None,
                              pid_started=None, attempts=cur.get("attempts", 0) + 1, est_gb=est, shape=key,
                              error=None, score=None, fused=fused, fuse_why=why or None, executor="local")
            if fresh:
                tx.put(tx.db.table("placements"), f"{now:.6f}-{worker}", {
                    "t": now, "gpu": dev.index, "runs": [r["id"] for r in fresh], "est_gb": est,
                    "reserved_before_gb": dev.reserved_gb, "procs_before": dev.procs, "slots": dev.slots,
                    "total_gb": None if dev.index is None else dev.total_gb, "alone": bool(fresh[0].get("alone")),
                    "others_on_gpu": list(dev.run_ids), "fused": fused, "fuse_why": why or None})
        if not fresh:
            return False
        env, args, note = self._run_env(dev, fused)
        for r in fresh:  # a cancel request left from an earlier attempt must not stop this one
            (self.root / r["id"] / rundir.CANCEL_FILE).unlink(missing_ok=True)
            _append_line(self.root / r["id"] / "train.log", note)
        dirs = [self.root / r["id"] for r in fresh]
        log = dirs[0] / "train.log" if len(dirs) == 1 else self.root / ".workers" / f"{worker}.log"
        synth = fresh[0]["stage"] == "synth"
        pid, started = self._spawn(dirs, env, log, "stilts_tui.synth" if synth else "stilts_tui.train",
                                   [] if synth else args)
        with self.ledger.transaction() as tx:
            for r in fresh:
                tx.update_run(r["id"], pid=pid, pid_started=started)
            cancelled = [r["id"] for r in fresh if tx.get_run(r["id"])["status"] != "running"]
        if cancelled and len(cancelled) == len(fresh):
            local.stop(pid, started, grace=5)
        dev.procs += 1
        dev.reserved_gb += est
        dev.run_ids.extend(r["id"] for r in fresh)
        dev.alone = dev.alone or bool(fresh[0].get("alone"))
        where = "CPU" if dev.index is None else f"GPU {dev.index}"
        how = f", fused as one array of {fused}" if fused else ""
        self.log(f"launched {', '.join(r['id'] for r in fresh)} on {where} (pid {pid}, est {est} GB{how})"
                 + (f" [{why}]" if why else ""))
        return True

    def _run_env(self, dev: placement.Device, fused: int) -> tuple[dict[str, str], list[str], str]:
        """The environment, trainer flags and a train.log line for a process placed on ``dev``. A real
        GPU placement asks for ``--device cuda``: a CUDA failure then fails the run instead of training
        on the CPU unnoticed. NVML and CUDA number GPUs alike only in PCI bus order."""
        env = {"PYTHONUNBUFFERED": "1", "STILTS_FUSE": str(fused), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if dev.index is None:
            env.update(STILTS_DEVICE="cpu", CUDA_VISIBLE_DEVICES="",
                       OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // max(1, self.s.cpu_slots))))
            return env, ["--device", "cpu"], "queue: placed on the CPU (no GPU on this machine)"
        env["CUDA_VISIBLE_DEVICES"] = str(dev.index)
        if self.mps_dir is not None:
            env.update(mps.environment(self.mps_dir))
        if gpu_info.fake_spec() is not None:
            env["STILTS_DEVICE"] = "cpu"
            return env, ["--device", "cpu"], (f"queue: placed on fake GPU {dev.index} (STILTS_FAKE_GPUS="
                                              f"{os.environ.get('STILTS_FAKE_GPUS')}): training on the CPU")
        env["STILTS_DEVICE"] = "cuda"
        return env, ["--device", "cuda"], (f"queue: placed on GPU {dev.index} (CUDA_VISIBLE_DEVICES={dev.index}, "
                                           f"--device cuda{', under MPS' if self.mps_dir else ''})")

    def _spawn(self, dirs: list[Path], env: dict[str, str], log: Path, module: str, args: list[str]
               ) -> tuple[int, float]:
        """Start the process (the local executor); (pid, start time)."""
        return local.launch(dirs, env, log, module, args)

    # -- the Slurm executor -----------------------------------------------------------------------

    def tick_slurm(self) -> dict:
        """Track submitted jobs, block children of failed parents, submit ready runs.

        A run is "running" from the moment it is marked for submission until its result is in; its
        ``job_id`` is recorded after sbatch answers, and a daemon that died in between finds the job
        by name rather than submitting it again. A child is submitted while its parent is still in
        Slurm, with ``--dependency=afterok``, so Slurm holds it and cancels it if the parent fails.
        """
        stats = {"reaped": 0, "requeued": 0, "blocked": 0, "unblocked": 0, "launched": 0}
        runs = self.ledger.runs()
        status = {r["id"]: r["status"] for r in runs}
        active = [r for r in runs if r["status"] == "running"]
        jobs = slurm_exec.states([r["job_id"] for r in active if r.get("job_id")])
        changes: dict[str, tuple[str, dict]] = {}

        # 1. reap: result.json first, Slurm's state when there is none
        for r in active:
            res, job = self.result(r["id"]), r.get("job_id")
            if not job:
                found = slurm_exec.find(r["id"], self.root, r.get("started", 0))
                if found:
                    changes[r["id"]] = ("running", {"job_id": found})
                    self.log(f"{r['id']}: found job {found} submitted before a restart")
                elif time.time() - r.get("started", 0) > 30:  # marked, never submitted
                    changes[r["id"]] = ("running", {"status": "queued", "attempts": max(0, r.get("attempts", 1) - 1)})
                    stats["requeued"] += 1
                continue
            st = jobs.get(job, slurm_exec.JobState("UNKNOWN"))
            if res and res.get("status") in FINAL_RESULT:
                changes[r["id"]] = ("running", {
                    "status": "done" if res["status"] == "done" else "failed", "finished": time.time(),
                    "score": res.get("score"), "error": res.get("error"), "slurm_state": st.state,
                    "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb")})
                stats["reaped"] += 1
            elif st.active and st.reason != slurm_exec.NEVER:
                if (st.state, st.reason) != (r.get("slurm_state"), r.get("slurm_reason")):
                    changes[r["id"]] = ("running", {"slurm_state": st.state, "slurm_reason": st.reason})
            elif st.reason == slurm_exec.NEVER or status.get(r.get("parent")) in ("failed", "cancelled", "blocked"):
                if st.active:
                    slurm_exec.cancel([job], wait=0)
                changes[r["id"]] = ("running", {"status": "blocked", "slurm_state": "CANCELLED",
                                                "slurm_reason": slurm_exec.NEVER})
                stats["blocked"] += 1
                self.log(f"{r['id']}: parent failed; Slurm job {job} cancelled, run blocked")
            else:
                why = f"Slurm job {job} ended {st.state}" + (f" ({st.reason})" if st.reason else "")
                why += " without a result" + self._last_line(r)
                retry = st.state in ("UNKNOWN", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL") and \
                    r.get("attempts", 1) <= self.s.max_retries
                fields = {"status": "queued" if retry else "failed", "error": why, "job_id": None,
                          "slurm_state": st.state, "slurm_reason": st.reason}
                if not retry:
                    fields["finished"] = time.time()
                changes[r["id"]] = ("running", fields)
                stats["requeued" if retry else "reaped"] += 1
                self.log(f"{r['id']}: {why} -> {fields['status']}")
        # 2. block queued children of failed parents (those already in Slurm were handled above); unblock
        self._block_and_commit(runs, status, changes, stats)

        # 3. submit ready runs: no parent, a parent done, or a parent whose job Slurm holds
        if self.ledger.meta("paused"):
            return stats
        runs = self.ledger.runs()
        by_id = {r["id"]: r for r in runs}
        room = self.s.max_jobs - sum(1 for r in runs if r["status"] == "running")
        for r in runs:
            if room <= 0:
                break
            if r["status"] != "queued":
                continue
            parent = by_id.get(r.get("parent")) if r.get("parent") else None
            dependency = None
            if parent is not None and parent["status"] != "done":
                if parent["status"] != "running" or not parent.get("job_id"):
                    continue
                dependency = parent["job_id"]
            if self._submit(r, dependency):
                stats["launched"] += 1
                room -= 1
                if dependency is None:
                    by_id[r["id"]] = self.ledger.get(r["id"]) or r
            else:
                by_id[r["id"]] = self.ledger.get(r["id"]) or r
        return stats

    def _submit(self, run: dict, dependency: str | None) -> bool:
        now = time.time()
        with self.ledger.transaction() as tx:  # mark first: a crash after this finds the job, never resubmits
            cur = tx.get_run(run["id"])
            if (cur or {}).get("status") != "queued":
                return False
            tx.update_run(run["id"], status="running", executor="slurm", gpu=None, started=now, pid=None,
                          job_id=None, slurm_state="SUBMITTING", slurm_reason="", attempts=cur.get("attempts", 0) + 1,
                          error=None, score=None)
        settings = {**SLURM_DEFAULTS, **self.s.slurm, **(self.spec(run["id"]).get("slurm") or {})}
        module = "stilts_tui.synth" if run["stage"] == "synth" else "stilts_tui.train"
        try:
            job = slurm_exec.submit(run["id"], self.root / run["id"], settings, module, dependency)
        except UserError as e:
            # e.g. the parent's job left Slurm between our read and sbatch: try again next tick
            with self.ledger.transaction() as tx:
                cur = tx.get_run(run["id"])
                if cur and cur["status"] == "running" and not cur.get("job_id"):
                    tx.update_run(run["id"], status="queued", slurm_state=None, error=str(e),
                                  attempts=max(0, cur.get("attempts", 1) - 1))
            self.log(f"{run['id']}: not submitted: {e}")
            return False
        with self.ledger.transaction() as tx:
            tx.update_run(run["id"], job_id=job, slurm_state="PENDING")
            cancelled = tx.get_run(run["id"])["status"] == "cancelled"
        if cancelled:  # cancelled while sbatch ran
            slurm_exec.cancel([job], wait=0)
        self.log(f"submitted {run['id']} as Slurm job {job}"
                 + (f" (after job {dependency})" if dependency else ""))
        return True

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
        self.log(f"MPS on: {state.reason} (pipe {state.pipe_dir})" if state.on else
                 f"MPS off, runs go on without it: {state.reason}")

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
        lock = FileLock(str(lock_path(self.root)), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            other = running_daemon(self.root) or {}
            print(f"stilts-tui: error: a daemon is already running on {self.root} (pid {other.get('pid')})",
                  file=sys.stderr)
            return 2
        try:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
            signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
            if self.s.mps:
                self.start_mps()
            info = {"pid": os.getpid(), "started": time.time(), "settings": asdict(self.s)}
            rundir.write_json_atomic(info_path(self.root), info)
            self.log(f"daemon started (pid {os.getpid()}, settings {asdict(self.s)})")
            while not self._stop:
                t = time.time()
                try:
                    stats = self.tick()
                    if any(stats.values()):
                        self.log(f"tick {1000 * (time.time() - t):.0f} ms: {stats}")
                except UserError as e:
                    self.log(f"tick failed: {e}")
                time.sleep(max(0.05, self.s.interval - (time.time() - t)))
            self.log("daemon stopping (running runs go on; a new daemon adopts them)")
            self.stop_mps()
            info_path(self.root).unlink(missing_ok=True)
            return 0
        finally:
            lock.release()


def _append_line(path: Path, text: str) -> None:
    """One stamped line in a run's train.log (the trainer appends after it)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    except OSError:
        pass  # the log line is a courtesy; the launch goes on


def parse_fuse(value: str) -> str:
    """--fuse: off, auto, or an array size K >= 2 (1 means off)."""
    if value in ("off", "auto", "0", "1"):
        return "off" if value in ("0", "1") else value
    if value.isdigit() and int(value) >= 2:
        return value
    raise UserError(f"--fuse: expected off, auto or an array size K >= 2, got '{value}'")


def parse_gpus(value: str | None) -> list[int] | None:
    if value in (None, "", "all"):
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus: expected indices like 0,1, got '{value}'") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stilts_tui.queue.daemon")
    ap.add_argument("--runs-dir", type=Path, default=None)
    ap.add_argument("--gpus", default=None)
    ap.add_argument("--per-gpu", type=int, default=4)
    ap.add_argument("--cpu-slots", type=int, default=1)
    ap.add_argument("--max-retries", type=int, default=2)
    ap.add_argument("--worker-runs", type=int, default=4)
    ap.add_argument("--mps", action="store_true")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--executor", default="local", choices=("local", "slurm"))
    ap.add_argument("--slurm", default="{}", help="sbatch settings as JSON (validated by the CLI)")
    ap.add_argument("--max-jobs", type=int, default=1000)
    ap.add_argument("--fuse", default="off")
    a = ap.parse_args(argv)
    try:
        s = Settings(gpus=parse_gpus(a.gpus), per_gpu=a.per_gpu, cpu_slots=a.cpu_slots, max_retries=a.max_retries,
                     worker_runs=a.worker_runs, mps=a.mps, interval=a.interval, executor=a.executor,
                     slurm=json.loads(a.slurm), max_jobs=a.max_jobs, fuse=parse_fuse(a.fuse))
        return Daemon(rundir.runs_dir(a.runs_dir), s).serve()
    except UserError as e:
        print(f"stilts-tui: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
