"""The Slurm rules, in one place: which settings a run may give sbatch (a plan's ``[slurm]`` table, or
`daemon start`'s options), what each must look like, their defaults, and which extra sbatch options
are refused. Plan validation, `daemon start` and the Slurm executor all check with these functions.
Pure data and checks: it runs no Slurm command (the executor, queue/executors/slurm.py, does)."""

from __future__ import annotations

import re

from stilts_tui.plan.values import Check, integer

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

SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
SLURM_TIME_RE = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")  # sbatch --time formats
SLURM_MEM_RE = re.compile(r"^\d+[KMGT]?$")
SLURM_FLAG_RE = re.compile(r"^--[a-z][a-z0-9-]*(=[^\x00\n]*)?$")
SLURM_DEFAULTS = {"gpus": 1, "cpus": 4}  # what a run asks for when neither the plan nor the daemon says
# each setting's option of `daemon start` (the others are --KEY)
FLAGS = {"time": "--time", "gpus": "--gpus-per-run", "cpus": "--cpus-per-run", "sbatch_args": "--sbatch-arg"}


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


def _flags_ok(v: object) -> bool:
    """A list of well-formed ``--flag[=value]`` options, none that the executor manages."""
    if not isinstance(v, list):
        return False
    return all(isinstance(f, str) and SLURM_FLAG_RE.match(f) and not option_problem(f) for f in v)


def _named(what: str) -> Check:
    return (lambda v: isinstance(v, str) and bool(SLURM_NAME_RE.match(v))), what


SLURM_KEYS: dict[str, Check] = {
    "partition": _named("a partition name"),
    "account": _named("an account name"),
    "qos": _named("a QOS name"),
    "time": (
        (lambda v: isinstance(v, str) and bool(SLURM_TIME_RE.match(v))),
        'a time limit like "90", "4:00:00" or "1-12:00:00"',
    ),
    "gpus": integer(0, 64),
    "cpus": integer(1, 1024),
    "mem": ((lambda v: isinstance(v, str) and bool(SLURM_MEM_RE.match(v))), 'a memory size like "32G" or "16000M"'),
    "sbatch_args": (
        _flags_ok,
        'a list of "--flag" or "--flag=value" sbatch options other than those the '
        "executor sets or that break its tracking (" + ", ".join(sorted(MANAGED)) + ")",
    ),
}


def slurm_problem(key: str, value: object) -> str | None:
    """What is wrong with one Slurm setting (from a plan's [slurm] table or the command line), or None."""
    if key not in SLURM_KEYS:
        return f"unknown Slurm setting (expected one of: {', '.join(SLURM_KEYS)})"
    ok, what = SLURM_KEYS[key]
    return None if ok(value) else f"expected {what}, got {value!r}"


def flag(key: str) -> str:
    """The `daemon start` option that gives a setting (``gpus`` -> ``--gpus-per-run``)."""
    return FLAGS.get(key, f"--{key.replace('_', '-')}")


def options_problem(settings: dict) -> str | None:
    """The first bad setting given on `daemon start`'s command line, as one line naming its option
    (``--gpus-per-run: expected ...``), or None. Settings given as None are not given."""
    for key, value in settings.items():
        problem = None if value is None else slurm_problem(key, value)
        if problem:
            return f"{flag(key)}: {problem}"
    return None


def settings_problem(settings: dict) -> str | None:
    """The first problem with a run's sbatch settings as the executor reads them (their extra arguments),
    or None: checked again at submission, so no managed option reaches sbatch whatever a caller checked."""
    extra = settings.get("sbatch_args") or []
    if not isinstance(extra, list):
        return "sbatch_args is not a list"
    for arg in extra:
        problem = option_problem(arg)
        if problem:
            return problem
    return None


def resolved(*layers: dict | None) -> dict:
    """A run's settings: the defaults, then each layer over the one before (the daemon's command line, then
    the plan's [slurm] table)."""
    out = dict(SLURM_DEFAULTS)
    for layer in layers:
        out.update(layer or {})
    return out


def resource_args(settings: dict) -> list[str]:
    """sbatch's options for what one run asks for (CPUs, GPUs, partition, account, QOS, time, memory),
    missing ones at their defaults; the extra ``sbatch_args`` are not among them."""
    cpus, gpus = settings.get("cpus", SLURM_DEFAULTS["cpus"]), settings.get("gpus", SLURM_DEFAULTS["gpus"])
    args = [f"--cpus-per-task={cpus}"]
    if gpus:
        args.append(f"--gres=gpu:{gpus}")
    args += [f"--{key}={settings[key]}" for key in ("partition", "account", "qos", "time", "mem") if settings.get(key)]
    return args
