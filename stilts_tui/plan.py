"""Plan files (TOML) -> a validated :class:`Plan` -> expanded runs (a DAG with content-hash ids).

Plans are data: they are parsed with ``tomllib`` and checked key by key, never evaluated.
Expansion order (also the queue's "plan order"): synth stages; each intermediate x its seeds; then
each starting point (every intermediate run, plus "none" when ``baseline``) x each target x its
seeds x its grid. A run's id hashes its fully resolved config, its parent's id included, so adding a
plan twice queues nothing new and editing one target's grid queues only the new runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import contract, tasks
from stilts_tui.errors import PlanError, UserError
from stilts_tui.slurm_options import MANAGED, option_problem  # the one rule, with the Slurm executor
from stilts_tui.store import rundir
from stilts_tui.synth.settings import DEFAULTS as SYNTH_DEFAULTS
from stilts_tui.tomlio import tomllib

STAGES = contract.STAGES
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # with fullmatch: `$` accepts a trailing newline
BASELINE_NAME = "none"  # the starting point of baseline runs: no intermediate stage may take it
INT64_MAX = 2**63 - 1
MAX_DEPTH = 16  # tables and lists inside each other; a plan needs 3
MAX_PLAN_BYTES = 4 * 2**20
MAX_RUNS = 100_000  # a plan expanding to more is refused unless the user raises the limit (--max-runs)
MAX_RUNS_ENV = "STILTS_MAX_RUNS"


# ---- the schema: name -> (check, what is expected) ---------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: int, hi: int | None = None):
    what = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    return (lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi)), what


def _num(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    lo_s, hi_s = (">" if lo_open else ">="), ("<" if hi_open else "<=")
    what = f"a number {lo_s} {lo:g}" + (f" and {hi_s} {hi:g}" if hi is not None else "")

    def ok(v: object) -> bool:
        if not _is_num(v) or not math.isfinite(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    return ok, what


def _one_of(*choices: str):
    return (lambda v: v in choices), "one of " + ", ".join(f'"{c}"' for c in choices)


def _str():
    return (lambda v: isinstance(v, str) and v.strip() != ""), "a non-empty string"


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _str_list():
    return (lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)), (
        "a non-empty list of strings"
    )


def _int_list():
    return (
        lambda v: isinstance(v, list) and v and all(_is_int(x) and x >= 0 for x in v) and len(set(v)) == len(v)
    ), "a non-empty list of distinct integers >= 0"


HYPER = {
    "lr": _num(0, 1, lo_open=True),
    "batch_size": _int(1, 65536),
    "warmup": _num(0, 1, hi_open=True),
    "epochs": _int(1, 1000),
    "max_len": _int(8, 8192),
    "weight_decay": _num(0),
    "grad_accum": _int(1, 4096),
    "precision": _one_of("auto", "fp32", "bf16", "fp16"),
    "batching": _one_of("random", "grouped"),
    "pad": _one_of("auto", "max", "buckets", "longest"),
    "clip": _one_of("step", "micro_batch"),
    "compile": _one_of("auto", "off", "inductor", "cudagraphs"),
    "fuse": _bool(),
    "transfer": _one_of("all", "encoder", "merge", "adapter"),
    "method": _one_of("full", "lora"),
    "lora": ((lambda v: isinstance(v, dict)), "a table of LoRA settings (r, alpha, dropout, targets)"),
    "eval_batch_size": _int(1, 65536),
    "max_train_samples": _int(1),
    "max_dev_samples": _int(1),
    "stop_degenerate": (
        (lambda v: isinstance(v, dict)),
        "a table { after_epochs = 1, patience = 1 } (stop runs stuck at the majority class)",
    ),
}
# stop_degenerate's keys; the run contract holds what a table leaves out
STOP_KEYS = {"after_epochs": _int(1, 1000), "patience": _int(1, 1000)}
DEFAULTS = contract.TRAINING_DEFAULTS  # the reference's settings; the run contract holds them
# LoRA (method = "lora"): the LoRA paper's RoBERTa GLUE setting; kept out of a run's params (and id) unless
# the run is a LoRA run, so plans without the keys keep their run ids
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
LORA_KEYS = {
    "r": _int(1, 4096),
    "alpha": _num(0, lo_open=True),
    "dropout": _num(0, 1, hi_open=True),
    "targets": (
        (lambda v: isinstance(v, list) and bool(v) and all(t in LORA_TARGETS for t in v) and len(set(v)) == len(v)),
        "a non-empty list of distinct layers out of " + ", ".join(LORA_TARGETS),
    ),
}
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}
DATA_KEYS = {"task": _str(), "data_dir": _str(), "train_file": _str(), "dev_file": _str()}
STAGE_KEYS = {
    "intermediate": {**DATA_KEYS, **HYPER, "seeds": _int_list(), "seed": _int(0), "keep_checkpoint": _bool()},
    "target": {
        **DATA_KEYS,
        **HYPER,
        "seeds": _int_list(),
        "grid": (lambda v: isinstance(v, dict), "a table"),
        "keep_checkpoint": _bool(),
        "rank": (
            (lambda v: isinstance(v, dict)),
            "a table { top = K, examples = N } (rank the starting points, train the top K and none)",
        ),
    },
}
# [target.X] rank = { top, examples }: top is required; the run contract holds what the table leaves out
RANK_KEYS = {"top": _int(1, 1000), "examples": _int(2, 1_000_000)}
SYNTH_KEYS = {
    "corpus": _one_of("squad"),
    "corpus_file": _str(),
    "generator": _str(),
    "n": _int(1),
    "fakes": _int(1, 64),
    "top_p": _num(0, 1, lo_open=True),
    "top_k": _int(0),
    "temperature": _num(0, lo_open=True),
    "seed": _int(0),
    "dev": _int(0),
    "batch_size": _int(1, 4096),
}
CUSTOM_KEYS = {
    "format": _one_of("jsonl", "csv", "tsv"),
    "train": _str(),
    "dev": _str(),
    "kind": _one_of(*tasks.KINDS),
    "text_fields": _str_list(),
    "label_field": _str(),
    "choices_field": _str(),
    "choice_fields": _str_list(),
    "labels": _str_list(),
    "metric": _one_of(*tasks.METRICS),
}
SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
SLURM_TIME_RE = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")  # sbatch --time formats
SLURM_MEM_RE = re.compile(r"^\d+[KMGT]?$")
SLURM_FLAG_RE = re.compile(r"^--[a-z][a-z0-9-]*(=[^\x00\n]*)?$")


def _slurm_flags(v: object) -> bool:
    if not isinstance(v, list):
        return False
    for flag in v:
        if not isinstance(flag, str) or not SLURM_FLAG_RE.match(flag):
            return False
        if option_problem(flag):  # managed options under any abbreviation sbatch accepts
            return False
    return True


SLURM_KEYS = {
    "partition": ((lambda v: isinstance(v, str) and bool(SLURM_NAME_RE.match(v))), "a partition name"),
    "account": ((lambda v: isinstance(v, str) and bool(SLURM_NAME_RE.match(v))), "an account name"),
    "qos": ((lambda v: isinstance(v, str) and bool(SLURM_NAME_RE.match(v))), "a QOS name"),
    "time": (
        (lambda v: isinstance(v, str) and bool(SLURM_TIME_RE.match(v))),
        'a time limit like "90", "4:00:00" or "1-12:00:00"',
    ),
    "gpus": _int(0, 64),
    "cpus": _int(1, 1024),
    "mem": ((lambda v: isinstance(v, str) and bool(SLURM_MEM_RE.match(v))), 'a memory size like "32G" or "16000M"'),
    "sbatch_args": (
        _slurm_flags,
        'a list of "--flag" or "--flag=value" sbatch options other than those the '
        "executor sets or that break its tracking (" + ", ".join(sorted(MANAGED)) + ")",
    ),
}
SLURM_DEFAULTS = {"gpus": 1, "cpus": 4}


def slurm_problem(key: str, value: object) -> str | None:
    """What is wrong with one Slurm setting (from a plan's [slurm] table or the command line), or None."""
    if key not in SLURM_KEYS:
        return f"unknown Slurm setting (expected one of: {', '.join(SLURM_KEYS)})"
    ok, what = SLURM_KEYS[key]
    return None if ok(value) else f"expected {what}, got {value!r}"


TOP_KEYS = {
    "name": _str(),
    "model": _str(),
    "description": (lambda v: isinstance(v, str), "a string"),
    "baseline": _bool(),
    "target_seeds": _int_list(),
    "defaults": (lambda v: isinstance(v, dict), "a table"),
    "synth": (lambda v: isinstance(v, dict), "a table of [synth.NAME] stages"),
    "intermediate": (lambda v: isinstance(v, dict), "a table of [intermediate.NAME] stages"),
    "target": (lambda v: isinstance(v, dict), "a table of [target.NAME] stages"),
    "tasks": (lambda v: isinstance(v, dict), "a table of [tasks.NAME] custom tasks"),
    "slurm": (lambda v: isinstance(v, dict), "a table of Slurm settings"),
    "on_finish": _str_list(),  # a command run when the plan finishes or a run fails (queue/notify.py)
}


# ---- the model ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of an expanded plan: what the ledger records and the trainer reads."""

    id: str
    plan: str
    stage: str  # synth | intermediate | target
    name: str  # the stage's name in the plan ([target.rte] -> "rte")
    task: str
    intermediate: str | None  # the starting point: intermediate stage name, "none", or None (synth)
    seed: int | None
    params: dict
    grid: dict  # the grid values that vary across this target's runs
    parent: str | None
    order: int
    task_spec: dict = field(default_factory=dict)  # resolved data paths, for spec.json
    model: dict = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # runs it waits for, settled (the rank stage's)
    starts: list[dict] = field(default_factory=list)  # a rank run's starting points: {label, run_id}

    def record(self) -> dict:
        """The ledger's view of this run (spec.json holds the rest)."""
        return {
            "id": self.id,
            "plan": self.plan,
            "stage": self.stage,
            "name": self.name,
            "task": self.task,
            "intermediate": self.intermediate,
            "seed": self.seed,
            "params": self.params,
            "grid": self.grid,
            "parent": self.parent,
            "order": self.order,
            **({contract.AFTER_FIELD: self.after} if self.after else {}),  # rows of plans without rank: as before
        }


@dataclass
class Plan:
    name: str
    path: Path
    model: str
    baseline: bool
    target_seeds: list[int]
    defaults: dict
    synth: dict[str, dict]
    intermediate: dict[str, dict]
    target: dict[str, dict]
    tasks: dict[str, dict]
    text: str = ""
    slurm: dict = field(default_factory=dict)  # sbatch settings for this plan's runs (not part of run ids)
    on_finish: list[str] | None = None  # as written; `queue add` records it resolved (:meth:`finish_command`)

    def finish_command(self) -> list[str] | None:
        """``on_finish`` as the daemon runs it: a program named with a '/' is relative to the plan's folder.
        `queue add` records this in the ledger; the daemon never reads the plan file again."""
        if not self.on_finish:
            return None
        cmd = list(self.on_finish)
        if "/" in cmd[0]:
            cmd[0] = str((self.dir / cmd[0]).expanduser().resolve())
        return cmd

    @property
    def dir(self) -> Path:
        return self.path.parent


# ---- loading and validation --------------------------------------------------------------------


def _line_of(text: str, path: list[str]) -> int | None:
    """Best-effort line of a dotted key in the TOML text (tomllib gives no positions)."""
    header_re = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    lines = text.splitlines()
    for cut in range(len(path) - 1, -1, -1):
        header, key = ".".join(path[:cut]), path[cut]
        current = ""
        key_re = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for n, line in enumerate(lines, 1):
            m = header_re.match(line)
            if m:
                current = m.group(1).replace('"', "").replace(" ", "")
                if current == ".".join(path[: cut + 1]):
                    return n
                continue
            if current == header and key_re.match(line):
                return n
    return None


class _Checker:
    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def fail(self, key: str, message: str):
        raise PlanError(self.path, message, key=key, line=_line_of(self.text, key.split(".")))

    def table(self, where: str, data: dict, schema: dict, required: tuple[str, ...] = ()) -> None:
        for k in required:
            if k not in data:
                self.fail(f"{where}.{k}".lstrip("."), "is required")
        for k, v in data.items():
            key = f"{where}.{k}".lstrip(".")
            if k not in schema:
                self.fail(key, f"unknown key (expected one of: {', '.join(schema)})")
            ok, what = schema[k]
            if not ok(v):
                self.fail(key, f"expected {what}, got {v!r}")


def load(path: str | Path) -> Plan:
    """Read and validate a plan file. Every problem is a :class:`PlanError` naming file and key."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PlanError(path, "plan file not found") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a path through a file, no permission
        raise PlanError(path, f"cannot read the plan ({e})") from None
    # a FIFO would block and /dev/zero never ends: only regular files of a sane size are read
    if not stat.S_ISREG(st.st_mode):
        raise PlanError(path, "not a regular file (a plan is a TOML file)")
    if st.st_size > MAX_PLAN_BYTES:
        raise PlanError(path, f"the plan is {st.st_size} bytes; plans are at most {MAX_PLAN_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_PLAN_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(path, f"cannot read the plan ({e})") from None
    return parse(text, path)


def name_problem(name: object) -> str | None:
    """The one rule for plan and stage names (they become labels, file names and paths): what is
    wrong with ``name``, or None. Letters, digits, '_', '-' and '.', at most 64, starting with a
    letter or digit: no path separator, no '..', no control character, no space."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        return (
            "names are 1-64 letters, digits, '_', '-' and '.', starting with a letter or digit, "
            f"without '..' (got {_shown(name)})"
        )
    return None


