"""Expansion: a validated :class:`Plan` -> its runs in plan order (also the queue's "plan order"), parents
before children: synth stages; each intermediate x its seeds; then each starting point (every intermediate
run, plus "none" when ``baseline``) x each target x its seeds x its grid. A run's id hashes its fully
resolved config, its parent's id included, so adding a plan twice queues nothing new and editing one
target's grid queues only the new runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from pathlib import Path
from typing import NoReturn

from stilts_tui import contract, tasks
from stilts_tui.contract import SYNTH_DEFAULTS
from stilts_tui.errors import PlanError, UserError
from stilts_tui.plan.lines import Checker
from stilts_tui.plan.load import load
from stilts_tui.plan.model import Plan, Run
from stilts_tui.plan.schema import DEFAULTS, HYPER, LORA_DEFAULTS, MAX_RUNS, MAX_RUNS_ENV


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
    p.pop(contract.REPORT_TO_KEY, None)  # where curves go, not a setting a run trains with: not in its id
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

    def fail(key: str, message: str) -> NoReturn:
        Checker(plan.path, plan.text).fail(f"{where}.{key}", message)

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


def report_to(plan: Plan, stage: str, name: str) -> list[str]:
    """The trackers a trained run logs to: its stage's ``report_to``, else [defaults]', else none."""
    table = getattr(plan, stage, {}).get(name, {})
    return list(table.get(contract.REPORT_TO_KEY, plan.defaults.get(contract.REPORT_TO_KEY, [])))


def model_entry(plan: Plan) -> dict:
    """The plan's model as runs record it: its name, and its resolved path when it is a local folder."""
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
        self.plan, self.model, self.runs = plan, model_entry(plan), []

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
    """The largest plan accepted: ``value``, else the variable ``MAX_RUNS_ENV`` names, else ``MAX_RUNS``."""
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
