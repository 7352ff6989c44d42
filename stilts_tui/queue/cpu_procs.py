"""The machine's CPUs and memory, and each worker process of ours (a running run's pid, with its
children), for the GPU view on a machine without a GPU, where runs train on the CPU.

psutil's counters: a process's CPU share is measured between two samples, so a :class:`CpuSampler`
keeps the ``psutil.Process`` objects from one sample to the next (the first sample of a process reads
0 %). 100 % is one core, as in top and htop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from stilts_tui.queue.gpu_procs import printable, running_runs, stage_text


@dataclass
class WorkerProc:
    pid: int
    cpu_percent: float  # this process and its children; 100 = one core
    rss_gb: float
    threads: int
    run_ids: list[str] = field(default_factory=list)
    plan: str | None = None
    stage: str | None = None


@dataclass
class CpuReport:
    cores: list[float]  # each core's busy percent since the last sample
    mem_used_gb: float
    mem_total_gb: float
    load: tuple[float, float, float]
    procs: list[WorkerProc] = field(default_factory=list)

    @property
    def busy(self) -> float:
        """The whole machine's busy percent (all cores: 100 = every core busy)."""
        return sum(self.cores) / len(self.cores) if self.cores else 0.0


class CpuSampler:
    """One sample of the CPUs and our workers each call; CPU shares measured since the last call."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(percpu=True)  # the first interval starts now

    def _process(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        try:
            if p is None or not p.is_running():
                p = self._procs[pid] = psutil.Process(pid)
            return p
        except psutil.Error:
            self._procs.pop(pid, None)
            return None

    def _measure(self, pid: int, seen: set[int]) -> tuple[float, float, int] | None:
        """(CPU percent of the process and its children, resident GiB, threads); None once it is gone.
        Every pid measured goes into ``seen``."""
        p = self._process(pid)
        if p is None:
            return None
        try:
            with p.oneshot():
                cpu, rss, threads = p.cpu_percent(None), p.memory_info().rss, p.num_threads()
            seen.add(pid)
            for child in p.children(recursive=True):
                c = self._process(child.pid)
                if c is not None:
                    cpu, rss = cpu + c.cpu_percent(None), rss + c.memory_info().rss
                    seen.add(child.pid)
        except psutil.Error:
            return None
        return cpu, rss / 2**30, threads

    def sample(self, root: Path | None) -> CpuReport:
        by_pid: dict[int, list[dict]] = {}
        for r in running_runs(root):
            if isinstance(r.get("pid"), int) and r["pid"] > 0:
                by_pid.setdefault(r["pid"], []).append(r)
        procs, seen = [], set()
        for pid, runs in sorted(by_pid.items()):
            measured = self._measure(pid, seen)
            if measured is None:
                continue
            first = runs[0]
            procs.append(
                WorkerProc(
                    pid,
                    round(measured[0], 1),
                    round(measured[1], 2),
                    measured[2],
                    [str(r.get("id")) for r in runs],
                    printable(str(first.get("plan"))),
                    stage_text(first),
                )
            )
        for pid in set(self._procs) - seen:
            del self._procs[pid]  # processes no longer ours: forget them
        mem = psutil.virtual_memory()
        return CpuReport(
            psutil.cpu_percent(percpu=True),
            round((mem.total - mem.available) / 2**30, 2),
            round(mem.total / 2**30, 2),
            os.getloadavg(),
            procs,
        )