def _shown(value: object) -> str:
    """A value for a one-line message: control characters escaped, long values cut."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_values(c: _Checker, where: str, value: object, depth: int = 0) -> None:
    """Every value in the TOML tree: integers fit int64, floats are finite, nesting is shallow."""
    if depth > MAX_DEPTH:
        c.fail(where or "(top)", f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_values(c, f"{where}.{k}".lstrip("."), v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_values(c, where, v, depth + 1)
    elif _is_int(value) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        c.fail(where, f"integer out of range (at most {INT64_MAX})")
    elif isinstance(value, float) and not math.isfinite(value):
        c.fail(where, f"expected a finite number, got {value}")


def _check_synth(c: _Checker, name: str, sdef, base: Path) -> None:
    """A [synth.NAME] stage: its name, keys and corpus file."""
    _check_name(c, f"synth.{name}", name)
    if not isinstance(sdef, dict):
        c.fail(f"synth.{name}", "expected a table")
    c.table(f"synth.{name}", sdef, SYNTH_KEYS)
    if sdef.get("corpus_file"):
        _check_path(c, f"synth.{name}.corpus_file", base, sdef["corpus_file"])


def _check_stages_together(c: _Checker, data: dict, stages: dict) -> None:
    """What the stages must be as a whole: a target, intermediates for a rank stage or without a baseline."""
    if not stages["target"]:
        c.fail("target", "a plan needs at least one [target.NAME] stage")
    ranked = next((t for t, d in stages["target"].items() if "rank" in d), None)
    if ranked is not None and not stages["intermediate"]:
        c.fail(
            f"target.{ranked}.rank", "ranks the target's starting points: the plan needs an [intermediate.NAME] stage"
        )
    if not data.get("baseline", True) and not stages["intermediate"]:
        c.fail("baseline", "with baseline = false and no [intermediate.NAME] stage the plan has no target runs")


def parse(text: str, path: str | Path) -> Plan:
    """Validate a plan's TOML text; ``path`` names it in messages and anchors relative paths."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise PlanError(
            path,
            f"TOML syntax error: {msg}" + (f" (column {m.group(2)})" if m else ""),
            line=int(m.group(1)) if m else None,
        ) from None
    except RecursionError:
        raise PlanError(path, f"TOML nested too deeply (at most {MAX_DEPTH} levels)") from None
    c = _Checker(path, text)
    _check_values(c, "", data)
    c.table("", data, TOP_KEYS, required=("name", "model"))
    problem = name_problem(data["name"])
    if problem:
        c.fail("name", problem)
    _check_path(c, "model", path.parent, data["model"])
    defaults = data.get("defaults", {})
    c.table("defaults", defaults, HYPER)
    _check_method(c, "defaults", defaults)
    c.table("slurm", data.get("slurm", {}), SLURM_KEYS)
    custom = data.get("tasks", {})
    for tname, tdef in custom.items():
        _check_custom(c, tname, tdef)
    synth = data.get("synth", {})
    for sname, sdef in synth.items():
        _check_synth(c, sname, sdef, path.parent)
    stages = {}
    for kind in ("intermediate", "target"):
        stages[kind] = data.get(kind, {})
        for sname, sdef in stages[kind].items():
            _check_stage(c, kind, sname, sdef, path.parent, custom, synth)
    _check_stages_together(c, data, stages)
    return Plan(
        name=data["name"],
        path=path.resolve(),
        model=data["model"],
        baseline=data.get("baseline", True),
        target_seeds=data.get("target_seeds", [42]),
        defaults=defaults,
        synth=synth,
        intermediate=stages["intermediate"],
        target=stages["target"],
        tasks=custom,
        text=text,
        slurm=data.get("slurm", {}),
        on_finish=data.get("on_finish"),
    )


