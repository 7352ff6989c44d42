"""Run folders under the runs-dir: safe paths from run ids, atomic JSON writes, tolerant JSON reads."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from stilts_tui.contract import CANCEL_FILE as CANCEL_FILE  # re-exported: rundir.CANCEL_FILE is the older name
from stilts_tui.contract import RESULT_FILE, attempt_result_name
from stilts_tui.errors import UserError

RUN_ID_RE = re.compile(r"[0-9a-f]{12}")  # used with fullmatch: `$` would accept a trailing newline
WORKER_RE = re.compile(r"[0-9a-f]{8,32}")  # a worker's name (its log: .workers/NAME.log), hex as the daemon writes
ADDED_MARK = ".queued-by-stilts"  # `queue add` writes it into each run folder it makes: the folders it may remove


def runs_dir(value: str | Path | None = None) -> Path:
    """``--runs-dir``, else ``$STILTS_RUNS_DIR``, else ``./runs``."""
    return Path(value or os.environ.get("STILTS_RUNS_DIR") or "runs").expanduser().resolve()


def check_id(run_id: str) -> str:
    """A run id is 12 lowercase hex digits; anything else never becomes a path."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise UserError(f"{run_id!r} is not a run id (12 hex digits, as `queue ls` shows)")
    return run_id


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / check_id(run_id)


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None (missing, unreadable, not JSON, not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested 100,000 deep
        return None
    return data if isinstance(data, dict) else None


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


def write_json_atomic(path: Path, obj: object, fsync: bool = False) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path`` (keeping its mode).
    A failure (a full disk, a value JSON cannot hold) leaves ``path`` as it was and no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"  # encoded before any file is touched
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def array_key(spec: dict) -> str | None:
    """Runs with one key can train as one array: same task and data, tokenizer (model source), length,
    batch, steps, precision, batching, padding and clipping. None for runs that always train alone."""
    p = spec.get("params") or {}
    if spec.get("stage") not in ("intermediate", "target") or p.get("precision") == "fp16":
        return None
    model = spec.get("model") or {}
    key = {"task": spec.get("task") or {}, "base": model.get("name"), "max_len": p.get("max_len"),
           "batch_size": p.get("batch_size"), "grad_accum": p.get("grad_accum", 1),
           "epochs": p.get("epochs"), "precision": p.get("precision", "auto"),
           "max_train_samples": p.get("max_train_samples"), "max_dev_samples": p.get("max_dev_samples"),
           "eval_batch_size": p.get("eval_batch_size"), "batching": p.get("batching", "random"),
           "pad": p.get("pad", "auto"), "clip": p.get("clip", "step")}
    if p.get("method") == "lora":  # one frozen encoder for the array: the same starting weights and adapters
        key.update(method="lora", lora=p.get("lora"), frozen=frozen_base(spec))
    return json.dumps(key, sort_keys=True, default=str)


def frozen_base(spec: dict) -> str | None:
    """The weights a LoRA run freezes: its parent's merged checkpoint, or (``transfer = "adapter"``, or no
    parent) the model itself."""
    model = spec.get("model") or {}
    if (spec.get("params") or {}).get("transfer") == "adapter" and model.get("base"):
        model = model["base"]
    return model.get("path") or model.get("name")
