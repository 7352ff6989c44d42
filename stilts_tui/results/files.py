"""Where the score table's exports go and how they are written: the formats and their extensions, the
bytes of each format, a plan's export path inside the runs-dir, and the atomic write."""

from __future__ import annotations

import re
from pathlib import Path

from stilts_tui.errors import UserError, first_line
from stilts_tui.results.cell import ScoreTable
from stilts_tui.results.figure import figure_bytes, png_bytes
from stilts_tui.results.text import render
from stilts_tui.store import rundir

FORMATS = ("table", "csv", "md", "latex", "json", "png", "pdf", "svg")
EXTENSIONS = {"csv": "csv", "md": "md", "latex": "tex", "json": "json", "png": "png", "pdf": "pdf", "svg": "svg"}
FIGURES = ("png", "pdf", "svg")  # drawn with matplotlib (the plot extra, which the demo extra includes)


class WriteError(UserError):
    """An export could not be written (a full disk, a directory in the way): a failure, exit 1."""

    exit_code = 1


def export_bytes(t: ScoreTable, fmt: str) -> bytes:
    """The file ``fmt`` makes of the table: the figure for png, pdf, svg; utf-8 text for the others."""
    return figure_bytes(t, fmt) if fmt in FIGURES else render(t, fmt).encode("utf-8")


def to_png(t: ScoreTable, path: Path) -> None:
    """Write the figure as a png to ``path`` (overwriting it)."""
    write_output(Path(path), png_bytes(t), force=True)


def format_for(path: Path) -> str | None:
    """The export format a file name's extension names (``x.tex`` -> latex), or None."""
    ext = path.suffix.lower().lstrip(".")
    return next((f for f, e in EXTENSIONS.items() if e == ext or f == ext), None)


def safe_name(name: str) -> str:
    """A plan name as one file name: anything but letters, digits, '_', '-', '.' becomes '_', no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:100]
    return cleaned or "plan"


def export_path(root: Path, plan: str, fmt: str) -> Path:
    """``<runs-dir>/exports/<plan>.<ext>``: inside the runs-dir whatever the plan name."""
    base = (Path(root) / "exports").resolve()
    path = (base / f"{safe_name(plan)}.{EXTENSIONS[fmt]}").resolve()
    if path.parent != base:  # cannot happen after safe_name; checked because it must never happen
        raise UserError(f"plan name '{plan}' does not make a file name under {base}")
    return path


def write_output(path: Path, data: bytes, force: bool = False) -> None:
    """Write ``data`` to exactly ``path``: atomically for a regular file (a temporary file beside it, then a
    rename), straight for a device or pipe (/dev/stdout). An existing regular file needs ``force``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"-o {path}: is a directory; give a file name")
    special = path.exists() and not path.is_file()
    if path.is_file() and not force:
        raise UserError(f"-o {path}: the file exists; add --force to overwrite it")
    try:
        if special:
            with open(path, "wb") as f:
                f.write(data)
            return
        if not path.parent.is_dir():
            raise UserError(f"-o {path}: no folder {path.parent}")
        rundir.write_atomic(path, [data])  # keeps an overwritten file's mode (mkstemp alone made it 0600)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