def _check_stage(c: _Checker, kind: str, sname: str, sdef: object, plan_dir: Path, custom: dict, synth: dict) -> None:
    """One [intermediate.NAME] or [target.NAME] table: its name, keys, task, grid, files and dev split."""
    where = f"{kind}.{sname}"
    _check_name(c, where, sname)
    if kind == "intermediate" and sname.lower() == BASELINE_NAME:
        c.fail(
            where,
            f"'{BASELINE_NAME}' is the starting point of the baseline runs (straight from the model); "
            "name the intermediate stage otherwise",
        )
    if not isinstance(sdef, dict):
        c.fail(where, "expected a table")
    c.table(where, sdef, STAGE_KEYS[kind])
    if "rank" in sdef:
        c.table(f"{where}.rank", sdef["rank"], RANK_KEYS, required=("top",))
    _check_method(c, where, sdef)
    _check_task(c, where, sdef.get("task", sname), custom, synth)
    _check_grid(c, where, sdef.get("grid", {}))
    base = plan_dir
    if sdef.get("data_dir"):
        base = _check_path(c, f"{where}.data_dir", base, sdef["data_dir"])
    for key in ("train_file", "dev_file"):
        if sdef.get(key):
            _check_path(c, f"{where}.{key}", base, sdef[key])
    _check_dev_split(c, where, sdef.get("task", sname), synth)


