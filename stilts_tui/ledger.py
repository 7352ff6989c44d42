"""The TinyDB ledger of plans and runs at ``<runs-dir>/ledger.json``, safe across processes.

The TUI, the daemon, the CLI and a second SSH session all write it. TinyDB has no locking and
writes in place, so:
- every read-modify-write is a :meth:`Ledger.transaction` that holds an inter-process
  ``filelock`` for its whole length and reads the file fresh (TinyDB instances never outlive one);
- the transaction's changes are written once, at its end, to a temporary file that then replaces
  the ledger with ``os.replace``: a process killed mid-write leaves the old file, never a torn one;
- readers take no lock: they always see one whole committed version.

Documents are keyed by run id (a string doc id), so looking up one run costs no scan. The parsed
file is cached per process and reused while the file's inode/mtime/size are unchanged.
Per-step metrics stay out of the ledger: they live in each run's ``events.jsonl``.
Set ``STILTS_LEDGER_FSYNC=1`` to also fsync every commit.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from stilts_tui.errors import UserError

# os.replace alone is atomic against a killed process; an fsync per commit (~10 ms for 10,000 runs)
# adds safety against power loss on filesystems without ext4's rename-over flush. Opt in.
FSYNC = os.environ.get("STILTS_LEDGER_FSYNC", "") not in ("", "0")

STATUSES = ("queued", "running", "done", "failed", "cancelled", "blocked")
FINAL = ("done", "failed", "cancelled")


class LedgerError(UserError):
    """The ledger cannot be read or locked."""


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

    def __init__(self, db: TinyDB, storage: _MemoryStorage):
        self.db, self._storage = db, storage
        self.changed_runs: set[str] = set()  # runs changed through update_run (the others: via TinyDB)
        self.runs: KeyedTable = db.table("runs")
        self.plans: KeyedTable = db.table("plans")
        self.meta: KeyedTable = db.table("meta")

    def get_run(self, run_id: str) -> dict | None:
        return self.runs.get(doc_id=run_id)

    def update_run(self, run_id: str, **fields) -> None:
        """Change some fields of one run in place: the daemon's hot path, so no table rebuild."""
        doc = self._storage.data.get("runs", {}).get(run_id)
        if doc is None:
            raise KeyError(run_id)
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
        self.path = self.dir / "ledger.json"
        self._lock_timeout = lock_timeout
        self._lock_obj = None  # made on the first transaction: readers (the TUI's first frame) never import filelock
        self._cache: dict = {}
        self._stamp: tuple | None = None
        self._frags: dict[str, bytes] | None = None  # run id -> its encoded `"id":{...}`

    # -- reading --------------------------------------------------------------------------------

    def _load(self) -> dict:
        """The whole file, parsed; reused while the file on disk is the same one."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            self._cache, self._stamp, self._frags = {}, None, None
            return self._cache
        with f:
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return self._cache
            raw = f.read()
        try:
            data = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as e:
            raise LedgerError(f"{self.path}: the ledger is not valid JSON ({e})") from None
        self._cache, self._stamp, self._frags = data, stamp, None
        return data

    def runs(self, plan: str | None = None, status: str | None = None) -> list[dict]:
        """Runs in queue order (priority, stage, plan order), optionally filtered."""
        table = self._load().get("runs", {})
        out = [
            dict(d) for d in table.values()
            if (plan is None or d.get("plan") == plan) and (status is None or d.get("status") == status)
        ]
        out.sort(key=queue_order)
        return out

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
        self.dir.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock, Timeout

        if self._lock_obj is None:
            self._lock_obj = FileLock(str(self.path) + ".lock", timeout=self._lock_timeout)
        try:
            self._lock_obj.acquire()
        except Timeout:
            raise LedgerError(f"{self.path}: could not lock the ledger (held by another process)") from None
        try:
            storage = _MemoryStorage(self._load())
            db = TinyDB(storage=lambda: storage)
            db.table_class = KeyedTable
            tx = Tx(db, storage)
            try:
                yield tx
            except BaseException:
                self._stamp, self._frags = None, None  # the cache may hold half a change: reread
                raise
            if storage.dirty:
                # when TinyDB itself wrote, any document may have changed: encode everything again
                self._write(storage.data, None if storage.tinydb_wrote else tx.changed_runs)
        finally:
            self._lock_obj.release()

    def _encode(self, data: dict, changed: set[str] | None) -> list[bytes]:
        """The file's bytes, in pieces. Each run's encoding is kept, so a commit that changed a few
        runs through :meth:`Tx.update_run` re-encodes only those (a status update stays cheap with
        10,000 runs); pieces are written one after another rather than joined (no big copies)."""
        runs = data.get("runs", {})
        if changed is None or self._frags is None:
            self._frags = {k: b'"%s":%s,' % (k.encode(), orjson.dumps(v)) for k, v in runs.items()}
        else:
            for k in changed:
                self._frags[k] = b'"%s":%s,' % (k.encode(), orjson.dumps(runs[k]))
        rest = orjson.dumps({k: v for k, v in data.items() if k != "runs"})
        pieces = [b'{"runs":{', *self._frags.values()]
        if len(pieces) > 1:
            pieces[-1] = pieces[-1][:-1]  # no comma after the last run
        pieces.append(b"}" + (b"," + rest[1:] if len(rest) > 2 else b"}"))
        return pieces

    def _write(self, data: dict, changed: set[str] | None = None) -> None:
        pieces = self._encode(data, changed)
        fd, tmp = tempfile.mkstemp(prefix=".ledger.", suffix=".tmp", dir=self.dir)
        try:
            with open(fd, "wb", buffering=1 << 20) as f:
                f.writelines(pieces)
                if FSYNC:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            self._stamp, self._frags = None, None
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        st = os.stat(self.path)
        self._cache, self._stamp = data, (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- the common operations ------------------------------------------------------------------

    def add_runs(self, records: list[dict], priority: int = 0) -> list[str]:
        """Record runs as queued; ids already in the ledger are left as they are. Returns new ids."""
        now = time.time()
        with self.transaction() as tx:
            table = tx.runs._read_table()
            new = [r for r in records if r["id"] not in table]
            docs = [
                Document({**r, "status": "queued", "priority": priority, "gpu": None, "score": None,
                          "added": now, "attempts": 0}, doc_id=r["id"])
                for r in new
            ]
            if docs:
                tx.runs.insert_multiple(docs)
        return [r["id"] for r in new]

    def update(self, run_id: str, **fields) -> None:
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


STAGE_ORDER = {"synth": 0, "intermediate": 1, "target": 2}


def queue_order(run: dict) -> tuple:
    """Priority (higher first), then stage (synth, intermediate, target), then plan order."""
    return (-run.get("priority", 0), STAGE_ORDER.get(run.get("stage"), 3), run.get("added", 0),
            run.get("order", 0))
