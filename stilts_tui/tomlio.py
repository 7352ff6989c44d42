"""TOML in and out, once: ``tomllib`` (``tomli`` before Python 3.11) to read plans and keymaps, and
``tomli_w`` (the maintained writer) to write plans (the rehearsal's, the plan builder's)."""

from __future__ import annotations

import sys

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TOMLDecodeError", "dumps", "loads", "tomllib"]

loads = tomllib.loads
TOMLDecodeError = tomllib.TOMLDecodeError


def dumps(data: dict) -> str:
    """``data`` as TOML: scalars first, then a table for each dict (``[target.rte]``), as tomli_w writes it."""
    return tomli_w.dumps(data)