def _check_method(c: _Checker, where: str, table: dict) -> None:
    """A ``lora`` table: its keys and values (the rules between stages are checked as the plan expands)."""
    if "lora" in table:
        c.table(f"{where}.lora", table["lora"], LORA_KEYS)
    if "stop_degenerate" in table:
        c.table(f"{where}.stop_degenerate", table["stop_degenerate"], STOP_KEYS)


def _check_name(c: _Checker, where: str, name: str) -> None:
    problem = name_problem(name)
    if problem:
        c.fail(where, problem)


def _check_grid(c: _Checker, where: str, grid: dict) -> None:
    for gk, gv in grid.items():
        gkey = f"{where}.grid.{gk}"
        if gk not in HYPER:
            c.fail(gkey, f"unknown hyperparameter (expected one of: {', '.join(HYPER)})")
        if gk == "lora":
            c.fail(
                gkey,
                'LoRA settings are not a grid axis (method is: grid = { method = ["full", "lora"] }); '
                "give one lora table per stage",
            )
        if gk == "stop_degenerate":
            c.fail(gkey, "stop_degenerate is not a grid axis: give one table per stage or target")
        if not isinstance(gv, list) or not gv:
            c.fail(gkey, "expected a non-empty list of values (an empty grid expands to no runs)")
        ok, what = HYPER[gk]
        for v in gv:
            if not ok(v):
                c.fail(gkey, f"expected values that are {what}, got {v!r}")
        if len(set(gv)) != len(gv):  # a repeated value would expand to the same run id twice
            dup = next(v for i, v in enumerate(gv) if v in gv[:i])
            c.fail(gkey, f"the value {dup!r} is listed twice")


