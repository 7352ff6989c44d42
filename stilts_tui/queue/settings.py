"""The queue daemon's settings and their flags: the one place each flag's name, type, default, help and
bounds are written (:data:`FLAGS`).

From that table come the daemon's own argparse (``python -m stilts_tui.queue.daemon``,
:func:`add_arguments`, :func:`from_arguments`), the argv ``stilts-tui daemon start`` starts it with
(:func:`argv`) and ``daemon start``'s typer options (cli/daemon.py). tests/test_defaults.py fails when
one of them says otherwise. Light on purpose (no psutil, no filelock, no typer): the CLI and the daemon
import it at start-up."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stilts_tui import bounds
from stilts_tui.errors import UserError

EXECUTORS = ("local", "slurm")
# --interval: an empty queue ticking faster burns a core; slower, nothing is launched for an hour
INTERVAL_RANGE = (bounds.BOUNDS["interval"].low, bounds.BOUNDS["interval"].high)


def check_interval(value: object) -> float:
    """--interval: a finite number of seconds in :data:`INTERVAL_RANGE` (``inf`` would never tick again,
    ``nan``, 0 and negatives would spin); text in ASCII digits."""
    low, high = INTERVAL_RANGE
    try:
        return float(bounds.parse("interval", value))
    except UserError:
        raise UserError(
            f"--interval: expected seconds between {low:g} and {high:g}, got {bounds.given_text(value)}"
        ) from None


def parse_fuse(value: object) -> str:
    """--fuse: off, auto, or an array size K within the table's bounds (0 and 1 mean off); ASCII digits."""
    if value in ("off", "auto", "0", "1", 0, 1):
        return "off" if value in ("0", "1", 0, 1) else str(value)
    bound = bounds.BOUNDS["fuse"]
    try:
        return str(bound.parse(value, "--fuse"))
    except UserError:
        raise UserError(
            f"--fuse: expected off, auto or an array size K >= {bound.low:g} and <= {bound.high:g}, "
            f"got {bounds.given_text(value)}"
        ) from None


def parse_gpus(value: str | list | None) -> list[int] | None:
    """--gpus: indices like 0,1 (ASCII digits, each within the table's bounds, none twice); None (every GPU
    found) for nothing or "all"."""
    if value in (None, "", "all"):
        return None
    if isinstance(value, list):  # already parsed (daemon.json's settings)
        value = ",".join(str(x) for x in value)
    return bounds.parse_gpus(str(value))


def parse_slurm(value: str | dict) -> dict:
    """--slurm: the sbatch settings as a JSON object (``daemon start`` checks each of them first)."""
    slurm = json.loads(value) if isinstance(value, str) else value
    if not isinstance(slurm, dict):
        raise UserError(f"--slurm: expected a JSON object, got {value!r}")
    return slurm


@dataclass(frozen=True)
class Flag:
    """One daemon setting as a command-line flag (``--per-gpu`` for ``per_gpu``)."""

    name: str  # the Settings field
    type: type  # what the command line gives: int, float, str or bool (a switch)
    default: Any  # the setting's default
    help: str
    bound: str | None = None  # an integer setting's bounds: its name in bounds.BOUNDS (one line and exit 2 outside)
    choices: tuple[str, ...] | None = None
    parse: Callable[[Any], Any] | None = None  # the command line's value -> the setting, checked
    slurm_only: bool = False  # passed to the daemon only with --executor slurm
    on_cli: bool = True  # a `daemon start` option (slurm: built from --partition, --account, ...)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def text(self, value: Any) -> str | None:
        """The value as the daemon's command line writes it (None: no value)."""
        if value is None:
            return None
        if isinstance(value, list):  # --gpus, parsed
            return ",".join(str(x) for x in value)
        return json.dumps(value) if isinstance(value, dict) else str(value)

    def check(self, value: Any) -> Any:
        """The setting a command-line value gives; a bad one is a UserError naming the flag."""
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{self.option}: expected {' or '.join(self.choices)}, got '{value}'")
        if self.bound is not None:  # command-line text (ASCII digits only) or a value
            value = bounds.parse(self.bound, value, self.option)
        return self.parse(value) if self.parse is not None else value


