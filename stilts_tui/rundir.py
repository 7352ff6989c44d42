"""Run folders under the runs-dir: safe paths from run ids, atomic JSON writes."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from stilts_tui.errors import UserError

RUN_ID_RE = re.compile(r"^[0-9a-f]{12}$")
CANCEL_FILE = "cancel.request"  # `queue cancel` writes it into a run of a fused array; the array drops the run


def runs_dir(value: str | Path | None = None) -> Path:
    """``--runs-dir``, else ``$STILTS_RUNS_DIR``, else ``./runs``."""
    return Path(value or os.environ.get("STILTS_RUNS_DIR") or "runs").expanduser().resolve()


def check_id(run_id: str) -> str:
    """A run id is 12 lowercase hex digits; anything else never becomes a path."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise UserError(f"'{run_id}' is not a run id (12 hex digits, as `queue ls` shows)")
    return run_id


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / check_id(run_id)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
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
    return json.dumps({"task": spec.get("task") or {}, "base": model.get("name"), "max_len": p.get("max_len"),
                       "batch_size": p.get("batch_size"), "grad_accum": p.get("grad_accum", 1),
                       "epochs": p.get("epochs"), "precision": p.get("precision", "auto"),
                       "max_train_samples": p.get("max_train_samples"), "max_dev_samples": p.get("max_dev_samples"),
                       "eval_batch_size": p.get("eval_batch_size"), "batching": p.get("batching", "random"),
                       "pad": p.get("pad", "auto"), "clip": p.get("clip", "step")}, sort_keys=True, default=str)