def _check_path(c: _Checker, key: str, base: Path, value: str) -> Path:
    """A path named by the plan, resolved (a symlink loop is refused here, not at queue time)."""
    p = Path(value).expanduser()
    try:
        return (p if p.is_absolute() else base / p).resolve()
    except (OSError, RuntimeError) as e:
        c.fail(key, f"cannot resolve the path {_shown(value)} ({e})")
        raise  # unreachable: fail raises


def _check_dev_split(c: _Checker, where: str, task: str, synth: dict) -> None:
    """The trainer evaluates on dev every epoch: a synth stage feeding a stage must write one."""
    if task.startswith("synth:") and task[6:] in synth:
        dev = synth[task[6:]].get("dev", SYNTH_DEFAULTS["dev"])
        if dev == 0:
            c.fail(
                f"{where}.task",
                f"task '{task}' has no dev split: [synth.{task[6:]}] dev = 0 writes no "
                "SynGPT2_dev.jsonl (set dev to a number of pairs, taken beyond the first n)",
            )


def _check_custom(c: _Checker, tname: str, tdef: object) -> None:
    where = f"tasks.{tname}"
    _check_name(c, where, tname)
    if not isinstance(tdef, dict):
        c.fail(where, "expected a table")
    c.table(where, tdef, CUSTOM_KEYS, required=("format", "train", "dev", "kind"))
    for key in ("train", "dev"):
        _check_path(c, f"{where}.{key}", c.path.parent, tdef[key])
    if tasks.is_builtin(tname):
        c.fail(where, f"'{tname}' is a built-in task; give the custom task another name")
    if tdef["kind"] == "multiple_choice":
        if not (tdef.get("choices_field") or tdef.get("choice_fields")):
            c.fail(where, "a multiple_choice task needs choices_field or choice_fields")
    elif not tdef.get("text_fields"):
        c.fail(f"{where}.text_fields", "is required (one or two fields)")
    elif len(tdef["text_fields"]) > 2:
        c.fail(f"{where}.text_fields", "expected one or two fields (a sentence or a sentence pair)")


def _check_task(c: _Checker, where: str, name: str, custom: dict, synth: dict) -> None:
    if name.startswith("synth:"):
        if name[6:] not in synth:
            c.fail(f"{where}.task", f"no [synth.{name[6:]}] stage in this plan")
    elif name not in custom and not tasks.is_builtin(name):
        known = ", ".join(tasks.names() + list(custom))
        c.fail(f"{where}.task", f"unknown task '{name}' (known: {known})")


# ---- expansion ---------------------------------------------------------------------------------


