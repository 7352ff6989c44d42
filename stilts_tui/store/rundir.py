"""Run folders under the runs-dir: safe paths from run ids, atomic JSON writes, tolerant JSON reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

from stilts_tui.contract import CANCEL_FILE as CANCEL_FILE  # re-exported: rundir.CANCEL_FILE is the older name
from stilts_tui.contract import RESULT_FILE, Env, attempt_result_name
from stilts_tui.errors import UserError

# The one reader and writer live in store/files.py; rundir.read_json etc. are their older names.
from stilts_tui.store.files import MAX_DEPTH as MAX_DEPTH
from stilts_tui.store.files import MAX_JSON_BYTES as MAX_JSON_BYTES
from stilts_tui.store.files import DamagedFile as DamagedFile
from stilts_tui.store.files import depth as depth
from stilts_tui.store.files import load_json as load_json
from stilts_tui.store.files import loads as loads
from stilts_tui.store.files import new_file_mode as new_file_mode
from stilts_tui.store.files import read_bytes as read_bytes
from stilts_tui.store.files import read_json as read_json
from stilts_tui.store.files import read_tail as read_tail
from stilts_tui.store.files import read_text as read_text
from stilts_tui.store.files import write_atomic as write_atomic
from stilts_tui.store.files import write_json_atomic as write_json_atomic
from stilts_tui.store.files import write_text_atomic as write_text_atomic

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


def read_run_file(root: str | Path, run_id: str, name: str = RESULT_FILE) -> dict | None:
    """A run folder's JSON file (its ``result.json`` by default) as an object, or None: missing, damaged, or a
    ledger row whose id is not a run id. For readers that show what there is; the daemon checks its own."""
    try:
        return read_json(run_dir(root, run_id) / name, nofollow=True)
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
