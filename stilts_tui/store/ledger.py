"""The TinyDB ledger of plans and runs at ``<runs-dir>/ledger.json``, safe across processes.

The TUI, the daemon, the CLI and a second SSH session all write it. TinyDB has no locking and
writes in place, so:
- every read-modify-write is a :meth:`Ledger.transaction` that holds an inter-process
  ``filelock`` for its whole length and reads the file fresh (TinyDB instances never outlive one);
- the transaction's changes are written once, at its end, to a temporary file (fsync'ed) that then
  replaces the ledger with ``os.replace``: a process killed mid-write, or a power loss, leaves the old
  file, never a torn one; the file keeps its mode;
- the version it replaces stays as ``ledger.json.bak`` (a hard link: no copy), the last good ledger;
- a file that cannot be read (empty, not JSON, not the ledger's shape) is an error naming the file and
  how to recover, never read as an empty queue (a write would then lose every run);
- readers take no lock: they always see one whole committed version.

Documents are keyed by run id (a string doc id), so looking up one run costs no scan. The parsed
file is cached per process and reused while the file's inode/mtime/size are unchanged.
Per-step metrics stay out of the ledger: they live in each run's ``events.jsonl``.
A run row is store/row.py's ``RunRow``: a write naming any other field is refused.
``STILTS_LEDGER_FSYNC=0`` turns the fsync off (faster commits, safe against a killed process only).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Unpack

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from stilts_tui.contract import EXIT_FAILURE, LEDGER_FILE, STAGES, STATUSES, Env, Status
from stilts_tui.contract import FINAL as FINAL  # re-exported: older callers read ledger.FINAL / STATUSES
from stilts_tui.errors import UserError, failure_from_os, first_line
from stilts_tui.store import files
from stilts_tui.store.row import INT64 as INT64  # re-exported, as the checks below
from stilts_tui.store.row import NAME_FIELDS as NAME_FIELDS
from stilts_tui.store.row import RUN_FIELDS as RUN_FIELDS
from stilts_tui.store.row import RunRow, run_problems, unknown_fields
from stilts_tui.store.rundir import write_atomic

# fsync the new file and its folder on every commit, so that a power loss never leaves an empty
# ledger (ext4 without auto_da_alloc, xfs, NFS...). bench/ledger.py measures the cost.
FSYNC = os.environ.get(Env.LEDGER_FSYNC, "1") not in ("", "0")


class LedgerError(UserError):
    """The ledger cannot be read, locked or written (one line: the file, what is wrong, what to do)."""


class KeyedTable(Table):
    """A TinyDB table whose document ids are strings (run ids, plan names)."""

    document_id_class = str


class _MemoryStorage(Storage):
    """Hands TinyDB the transaction's in-memory copy; the ledger writes the file once, at the end."""

    def __init__(self, data: dict):
        self.data, self.dirty, self.tinydb_wrote = data, False, False

    def read(self) -> dict:
        return self.data

    def write(self, data: dict) -> None:
        self.data, self.dirty, self.tinydb_wrote = data, True, True


class Tx:
    """One open transaction: ``runs``, ``plans`` and ``meta`` tables (TinyDB API, string ids)."""

    def __init__(self, db: TinyDB, storage: _MemoryStorage, path: Path):
        self.db, self._storage, self.path = db, storage, path
        self.changed_runs: set[str] = set()  # runs changed through update_run (the others: via TinyDB)
        self.runs: KeyedTable = db.table("runs")
        self.plans: KeyedTable = db.table("plans")
        self.meta: KeyedTable = db.table("meta")

    def get_run(self, run_id: str) -> dict | None:
        return self.runs.get(doc_id=run_id)

    def update_run(self, run_id: str, **fields: Unpack[RunRow]) -> None:
        """Change some fields of one run in place: the daemon's hot path, so no table rebuild. A field the
        typed row (store/row.py) does not have is refused: nothing of the transaction is written."""
        doc = self._storage.data.get("runs", {}).get(run_id)
        if doc is None:
            raise KeyError(run_id)
        _refuse_unknown(self.path, run_id, fields)
        doc.update(fields)
        self._storage.dirty = True
        self.changed_runs.add(run_id)
        self.runs.clear_cache()

    def put(self, table: KeyedTable, key: str, doc: dict) -> None:
        """Insert or replace a whole document."""
        table.upsert(Document(doc, doc_id=key))


