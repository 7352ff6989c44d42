"""Readers for the file layouts that task data ships in. Plain Python: no torch, no pandas."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stilts_tui.errors import TaskDataError

csv.field_size_limit(2**31 - 1)


def _open(path: Path, encoding: str = "utf-8"):
    if not path.is_file():
        raise TaskDataError(f"data file not found: {path}")
    return path.open(encoding=encoding, newline="")


@contextmanager
def _reading(path: Path, encoding: str = "utf-8") -> Iterator:
    """The file open for reading; bytes that are not UTF-8 (a Latin-1 or binary file) are one line."""
    try:
        with _open(path, encoding) as f:
            yield f
    except UnicodeDecodeError as e:
        raise TaskDataError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start} of "
            "a read; save the file as UTF-8)"
        ) from None


def read_jsonl(path: Path, encoding: str = "utf-8") -> list[dict]:
    """One JSON object a line; blank lines skipped."""
    rows = []
    with _reading(path, encoding) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as e:
                    why = getattr(e, "msg", "nested too deep")
                    raise TaskDataError(f"{path}:{n}: not valid JSON ({why})") from None
    return rows


def read_jsonl_sig(path: Path) -> list[dict]:
    """A jsonl file read as the reference reads WinoGrande's: ``utf-8-sig`` (a byte-order mark is dropped)."""
    return read_jsonl(path, "utf-8-sig")


def read_table(path: Path, delimiter: str, header: bool = True, quoting: int = csv.QUOTE_MINIMAL) -> list:
    """A csv/tsv file: a list of dicts by header, or of lists when the file has no header row. Read as
    ``utf-8-sig``, as the reference reads its tsv files: a byte-order mark is not part of the first field."""
    with _reading(path, "utf-8-sig") as f:
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
    with _reading(path) as f:
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
