"""Errors that reach the user as one line and exit status 2 (bad input), never a traceback."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (or its type's name), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


class UserError(Exception):
    """Bad input from the user: a plan, a task, a run id, a flag. The message is one line."""

    exit_code = 2


class PlanError(UserError):
    """A plan file that cannot be loaded, validated or expanded."""

    def __init__(self, file: object, message: str, key: str | None = None, line: int | None = None):
        self.file, self.key, self.line = str(file), key, line
        where = self.file + (f":{line}" if line else "")
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}: {what}{message}")


class TaskDataError(UserError):
    """A task's data cannot be found or read (missing file, unknown field, unreachable hub)."""
