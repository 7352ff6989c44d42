"""Plan files (TOML) -> a validated :class:`Plan` -> expanded runs (a DAG with content-hash ids).

The package by concern, each module importing only those above it in this list:
``values`` (the value checks), ``slurm`` (the Slurm rules: settings, defaults, refused sbatch options),
``schema`` (every table's keys), ``model`` (Plan, Run), ``lines`` (refusals naming file, key and line),
``load`` (read and validate), ``expand`` (runs and their ids), ``describe`` (grid text, counts, matrix,
missing data), ``spec`` (a run's spec.json). This module is the package's face: the names other layers use.
"""

from __future__ import annotations

from stilts_tui.contract import SYNTH_DEFAULTS
from stilts_tui.plan.describe import counts, grid_text, matrix, missing_data
from stilts_tui.plan.expand import (
    count_runs,
    expand,
    load_and_expand,
    max_runs_limit,
    model_entry,
    report_to,
    run_id,
    task_spec,
)
from stilts_tui.plan.load import load, parse
from stilts_tui.plan.model import Plan, Run
from stilts_tui.plan.schema import LORA_DEFAULTS, MAX_RUNS, MAX_RUNS_ENV, STAGES, SYNTH_KEYS
from stilts_tui.plan.slurm import SLURM_DEFAULTS, SLURM_KEYS, slurm_problem
from stilts_tui.plan.spec import spec_for
from stilts_tui.plan.values import NAME_RE, name_problem

__all__ = [
    "LORA_DEFAULTS",
    "MAX_RUNS",
    "MAX_RUNS_ENV",
    "NAME_RE",
    "SLURM_DEFAULTS",
    "SLURM_KEYS",
    "STAGES",
    "SYNTH_DEFAULTS",
    "SYNTH_KEYS",
    "Plan",
    "Run",
    "count_runs",
    "counts",
    "expand",
    "grid_text",
    "load",
    "load_and_expand",
    "matrix",
    "max_runs_limit",
    "model_entry",
    "missing_data",
    "name_problem",
    "parse",
    "report_to",
    "run_id",
    "slurm_problem",
    "spec_for",
    "task_spec",
]
