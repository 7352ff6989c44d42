"""The queue daemon's settings: the one place their defaults and help texts are written.

``stilts-tui daemon start`` (cli.py) and the daemon's own argparse (``python -m stilts_tui.queue.daemon``)
take both from :class:`Settings`; tests/test_defaults.py fails when either says otherwise. Light on
purpose (no psutil, no filelock): the CLI imports it at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from stilts_tui.errors import UserError

EXECUTORS = ("local", "slurm")


def _opt(default: object, text: str):
    return field(default=default, metadata={"help": text})


@dataclass
class Settings:
    gpus: list[int] | None = _opt(None, "GPU indices to use, e.g. 0,1 (default: all)")
    per_gpu: int = _opt(4, "at most this many processes a GPU")
    cpu_slots: int = _opt(1, "concurrent runs where there is no GPU")
    max_retries: int = _opt(2, "relaunches of a run whose process vanished")
    worker_runs: int = _opt(4, "ready runs of one shape trained in sequence by one process")
    mps: bool = _opt(False, "run NVIDIA MPS for the daemon's lifetime")
    interval: float = _opt(1.0, "seconds between ticks")
    executor: str = _opt("local", "local (this machine's GPUs) or slurm (sbatch)")
    # sbatch settings from the command line (a plan's [slurm] wins)
    slurm: dict = field(default_factory=dict, metadata={"help": "sbatch settings as JSON (validated by the CLI)"})
    fuse: str = _opt(
        "off", "train ready runs of one shape as fused arrays: off, auto (as many as fit a GPU) or K runs an array"
    )
    # clusters cap submissions: at most this many of our jobs in Slurm at once
    max_jobs: int = _opt(1000, "slurm: at most this many jobs in Slurm at once")


DEFAULTS = Settings()
# --interval: an empty queue ticking faster burns a core; slower, nothing is launched for an hour
INTERVAL_RANGE = (0.1, 3600.0)


def check_interval(value: float) -> float:
    """--interval: a finite number of seconds in :data:`INTERVAL_RANGE` (``inf`` would never tick again,
    ``nan``, 0 and negatives would spin)."""
    low, high = INTERVAL_RANGE
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        raise UserError(f"--interval: expected seconds between {low:g} and {high:g}, got {value}")
    return float(value)


def help_of(name: str) -> str:
    """The help text of one setting (as ``--name`` on both command lines)."""
    return next(f.metadata["help"] for f in fields(Settings) if f.name == name)


def parse_fuse(value: str) -> str:
    """--fuse: off, auto, or an array size K >= 2 (1 means off)."""
    if value in ("off", "auto", "0", "1"):
        return "off" if value in ("0", "1") else value
    if value.isdigit() and int(value) >= 2:
        return value
    raise UserError(f"--fuse: expected off, auto or an array size K >= 2, got '{value}'")


def parse_gpus(value: str | None) -> list[int] | None:
    """--gpus: indices like 0,1; None (every GPU found) for nothing or "all"."""
    if value in (None, "", "all"):
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus: expected indices like 0,1, got '{value}'") from None