def run_id(config: dict) -> str:
    """The short content hash of a run's resolved config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _resolve(base: Path, value: str | None) -> str | None:
    if not value:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def task_spec(plan: Plan, stage: dict, default_name: str, synth_ids: dict[str, str]) -> tuple[dict, dict]:
    """(the resolved task entry for spec.json, the part of it that goes into the run's id)."""
    name = stage.get("task", default_name)
    data_dir = _resolve(plan.dir, stage.get("data_dir"))
    file_base = Path(data_dir) if data_dir else plan.dir
    spec: dict = {"custom": None, "from_run": None}
    if name.startswith("synth:"):
        t = tasks.get("syngpt2")
        spec["from_run"] = synth_ids[name[6:]]
        name = t.name
    elif name in plan.tasks:
        cdef = plan.tasks[name]
        t = None
        spec["custom"] = {k: v for k, v in cdef.items() if k not in ("train", "dev")}
        spec.update(
            kind=cdef["kind"],
            labels=cdef.get("labels"),
            num_choices=None,
            metric=cdef.get("metric", "pearson" if cdef["kind"] == "regression" else "acc"),
            hub=None,
            hub_splits=None,
            train_file=_resolve(plan.dir, cdef["train"]),
            dev_file=_resolve(plan.dir, cdef["dev"]),
        )
        spec["metrics"] = [spec["metric"]] + (["spearman"] if cdef["kind"] == "regression" else [])
    else:
        t = tasks.get(name)
        name = t.name
    if t is not None:
        spec.update(
            kind=t.kind,
            labels=list(t.labels) if t.labels else None,
            num_choices=t.num_choices,
            metric=t.metric,
            metrics=list(t.metrics),
            hub=list(t.hub) if t.hub else None,
            hub_splits=list(t.hub_splits),
        )
        spec["train_file"] = _resolve(file_base, stage.get("train_file"))
        spec["dev_file"] = _resolve(file_base, stage.get("dev_file"))
    spec["name"] = name
    spec["data_dir"] = data_dir
    hashed = {k: stage.get(k) for k in ("data_dir", "train_file", "dev_file") if stage.get(k)}
    hashed["task"] = name
    if spec["custom"]:
        hashed["custom"] = plan.tasks[name]
    if spec["from_run"]:
        hashed["from_run"] = spec["from_run"]
    return spec, hashed


def _params(plan: Plan, stage: dict) -> dict:
    p = {**DEFAULTS, **plan.defaults}
    p.update({k: v for k, v in stage.items() if k in HYPER})
    if "lora" in p:  # the stage's lora table over the defaults' (key by key)
        p["lora"] = {**plan.defaults.get("lora", {}), **stage.get("lora", {})}
    if "stop_degenerate" in p:  # resolved into params (and the run id) only where a plan sets it
        p["stop_degenerate"] = {**contract.STOP_DEGENERATE_DEFAULTS, **p["stop_degenerate"]}
    return p


def _method(plan: Plan, params: dict, where: str, stage: dict, parent: dict | None) -> dict:
    """A run's params with its method resolved: a LoRA run's full ``lora`` table (defaults filled in); a full
    fine-tune without ``method`` or ``lora`` (its id is that of a plan without the keys). ``parent``: the
    params of the intermediate run a target starts from."""
    p = dict(params)

    def fail(key: str, message: str):
        raise PlanError(plan.path, message, key=f"{where}.{key}", line=_line_of(plan.text, f"{where}.{key}".split(".")))

    if contract.is_lora(p):
        p["lora"] = {**LORA_DEFAULTS, **p.get("lora", {})}
    else:
        if "lora" in stage and "method" not in (stage.get("grid") or {}):
            fail("lora", 'LoRA settings for a stage that trains with method = "full" (set method = "lora")')
        p.pop("method", None)
        p.pop("lora", None)
    if p.get("transfer") == "adapter":
        if not contract.is_lora(p):
            fail(
                "transfer",
                '"adapter" trains the intermediate\'s adapter further: it needs method = "lora" '
                '(a full fine-tune starts from the merged weights: transfer = "merge")',
            )
        if parent is not None and not contract.is_lora(parent):
            fail(
                "transfer",
                '"adapter" needs a LoRA intermediate; an intermediate of this plan is a full fine-tune '
                '(use transfer = "merge": its weights, with a fresh adapter)',
            )
        if parent is not None and any(parent["lora"][k] != p["lora"][k] for k in ("r", "targets")):
            theirs, ours = parent["lora"], p["lora"]
            fail(
                "transfer",
                f'"adapter" needs the intermediate\'s LoRA rank and targets (r {theirs["r"]}, targets '
                f"{theirs['targets']}); this stage has r {ours['r']}, targets {ours['targets']}",
            )
    return p


def _model(plan: Plan) -> dict:
    value = plan.model
    looks_local = value.startswith((".", "/", "~")) or (plan.dir / value).exists()
    return {"name": value, "path": _resolve(plan.dir, value) if looks_local else None}


def expand(plan: Plan) -> list[Run]:
    """All runs of the plan in plan order, parents before children."""
    ex = _Expansion(plan)
    synth_ids = ex.synth()
    starts, start_params = ex.intermediates(synth_ids)
    ex.targets(synth_ids, starts, start_params)
    return ex.runs


class _Expansion:
    """The runs of one plan as they are expanded, in plan order (a run's order is its index)."""

    def __init__(self, plan: Plan):
        self.plan, self.model, self.runs = plan, _model(plan), []

    def add(
        self,
        stage: str,
        name: str,
        task: str,
        inter: str | None,
        seed: int | None,
        params: dict,
        grid: dict,
        parent: str | None,
        spec: dict,
        hashed: dict,
    ) -> Run:
        config = {
            "plan": self.plan.name,
            "stage": stage,
            "name": name,
            "task": hashed,
            "model": self.model["name"],
            "params": params,
            "seed": seed,
            "parent": parent,
        }
        r = Run(
            run_id(config),
            self.plan.name,
            stage,
            name,
            task,
            inter,
            seed,
            params,
            grid,
            parent,
            len(self.runs),
            spec,
            self.model,
        )
        self.runs.append(r)
        return r

    def synth(self) -> dict[str, str]:
        """The synth runs; each synth stage's name -> its run id."""
        synth_ids: dict[str, str] = {}
        for sname, sdef in self.plan.synth.items():
            params = {**SYNTH_DEFAULTS, **sdef}
            if "corpus_file" in params:
                params["corpus_file"] = _resolve(self.plan.dir, params["corpus_file"])
                params.pop("corpus")
            spec = {"name": "synth", "kind": "synth", "out": contract.SYNTH_DATA_DIR}
            hashed = {"task": "synth", "corpus_file": sdef.get("corpus_file")}
            synth_ids[sname] = self.add(
                "synth", sname, "synth", None, params["seed"], params, {}, None, spec, hashed
            ).id
        return synth_ids

    def intermediates(self, synth_ids: dict[str, str]) -> tuple[list[tuple[str, str | None]], dict[str, dict]]:
        """The intermediate runs; the targets' starting points (name, run id; the baseline first) and
        each intermediate run's params."""
        plan = self.plan
        starts: list[tuple[str, str | None]] = [("none", None)] if plan.baseline else []
        start_params: dict[str, dict] = {}
        for iname, idef in plan.intermediate.items():
            spec, hashed = task_spec(plan, idef, iname, synth_ids)
            params = _method(plan, _params(plan, idef), f"intermediate.{iname}", idef, None)
            params["keep_checkpoint"] = True  # children start from it
            for seed in idef.get("seeds") or [idef.get("seed", 42)]:
                r = self.add(
                    "intermediate", iname, spec["name"], iname, seed, params, {}, spec["from_run"], spec, hashed
                )
                starts.append((iname, r.id))
                start_params[r.id] = params
        return starts, start_params

    def targets(self, synth_ids: dict[str, str], starts: list, start_params: dict[str, dict]) -> None:
        """Every target run: each starting point x seed x grid combination (after the target's rank run,
        when it has one: the runs from an intermediate wait for it, the baseline's never)."""
        plan = self.plan
        for tname, tdef in plan.target.items():
            spec, hashed = task_spec(plan, tdef, tname, synth_ids)
            base = _params(plan, tdef)
            if tdef.get("keep_checkpoint"):
                base["keep_checkpoint"] = True
            rank = self.rank(tname, tdef, spec, hashed, base, starts) if "rank" in tdef else None
            grid = tdef.get("grid", {})
            combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] or [{}]
            seeds = tdef.get("seeds") or plan.target_seeds
            for inter, parent in starts:
                for seed in seeds:
                    for combo in combos:
                        params = _method(plan, {**base, **combo}, f"target.{tname}", tdef, start_params.get(parent))
                        r = self.add("target", tname, spec["name"], inter, seed, params, combo, parent, spec, hashed)
                        if rank is not None and parent is not None:
                            r.after = [rank.id]

    def rank(self, tname: str, tdef: dict, spec: dict, hashed: dict, base: dict, starts: list) -> Run:
        """A target's rank run: it waits for every intermediate run that feeds the target and scores them
        (and the model itself, "none"). Its id hashes what it scores: the target's task, the starting
        points' run ids, the model, examples and max_len, and the plan's name (top is not: it decides what is
        pruned, not a score)."""
        inters = [(name, rid) for name, rid in starts if rid is not None]
        seeds = {r.id: r.seed for r in self.runs if r.stage == "intermediate"}
        labels = [("none", None)] + [
            (f"{n} (seed {seeds[rid]})" if sum(x == n for x, _ in inters) > 1 else n, rid) for n, rid in inters
        ]
        params = {
            **contract.RANK_DEFAULTS,
            **tdef["rank"],
            "max_len": base["max_len"],
            "batch_size": contract.RANK_BATCH,
        }
        config = {  # with the plan's name, as every run's: two plans' rank runs never share an id
            "plan": self.plan.name,
            "stage": contract.RANK_STAGE,
            "task": hashed,
            "model": self.model["name"],
            "starts": [rid for _, rid in inters],
            "examples": params["examples"],
            "max_len": params["max_len"],
        }
        r = Run(
            run_id(config),
            self.plan.name,
            contract.RANK_STAGE,
            tname,
            spec["name"],
            None,
            None,
            params,
            {},
            None,
            len(self.runs),
            spec,
            self.model,
        )
        r.after = [rid for _, rid in inters]
        r.starts = [{"label": label, "run_id": rid} for label, rid in labels]
        self.runs.append(r)
        return r


