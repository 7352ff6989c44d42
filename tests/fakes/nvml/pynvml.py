"""A stand-in for nvidia-ml-py, first on PYTHONPATH in tests/test_gpu_queue.py: $FAKE_NVML_COUNT GPUs
(default 2) of 24 GiB. Every query on a device listed in $FAKE_NVML_BAD (e.g. "1") raises
NVMLError_GpuIsLost, as a GPU fallen off the bus does; FAKE_NVML_INIT=fail makes nvmlInit raise."""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_ERROR_UNKNOWN = 999
NVML_ERROR_GPU_IS_LOST = 15


class NVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {NVML_ERROR_GPU_IS_LOST: "GPU is lost", NVML_ERROR_UNKNOWN: "Unknown Error"}.get(self.value, "?")


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801 - nvidia-ml-py's names
    def __init__(self):
        super().__init__(NVML_ERROR_GPU_IS_LOST)


class NVMLError_Unknown(NVMLError):  # noqa: N801
    def __init__(self):
        super().__init__(NVML_ERROR_UNKNOWN)


def _check(handle) -> None:
    if str(handle.index) in os.environ.get("FAKE_NVML_BAD", "").split(","):
        raise NVMLError_GpuIsLost()


def nvmlInit() -> None:  # noqa: N802
    if os.environ.get("FAKE_NVML_INIT") == "fail":
        raise NVMLError_Unknown()


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return int(os.environ.get("FAKE_NVML_COUNT", "2"))


def nvmlDeviceGetHandleByIndex(index: int):  # noqa: N802
    return SimpleNamespace(index=index)


def nvmlDeviceGetMemoryInfo(handle):  # noqa: N802
    _check(handle)
    return SimpleNamespace(total=24 * 2**30, free=24 * 2**30, used=0)


def nvmlDeviceGetName(handle):  # noqa: N802
    _check(handle)
    return b"Fake GPU"


def nvmlDeviceGetUtilizationRates(handle):  # noqa: N802
    _check(handle)
    return SimpleNamespace(gpu=0, memory=0)


def nvmlDeviceGetComputeRunningProcesses(handle):  # noqa: N802
    _check(handle)
    return []


def nvmlSystemGetDriverVersion() -> str:  # noqa: N802
    return "999.99"
