"""Shape and type checks of the files the daemon reads from a run folder (spec.json, result.json).

A file a user edited, a disk damaged or an older version wrote must cost one run, never the queue:
each check returns what is wrong in one line (or None), and the daemon fails that run with it."""

from __future__ import annotations

import math

from stilts_tui.contract import RESULT_STATUSES, STAGES, missing_params

INT64 = 2**63

# spec["params"] keys the queue computes with (memory estimate, array and shape keys), and their kinds
_SPEC_INTS = (
    "batch_size",
    "max_len",
    "epochs",
    "grad_accum",
    "eval_batch_size",
    "max_train_samples",
    "max_dev_samples",
)
_SPEC_NUMS = ("lr", "warmup", "weight_decay")


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -INT64 <= v < INT64


def is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and -INT64 <= v < INT64


def spec_problem(spec: object) -> str | None:
    """What in a parsed spec.json the queue cannot use, or None."""
    if not isinstance(spec, dict):
        return f"spec.json holds {type(spec).__name__}, not an object"
    for key in ("params", "task", "model", "slurm", "debug"):
        if key in spec and spec[key] is not None and not isinstance(spec[key], dict):
            return f"spec.json: '{key}' is {type(spec[key]).__name__}, not an object"
    if spec.get("stage") not in STAGES:
        return f"spec.json: 'stage' is {str(spec.get('stage'))[:40]!r}, not one of {', '.join(STAGES)}"
    if not isinstance(spec.get("params"), dict):
        return "spec.json: no 'params' object"
    missing = missing_params(spec)
    if missing:
        return (
            f"spec.json: params lacks {', '.join(missing)} (a plan's expansion writes every training default: "
            "`queue add` its plan again)"
        )
    params = spec.get("params") or {}
    for key in _SPEC_INTS:
        if params.get(key) is not None and not (is_int(params[key]) and params[key] > 0):
            return f"spec.json: params.{key} is {str(params[key])[:40]!r}, not a positive integer"
    for key in _SPEC_NUMS:
        if params.get(key) is not None and not is_num(params[key]):
            return f"spec.json: params.{key} is {str(params[key])[:40]!r}, not a finite number"
    task, model = spec.get("task") or {}, spec.get("model") or {}
    if task.get("num_choices") is not None and not (is_int(task["num_choices"]) and task["num_choices"] > 0):
        return f"spec.json: task.num_choices is {str(task['num_choices'])[:40]!r}, not a positive integer"
    for key in ("name", "path"):
        if model.get(key) is not None and not isinstance(model[key], str):
            return f"spec.json: model.{key} is {str(model[key])[:40]!r}, not a string"
    return None


def result_problem(result: object) -> str | None:
    """What in a parsed result.json the queue cannot use, or None (a NaN score is kept as no score)."""
    if not isinstance(result, dict):
        return f"result.json holds {type(result).__name__}, not an object"
    if result.get("status") not in RESULT_STATUSES:
        return f"result.json: status is {str(result.get('status'))[:40]!r}, not one of {', '.join(RESULT_STATUSES)}"
    score = result.get("score")
    if score is not None and not (
        isinstance(score, (int, float)) and not isinstance(score, bool) and (math.isnan(score) or is_num(score))
    ):
        return f"result.json: score is {str(score)[:40]!r}, not a number"
    peak = result.get("peak_gpu_mem_gb")
    if peak is not None and not (is_num(peak) and peak >= 0):
        return f"result.json: peak_gpu_mem_gb is {str(peak)[:40]!r}, not a number >= 0"
    if result.get("error") is not None and not isinstance(result["error"], str):
        return f"result.json: error is {type(result['error']).__name__}, not a string"
    return None


def clean_score(score: object) -> float | None:
    """A score the ledger can hold: NaN (an undefined metric) becomes no score."""
    return None if score is None or (isinstance(score, float) and math.isnan(score)) else score


TIMING_KEYS = (
    "process_s",
    "data_s",
    "model_s",
    "first_step_s",
    "compile_s",
    "isa_check_s",
    "steps_s",
    "steady_samples_per_s",
    "eval_s",
)


def clean_timings(timings: object) -> dict | None:
    """The trainer's time breakdown (the run result's ``timings``) as the ledger keeps it: the known keys
    whose values are finite numbers >= 0 (anything else in a damaged file is left out), or None."""
    if not isinstance(timings, dict):
        return None
    out = {k: timings[k] for k in TIMING_KEYS if is_num(timings.get(k)) and timings[k] >= 0}
    return out or None


DATA_KEYS = ("kind", "id", "config", "revision", "commit", "split", "path", "examples", "fingerprint")


def clean_data(data: object) -> dict | None:
    """What a run trained and was scored on (the result's ``data``: per split its source, example count and
    fingerprint, tasks.data.load_split) as the ledger keeps it: the known keys of ``train`` and ``dev``,
    strings cut to 300 characters and counts that are whole numbers; anything else is left out."""
    if not isinstance(data, dict):
        return None
    out = {}
    for split in ("train", "dev"):
        src = data.get(split)
        if not isinstance(src, dict):
            continue
        kept = {}
        for k in DATA_KEYS:
            v = src.get(k)
            if isinstance(v, str):
                kept[k] = v[:300]
            elif k == "examples" and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53:
                kept[k] = v
        out[split] = kept
    return out or None
