"""Formatting shared by the trainer's log and the app (no torch, no textual: both layers import it)."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``H:MM:SS``, or ``M:SS`` under an hour; "" for None (no estimate yet). Negative counts as 0."""
    if seconds is None:
        return ""
    h, rem = divmod(max(0, int(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
