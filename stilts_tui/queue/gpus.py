"""The GPUs the queue may use: NVML (nvidia-ml-py), or ``STILTS_FAKE_GPUS=NxGiB`` for tests."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from stilts_tui.contract import Env
from stilts_tui.errors import UserError


@dataclass
class GPU:
    index: int
    name: str
    total_gb: float
    free_gb: float
    util: float | None = None  # percent
    fake: bool = False
    error: str | None = None  # NVML failed on this device: the queue does not use it


def fake_spec() -> tuple[int, float] | None:
    value = os.environ.get(Env.FAKE_GPUS, "").strip()
    if not value:
        return None
    m = re.fullmatch(r"(\d+)x(\d+(?:\.\d+)?)", value)
    if not m:
        raise UserError(f"{Env.FAKE_GPUS}: expected COUNTxGiB (e.g. 2x24), got '{value}'")
    return int(m.group(1)), float(m.group(2))


@dataclass
class Probe:
    """What NVML says now: every GPU it lists (an unusable one carries its error), or why NVML failed."""

    gpus: list[GPU]
    error: str | None = None  # NVML itself failed (init, device count): no GPU is known this time
    seen_gpus: bool = False  # NVML listed a GPU earlier in this process: a failure now is not "no GPU"

    @property
    def usable(self) -> list[GPU]:
        return [g for g in self.gpus if g.error is None]


_NO_NVML = False  # pynvml cannot be imported: do not try again every tick
_SEEN_GPUS = False
_INIT_FAILED_AT = 0.0  # nvmlInit failed at this time: retried after NVML_RETRY seconds, not every tick
_INIT_ERROR: str | None = None
NVML_RETRY = 30.0
# nvmlInit errors that mean "this machine has no NVIDIA GPU", not "the GPUs are broken"
NO_DRIVER = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "OSError")


def _nvml_error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def probe() -> Probe:
    """Every GPU with its memory now. An NVMLError on one device marks that device unusable (with the
    error) and keeps the others; an NVMLError from NVML itself is reported, never raised."""
    global _NO_NVML, _SEEN_GPUS, _INIT_FAILED_AT, _INIT_ERROR
    fake = fake_spec()
    if fake is not None:
        n, gb = fake
        return Probe([GPU(i, "fake GPU", gb, gb, None, fake=True) for i in range(n)])
    if _NO_NVML:
        return Probe([])
    try:
        import pynvml
    except ImportError:
        _NO_NVML = True
        return Probe([])
    if _INIT_ERROR is not None and time.time() - _INIT_FAILED_AT < NVML_RETRY:
        if any(name in _INIT_ERROR for name in NO_DRIVER) and not _SEEN_GPUS:
            return Probe([])
        return Probe([], _INIT_ERROR, _SEEN_GPUS)
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError, or a library that cannot be loaded
        _INIT_FAILED_AT, _INIT_ERROR = time.time(), f"NVML init failed: {_nvml_error(e)}"
        if type(e).__name__ in NO_DRIVER and not _SEEN_GPUS:
            return Probe([])
        return Probe([], _INIT_ERROR, _SEEN_GPUS)
    _INIT_ERROR = None
    try:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            return Probe([], f"NVML device count failed: {_nvml_error(e)}", _SEEN_GPUS)
        out = [_device(pynvml, i) for i in range(count)]
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    _SEEN_GPUS = _SEEN_GPUS or bool(out)
    return Probe(out, None, _SEEN_GPUS)


def _device(pynvml, i: int) -> GPU:
    """One device; an NVMLError (a GPU fallen off the bus, an ECC error, a reset in progress) makes it
    unusable with the error rather than ending the caller."""
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
    except pynvml.NVMLError as e:
        return GPU(i, "unknown", 0.0, 0.0, None, error=_nvml_error(e))
    try:
        util = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
    except pynvml.NVMLError:
        util = None  # utilization is for display only
    return GPU(i, name.decode() if isinstance(name, bytes) else name, mem.total / 2**30, mem.free / 2**30, util)


def list_gpus() -> list[GPU]:
    """The usable GPUs with their memory now; [] where there is none (or NVML cannot be loaded)."""
    return probe().usable
