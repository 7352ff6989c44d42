"""Early stop of degenerate runs (a plan's ``stop_degenerate``): a run whose dev score stays at or below
the majority-class score of its dev set (the score table's failed-run rule, :mod:`stilts_tui.tasks.majority`)
at ``patience`` evaluations in a row, from epoch ``after_epochs`` on, ends as ``degenerate`` before its
last epoch. Its curve, scores so far and training time are kept in result.json, with the rule and the epoch."""

from __future__ import annotations

from pathlib import Path

from stilts_tui.contract import STOP_DEGENERATE_DEFAULTS, ResultStatus, attempt_of, optional
from stilts_tui.fmt import duration
from stilts_tui.store.rundir import read_json
from stilts_tui.tasks.majority import is_failed, majority_score

RULE = "dev score at or below the majority-class score of the dev set (the score table's failed-run rule)"


def rule_of(spec: dict) -> dict | None:
    """The run's stop_degenerate settings (defaults filled in), or None when the plan leaves it off."""
    value = optional(spec.get("params") or {}, "stop_degenerate")
    return {**STOP_DEGENERATE_DEFAULTS, **value} if isinstance(value, dict) else None


def stopped_before(run_dir: Path) -> bool:
    """Did an earlier attempt of this run end degenerate? A retry of it trains to its last epoch (the way
    to undo the saving: ``queue retry``)."""
    for path in run_dir.glob("result.attempt*.json"):
        if attempt_of(path.name) is not None:
            earlier = read_json(path)
            if isinstance(earlier, dict) and earlier.get("status") == ResultStatus.DEGENERATE:
                return True
    return False


def verdict(spec: dict, rule: dict, scores: list[float]) -> dict | None:
    """What result.json's ``stopped`` records when the scores so far (one an evaluated epoch) meet the rule,
    else None. A majority-class score that cannot be computed never stops a run."""
    epoch, patience = len(scores), int(rule["patience"])
    if epoch - patience + 1 < int(rule["after_epochs"]):
        return None
    metric = spec["task"].get("metric", "acc")
    majority, _why = majority_score(spec["task"], metric, optional(spec["params"], "max_dev_samples"))
    if majority is None or not all(is_failed(s, majority) for s in scores[-patience:]):
        return None
    return {
        "rule": RULE,
        "after_epochs": int(rule["after_epochs"]),
        "patience": patience,
        "epoch": epoch,
        "metric": metric,
        "majority_score": majority,
        "scores": scores[-patience:],
    }


def saving(step: int, total: int, seconds: float) -> dict:
    """What the stop saved: the steps left of the run's schedule and their time at the run's own pace so
    far (its steps, its evaluations), an estimate: ``saved_seconds`` in result.json's ``stopped``."""
    left = max(0, int(total) - int(step))
    saved = seconds * left / step if step > 0 else 0.0
    return {"steps_done": int(step), "total_steps": int(total), "saved_seconds": round(saved, 1)}


def reason(stopped: dict) -> str:
    """The one line the ledger and queue ls show for a degenerate run."""
    shown = ", ".join(f"{s:.4f}" for s in stopped["scores"])
    line = (
        f"degenerate: dev {stopped['metric']} {shown} at or below the majority class's "
        f"{stopped['majority_score']:.4f} by epoch {stopped['epoch']} (stop_degenerate: after_epochs "
        f"{stopped['after_epochs']}, patience {stopped['patience']})"
    )
    saved = stopped.get("saved_seconds")
    if isinstance(saved, (int, float)) and not isinstance(saved, bool) and "total_steps" in stopped:
        line += (
            f"; stopped at step {stopped['steps_done']} of {stopped['total_steps']}, "
            f"about {duration(saved)} of training saved"
        )
    return line
