"""Which extra sbatch options a run may pass (a plan's ``[slurm] sbatch_args``, ``--sbatch-arg``).

A module of its own, below every layer, so that plan validation and the Slurm executor apply one rule."""

from __future__ import annotations

# sbatch options the executor sets or that would break how it tracks a job. sbatch (getopt_long) takes any
# unambiguous abbreviation of a long option (--depend=, --arr=, --out=, --chd=, --hol, --test), so an
# option is refused when its name is a prefix of one of these, not only when it equals one.
MANAGED = (
    "job-name",
    "output",
    "error",
    "input",
    "open-mode",
    "dependency",
    "kill-on-invalid-dep",
    "parsable",
    "wrap",
    "chdir",
    "array",
    "gres",
    "gpus",
    "partition",
    "account",
    "time",
    "mem",
    "cpus-per-task",
    "qos",
    "hold",
    "test-only",
    "wait",
    "export-file",
    "batch",
    "clusters",
    "cluster-constraint",
    "get-user-env",
    "uid",
    "gid",
    "help",
    "usage",
    "version",
    "ignore-pbs",
)


def option_problem(arg: object) -> str | None:
    """What is wrong with one extra sbatch argument, or None. Only ``--name`` or ``--name=value``, never
    an option the executor manages, under any abbreviation sbatch would accept."""
    if not isinstance(arg, str) or not arg.startswith("--") or len(arg) < 3 or any(c in arg for c in "\n\r\x00"):
        return f"{str(arg)[:60]!r} is not a --name or --name=value sbatch option"
    name = arg[2:].split("=", 1)[0]
    hit = [m for m in MANAGED if m.startswith(name)]
    if hit:
        return (
            f"{arg[:60]!r}: sbatch reads it as --{hit[0]}, which the Slurm executor sets itself"
            if len(hit) == 1
            else f"{arg[:60]!r}: an abbreviation of options the executor sets ({', '.join('--' + h for h in hit[:4])})"
        )
    return None
