"""`daemon start`'s Slurm settings: one option a key of a plan's ``[slurm]`` table, each value checked by
the plan's Slurm rules, and all of them against what the partition's nodes can run (a job that can never
start is refused here, in one line, not left pending)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from stilts_tui.errors import UserError
from stilts_tui.plan import slurm as rules  # the Slurm rules, in one module
from stilts_tui.queue.settings import EXECUTORS


@dataclass(frozen=True)
class SlurmOption:
    """One `daemon start` option that sets a key of the Slurm settings."""

    key: str  # the key, as a plan's [slurm] table names it
    param: str  # the Python name of `daemon start`'s parameter
    option: str
    type: type  # str, int, or list (repeatable)
    help: str


SLURM_OPTIONS: tuple[SlurmOption, ...] = (
    SlurmOption("partition", "partition", "--partition", str, "slurm: partition"),
    SlurmOption("account", "account", "--account", str, "slurm: account"),
    SlurmOption("qos", "qos", "--qos", str, "slurm: QOS"),
    SlurmOption("time", "time_limit", "--time", str, "slurm: time limit a run, e.g. 4:00:00"),
    SlurmOption(
        "gpus", "gpus_per_run", "--gpus-per-run", int, f"slurm: GPUs a run (default {rules.SLURM_DEFAULTS['gpus']})"
    ),
    SlurmOption(
        "cpus", "cpus_per_run", "--cpus-per-run", int, f"slurm: CPUs a run (default {rules.SLURM_DEFAULTS['cpus']})"
    ),
    SlurmOption("mem", "mem", "--mem", str, "slurm: memory a run, e.g. 32G"),
    SlurmOption(
        "sbatch_args",
        "sbatch_arg",
        "--sbatch-arg",
        list,
        "slurm: one more sbatch option, e.g. --sbatch-arg=--exclude=node7 (repeatable; never through a shell)",
    ),
)
OPTION_OF = {o.key: o.option for o in SLURM_OPTIONS}


def slurm_settings(executor: str, mps: bool, given: dict) -> dict:
    """The Slurm settings given on the command line (by key), each checked (one line and exit 2 for a bad
    one), and checked against what the partition's nodes can run."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor: expected {' or '.join(EXECUTORS)}, got '{executor}'")
    slurm = {k: v for k, v in given.items() if v is not None}
    if slurm and executor != "slurm":
        raise UserError(f"{OPTION_OF[next(iter(slurm))]}: a Slurm setting needs --executor slurm")
    for key, value in slurm.items():
        problem = rules.slurm_problem(key, value)
        if problem:
            raise UserError(f"{OPTION_OF[key]}: {problem}")
    if executor == "slurm" and mps:
        raise UserError("--mps: MPS is for the local executor (on Slurm, ask the cluster for it with --sbatch-arg)")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch not found on PATH (run the daemon where Slurm's commands are)")
    if executor == "slurm":
        check_slurm_fit(slurm)
    return slurm


def check_slurm_fit(slurm: dict) -> None:
    """Refuse Slurm settings no node of the partition can run (a job would pend forever), in one line."""
    from stilts_tui.queue.executors import slurm_nodes

    problem = slurm_nodes.fit_problem(rules.resolved(slurm))  # each sbatch argument was checked by its rule
    if problem:
        raise UserError(problem)
