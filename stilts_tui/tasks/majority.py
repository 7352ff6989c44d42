"""The failed-run rule: a run failed when its dev score is at or below the majority-class score of its
target's dev set (predicting the most frequent label for every example). One rule for the score table's
failed-run rate and the trainer's early stop of degenerate runs (``stop_degenerate``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from stilts_tui.errors import UserError, first_line

REGRESSION_FAIL_THRESHOLD = 0.0  # the correlation of any constant prediction (what metrics.compute gives it)
FAIL_TOLERANCE = 1e-12  # a score this close above the majority's is still at it


def is_failed(score: float, majority: float) -> bool:
    """Is ``score`` at or below the majority-class score (the failed-run rule)?"""
    return not score > majority + FAIL_TOLERANCE


_MAJORITY: dict[str, tuple[float | None, str | None]] = {}  # memo per process (the app reloads often)


def majority_score(task: dict, metric: str, limit: int | None = None) -> tuple[float | None, str | None]:
    """(the score of predicting the dev set's most frequent label with ``metric``, why it is None).

    Read from the dev labels through the tasks layer (``limit``: the runs' max_dev_samples). For
    regression: REGRESSION_FAIL_THRESHOLD. Hub data is read from the local datasets cache only.
    """
    if task.get("kind") == "regression":
        return REGRESSION_FAIL_THRESHOLD, None
    files = []
    try:
        from stilts_tui import tasks

        files = [(str(f), f.stat().st_mtime) for f in tasks.required_files(task) if f.exists()]
    except Exception:  # noqa: BLE001 - a fingerprint only
        pass
    key = json.dumps([task, metric, limit, files], sort_keys=True, default=str)
    if key not in _MAJORITY:
        _MAJORITY[key] = _compute_majority(task, metric, limit)
    return _MAJORITY[key]


def _compute_majority(task: dict, metric: str, limit: int | None) -> tuple[float | None, str | None]:
    from stilts_tui import tasks
    from stilts_tui.tasks import metrics as task_metrics

    try:
        if task.get("hub") and not tasks.required_files(task):
            labels = _hub_labels(task, limit)
        else:
            labels = [e["label"] for e in tasks.load_examples(task, "dev", limit=limit)]
    except Exception as e:  # noqa: BLE001 - unreadable dev labels: the rate is unknown, the table goes on
        return None, first_line(e)
    counts = Counter(labels)
    top = max(counts.values())
    best = None
    for label in (x for x, k in counts.items() if k == top):  # ties: the best-scoring majority class
        try:
            value = task_metrics.compute([metric], [label] * len(labels), labels)[metric]
        except (ValueError, TypeError) as e:
            return None, f"metric '{metric}': {first_line(e)}"
        best = value if best is None else max(best, value)
    return best, None


_HUB_LABELS = """
import json, sys
from stilts_tui import tasks
task, limit = json.loads(sys.argv[1])
print(json.dumps([e["label"] for e in tasks.load_examples(task, "dev", limit=limit)]))
"""


def _hub_labels(task: dict, limit: int | None) -> list:
    """Dev labels of a hub dataset from the local datasets cache only: a child process in offline mode, so
    this process's hub settings stay as they are and a score table never downloads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _HUB_LABELS, json.dumps([task, limit])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if proc.returncode:
        raise UserError(
            "its hub dev set is not in the local datasets cache (read offline here; "
            "data_dir with local files gives the rate)"
        )
    return json.loads(proc.stdout)
