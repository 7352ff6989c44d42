"""The cache of starting points' transferability scores, shared by `stilts-tui rank` (ranking.py) and a plan's
rank runs (train/rank.py): one job per (starting point, target, N), its key, its record under
``<runs-dir>/.cache/rank/<key>.json`` checked before it is believed, and the ranking made of the records.
Below the CLI and the trainer both (no plan, no ledger, no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from stilts_tui import contract, tasks
from stilts_tui.store import rundir

CACHE_DIR = ".cache/rank"
METHOD = contract.RANK_METHOD
FEATURES = "the frozen encoder's last hidden state at the first token (<s> / [CLS])"


@dataclass
class Start:
    """A starting point: its label, its run (None for the plan's model) and the weights it names."""

    label: str
    run_id: str | None
    model: dict


def _weights_stamp(model: dict) -> list:
    """What changes when a starting point's weights change: the checkpoint file's size and time."""
    if model.get("source") == "parent":
        st = (Path(model["path"]) / "model.safetensors").stat()
        return [model["path"], st.st_size, st.st_mtime_ns]
    return [model.get("path") or model.get("name")]


def _task_stamp(task: dict) -> list:
    files = []
    for p in tasks.required_files(task):
        st = p.stat() if p.exists() else None
        files.append([str(p), st.st_size if st else None, st.st_mtime_ns if st else None])
    return [task, files]


def job(point: Start, target: str, task: dict, max_len: int, examples: int, root: Path) -> dict:
    """What the scorer needs for one (starting point, target) and where its score is cached: the key hashes
    the weights (a checkpoint's size and time), the task's files, max_len and N. A plan's rank run builds
    its jobs with it too, so `stilts-tui rank` and the queue share one cache."""
    blob = json.dumps([1, _weights_stamp(point.model), _task_stamp(task), max_len, examples], default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return {
        "start": point.label,
        "start_run": point.run_id,
        "model": point.model,
        "target": target,
        "task": task,
        "max_len": max_len,
        "examples": examples,
        "key": key,
        "runs_dir": str(root),
        "cache": str(root / CACHE_DIR / f"{key}.json"),
    }


def cached(job: dict) -> dict | None:
    """The job's cached record when it is one (method, key, names, a finite score, a count), else None."""
    data = rundir.read_json(Path(job["cache"]), nofollow=True)  # a FIFO or a link there: no record
    if not isinstance(data, dict) or data.get("method") != METHOD or data.get("key") != job["key"]:
        return None
    score, n = data.get("score"), data.get("examples")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= job["examples"]:
        return None
    if data.get("start") != job["start"] or data.get("target") != job["target"]:
        return None
    return data


def ranking(plan_name: str, jobs: list[dict], records: dict[str, dict], examples: int) -> dict:
    """The --json document of `stilts-tui rank` (a rank run's ranking too): per target, the starting points
    best first."""
    targets = []
    for name in dict.fromkeys(j["target"] for j in jobs):
        mine = sorted((j for j in jobs if j["target"] == name), key=lambda j: -records[j["key"]]["score"])
        targets.append(
            {
                "target": name,
                "examples": records[mine[0]["key"]]["examples"],
                "ranking": [
                    {"rank": i, "start": j["start"], "run_id": j["start_run"], "score": records[j["key"]]["score"]}
                    for i, j in enumerate(mine, 1)
                ],
            }
        )
    return {"plan": plan_name, "method": METHOD, "features": FEATURES, "examples": examples, "targets": targets}
