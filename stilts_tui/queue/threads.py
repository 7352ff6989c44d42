"""Every process the daemon starts gets its share of the CPU.

A trainer's CPU work (tokenization, batching, evaluation, the Python loop's host ops and, on the CPU, the
training itself) runs in thread pools that torch, OpenMP and the tokenizers size to the whole machine by
default. K processes started side by side (K runs packed on a GPU, or K CPU slots) then start K pools as
wide as the machine and oversubscribe its cores: measured on 2 cores, two MiniLM trainers on one fake GPU
took 3.6x longer than one after the other. So each process gets ``cores // processes`` threads (at least
one), where ``cores`` are the cores the daemon may run on (its CPU affinity: ``taskset`` and cpusets are
respected; psutil) and ``processes`` the most it runs at once (every device's slots: ``--per-gpu`` a GPU,
MPS or not, or ``--cpu-slots``). Fixed rather than re-divided as processes come and go, so a process
started now never loses cores to the ones started after it.
"""

from __future__ import annotations

import os

import psutil

from stilts_tui.contract import THREADS_ENV, THREADS_WHY_ENV


def cores() -> int:
    """The cores this process may run on (its affinity; every core where the platform cannot say)."""
    try:
        return max(1, len(psutil.Process().cpu_affinity()))
    except (AttributeError, psutil.Error, OSError):  # macOS has no affinity
        return max(1, os.cpu_count() or 1)


def share(processes: int, available: int | None = None) -> int:
    """Threads for each of ``processes`` processes run at once on ``available`` cores (at least one)."""
    return max(1, (available or cores()) // max(1, processes))


def environment(processes: int, available: int | None = None) -> dict[str, str]:
    """The variables that size a started process's pools: OpenMP's and the BLAS libraries' (read when they
    load), the tokenizers' (parallel only with more than one thread), and the trainer's own, which sets
    torch's intra-op and inter-op pools and records the share in result.json."""
    available = available or cores()
    n = share(processes, available)
    why = (
        f"{n} of {available} cores: the daemon runs at most {processes} process{'es' if processes != 1 else ''} at once"
    )
    return {
        "OMP_NUM_THREADS": str(n),
        "MKL_NUM_THREADS": str(n),
        "OPENBLAS_NUM_THREADS": str(n),
        "RAYON_NUM_THREADS": str(n),
        "TOKENIZERS_PARALLELISM": "true" if n > 1 else "false",
        THREADS_ENV: str(n),
        THREADS_WHY_ENV: why,
    }
