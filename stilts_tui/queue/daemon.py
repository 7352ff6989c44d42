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
import traceback
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from stilts_tui import rundir
from stilts_tui.errors import UserError, first_line, report
from stilts_tui.ledger import FINAL, Ledger, LedgerError, run_problems
from stilts_tui.plan import SLURM_DEFAULTS
from stilts_tui.queue import checks, mps, notify, placement
from stilts_tui.queue import gpus as gpu_info
from stilts_tui.queue.executors import local
from stilts_tui.queue.executors import slurm as slurm_exec
from stilts_tui.queue.settings import EXECUTORS, Settings, help_of, parse_fuse, parse_gpus

FINAL_RESULT = checks.RESULT_STATUSES  # a result.json in one of these ends the attempt
MAX_ARRAY = placement.MAX_ARRAY  # --fuse auto: at most this many runs in one array
ROW_DEFAULTS = {"attempts": 0, "priority": 0, "order": 0, "added": 0}  # a damaged row field is reset to these
MAX_BACKOFF_S = 60.0  # a tick that keeps failing is retried at most this far apart
CANCEL_WAIT_S = 60.0  # a cancel request this old whose process still runs was interrupted: the daemon ends it
SUBMIT_TRIES = 5  # sbatch refusing one run this many times in a row fails the run


def _num(x: object) -> float:
    return x if checks.is_num(x) else 0.0


