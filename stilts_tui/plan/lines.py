"""Refusals that point into the plan file: the line of a dotted key in the TOML text (tomllib gives no
positions), and :class:`Checker`, which checks tables against a schema and fails naming file, key and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

from stilts_tui.errors import PlanError
from stilts_tui.plan.values import Check


def line_of(text: str, path: list[str]) -> int | None:
    """Best-effort line of a dotted key in the TOML text (tomllib gives no positions)."""
    header_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    lines = text.splitlines()
    for cut in range(len(path) - 1, -1, -1):
        header, key = ".".join(path[:cut]), path[cut]
        current = ""
        key_re = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for n, line in enumerate(lines, 1):
            m = header_re.match(line)
            if m:
                current = m.group(1).replace('"', "").replace(" ", "")
                if current == ".".join(path[: cut + 1]):
                    return n
                continue
            if current == header and key_re.match(line):
                return n
    return None


class Checker:
    """Checks one plan's tables; every refusal is a :class:`PlanError` naming the file, key and line."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def fail(self, key: str, message: str) -> NoReturn:
        """Refuse the plan: ``key`` (dotted) is wrong for the reason in ``message``."""
        raise PlanError(self.path, message, key=key, line=line_of(self.text, key.split(".")))

    def table(self, where: str, data: dict, schema: dict[str, Check], required: tuple[str, ...] = ()) -> None:
        """Every key of ``data`` is in ``schema`` and passes its check; the ``required`` ones are there."""
        for k in required:
            if k not in data:
                self.fail(f"{where}.{k}".lstrip("."), "is required")
        for k, v in data.items():
            key = f"{where}.{k}".lstrip(".")
            if k not in schema:
                self.fail(key, f"unknown key (expected one of: {', '.join(schema)})")
            ok, what = schema[k]
            if not ok(v):
                self.fail(key, f"expected {what}, got {v!r}")
