"""Formatting shared by the trainer's log, the CLI and the app (no torch, no textual: every layer imports it)."""

from __future__ import annotations

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
# the bidirectional overrides that reorder what a line shows (CVE-2021-42574)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINES = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(m: re.Match) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal_safe(text: object, keep_newlines: bool = False) -> str:
    """User data (a log line, a name, an error) as a terminal may print it: every control character, escape
    sequences included, is shown as its escape (``\\x1b``) instead of acting on the terminal (a title set,
    the screen cleared); newlines too unless ``keep_newlines`` (one line stays one line). The one
    sanitizer of what the CLI and the app print from files and the ledger."""
    s = text if isinstance(text, str) else str(text)
    return (_UNSAFE if keep_newlines else _UNSAFE_LINES).sub(_visible, s)