class BadRun(Exception):
    """A run the daemon cannot handle (a damaged spec.json or result.json, a ledger row of the wrong
    types): that run is failed with the one-line reason; the queue goes on."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"{run_id}: {reason}")
        self.run_id, self.reason = run_id, reason


def lock_path(root: Path) -> Path:
    return root / "daemon.lock"


def info_path(root: Path) -> Path:
    return root / "daemon.json"


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
    return None


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
    def __init__(self, root: Path, settings: Settings):
        self.root, self.s = Path(root), settings
        self.ledger = Ledger(self.root)
        self._specs: dict[str, dict] = {}
        self._array_keys: dict[str, str | None] = {}
        self._stop = False
        self._current: str | None = None  # the run the tick is handling: an error there is that run's
        self.mps_dir: Path | None = None
        self.log_file = open(self.root / "daemon.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def log(self, text: str) -> None:
        try:
            self.log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
        except (OSError, ValueError):  # a full disk must not stop the queue through its log
            pass

    # -- helpers ----------------------------------------------------------------------------------

    def spec(self, run_id: str) -> dict:
        """The run's spec.json, checked; a missing, unreadable or damaged one is a :class:`BadRun`."""
        if run_id not in self._specs:
            path = self.root / run_id / "spec.json"
            try:
                spec = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise BadRun(run_id, f"{path} is missing (`queue add` of its plan writes it again)") from None
            except (OSError, ValueError) as e:
                raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
            problem = checks.spec_problem(spec)
            if problem:
                raise BadRun(run_id, problem)
            self._specs[run_id] = spec
        return self._specs[run_id]

    def result(self, run_id: str) -> dict | None:
        """The run's result.json, checked; None while there is none. A damaged one is a :class:`BadRun`."""
        path = self.root / run_id / "result.json"
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise BadRun(run_id, f"{path} cannot be read: {first_line(e)}") from None
        problem = checks.result_problem(res)
        if problem:
            raise BadRun(run_id, problem)
        return res

    def _retire_result(self, run_id: str, attempt: int) -> None:
        """Keep a finished attempt's result beside the run, out of the way of the next attempt."""
        src = self.root / run_id / "result.json"
        if src.exists():
            os.replace(src, src.with_name(f"result.attempt{attempt}.json"))

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
                r = {**r, **{k: ROW_DEFAULTS.get(k) for k in bad}, "status": "failed"}
            elif bad:
                r = {**r, **{k: ROW_DEFAULTS.get(k) for k in bad}}
            out.append(r)
        return out

    def fail_run(self, run_id: str, reason: str, clear: list[str] | None = None) -> None:
        """Fail one run the daemon cannot handle: stop its process or Slurm job (first, so that no process
        goes on unseen), then record the one-line reason. Fields named in ``clear`` are reset."""
        reason = " ".join(reason.split())[:300]
        cur = self.ledger.get(run_id)
        if cur is None or cur.get("status") in FINAL:
            return
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
                reset = {k: ROW_DEFAULTS.get(k) for k in [*(clear or []), *bad]}
                tx.update_run(run_id, **reset, status="failed",
                              error=reason, finished=time.time(), pid=None)
        self._specs.pop(run_id, None)
        self._array_keys.pop(run_id, None)
        self.log(f"{run_id}: failed by the daemon: {reason}")

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
        runs = self.checked_runs()
        status = {r["id"]: r["status"] for r in runs}
        changes: dict[str, tuple[str, dict]] = {}  # id -> (status it had, new fields)

        # 1. reap
        changes.update(self._reap(runs, stats))
        # 2. a failed or cancelled parent blocks its children; a retried one unblocks them
        self._block_and_commit(runs, status, changes, stats)

        # 3. launch ready runs where they fit
        if self.ledger.meta("paused"):
            return stats
        runs = self.checked_runs()
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
            self._current = r["id"]
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
        self._current = None
        return stats

    def _reap(self, runs: list[dict], stats: dict) -> dict[str, tuple[str, dict]]:
        """What to change for running runs that ended (or whose cancel is to be finished). A finished
        attempt's result.json is retired when the run is launched again, not here: a daemon killed between
        the two steps must find the result, never a run without one."""
        changes: dict[str, tuple[str, dict]] = {}
        for r in runs:
            if r["status"] != "running":
                continue
            self._current = r["id"]
            if r.get("cancel_requested"):  # `queue cancel` is stopping it, or was interrupted doing so
                if local.alive(r.get("pid"), r.get("pid_started")):
                    if time.time() - _num(r["cancel_requested"]) < CANCEL_WAIT_S:
                        continue
                    local.stop(r["pid"], r.get("pid_started"), grace=5)
                changes[r["id"]] = ("running", {"status": "cancelled", "finished": time.time(), "pid": None})
                continue
            res = self.result(r["id"])
            attempt = r.get("attempts") or 1
            if res and res.get("status") in FINAL_RESULT:
                fields = {"finished": time.time(), "score": checks.clean_score(res.get("score")),
                          "error": res.get("error"), "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb"), "pid": None}
                if res["status"] == "oom" and not r.get("alone"):
                    fields.update(self._after_oom(r))
                    stats["requeued"] += 1
                else:
                    fields["status"] = "done" if res["status"] == "done" else "failed"
                    stats["reaped"] += 1
                changes[r["id"]] = ("running", fields)
            elif not local.alive(r.get("pid"), r.get("pid_started")):
                if not r.get("pid"):
                    found = local.find_worker(self.root / r["id"])
                    if found or time.time() - (r.get("started") or 0) < 30:
                        if found:  # launched just before a crash: adopt it
                            changes[r["id"]] = ("running", {"pid": found[0], "pid_started": found[1]})
                        continue
                why = "process exited without result" + self._last_line(r)
                if attempt <= self.s.max_retries:
                    fields = {"status": "queued", "error": why, "pid": None, "gpu": None}
                    stats["requeued"] += 1
                else:
                    fields = {"status": "failed", "error": why, "pid": None, "finished": time.time()}
                    stats["reaped"] += 1
                self.log(f"{r['id']}: {why} (attempt {attempt}) -> {fields['status']}")
                changes[r["id"]] = ("running", fields)
        self._current = None
        return changes

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
                              pid_started=None, attempts=(cur.get("attempts") or 0) + 1, est_gb=est, shape=key,
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
        for r in fresh:  # a cancel request or a result left from an earlier attempt must not end this one
            (self.root / r["id"] / rundir.CANCEL_FILE).unlink(missing_ok=True)
            self._retire_result(r["id"], r.get("attempts") or 0)
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
        runs = self.checked_runs()
        status = {r["id"]: r["status"] for r in runs}
        active = [r for r in runs if r["status"] == "running"]
        jobs = slurm_exec.states([r["job_id"] for r in active if r.get("job_id")])
        changes: dict[str, tuple[str, dict]] = {}

        # 1. reap: result.json first (even for a run whose job id was never recorded), Slurm's state else
        changes.update(self._reap_slurm(active, status, jobs, stats))
        # 2. block queued children of failed parents (those already in Slurm were handled above); unblock
        self._block_and_commit(runs, status, changes, stats)

        # 3. submit ready runs: no parent, a parent done, or a parent whose job Slurm holds
        if self.ledger.meta("paused"):
            return stats
        runs = self.checked_runs()
        by_id = {r["id"]: r for r in runs}
        room = self.s.max_jobs - sum(1 for r in runs if r["status"] == "running")
        for r in runs:
            if room <= 0:
                break
            if r["status"] != "queued":
                continue
            self._current = r["id"]
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
        self._current = None
        return stats

    def _reap_slurm(self, active: list[dict], status: dict[str, str], jobs: dict[str, slurm_exec.JobState],
                    stats: dict) -> dict[str, tuple[str, dict]]:
        """What to change for runs in Slurm: ended (from result.json, else the job's state), blocked by a
        failed parent, pending for good (``stuck``: reported, left pending), or a cancel to finish."""
        changes: dict[str, tuple[str, dict]] = {}
        for r in active:
            self._current = r["id"]
            res, job = self.result(r["id"]), r.get("job_id")
            st = jobs.get(job, slurm_exec.JobState("UNKNOWN")) if job else slurm_exec.JobState("UNKNOWN")
            if r.get("cancel_requested") and (not st.active or
                                              time.time() - _num(r["cancel_requested"]) >= CANCEL_WAIT_S):
                if job and st.active:  # `queue cancel` was interrupted before its scancel
                    slurm_exec.cancel([job], wait=0)
                changes[r["id"]] = ("running", {"status": "cancelled", "finished": time.time()})
            elif r.get("cancel_requested"):
                pass  # `queue cancel` is stopping it now
            elif res and res.get("status") in FINAL_RESULT:
                changes[r["id"]] = ("running", {
                    "status": "done" if res["status"] == "done" else "failed", "finished": time.time(),
                    "score": checks.clean_score(res.get("score")), "error": res.get("error"),
                    "slurm_state": st.state if job else None, "peak_gpu_mem_gb": res.get("peak_gpu_mem_gb"),
                    "stuck": None})
                stats["reaped"] += 1
            elif not job:
                found = slurm_exec.find(r["id"], self.root, r.get("started") or 0)
                if found:
                    changes[r["id"]] = ("running", {"job_id": found})
                    self.log(f"{r['id']}: found job {found} submitted before a restart")
                elif time.time() - (r.get("started") or 0) > 30:  # marked, never submitted
                    changes[r["id"]] = ("running", {"status": "queued",
                                                    "attempts": max(0, (r.get("attempts") or 1) - 1)})
                    stats["requeued"] += 1
            elif st.active and st.reason != slurm_exec.NEVER:
                stuck = slurm_exec.stuck_hint(st) if st.state == "PENDING" else None
                if (st.state, st.reason, stuck) != (r.get("slurm_state"), r.get("slurm_reason"), r.get("stuck")):
                    changes[r["id"]] = ("running", {"slurm_state": st.state, "slurm_reason": st.reason,
                                                    "stuck": stuck})
                    if stuck and stuck != r.get("stuck"):
                        self.log(f"{r['id']}: Slurm job {job} {stuck}")
            elif st.reason == slurm_exec.NEVER or status.get(r.get("parent")) in ("failed", "cancelled", "blocked"):
                if st.active:
                    slurm_exec.cancel([job], wait=0)
                changes[r["id"]] = ("running", {"status": "blocked", "slurm_state": "CANCELLED",
                                                "slurm_reason": slurm_exec.NEVER, "stuck": None})
                stats["blocked"] += 1
                self.log(f"{r['id']}: parent failed; Slurm job {job} cancelled, run blocked")
            else:
                changes[r["id"]] = ("running", self._slurm_ended(r, job, st, stats))
        self._current = None
        return changes

    def _slurm_ended(self, r: dict, job: str, st: slurm_exec.JobState, stats: dict) -> dict:
        """The fields of a run whose job left Slurm without a result: requeued (node failure, preemption,
        a job Slurm forgot) while retries are left, else failed."""
        why = f"Slurm job {job} ended {st.state}" + (f" ({st.reason})" if st.reason else "")
        why += " without a result" + self._last_line(r)
        retry = st.state in ("UNKNOWN", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL") and \
            (r.get("attempts") or 1) <= self.s.max_retries
        fields = {"status": "queued" if retry else "failed", "error": why, "job_id": None,
                  "slurm_state": st.state, "slurm_reason": st.reason, "stuck": None}
        if not retry:
            fields["finished"] = time.time()
        stats["requeued" if retry else "reaped"] += 1
        self.log(f"{r['id']}: {why} -> {fields['status']}")
        return fields

    def _submit(self, run: dict, dependency: str | None) -> bool:
        settings = {**SLURM_DEFAULTS, **self.s.slurm, **(self.spec(run["id"]).get("slurm") or {})}
        problem = slurm_exec.settings_problem(settings)
        if problem:  # e.g. a plan's [slurm] sbatch_args naming an option the executor manages
            self.fail_run(run["id"], f"not submitted to Slurm: {problem}")
            return False
        now = time.time()
        with self.ledger.transaction() as tx:  # mark first: a crash after this finds the job, never resubmits
            cur = tx.get_run(run["id"])
            if (cur or {}).get("status") != "queued":
                return False
            tx.update_run(run["id"], status="running", executor="slurm", gpu=None, started=now, pid=None,
                          job_id=None, slurm_state="SUBMITTING", slurm_reason="", stuck=None,
                          attempts=(cur.get("attempts") or 0) + 1, error=None, score=None)
        self._retire_result(run["id"], cur.get("attempts") or 0)  # a result left from an earlier attempt
        module = "stilts_tui.synth" if run["stage"] == "synth" else "stilts_tui.train"
        try:
            job = slurm_exec.submit(run["id"], self.root / run["id"], settings, module, dependency)
        except UserError as e:
            # e.g. the parent's job left Slurm between our read and sbatch: try again next tick; an sbatch
            # that keeps refusing the run (a bad account, QOS...) fails it after SUBMIT_TRIES
            tries = (cur.get("submit_failures") or 0) + 1
            with self.ledger.transaction() as tx:
                cur = tx.get_run(run["id"])
                if cur and cur["status"] == "running" and not cur.get("job_id"):
                    fields = {"status": "queued", "slurm_state": None, "error": str(e), "submit_failures": tries,
                              "attempts": max(0, (cur.get("attempts") or 1) - 1)}
                    if tries >= SUBMIT_TRIES:
                        fields.update(status="failed", finished=time.time(),
                                      error=f"sbatch refused the run {tries} times: {e}")
                    tx.update_run(run["id"], **fields)
            self.log(f"{run['id']}: not submitted: {e}")
            return False
        with self.ledger.transaction() as tx:
            tx.update_run(run["id"], job_id=job, slurm_state="PENDING", submit_failures=0)
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
        """Hold the runs-dir's lock and tick until SIGTERM. Nothing a tick meets ends the daemon; its
        clean-up (MPS, daemon.json) runs whatever ends it."""
        lock = FileLock(str(lock_path(self.root)), timeout=0)
        try:
            lock.acquire()
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
            info = {"pid": me.pid, "pid_started": me.create_time(), "cmdline": me.cmdline(),
                    "started": time.time(), "settings": asdict(self.s)}
            rundir.write_json_atomic(info_path(self.root), info)
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
            lock.release()

    def loop(self, notifier: notify.Notifier | None = None) -> None:
        """Tick every interval. A damaged run is failed and the tick goes on; any other error is logged
        with its traceback (once while it repeats) and the tick retried with back-off. After each tick the
        notifier (never raising) runs the commands of plans that finished."""
        failures, last = 0, ""
        while not self._stop:
            t = time.time()
            delay = self.s.interval
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
                else:
                    failures += 1
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
            deadline = t + delay
            while not self._stop and time.time() < deadline:
                time.sleep(min(0.1, max(0.01, deadline - time.time())))

    def _blame(self, run_id: str, reason: str) -> bool:
        """Fail one run; False if even that failed (the ledger cannot be written: the tick backs off)."""
        try:
            self.fail_run(run_id, reason)
            return True
        except Exception as e:  # noqa: BLE001
            self.log(f"{run_id}: could not mark it failed ({first_line(e)}); reason was: {reason}")
            return False


def _append_line(path: Path, text: str) -> None:
    """One stamped line in a run's train.log (the trainer appends after it)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    except OSError:
        pass  # the log line is a courtesy; the launch goes on


def arg_parser() -> argparse.ArgumentParser:
    """The daemon's command line: one flag a setting, its default and help from :class:`Settings`."""
    ap = argparse.ArgumentParser(prog="python -m stilts_tui.queue.daemon")
    ap.add_argument("--runs-dir", type=Path, default=None)
    for f in fields(Settings):
        flag, default, text = "--" + f.name.replace("_", "-"), getattr(Settings(), f.name), help_of(f.name)
        if f.name == "gpus":
            ap.add_argument(flag, default=None, help=text)  # parsed by parse_gpus
        elif f.name == "slurm":
            ap.add_argument(flag, default="{}", help=text)
        elif isinstance(default, bool):
            ap.add_argument(flag, action="store_true", help=text)
        else:
            ap.add_argument(flag, type=type(default), default=default, help=text,
                            choices=EXECUTORS if f.name == "executor" else None)
    return ap


def parse_settings(argv: list[str] | None) -> tuple[Path, Settings]:
    """The runs-dir and settings a command line gives (bad ones: UserError or ValueError)."""
    a = vars(arg_parser().parse_args(argv))
    s = Settings(**{f.name: a[f.name] for f in fields(Settings)})
    s.gpus, s.slurm, s.fuse = parse_gpus(a["gpus"]), json.loads(a["slurm"]), parse_fuse(a["fuse"])
    return rundir.runs_dir(a["runs_dir"]), s


def main(argv: list[str] | None = None) -> int:
    try:
        return Daemon(*parse_settings(argv)).serve()
    except (UserError, OSError, ValueError) as e:  # bad settings, an unwritable runs-dir: one line
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
