"""Formatting shared by the trainer's log, the CLI and the app (no torch, no textual: every layer imports it)."""

from __future__ import annotations

import json
import math
import re

MAX_DURATION_S = 3600 * 10**6  # a million hours: anything longer (an inf, 1e308 s) is said to be over it


def duration(seconds: float | None) -> str:
    """``H:MM:SS``, or ``M:SS`` under an hour; "" for None or NaN (no estimate). Negative counts as 0; over a
    million hours (an infinity included) is "over 1000000 h" (never an OverflowError from int(inf))."""
    if seconds is None or seconds != seconds:
        return ""
    if seconds > MAX_DURATION_S:
        return f"over {MAX_DURATION_S // 3600} h"
    h, rem = divmod(max(0, int(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# C0 controls but tab (and newline where lines are kept), DEL, C1 controls (0x9b is a one-byte CSI), and
# the bidirectional marks, embeddings, overrides and isolates that reorder what a line shows (CVE-2021-42574)
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_LINES = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}]")
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f{_BIDI}]")  # json.dumps escapes C0 itself


def _visible(m: re.Match) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal_safe(text: object, keep_newlines: bool = False, markup: bool = False) -> str:
    """User data (a log line, a name, an error) as a terminal may print it: every control character, escape
    sequences included, and every bidirectional control is shown as its escape (``\\x1b``, ``\\u202e``)
    instead of acting on the terminal (a title set, the screen cleared, a line shown reordered); newlines
    too unless ``keep_newlines`` (one line stays one line). With ``markup`` the text is also escaped for
    rich markup (``x[/bold]`` is printed as written, never parsed: an unmatched tag would raise).
    The one sanitizer of what the CLI and the app print from files, plans, the ledger and the environment."""
    s = text if isinstance(text, str) else str(text)
    s = (_UNSAFE if keep_newlines else _UNSAFE_LINES).sub(_visible, s)
    if markup:
        from rich.markup import escape  # only where text goes through rich (the trainer never does)

        s = escape(s)
    return s


def finite(value: object) -> object:
    """A JSON-able value with every float that is not finite (nan, inf) as None, inside dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: object, indent: int | None = None, **kwargs) -> str:
    """The one dumper of every ``--json`` output: strict JSON (a number that is not finite is null, never
    ``NaN`` or ``Infinity``), and nothing in it a terminal acts on: C0 controls are escaped by JSON itself,
    C1 controls and bidirectional controls as ``\\u`` escapes (the same string to a JSON reader)."""
    text = json.dumps(finite(value), indent=indent, ensure_ascii=False, allow_nan=False, **kwargs)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 10) -> str:
    """A loss trend as ``width`` unicode blocks at most (each the mean of its share of the values, scaled
    between their least and greatest)."""
    vals = [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
    if not vals:
        return ""
    n = min(width, len(vals))
    means = [sum(b) / len(b) for b in (vals[i * len(vals) // n : (i + 1) * len(vals) // n] for i in range(n))]
    lo, span = min(means), max(means) - min(means)
    return "".join(SPARK[0 if span == 0 else min(7, int((m - lo) / span * 8))] for m in means)
