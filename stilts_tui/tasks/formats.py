"""Readers for the file layouts that task data ships in. Plain Python: no torch, no pandas."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from stilts_tui.errors import TaskDataError

csv.field_size_limit(2**31 - 1)


def _open(path: Path):
    if not path.is_file():
        raise TaskDataError(f"data file not found: {path}")
    return path.open(encoding="utf-8", newline="")


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object a line; blank lines skipped."""
    rows = []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def read_table(path: Path, delimiter: str, header: bool = True, quoting: int = csv.QUOTE_MINIMAL) -> list:
    """A csv/tsv file: a list of dicts by header, or of lists when the file has no header row."""
    with _open(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        rows = [r for r in reader if r]
    if not header:
        return rows
    if not rows:
        return []
    names = rows[0]
    return [dict(zip(names, r, strict=False)) for r in rows[1:]]  # short rows: missing fields


def read_glue_tsv(path: Path, header: bool = True) -> list:
    """GLUE's tsv files: tab separated, no quoting (quotes are part of the text)."""
    return read_table(path, "\t", header=header, quoting=csv.QUOTE_NONE)


def read_lines(path: Path) -> list[str]:
    with _open(path) as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def companion(path: Path, suffix: str, replacement: str) -> Path:
    """The labels file that goes with a data file (`dev.jsonl` -> `dev-labels.lst`)."""
    name = path.name
    if name.endswith(suffix):
        return path.with_name(name[: -len(suffix)] + replacement)
    return path.with_name(name + replacement)


def read_custom(path: Path, fmt: str) -> list[dict]:
    """A custom task's file: jsonl, csv or tsv with a header row."""
    if fmt == "jsonl":
        return read_jsonl(path)
    return read_table(path, "\t" if fmt == "tsv" else ",")
