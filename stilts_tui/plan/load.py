"""Reading and validating a plan file: :func:`load` (a file) and :func:`parse` (its text) give a
:class:`Plan` or refuse it with one :class:`PlanError` naming the file, the key (and line) and what was
expected. Plans are data: they are parsed with ``tomllib`` and checked key by key, never evaluated."""

from __future__ import annotations

import math
import re
import stat
from pathlib import Path

from stilts_tui import tasks
from stilts_tui.contract import STOP_DEGENERATE_DEFAULTS, SYNTH_DEFAULTS, TRAINING_DEFAULTS
from stilts_tui.errors import PlanError
from stilts_tui.plan.lines import Checker
from stilts_tui.plan.model import Plan
from stilts_tui.plan.schema import (
    BASELINE_NAME,
    CUSTOM_KEYS,
    HYPER,
    LORA_KEYS,
    MAX_DEPTH,
    MAX_PLAN_BYTES,
    RANK_KEYS,
    STAGE_KEYS,
    STOP_KEYS,
    SYNTH_KEYS,
    TOP_KEYS,
    TRACKING_KEYS,
)
from stilts_tui.plan.slurm import SLURM_KEYS
from stilts_tui.plan.values import INT64_MAX, is_int, name_problem, shown
from stilts_tui.tomlio import tomllib


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


def _check_values(c: Checker, where: str, value: object, depth: int = 0) -> None:
    """Every value in the TOML tree: integers fit int64, floats are finite, nesting is shallow."""
    if depth > MAX_DEPTH:
        c.fail(where or "(top)", f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_values(c, f"{where}.{k}".lstrip("."), v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_values(c, where, v, depth + 1)
    elif is_int(value) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        c.fail(where, f"integer out of range (at most {INT64_MAX})")
    elif isinstance(value, float) and not math.isfinite(value):
        c.fail(where, f"expected a finite number, got {value}")


def _check_synth(c: Checker, name: str, sdef, base: Path) -> None:
    """A [synth.NAME] stage: its name, keys and corpus file."""
    _check_name(c, f"synth.{name}", name)
    if not isinstance(sdef, dict):
        c.fail(f"synth.{name}", "expected a table")
    c.table(f"synth.{name}", sdef, SYNTH_KEYS)
    if sdef.get("corpus_file"):
        _check_path(c, f"synth.{name}.corpus_file", base, sdef["corpus_file"])


def _check_stages_together(c: Checker, data: dict, stages: dict) -> None:
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
    c = Checker(path, text)
    _check_values(c, "", data)
    c.table("", data, TOP_KEYS, required=("name", "model"))
    problem = name_problem(data["name"])
    if problem:
        c.fail("name", problem)
    _check_path(c, "model", path.parent, data["model"])
    defaults = data.get("defaults", {})
    c.table("defaults", defaults, {**HYPER, **TRACKING_KEYS})
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
    for kind in ("intermediate", "target"):
        for sname, sdef in stages[kind].items():
            _check_stop_within_epochs(c, f"{kind}.{sname}", sdef, defaults)
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


def _check_stage(c: Checker, kind: str, sname: str, sdef: object, plan_dir: Path, custom: dict, synth: dict) -> None:
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


def _check_method(c: Checker, where: str, table: dict) -> None:
    """A ``lora`` table: its keys and values (the rules between stages are checked as the plan expands)."""
    if "lora" in table:
        c.table(f"{where}.lora", table["lora"], LORA_KEYS)
    if "stop_degenerate" in table:
        c.table(f"{where}.stop_degenerate", table["stop_degenerate"], STOP_KEYS)


def _check_stop_within_epochs(c: Checker, where: str, sdef: dict, defaults: dict) -> None:
    """The cross-field rule of stop_degenerate: a run is stopped at epoch ``after_epochs + patience - 1``
    at the earliest (train/degenerate.py's verdict), so a rule needing more epochs than a run of the
    stage trains (its epochs, its [defaults]' or each value of its grid's) could never stop one."""
    key = f"{where}.stop_degenerate" if "stop_degenerate" in sdef else "defaults.stop_degenerate"
    rule = sdef.get("stop_degenerate", defaults.get("stop_degenerate"))
    if not isinstance(rule, dict):
        return
    after = rule.get("after_epochs", STOP_DEGENERATE_DEFAULTS["after_epochs"])
    patience = rule.get("patience", STOP_DEGENERATE_DEFAULTS["patience"])
    grid = sdef.get("grid") or {}
    epochs = (
        grid["epochs"]
        if "epochs" in grid
        else [sdef.get("epochs", defaults.get("epochs", TRAINING_DEFAULTS["epochs"]))]
    )
    fewest = min(epochs)
    if after + patience - 1 > fewest:
        c.fail(
            key,
            f"after_epochs {after} and patience {patience} stop a run at epoch {after + patience - 1} at the "
            f"earliest, but the runs of [{where}] train {fewest} epoch{'s' if fewest != 1 else ''}: the rule "
            "could never stop one (keep after_epochs + patience - 1 within the epochs)",
        )


def _check_name(c: Checker, where: str, name: str) -> None:
    problem = name_problem(name)
    if problem:
        c.fail(where, problem)


def _check_grid(c: Checker, where: str, grid: dict) -> None:
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


def _check_path(c: Checker, key: str, base: Path, value: str) -> Path:
    """A path named by the plan, resolved (a symlink loop is refused here, not at queue time)."""
    p = Path(value).expanduser()
    try:
        return (p if p.is_absolute() else base / p).resolve()
    except (OSError, RuntimeError) as e:
        c.fail(key, f"cannot resolve the path {shown(value)} ({e})")
        raise  # unreachable: fail raises


def _check_dev_split(c: Checker, where: str, task: str, synth: dict) -> None:
    """The trainer evaluates on dev every epoch: a synth stage feeding a stage must write one."""
    if task.startswith("synth:") and task[6:] in synth:
        dev = synth[task[6:]].get("dev", SYNTH_DEFAULTS["dev"])
        if dev == 0:
            c.fail(
                f"{where}.task",
                f"task '{task}' has no dev split: [synth.{task[6:]}] dev = 0 writes no "
                "SynGPT2_dev.jsonl (set dev to a number of pairs, taken beyond the first n)",
            )


def _check_custom(c: Checker, tname: str, tdef: object) -> None:
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


def _check_task(c: Checker, where: str, name: str, custom: dict, synth: dict) -> None:
    if name.startswith("synth:"):
        if name[6:] not in synth:
            c.fail(f"{where}.task", f"no [synth.{name[6:]}] stage in this plan")
    elif name not in custom and not tasks.is_builtin(name):
        known = ", ".join(tasks.names() + list(custom))
        c.fail(f"{where}.task", f"unknown task '{name}' (known: {known})")