# ---- summaries ---------------------------------------------------------------------------------


SHORT_PARAMS = {"lr": "lr", "batch_size": "bs", "warmup": "wu", "epochs": "ep", "max_len": "len"}


def grid_text(grid: dict | None, params: dict | None = None) -> str:
    """A run's grid values, short: ``lr=1e-05 bs=16 wu=0.2`` (a damaged row's grid that is no table: as is); a
    LoRA run's begin with its method and rank (``lora r=8``), so that no list of runs and scores shows it as a
    full fine-tune."""
    if grid is not None and not isinstance(grid, dict):
        return str(grid)[:60]
    grid = dict(grid or {})
    lora = contract.is_lora(params)
    if lora:
        grid.pop("method", None)
    text = " ".join(
        f"{SHORT_PARAMS.get(k, k)}={v:g}" if isinstance(v, float) else f"{SHORT_PARAMS.get(k, k)}={v}"
        for k, v in grid.items()
    )
    if not lora:
        return text
    settings = params.get("lora") if isinstance(params.get("lora"), dict) else {}
    return f"lora r={settings.get('r')} {text}".strip()


def counts(runs: list[Run]) -> dict[str, int]:
    """Runs by stage (the rank stage only where a target has one)."""
    return {s: n for s in STAGES if (n := sum(r.stage == s for r in runs)) or s != contract.RANK_STAGE}


def matrix(runs: list[Run]) -> dict[str, dict[str, int]]:
    """Target runs by starting point (rows: "none" and each intermediate) and target (columns)."""
    out: dict[str, dict[str, int]] = {}
    for r in runs:
        if r.stage == "target":
            row = out.setdefault(r.intermediate or "none", {})
            row[r.name] = row.get(r.name, 0) + 1
    return out


