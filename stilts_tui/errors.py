"""Errors that reach the user as one line, never a traceback: exit status 2 for bad input, 1 for a failure
(a full disk, a permission, a damaged file the program did not write that way). :func:`report` is the one
printer of ``stilts-tui: error: ...`` lines."""

from __future__ import annotations

import errno
import sys

from stilts_tui.contract import EXIT_BAD_INPUT, EXIT_FAILURE
from stilts_tui.fmt import terminal_safe

PROG = "stilts-tui"
PREFIX = f"{PROG}: error: "  # what :func:`report` puts before the line; readers of a child's stderr strip it


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (or its type's name), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class UserError(Exception):
    """Bad input from the user: a plan, a task, a run id, a flag. The message is one line.

    ``exit_code`` may be given per instance (a :class:`Failure` is a UserError with exit status 1, so
    every ``except UserError`` that prints one line also catches failures)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, *args: object, exit_code: int | None = None):
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class Failure(UserError):
    """Not the user's input but the machine: no space left, no permission, a read-only disk. Exit 1."""

    exit_code = EXIT_FAILURE


class PlanError(UserError):
    """A plan file that cannot be loaded, validated or expanded."""

    def __init__(self, file: object, message: str, key: str | None = None, line: int | None = None):
        self.file, self.key, self.line = str(file), key, line
        where = self.file + (f":{line}" if line else "")
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}: {what}{message}")


class TaskDataError(UserError):
    """A task's data cannot be found or read (missing file, unknown field, unreachable hub)."""


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again (nothing was lost)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again (nothing was lost)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is not a directory",
}


def os_error_line(e: OSError, doing: str = "") -> str:
    """One line for an OSError: what was being done, on which path, and what to do."""
    what = _OS_HINTS.get(e.errno or 0, e.strerror or type(e).__name__)
    path = e.filename if e.filename is not None else ""
    head = " ".join(x for x in (doing, str(path)) if x)
    return f"{head}: {what}" if head else what


def failure_from_os(e: OSError, doing: str = "") -> Failure:
    """An OSError as a one-line :class:`Failure` (exit 1); a path that is a directory is bad input (2)."""
    return Failure(
        os_error_line(e, doing), exit_code=EXIT_BAD_INPUT if e.errno in (errno.EISDIR, errno.ENOTDIR) else EXIT_FAILURE
    )


def report(e: BaseException, prog: str = PROG) -> int:
    """Print ``PROG: error: ONE LINE`` on stderr for a UserError or an OSError; its exit status."""
    if isinstance(e, UserError):  # its message is one line: a newline in it (a file's name) is shown as \n
        line, code = (str(e).strip() or type(e).__name__)[:500], e.exit_code
    elif isinstance(e, OSError):
        line, code = os_error_line(e), 1
    else:
        line, code = f"{type(e).__name__}: {first_line(e)}", 1
    print(f"{prog}: error: {terminal_safe(line)}", file=sys.stderr)  # a newline in a name stays one line
    return code