class Ledger:
    """The ledger of one runs-dir."""

    def __init__(self, runs_dir: str | Path, lock_timeout: float = 120.0):
        self.dir = Path(runs_dir)
        self.path = self.dir / LEDGER_FILE
        self._lock_timeout = lock_timeout
        self._lock_obj = None  # made on the first transaction: readers (the TUI's first frame) never import filelock
        self._cache: dict = {}
        self._stamp: tuple | None = None
        self._order: list[str] = []
        self._order_key: tuple | None = None
        self._in_tx = False
        self._frags: dict[str, bytes] | None = None  # run id -> its encoded `"id":{...}`
        self._swept = False  # stale temporary files removed (once per instance, under the lock)
        self._problems: dict[str, dict[str, str]] | None = None  # run id -> run_problems, for this version

    # -- reading --------------------------------------------------------------------------------

    @property
    def backup(self) -> Path:
        """The last good ledger: the version the latest commit replaced."""
        return self.path.with_name(self.path.name + ".bak")

    def recovery(self) -> str:
        """What to do about a ledger that cannot be read."""
        if _readable_ledger(self.backup):
            return (
                f"restore the last good copy: cp {self.backup} {self.path} (it lacks at most the last "
                "change; see docs/reliability.md)"
            )
        return (
            f"move it aside (mv {self.path} {self.path}.damaged) to start an empty ledger; run folders "
            "stay, and `queue add` of their plans records them again (see docs/reliability.md)"
        )

    def _load(self) -> dict:
        """The whole file, parsed and checked; reused while the file on disk is the same one."""
        try:
            f = files.open_regular(self.path)  # a FIFO or a folder: one line, never a blocked open
        except FileNotFoundError:
            self._cache, self._stamp, self._frags = {}, None, None
            return self._cache
        except OSError as e:
            raise _io_error(e, "reading the ledger") from None
        except files.DamagedFile as e:
            raise LedgerError(f"{self.path}: not a ledger: {e.what}; {self.recovery()}") from None
        try:
            with f:
                st = os.fstat(f.fileno())
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                if stamp == self._stamp:
                    return self._cache
                raw = f.read()
        except OSError as e:
            raise _io_error(e, "reading the ledger") from None
        if not raw.strip():
            raise LedgerError(
                f"{self.path}: the ledger is empty ({len(raw)} bytes; a crash or a power loss "
                f"can leave this) and was left as it is; {self.recovery()}"
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise LedgerError(f"{self.path}: the ledger is not valid JSON ({e}); {self.recovery()}") from None
        problem = shape_problem(data)
        if problem:
            raise LedgerError(f"{self.path}: not a ledger: {problem}; {self.recovery()}")
        self._cache, self._stamp, self._frags, self._problems = data, stamp, None, None
        return data

    def stamp(self) -> tuple | None:
        """(inode, mtime, size) of the file as last read, None without one: every commit writes a new file,
        so a reader that keeps this Ledger sees a new stamp exactly when the ledger changed."""
        self._load()
        return self._stamp

    def problems(self) -> dict[str, dict[str, str]]:
        """Runs whose fields do not hold what the queue expects (:func:`run_problems`), by id. Kept per
        version of the file and updated for the runs a commit of this process changed, so the daemon's
        tick does not check 10,000 rows each time."""
        data = self._load()
        if self._problems is None:
            self._problems = {k: p for k, v in data.get("runs", {}).items() if (p := run_problems(v))}
        return self._problems

    def runs(self, plan: str | None = None, status: str | None = None) -> list[dict]:
        """Runs in queue order (priority, stage, plan order), optionally filtered."""
        table = self._load().get("runs", {})
        out = [
            dict(d)
            for d in map(table.__getitem__, self._queue_order(table))
            if (plan is None or d.get("plan") == plan) and (status is None or d.get("status") == status)
        ]
        return out

    def _queue_order(self, table: dict) -> list[str]:
        """The run ids in queue order, sorted once per version of the file (a tick reads the runs twice,
        and an idle daemon the same version tick after tick: 10,000 sort keys each time was most of it)."""
        key = (self._stamp, id(table), len(table))
        if self._stamp is None or self._in_tx or self._order_key != key:
            self._order = sorted(table, key=lambda k: queue_order(table[k]))  # stable: ties keep file order
            self._order_key = key
        return self._order

    def get(self, run_id: str) -> dict | None:
        doc = self._load().get("runs", {}).get(run_id)
        return dict(doc) if doc is not None else None

    def plans(self) -> dict[str, dict]:
        return {k: dict(v) for k, v in self._load().get("plans", {}).items()}

    def meta(self, key: str, default: object = None) -> object:
        doc = self._load().get("meta", {}).get(key)
        return doc.get("value", default) if doc else default

    # -- writing --------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Hold the ledger's lock, hand out its tables, write once (atomically) at the end."""
        from filelock import FileLock, Timeout

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._lock_obj is None:
                self._lock_obj = FileLock(str(self.path) + ".lock", timeout=self._lock_timeout)
            if not self._lock_obj.is_locked:
                # a lock file that cannot be made (a runs-dir in /proc, no permission) is one line now;
                # filelock would retry it as if another process held the lock, for the whole timeout
                os.close(os.open(self._lock_obj.lock_file, os.O_RDWR | os.O_CREAT, 0o644))
            self._lock_obj.acquire()
        except Timeout:
            raise LedgerError(
                f"{self.path}: could not lock the ledger (held by another process)", exit_code=EXIT_FAILURE
            ) from None
        except OSError as e:
            raise _io_error(e, "locking the ledger") from None
        try:
            if not self._swept:
                self._sweep()
            storage = _MemoryStorage(self._load())
            self._in_tx = True  # the cached rows change in place until the commit: no cached order meanwhile
            db = TinyDB(storage=lambda: storage)
            db.table_class = KeyedTable
            tx = Tx(db, storage, self.path)
            try:
                yield tx
            except BaseException:
                self._stamp, self._frags = None, None  # the cache may hold half a change: reread
                raise
            if storage.dirty:
                # when TinyDB itself wrote, any document may have changed: encode everything again
                self._write(storage.data, None if storage.tinydb_wrote else tx.changed_runs)
        finally:
            self._in_tx, self._order_key = False, None
            self._lock_obj.release()

    def _sweep(self) -> None:
        """Remove temporary files a killed commit left (under the lock: no commit is writing one now)."""
        self._swept = True
        for tmp in self.dir.glob(".ledger.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def _fragment(self, key: str, doc: dict) -> bytes:
        try:
            body = orjson.dumps(doc)
        except TypeError:  # an integer beyond 64 bits (orjson's limit): the standard library keeps it
            try:
                body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            except (TypeError, ValueError) as e:
                raise LedgerError(
                    f"{self.path}: run '{key}' cannot be stored ({first_line(e)}); nothing was written",
                    exit_code=EXIT_FAILURE,
                ) from None
        return b'"%s":%s,' % (key.encode(), body)

    def _encode(self, data: dict, changed: set[str] | None) -> list[bytes]:
        """The file's bytes, in pieces. Each run's encoding is kept, so a commit that changed a few
        runs through :meth:`Tx.update_run` re-encodes only those (a status update stays cheap with
        10,000 runs); pieces are written one after another rather than joined (no big copies)."""
        runs = data.get("runs", {})
        if changed is None or self._frags is None:
            self._frags = {k: self._fragment(k, v) for k, v in runs.items()}
        else:
            for k in changed:
                self._frags[k] = self._fragment(k, runs[k])
        try:
            rest = orjson.dumps({k: v for k, v in data.items() if k != "runs"})
        except TypeError as e:
            raise LedgerError(
                f"{self.path}: cannot be stored ({first_line(e)}); nothing was written", exit_code=EXIT_FAILURE
            ) from None
        pieces = [b'{"runs":{', *self._frags.values()]
        if len(pieces) > 1:
            pieces[-1] = pieces[-1][:-1]  # no comma after the last run
        pieces.append(b"}" + (b"," + rest[1:] if len(rest) > 2 else b"}"))
        return pieces

    def _write(self, data: dict, changed: set[str] | None = None) -> None:
        """Encode, write a temporary file (fsync'ed), keep the old file as the backup, rename over.
        Any failure leaves the file as it was and drops the cache (which holds the failed change)."""
        # a symlinked ledger stays a symlink: the file it names is replaced, in its own folder
        dest = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
        try:
            pieces = self._encode(data, changed)
            # .ledger.json.*.tmp: a killed commit's leftover is swept (.ledger.*.tmp)
            write_atomic(dest, pieces, fsync=FSYNC, before_replace=self._keep_backup)
            if FSYNC:
                _fsync_dir(dest.parent)
            st = os.stat(self.path)
        except BaseException as e:
            self._stamp, self._frags = None, None
            if isinstance(e, OSError):
                raise _io_error(e, "writing the ledger") from None
            raise
        if self._problems is not None and changed is not None:
            runs = data.get("runs", {})
            for k in changed:
                p = run_problems(runs[k])
                if p:
                    self._problems[k] = p
                else:
                    self._problems.pop(k, None)
        else:
            self._problems = None
        self._cache, self._stamp = data, (st.st_ino, st.st_mtime_ns, st.st_size)

    def _keep_backup(self) -> None:
        """The file about to be replaced becomes ``ledger.json.bak`` (a second name for it, no copy)."""
        if self._stamp is None:  # not the version this process read and checked: keep the old backup
            return
        if self.backup.is_dir() and not self.backup.is_symlink():
            raise LedgerError(
                f"{self.backup} is a directory, so the last good ledger cannot be kept there; move "
                f"it aside (mv {self.backup} {self.backup}.dir) and run the command again (nothing "
                "was written)"
            )
        link = self.dir / f".ledger.{os.getpid()}.bak.tmp"
        try:
            link.unlink(missing_ok=True)
            os.link(self.path, link)
            os.replace(link, self.backup)
        except FileNotFoundError:
            pass
        except OSError:  # a file system without hard links: no backup rather than no commit
            link.unlink(missing_ok=True)

    # -- the common operations ------------------------------------------------------------------

    def add_runs(self, records: list[dict], priority: int = 0) -> list[str]:
        """Record runs as queued; ids already in the ledger are left as they are. Returns new ids."""
        now = time.time()
        with self.transaction() as tx:
            table = tx.runs._read_table()
            new = [r for r in records if r["id"] not in table]
            for r in new:
                _refuse_unknown(self.path, r["id"], r)
            docs = [
                Document(
                    {
                        **r,
                        "status": Status.QUEUED.value,
                        "priority": priority,
                        "gpu": None,
                        "score": None,
                        "added": now,
                        "attempts": 0,
                    },
                    doc_id=r["id"],
                )
                for r in new
            ]
            if docs:
                tx.runs.insert_multiple(docs)
        return [r["id"] for r in new]

    def update(self, run_id: str, **fields: Unpack[RunRow]) -> None:
        with self.transaction() as tx:
            if tx.get_run(run_id) is None:
                raise LedgerError(f"no run '{run_id}' in {self.path}")
            tx.update_run(run_id, **fields)

    def set_plan(self, name: str, info: dict) -> None:
        with self.transaction() as tx:
            tx.put(tx.plans, name, {"name": name, **info})

    def set_meta(self, key: str, value: object) -> None:
        with self.transaction() as tx:
            tx.put(tx.meta, key, {"value": value})


STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}  # synth, intermediate, rank, target


def _num(x: object) -> float:
    """A number to sort by; anything else (a damaged field) sorts as 0 rather than stopping a reader."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else 0


def queue_order(run: dict) -> tuple:
    """Priority (higher first), then stage (synth, intermediate, rank, target), then plan order."""
    return (
        -_num(run.get("priority", 0)),
        STAGE_ORDER.get(run.get("stage"), len(STAGES)),
        _num(run.get("added", 0)),
        _num(run.get("order", 0)),
    )


def _refuse_unknown(path: Path, run_id: str, fields: dict) -> None:
    """Raise for a write that names a field the typed run row lacks (a misspelt key is a bug, not data)."""
    unknown = unknown_fields(fields)
    if unknown:
        raise LedgerError(
            f"{path}: run '{run_id}' cannot be stored: unknown field {', '.join(map(repr, unknown))} (a run row "
            "holds only the fields of store/row.py's RunRow); nothing was written",
            exit_code=EXIT_FAILURE,
        )


def _io_error(e: OSError, doing: str) -> UserError:
    err = failure_from_os(e, doing)
    return LedgerError(str(err), exit_code=err.exit_code)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the new name survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MAX_LEDGER_BYTES = 1 << 31  # a backup larger than this is not read back as one


def _readable_ledger(path: Path) -> bool:
    try:
        raw = files.read_bytes(path, MAX_LEDGER_BYTES)  # a FIFO as the backup is none, never a hang
        return raw is not None and shape_problem(orjson.loads(raw)) is None
    except orjson.JSONDecodeError:
        return False


def shape_problem(data: object) -> str | None:
    """What makes parsed JSON not a ledger, or None: an object of tables, each an object of objects;
    every run with its own id, a known status, and a plan, stage and task that are strings."""
    if not isinstance(data, dict):
        return f"the file holds {type(data).__name__ if data is not None else 'null'}, not an object of tables"
    for name, table in data.items():
        if not isinstance(table, dict):
            return f"table '{name}' is {type(table).__name__}, not an object"
        for key, doc in table.items():
            if not isinstance(doc, dict):
                return f"{name} '{key}' is {type(doc).__name__}, not an object"
    for key, run in data.get("runs", {}).items():
        if run.get("id") != key:
            return f"run '{key}' has id {run.get('id')!r}"
        if run.get("status") not in STATUSES:
            return f"run '{key}' has status {run.get('status')!r} (expected one of {', '.join(STATUSES)})"
        for field in ("plan", "stage", "task"):
            if field in run and not isinstance(run[field], str):
                return f"run '{key}': {field} is {run.get(field)!r}, not a string"
    return None