def missing_data(plan: Plan, runs: list[Run]) -> list[str]:
    """One line per local data file (or model folder) that the plan names but that is not there."""
    seen: set[str] = set()
    out = []
    for r in runs:
        if r.stage == "synth":
            f = r.params.get("corpus_file")
            files = [Path(f)] if f and not Path(f).is_file() else []
        elif r.task_spec.get("from_run"):
            files = []
        else:
            files = tasks.missing_files(r.task_spec)
            for split in ("train", "dev") if not r.task_spec.get("hub") else ():
                if tasks.file_for(r.task_spec, split) is None:
                    line = (
                        f"{plan.path}: [{r.stage}.{r.name}] task '{r.task}' has no {split} split: it has no "
                        f"Hugging Face Hub copy; set data_dir (or {split}_file) to its local files"
                    )
                    if line not in seen:
                        seen.add(line)
                        out.append(line)
        for f in files:
            line = f"{plan.path}: [{r.stage}.{r.name}] data file not found: {f}"
            if line not in seen:
                seen.add(line)
                out.append(line)
    mpath = _model(plan)["path"]
    if mpath and not Path(mpath).exists():
        out.append(f"{plan.path}: model folder not found: {mpath}")
    return out


def count_runs(plan: Plan) -> int:
    """How many runs the plan expands to, without expanding it."""
    inter = sum(len(d.get("seeds") or [0]) for d in plan.intermediate.values())
    starts = inter + (1 if plan.baseline else 0)
    targets = 0
    for d in plan.target.values():
        combos = math.prod(len(v) for v in d.get("grid", {}).values())
        targets += len(d.get("seeds") or plan.target_seeds) * combos
    ranks = sum("rank" in d for d in plan.target.values())
    return len(plan.synth) + inter + ranks + starts * targets


def max_runs_limit(value: int | None = None) -> int:
    """The largest plan accepted: ``value``, else $STILTS_MAX_RUNS, else 100,000."""
    if value is not None:
        return value
    env = os.environ.get(MAX_RUNS_ENV, "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise UserError(f"${MAX_RUNS_ENV}: expected an integer, got {env!r}") from None
    return MAX_RUNS


def load_and_expand(path: str | Path, max_runs: int | None = None) -> tuple[Plan, list[Run]]:
    """Load, validate and expand a plan; one refusing more than ``max_runs`` runs (see ``max_runs_limit``)."""
    plan = load(path)
    limit, n = max_runs_limit(max_runs), count_runs(plan)
    if n > limit:
        raise PlanError(
            plan.path,
            f"the plan expands to {n:,} runs, more than the limit of {limit:,} "
            f"(check seeds and grids; to mean it, pass --max-runs {n} or set ${MAX_RUNS_ENV})",
            key="target",
        )
    try:
        return plan, expand(plan)
    except UserError as e:
        raise PlanError(plan.path, str(e)) from None


def spec_for(run: Run, plan: Plan, runs_root: Path) -> dict:
    """Everything the trainer needs for one run: the contents of ``<run dir>/spec.json``."""
    task = dict(run.task_spec)
    # paths inside the runs-dir are built from run ids only (checked: never from names in the plan)
    if task.get("from_run"):  # the output of a synth run of this plan
        task["data_dir"] = str(rundir.run_dir(runs_root, task["from_run"]) / contract.SYNTH_DATA_DIR)
    if run.parent and run.stage == "target":  # an intermediate's parent (a synth run) gives data, not weights
        model = {
            "source": "parent",
            "parent": run.parent,
            "name": plan.model,
            "path": str(rundir.run_dir(runs_root, run.parent) / contract.CHECKPOINT_DIR),
        }
        if run.params.get("transfer") == "adapter":  # the frozen base is the intermediate's own (unmerged) base
            model["base"] = {"source": "path" if run.model.get("path") else "hub", **run.model}
    else:
        model = {"source": "path" if run.model.get("path") else "hub", **run.model}
    if run.stage == "synth":
        task = {"name": "synth"}
    extra = {}
    if run.stage == contract.RANK_STAGE:  # what it scores: each starting point's weights
        extra["starts"] = [
            {**s, "model": model if s["run_id"] is None else _parent_model(plan, runs_root, s["run_id"])}
            for s in run.starts
        ]
    return {
        "run_id": run.id,
        "plan": plan.name,
        "plan_file": str(plan.path),
        "stage": run.stage,
        "name": run.name,
        "intermediate": run.intermediate,
        "task": task,
        "model": model,
        "params": run.params,
        "seed": run.seed,
        "parent": run.parent,  # precision: in params alone
        "keep_checkpoint": run.params.get("keep_checkpoint") is True,  # expansion sets it for intermediates
        "slurm": dict(plan.slurm),
        **extra,
    }


def _parent_model(plan: Plan, runs_root: Path, parent: str) -> dict:
    """The model entry of weights an intermediate run leaves: its checkpoint folder."""
    path = rundir.run_dir(runs_root, parent) / contract.CHECKPOINT_DIR
    return {"source": "parent", "parent": parent, "name": plan.model, "path": str(path)}
