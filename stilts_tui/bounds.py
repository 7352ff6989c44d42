"""The one table of bounds: every number a user gives the program — a daemon flag, a cost flag of `plan
show --cost`, a plan's key — with its least and greatest value (:data:`BOUNDS`). The daemon's flags
(queue/settings.py), the CLI's numeric options (cli/bounded.py) and a plan's schema (plan/schema.py) all
read it, so a value refused in one place is refused in all of them, in one line naming it.

Text from a command line is read with ASCII digits only: ``str.isdigit`` and ``int`` take an
Arabic-Indic ``٣`` (and ``isdigit`` a superscript ``¹``, which ``int`` then refuses with a traceback),
so a GPU index typed in another script would become another GPU. Light on purpose: the bare command and
the daemon import it at start-up."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from stilts_tui.errors import UserError

INT_TEXT = re.compile(r"[+-]?[0-9]{1,30}")  # 30 digits: far beyond every bound, and int() stays cheap
FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?")
INT64_MAX = 2**63 - 1


def shown(value: object) -> str:
    """A value for a one-line message: control, bidirectional and non-ASCII characters escaped, long values cut."""
    out = ascii(value)
    return out if len(out) <= 60 else out[:57] + "..."


def given_text(given: object) -> str:
    """What the user gave, for a refusal: a number as it is, anything else escaped and cut."""
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return str(given) if len(str(given)) <= 60 else str(given)[:57] + "..."
    if isinstance(given, str) and (INT_TEXT.fullmatch(given) or FLOAT_TEXT.fullmatch(given)):
        return given
    return shown(given)


@dataclass(frozen=True)
class Bound:
    """The values one setting may take: an integer (or a finite number) between ``low`` and ``high``, each
    end closed unless said open."""

    low: float
    high: float
    integer: bool = True
    low_open: bool = False
    high_open: bool = False

    @property
    def what(self) -> str:
        """What is expected, as refusals say it ("an integer >= 1 and <= 64")."""
        lo_s, hi_s = (">" if self.low_open else ">="), ("<" if self.high_open else "<=")
        if self.integer:
            return f"an integer {lo_s} {int(self.low)} and {hi_s} {int(self.high)}"
        return f"a number {lo_s} {self.low:g} and {hi_s} {self.high:g}"

    def ok(self, value: object) -> bool:
        """Is ``value`` (a parsed value: TOML's, JSON's) in bounds? A bool is no number."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # an int of any size compares exactly below
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def parse(self, given: object, option: str) -> int | float:
        """A command line's text (or a value already parsed) as the setting; anything else is a one-line
        UserError naming ``option``: ASCII digits only, finite, in bounds."""
        value = given if isinstance(given, (int, float)) and not isinstance(given, bool) else _number(given, self)
        if value is None or not self.ok(value):
            raise UserError(f"{option}: expected {self.what}, got {given_text(given)}")
        return value


def _number(given: object, bound: Bound) -> int | float | None:
    """Text as the number it spells in ASCII (None: not a number in ASCII, or too long to be in bounds)."""
    if not isinstance(given, str):
        return None
    text = given.strip(" ")
    if INT_TEXT.fullmatch(text):
        return int(text)
    if not bound.integer and FLOAT_TEXT.fullmatch(text):
        return float(text)  # at most e+9999: inf, refused as out of bounds
    return None


