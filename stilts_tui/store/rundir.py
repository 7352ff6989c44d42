"""Run folders under the runs-dir: safe paths from run ids, atomic JSON writes, tolerant JSON reads."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from stilts_tui.contract import CANCEL_FILE as CANCEL_FILE  # re-exported: rundir.CANCEL_FILE is the older name
from stilts_tui.contract import RESULT_FILE, Env, attempt_result_name
from stilts_tui.errors import UserError

RUN_ID_RE = re.compile(r"[0-9a-f]{12}")  # used with fullmatch: `$` would accept a trailing newline
WORKER_RE = re.compile(r"[0-9a-f]{8,32}")  # a worker's name (its log: .workers/NAME.log), hex as the daemon writes
ADDED_MARK = ".queued-by-stilts"  # `queue add` writes it into each run folder it makes: the folders it may remove


def runs_dir(value: str | Path | None = None) -> Path:
    """``--runs-dir``, else ``$STILTS_RUNS_DIR``, else ``./runs``."""
    return Path(value or os.environ.get(Env.RUNS_DIR) or "runs").expanduser().resolve()


def check_id(run_id: str) -> str:
    """A run id is 12 lowercase hex digits; anything else never becomes a path."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise UserError(f"{run_id!r} is not a run id (12 hex digits, as `queue ls` shows)")
    return run_id


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / check_id(run_id)


MAX_JSON_BYTES = 64 << 20  # a run file, cache record or setting larger than this is damaged, not read
MAX_DEPTH = 64  # JSON nested deeper than this is damaged (the project writes at most a few levels)


def read_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> bytes | None:
    """A regular file's bytes, or None: missing, unreadable, larger than ``limit``, or not a regular file.
    A FIFO, a device or a directory in a file's place is never read (opened without blocking, then
    checked), so a damaged runs-dir cannot stop a reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def depth(value: object, limit: int = MAX_DEPTH) -> int:
    """How deeply a parsed JSON value nests (lists and objects), counted without recursion, up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict | None:
    """A JSON object from a regular file, or None: missing, unreadable, not a regular file, over ``limit``
    bytes, not JSON, nested over ``MAX_DEPTH``, or not an object. The project's one reader of JSON files
    from disk (run files, caches, settings): nothing read back is trusted."""
    data = read_bytes(path, limit)
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested 100,000 deep
        return None
    return obj if isinstance(obj, dict) and depth(obj) <= MAX_DEPTH else None


def read_run_file(root: str | Path, run_id: str, name: str = RESULT_FILE) -> dict | None:
    """A run folder's JSON file (its ``result.json`` by default) as an object, or None: missing, damaged, or a
    ledger row whose id is not a run id. For readers that show what there is; the daemon checks its own."""
    try:
        return read_json(run_dir(root, run_id) / name)
    except UserError:
        return None


def retire_result(run_folder: Path, attempt: int) -> Path | None:
    """Move a finished attempt's ``result.json`` aside as ``result.attemptN.json``: N the attempt, or the
    next number free (a run retried twice keeps both earlier results). Where it went, or None."""
    src = run_folder / RESULT_FILE
    if not src.exists():
        return None
    n = max(0, attempt)
    while (dest := run_folder / attempt_result_name(n)).exists():
        n += 1
    os.replace(src, dest)
    return dest


_UMASK: int | None = None


def new_file_mode(path: Path) -> int:
    """The mode a rewritten file keeps: its present mode, else what a plain ``open`` would give it
    (0666 less the umask), so an atomic write never narrows a file to mkstemp's 0600."""
    global _UMASK
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    if _UMASK is None:
        _UMASK = os.umask(0o022)  # read it: os.umask only reads by setting (once per process)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def write_atomic(
    path: Path, chunks: Iterable[bytes], fsync: bool = False, before_replace: Callable[[], None] | None = None
) -> None:
    """The project's one atomic writer: ``chunks`` go to a temporary file beside ``path`` (``.NAME.*.tmp``,
    given the mode ``path`` has, else a new file's: never mkstemp's 0600), fsync'ed if asked, then renamed
    over ``path`` (after ``before_replace``, e.g. keeping a backup). A failure leaves ``path`` as it was and
    no temporary file. The ledger, run folders' JSON and score exports write through it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode(path))
        with open(fd, "wb", buffering=1 << 20) as f:
            f.writelines(chunks)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, obj: object, fsync: bool = False) -> None:
    """Write JSON atomically (:func:`write_atomic`), creating the folder. A value JSON cannot hold fails
    before any file is touched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"  # encoded before any file is touched
    write_atomic(path, [text.encode("utf-8")], fsync=fsync)
