"""The GPUs the queue may use: NVML (nvidia-ml-py), or ``STILTS_FAKE_GPUS=NxGiB`` for tests."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from stilts_tui.errors import UserError


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float
    util: float | None = None  # percent
    fake: bool = False


def fake_spec() -> tuple[int, float] | None:
    value = os.environ.get("STILTS_FAKE_GPUS", "").strip()
    if not value:
        return None
    m = re.fullmatch(r"(\d+)x(\d+(?:\.\d+)?)", value)
    if not m:
        raise UserError(f"STILTS_FAKE_GPUS: expected COUNTxGiB (e.g. 2x24), got '{value}'")
    return int(m.group(1)), float(m.group(2))


_NO_NVML = False  # NVML failed once in this process: do not ask again every tick


def list_gpus() -> list[GPU]:
    """Every GPU with its memory now; [] where there is none (or NVML cannot be loaded)."""
    global _NO_NVML
    fake = fake_spec()
    if fake is not None:
        n, gb = fake
        return [GPU(i, "fake GPU", gb, gb, None, fake=True) for i in range(n)]
    if _NO_NVML:
        return []
    try:
        import pynvml
    except ImportError:
        _NO_NVML = True
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        _NO_NVML = True
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except pynvml.NVMLError:
                util = None
            name = pynvml.nvmlDeviceGetName(h)
            out.append(GPU(i, name.decode() if isinstance(name, bytes) else name, mem.total / 2**30,
                           mem.free / 2**30, util))
    finally:
        pynvml.nvmlShutdown()
    return out


def driver_version() -> str | None:
    if fake_spec() is not None:
        return "fake"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs
        return None
