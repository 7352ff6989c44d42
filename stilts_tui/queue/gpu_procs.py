"""Which process is on which GPU, and whose it is.

Per GPU: memory, utilization and NVML's compute processes. A process is ours when its pid, or one
of its parents' (a run's own children), is the pid of a running run in the ledger: it is named by
its run ids, plan and stage. Any other process is named by psutil: its user and command line.

Test and demo facility (no GPU needed): with ``STILTS_FAKE_GPUS=NxGiB`` (see queue/gpus.py) the
processes on fake GPUs are the ledger's running runs placed on them (their memory estimate as their
memory), plus ``STILTS_FAKE_GPU_PROCS="GPU:PID:GiB,..."``: any real pid shown on a fake GPU, e.g. a
process of another user. A fake GPU's used memory is the sum of its processes'; its utilization is
unknown.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stilts_tui.contract import LEDGER_FILE, Env, Status
from stilts_tui.errors import UserError
from stilts_tui.queue import gpus as gpu_info

FAKE_PROCS_VAR = Env.FAKE_GPU_PROCS


@dataclass
class GpuProc:
    pid: int
    used_gb: float | None
    ours: bool = False
    run_ids: list[str] = field(default_factory=list)
    plan: str | None = None
    stage: str | None = None  # "target rte (from hellaswag)", as the queue screen would say it
    user: str | None = None
    command: str | None = None


@dataclass
class GpuState:
    index: int
    name: str
    total_gb: float
    used_gb: float | None
    util: float | None  # percent; None where NVML does not say (or a fake GPU)
    fake: bool = False
    procs: list[GpuProc] = field(default_factory=list)


@dataclass
class GpuReport:
    gpus: list[GpuState]
    reason: str | None = None  # why there are none: NVML missing, no driver, no device
    driver: str | None = None

    def as_dict(self) -> dict:
        return {"gpus": [asdict(g) for g in self.gpus], "reason": self.reason, "driver": self.driver}


def printable(text: str) -> str:
    """Control characters (an ESC in a command line) never reach the terminal raw."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def fake_procs() -> list[tuple[int, int, float]]:
    """``STILTS_FAKE_GPU_PROCS``: (gpu, pid, GiB) triples."""
    value = os.environ.get(FAKE_PROCS_VAR, "").strip()
    out = []
    for item in filter(None, (x.strip() for x in value.split(","))):
        parts = item.split(":")
        try:
            gpu, pid, gb = int(parts[0]), int(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise UserError(f"{FAKE_PROCS_VAR}: expected GPU:PID:GiB items separated by commas, got '{item}'") from None
        out.append((gpu, pid, gb))
    return out


def running_runs(root: Path | None) -> list[dict]:
    """The ledger's running runs (none where there is no ledger or it cannot be read)."""
    if root is None or not (Path(root) / LEDGER_FILE).exists():
        return []
    from stilts_tui.store.ledger import Ledger

    try:
        return [r for r in Ledger(root).runs(status=Status.RUNNING) if isinstance(r, dict)]
    except UserError:
        return []


def stage_text(run: dict) -> str:
    """A run's stage as the queue screen says it: "target rte (from hellaswag)"."""
    inter = run.get("intermediate")
    return printable(
        f"{run.get('stage')} {run.get('name')}" + (f" (from {inter})" if run.get("stage") == "target" and inter else "")
    )


def _describe(proc: GpuProc, by_pid: dict[int, list[dict]]) -> GpuProc:
    """Name a process: by the runs whose pid is it or one of its parents, else by psutil's user and command."""
    import psutil

    try:
        p = psutil.Process(proc.pid)
        chain = [proc.pid, *(x.pid for x in p.parents())]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        p, chain = None, [proc.pid]
    runs = next((by_pid[pid] for pid in chain if pid in by_pid), None)
    if runs:
        first = runs[0]
        proc.ours, proc.run_ids = True, [str(r.get("id")) for r in runs]
        proc.plan = printable(str(first.get("plan")))
        proc.stage = stage_text(first)
    if p is not None:
        try:
            with p.oneshot():
                proc.user = p.username()
                proc.command = printable(" ".join(p.cmdline())[:300] or p.name())
        except psutil.AccessDenied:
            proc.command = proc.command or "(not visible to this user)"
        except psutil.NoSuchProcess:
            proc.command = "(exited)"
    return proc


def _nvml_report() -> GpuReport:
    """Real GPUs through NVML (nvidia-ml-py); the reason when there are none."""
    try:
        import pynvml
    except ImportError:
        return GpuReport([], "nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return GpuReport([], f"NVML cannot start ({e}): no NVIDIA driver on this machine")
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = GpuReport([], None, driver.decode() if isinstance(driver, bytes) else driver)
        for i in range(pynvml.nvmlDeviceGetCount()):
            try:
                out.gpus.append(_nvml_gpu(pynvml, i))
            except pynvml.NVMLError:  # a GPU NVML fails on is left out here; `doctor` names it from the probe
                continue
        if not out.gpus:
            out.reason = "NVML sees no GPU it can query"
        return out
    except pynvml.NVMLError as e:
        return GpuReport([], f"NVML failed ({type(e).__name__}: {e})")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _nvml_gpu(pynvml, i: int) -> GpuState:
    """One GPU's memory, utilization and compute processes (raises NVMLError where NVML fails on it)."""
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    try:
        util = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
    except pynvml.NVMLError:
        util = None
    name = pynvml.nvmlDeviceGetName(h)
    g = GpuState(i, name.decode() if isinstance(name, bytes) else name, mem.total / 2**30, mem.used / 2**30, util)
    try:
        listed = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    except pynvml.NVMLError:
        listed = []
    for x in listed:
        used = getattr(x, "usedGpuMemory", None)
        g.procs.append(GpuProc(int(x.pid), None if not isinstance(used, int) else used / 2**30))
    return g


def _fake_report(running: list[dict]) -> GpuReport:
    report = GpuReport(
        [GpuState(g.index, g.name, g.total_gb, 0.0, None, fake=True) for g in gpu_info.list_gpus()], None, "fake"
    )
    by_index = {g.index: g for g in report.gpus}
    seen: set[tuple[int, int]] = set()
    for r in running:  # a worker's runs share one process: list it once
        g, pid = by_index.get(r.get("gpu")), r.get("pid")
        if g is not None and isinstance(pid, int) and (g.index, pid) not in seen:
            seen.add((g.index, pid))
            g.procs.append(GpuProc(pid, r.get("est_gb") if isinstance(r.get("est_gb"), (int, float)) else None))
    for gpu, pid, gb in fake_procs():
        if gpu in by_index and (gpu, pid) not in seen:
            by_index[gpu].procs.append(GpuProc(pid, gb))
    for g in report.gpus:
        g.used_gb = round(sum(p.used_gb or 0.0 for p in g.procs), 3)
    return report


def snapshot(root: Path | None = None) -> GpuReport:
    """Every GPU with its memory, utilization and processes, each named (``root``: the runs-dir)."""
    running = running_runs(root)
    report = _fake_report(running) if gpu_info.fake_spec() is not None else _nvml_report()
    by_pid: dict[int, list[dict]] = {}
    for r in running:
        if isinstance(r.get("pid"), int):
            by_pid.setdefault(r["pid"], []).append(r)
    for g in report.gpus:
        g.procs = [_describe(p, by_pid) for p in g.procs]
    return report
