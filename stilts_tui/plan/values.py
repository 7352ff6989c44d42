"""The value checks a plan's schema is made of: each ``(check, what is expected)``, where ``check`` says
whether a value is acceptable and ``what`` is the phrase a refusal shows ("expected an integer >= 1 ...")."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from stilts_tui.bounds import BOUNDS

Check = tuple[Callable[[object], bool], str]  # (is the value acceptable, what is expected)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # with fullmatch: `$` accepts a trailing newline
INT64_MAX = 2**63 - 1


def is_int(v: object) -> bool:
    """An integer that is not a bool (TOML's true is no count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: object) -> bool:
    """An integer or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None) -> Check:
    """An integer in [lo, hi] (no upper bound when ``hi`` is None)."""
    what = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    return (lambda v: is_int(v) and v >= lo and (hi is None or v <= hi)), what


def bounded(name: str) -> Check:
    """A value within the bounds the one table of bounds (stilts_tui/bounds.py) gives ``name``: the CLI's
    flags of the same settings read the same table."""
    bound = BOUNDS[name]
    return bound.ok, bound.what


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite number between ``lo`` and ``hi``, each end closed unless said open."""
    lo_s, hi_s = (">" if lo_open else ">="), ("<" if hi_open else "<=")
    what = f"a number {lo_s} {lo:g}" + (f" and {hi_s} {hi:g}" if hi is not None else "")

    def ok(v: object) -> bool:
        if not is_num(v) or not math.isfinite(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    return ok, what


def one_of(*choices: str) -> Check:
    """One of the given strings."""
    return (lambda v: v in choices), "one of " + ", ".join(f'"{c}"' for c in choices)


def text() -> Check:
    """A string with something in it besides spaces."""
    return (lambda v: isinstance(v, str) and v.strip() != ""), "a non-empty string"


def boolean() -> Check:
    """true or false."""
    return (lambda v: isinstance(v, bool)), "true or false"


def table(what: str) -> Check:
    """A TOML table (its keys are checked by a schema of their own)."""
    return (lambda v: isinstance(v, dict)), what


def str_list() -> Check:
    """A non-empty list of non-empty strings."""
    return (lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)), (
        "a non-empty list of strings"
    )


def int_list() -> Check:
    """A non-empty list of distinct integers >= 0 (seeds)."""
    return (
        lambda v: isinstance(v, list) and v and all(is_int(x) and x >= 0 for x in v) and len(set(v)) == len(v)
    ), "a non-empty list of distinct integers >= 0"


def name_problem(name: object) -> str | None:
    """The one rule for plan and stage names (they become labels, file names and paths): what is
    wrong with ``name``, or None. Letters, digits, '_', '-' and '.', at most 64, starting with a
    letter or digit: no path separator, no '..', no control character, no space."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        return (
            "names are 1-64 letters, digits, '_', '-' and '.', starting with a letter or digit, "
            f"without '..' (got {shown(name)})"
        )
    return None


def shown(value: object) -> str:
    """A value for a one-line message: control characters escaped, long values cut."""
    out = ascii(value)
    return out if len(out) <= 80 else out[:77] + "..."