# The table. Daemon settings double as `plan show --cost`'s flags of the same names.
BOUNDS: dict[str, Bound] = {
    # daemon settings (queue/settings.py FLAGS) and the cost flags
    "per_gpu": Bound(1, 64),  # processes a GPU: MPS serves at most 48 clients a GPU
    "cpu_slots": Bound(1, 1024),  # concurrent CPU runs: more than a box has cores
    "worker_runs": Bound(1, 100_000),  # runs a process trains in sequence: a whole plan's worth
    "max_retries": Bound(0, 100),
    "max_jobs": Bound(1, 1_000_000),  # Slurm's own MaxSubmitJobs defaults to 10,000
    "gpu_index": Bound(0, 1023),  # one --gpus index (CUDA numbers a box's devices from 0)
    "fuse": Bound(2, 1024),  # runs of a fused array
    "interval": Bound(0.1, 3600, integer=False),  # seconds between ticks: faster burns a core
    # a plan's training values ([defaults], a stage, a grid)
    "lr": Bound(0, 1, integer=False, low_open=True),
    "batch_size": Bound(1, 65536),
    "eval_batch_size": Bound(1, 65536),
    "warmup": Bound(0, 1, integer=False, high_open=True),
    "epochs": Bound(1, 1000),
    "max_len": Bound(8, 8192),
    "weight_decay": Bound(0, 10, integer=False),  # AdamW's decoupled decay: 0.01-0.1 in practice
    "grad_accum": Bound(1, 4096),
    "max_train_samples": Bound(1, INT64_MAX),
    "max_dev_samples": Bound(1, INT64_MAX),
    "seed": Bound(0, INT64_MAX),
    # [... lora]: alpha/r scales the update; 1e308 would make every weight inf
    "lora.r": Bound(1, 4096),
    "lora.alpha": Bound(0, 65536, integer=False, low_open=True),
    "lora.dropout": Bound(0, 1, integer=False, high_open=True),
    # [... stop_degenerate] (and within the run's epochs: plan/load.py's cross-field rule)
    "stop_degenerate.after_epochs": Bound(1, 1000),
    "stop_degenerate.patience": Bound(1, 1000),
    # [target.X] rank = { top, examples }
    "rank.top": Bound(1, 1000),
    "rank.examples": Bound(2, 1_000_000),
    # [synth.NAME] and `stilts-tui synth`
    "synth.n": Bound(1, 100_000_000),
    "synth.fakes": Bound(1, 64),
    "synth.top_p": Bound(0, 1, integer=False, low_open=True),
    "synth.top_k": Bound(0, 1_000_000),
    "synth.temperature": Bound(0, 100, integer=False, low_open=True),
    "synth.seed": Bound(0, INT64_MAX),
    "synth.dev": Bound(0, 100_000_000),
    "synth.batch_size": Bound(1, 4096),
    # the other commands' numbers
    "priority": Bound(-1_000_000, 1_000_000),  # `queue add --priority`, `queue priority N`
    "grace": Bound(0, 3600, integer=False),  # `queue cancel --grace`: seconds from SIGTERM to SIGKILL
    "stop_wait": Bound(0, 3600, integer=False),  # `daemon stop --wait`: seconds for the process to end
    "max_runs": Bound(1, 100_000_000),  # `queue add`/`tasks check --max-runs`
    "examples": Bound(1, 1_000_000),  # `plan rehearse --examples`, `tasks show -n`
    "rehearse_timeout": Bound(1, 7 * 24 * 3600, integer=False),  # `plan rehearse --timeout`: seconds
    "alpha": Bound(0, 1, integer=False, low_open=True, high_open=True),  # `scores --alpha`: a test's level
}


def parse(name: str, given: object, option: str | None = None) -> int | float:
    """``given`` (command-line text or a value) checked against the table's ``name``; a UserError naming
    ``option`` (``--name`` by default) otherwise."""
    return BOUNDS[name].parse(given, option or "--" + name.replace("_", "-"))


def parse_gpus(given: str, option: str = "--gpus") -> list[int]:
    """GPU indices like ``0,1``: each an ASCII integer within ``gpu_index``'s bounds, none twice."""
    parts = [x.strip(" ") for x in given.split(",")]
    bound = BOUNDS["gpu_index"]
    out: list[int] = []
    for part in parts:
        value = int(part) if INT_TEXT.fullmatch(part) else None
        if value is None or not bound.ok(value):
            raise UserError(f"{option}: expected indices like 0,1 (each {bound.what}), got {shown(given)}")
        if value in out:
            raise UserError(f"{option}: GPU {value} is listed twice in {shown(given)}")
        out.append(value)
    return out


def parser(name: str, option: str | None = None) -> Callable[[object], int | float]:
    """A typer option's ``parser=`` for a setting of the table: typer's own int and float take an
    Arabic-Indic digit and any size; this reads ASCII digits within bounds (a UserError: one line, exit 2)."""
    return lambda given: parse(name, given, option)
