"""The project's one reader and one writer of files on disk.

Reader: every file the project reads back from outside (run folders' spec.json, result.json, events.jsonl,
pruned.json; the rank caches and saved rankings; daemon.json; the mps and CPU-ISA records; the keymap and
column settings; estimate history) is opened without blocking and checked on the descriptor: a regular
file only (a FIFO, a directory or a device in a file's place is a damaged file, never read, so a hostile
runs-dir cannot stop the daemon or a command), at most ``limit`` bytes, JSON nested at most ``MAX_DEPTH``
deep (never a RecursionError), and of the expected shape. ``load_*`` raise (FileNotFoundError for a
missing file, :class:`DamagedFile` for anything else); ``read_*`` answer None for both.

Writer: :func:`write_atomic` writes a temporary file made by ``tempfile.mkstemp`` (an unguessable name,
created exclusively, so a planted symlink is never written through) beside the target, fsyncs it if
asked, and renames it over the target (a symlink at the target is replaced, never followed). A target
that cannot be replaced (a directory, a folder that is a file) is one :class:`DamagedFile`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from stilts_tui.errors import Failure, first_line

MAX_JSON_BYTES = 64 << 20  # a run file, cache record or setting larger than this is damaged, not read
MAX_DEPTH = 64  # JSON nested deeper than this is damaged (the project writes at most a few levels)


class DamagedFile(Failure):
    """A file from outside that is not what it should be, or a target the writer cannot replace: one line
    naming the path and what is wrong (exit 1 from a command; the daemon fails that one run and goes on)."""

    def __init__(self, path: object, what: str):
        self.path, self.what = str(path), what
        super().__init__(f"{path}: {what}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, *, nofollow: bool = False) -> BinaryIO:
    """A regular file opened for binary reading (a log to tail). FileNotFoundError where there is none;
    :class:`DamagedFile` where it is a FIFO, a directory, a device (or a symlink and ``nofollow``): opened
    without blocking and checked on the descriptor, never read."""
    fd = _open_checked(path, nofollow)
    try:
        os.set_blocking(fd, True)  # a regular file: reads as ever
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_checked(path: Path, nofollow: bool) -> int:
    """A descriptor of a regular file (see :func:`open_regular`); the caller closes it."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP and nofollow:
            raise DamagedFile(path, "is a symbolic link (never followed here); remove it") from None
        raise DamagedFile(path, f"cannot be opened ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise DamagedFile(path, f"cannot be read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DamagedFile(path, f"is {_kind(st.st_mode)}, not a regular file; remove it")
    return fd


def load_bytes(path: Path, limit: int = MAX_JSON_BYTES, *, nofollow: bool = False) -> bytes:
    """A regular file's bytes. FileNotFoundError where there is none; :class:`DamagedFile` where it is not
    a regular file (opened with O_NONBLOCK and checked with fstat before any read, so a FIFO never blocks),
    is a symlink and ``nofollow`` (a run folder's own files are never links out of it), is larger than
    ``limit``, or cannot be read."""
    fd = _open_checked(path, nofollow)
    try:
        st = os.fstat(fd)
        if st.st_size > limit:
            raise DamagedFile(path, f"is {st.st_size} bytes, more than the {limit} a file here may hold")
        parts, size = [], 0
        while size <= limit:
            part = os.read(fd, min(1 << 20, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:  # it grew while read
            raise DamagedFile(path, f"is more than the {limit} bytes a file here may hold")
        return b"".join(parts)
    except OSError as e:
        raise DamagedFile(path, f"cannot be read ({e.strerror or type(e).__name__})") from None
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


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` as a ValueError, never a RecursionError
    (the parser's own recursion stops at about 1,000 levels: caught, and anything deeper than ours after)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if depth(obj, max_depth) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    return obj


def load_json(path: Path, limit: int = MAX_JSON_BYTES, *, nofollow: bool = False, shape: type | None = dict) -> object:
    """A JSON value of type ``shape`` (an object by default; None: any) from a regular file. FileNotFoundError
    where there is none; :class:`DamagedFile` for anything else wrong (see :func:`load_bytes`; not UTF-8,
    not JSON, nested too deep, of another shape)."""
    data = load_bytes(path, limit, nofollow=nofollow)
    try:
        obj = loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFile(path, "is not UTF-8 text") from None
    except ValueError as e:
        raise DamagedFile(path, f"is not JSON the project wrote ({first_line(e)})") from None
    if shape is not None and not isinstance(obj, shape):
        raise DamagedFile(path, f"holds a JSON {type(obj).__name__}, not a {shape.__name__}")
    return obj


def read_bytes(path: Path, limit: int = MAX_JSON_BYTES, *, nofollow: bool = False) -> bytes | None:
    """:func:`load_bytes`, or None where the file is missing or damaged (for readers that show what there is)."""
    try:
        return load_bytes(path, limit, nofollow=nofollow)
    except (OSError, DamagedFile):
        return None


def read_json(path: Path, limit: int = MAX_JSON_BYTES, *, nofollow: bool = False, shape: type | None = dict):
    """:func:`load_json`, or None where the file is missing or damaged: nothing read back is trusted."""
    try:
        return load_json(path, limit, nofollow=nofollow, shape=shape)
    except (OSError, DamagedFile):
        return None


def read_text(path: Path, limit: int = MAX_JSON_BYTES, *, nofollow: bool = False) -> str | None:
    """A regular file's text (undecodable bytes replaced), or None where it is missing or damaged."""
    data = read_bytes(path, limit, nofollow=nofollow)
    return None if data is None else data.decode("utf-8", errors="replace")


def read_tail(path: Path, size: int = 1 << 16, *, nofollow: bool = False) -> str | None:
    """A regular file's last ``size`` bytes as text (a log's last lines), or None where it is missing or
    damaged; a log of any length is never read whole."""
    try:
        with open_regular(path, nofollow=nofollow) as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size).decode("utf-8", errors="replace")
    except (OSError, DamagedFile):
        return None


_UMASK: int | None = None


def new_file_mode(path: Path) -> int:
    """The mode a rewritten file keeps: its present mode, else what a plain ``open`` would give it
    (0666 less the umask), so an atomic write never narrows a file to mkstemp's 0600."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return st.st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)  # read it: os.umask only reads by setting (once per process)
        os.umask(_UMASK)
    return _UMASK


def _unwritable(path: Path, e: OSError) -> DamagedFile | None:
    """The writer's own failures as one :class:`DamagedFile`: a target that is a directory, a folder on the
    way that is a file or a link loop. Others (a full or read-only disk) stay OSErrors for their callers."""
    if e.errno == errno.EISDIR or (e.errno == errno.ENOTEMPTY and path.is_dir()):
        return DamagedFile(path, "is a directory, not a file; remove it")
    if e.errno in (errno.ENOTDIR, errno.ELOOP):
        return DamagedFile(path, f"cannot be written: a folder on its path is not a folder ({e.strerror})")
    return None


def write_atomic(
    path: Path, chunks: Iterable[bytes], fsync: bool = False, before_replace: Callable[[], None] | None = None
) -> None:
    """The project's one atomic writer: ``chunks`` go to a temporary file beside ``path`` (``.NAME.*.tmp``,
    made by mkstemp: unguessable, O_EXCL; given the mode ``path`` has, else a new file's), fsync'ed if
    asked, then renamed over ``path`` (after ``before_replace``, e.g. keeping a backup). A failure leaves
    ``path`` as it was and no temporary file; a target that cannot be replaced is a :class:`DamagedFile`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (_unwritable(path, e) or e) from None
    try:
        os.fchmod(fd, new_file_mode(path))
        with open(fd, "wb", buffering=1 << 20) as f:
            f.writelines(chunks)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise (_unwritable(path, e) or e) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def temp_dir_beside(path: Path) -> Path:
    """A new empty folder beside ``path`` to build it in, then rename over it (a checkpoint, a cached
    split): made by ``tempfile.mkdtemp`` (an unguessable name, created exclusively: never a planted link),
    given a new folder's mode (mkdtemp's is 0700). The caller removes it where the build fails."""
    path = Path(path)
    make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextmanager
def folder_built_beside(folder: Path) -> Iterator[Path]:
    """Build ``folder`` in a new folder beside it (:func:`temp_dir_beside`), yielded; when the block ends
    well the old folder goes and the new one is renamed into its place, else the new one is removed."""
    tmp = temp_dir_beside(folder)
    try:
        yield tmp
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_parent(path: Path) -> None:
    """Create ``path``'s folder; a file in the way is a :class:`DamagedFile`."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise DamagedFile(Path(path).parent, f"is not a folder ({e.strerror}); remove it") from None


def write_text_atomic(path: Path, text: str, fsync: bool = False) -> None:
    """Write text atomically (:func:`write_atomic`), creating the folder."""
    make_parent(path)
    write_atomic(Path(path), [text.encode("utf-8")], fsync=fsync)


def write_json_atomic(path: Path, obj: object, fsync: bool = False) -> None:
    """Write JSON atomically (:func:`write_atomic`), creating the folder. A value JSON cannot hold fails
    before any file is touched."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"  # encoded before any file is touched
    write_text_atomic(path, text, fsync=fsync)