# in the order `daemon start --help` lists them (Settings keeps its own order: daemon.json's, `daemon status`'s)
FLAGS: tuple[Flag, ...] = (
    Flag("gpus", str, None, "GPU indices to use, e.g. 0,1 (default: all)", parse=parse_gpus),
    Flag("per_gpu", int, 4, "at most this many processes a GPU", bound="per_gpu"),
    Flag("cpu_slots", int, 1, "concurrent runs where there is no GPU", bound="cpu_slots"),
    Flag("max_retries", int, 2, "relaunches of a run whose process vanished", bound="max_retries"),
    Flag("worker_runs", int, 4, "ready runs of one shape trained in sequence by one process", bound="worker_runs"),
    Flag("mps", bool, False, "run NVIDIA MPS for the daemon's lifetime"),
    Flag("executor", str, "local", "local (this machine's GPUs) or slurm (sbatch)", choices=EXECUTORS),
    Flag("interval", float, 1.0, "seconds between ticks", parse=check_interval),
    # sbatch settings from the command line (a plan's [slurm] wins)
    Flag("slurm", str, {}, "sbatch settings as JSON (validated by the CLI)", parse=parse_slurm, on_cli=False),
    # clusters cap submissions: at most this many of our jobs in Slurm at once
    Flag("max_jobs", int, 1000, "slurm: at most this many jobs in Slurm at once", bound="max_jobs", slurm_only=True),
    Flag(
        "fuse",
        str,
        "off",
        "train ready runs of one shape as fused arrays: off, auto (as many as fit a GPU) or K runs an array",
        parse=parse_fuse,
    ),
)
FLAG = {f.name: f for f in FLAGS}


def _default(name: str):
    """A Settings field's default and help, from :data:`FLAGS`."""
    flag = FLAG[name]
    if isinstance(flag.default, (dict, list)):
        return field(default_factory=lambda: type(flag.default)(flag.default), metadata={"help": flag.help})
    return field(default=flag.default, metadata={"help": flag.help})


@dataclass
class Settings:
    """What the daemon runs with (one field a flag of :data:`FLAGS`, parsed)."""

    gpus: list[int] | None = _default("gpus")
    per_gpu: int = _default("per_gpu")
    cpu_slots: int = _default("cpu_slots")
    max_retries: int = _default("max_retries")
    worker_runs: int = _default("worker_runs")
    mps: bool = _default("mps")
    interval: float = _default("interval")
    executor: str = _default("executor")
    slurm: dict = _default("slurm")
    fuse: str = _default("fuse")
    max_jobs: int = _default("max_jobs")


DEFAULTS = Settings()


def help_of(name: str) -> str:
    """The help text of one setting (as ``--name`` on both command lines)."""
    return FLAG[name].help


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The daemon's argparse flags, one a setting (values checked by :func:`from_arguments`)."""
    for f in FLAGS:
        if f.type is bool:
            ap.add_argument(f.option, action="store_true", help=f.help)
        else:  # every value keeps its text until from_arguments: argparse's int() and float() would take
            # an Arabic-Indic digit; the table of bounds reads ASCII digits only
            default = f.text(f.default) if f.parse is not None and f.type is str else f.default
            ap.add_argument(f.option, type=str, default=default, help=f.help, choices=f.choices)


def from_arguments(values: dict[str, Any]) -> Settings:
    """The settings parsed command-line values give, each checked (UserError or ValueError)."""
    return Settings(**{f.name: f.check(values[f.name]) for f in FLAGS})


def argv(values: dict[str, Any]) -> list[str]:
    """The daemon's command line for settings given as the command line gives them (each checked first:
    one line and exit 2 for a bad one). A setting at its default is left out; a Slurm-only one without
    --executor slurm too."""
    checked = {name: FLAG[name].check(value) for name, value in values.items()}
    slurm = checked.get("executor", DEFAULTS.executor) == "slurm"
    args: list[str] = []
    for f in FLAGS:
        value = checked.get(f.name, f.default)
        if value == f.check(f.default) or value is None or (f.slurm_only and not slurm):
            continue
        args += [f.option] if f.type is bool else [f.option, f.text(value)]
    return args
