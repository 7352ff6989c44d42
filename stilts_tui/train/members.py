"""A run of a training call, from its spec to its result: the spec read and checked, its data and
starting weights (:func:`prepare`), its schedule, and its end (``result.json``). The loop and every
engine share these types; they import nothing of the loop or the engines."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stilts_tui.contract import SPEC_FILE, Event, Result, ResultStatus, is_lora, missing_params, optional
from stilts_tui.errors import UserError
from stilts_tui.store import rundir
from stilts_tui.tasks import labels_for
from stilts_tui.train import data, debug, lora, transfer
from stilts_tui.train.events import RunLog, write_result
from stilts_tui.train.step import Setup, StepLog
from stilts_tui.train.worker import Model, Worker


class SpecError(UserError):
    """A spec.json that is missing or malformed."""


def read_spec(run_dir: Path) -> dict:
    """The run's spec.json, checked for what the trainer needs (a :class:`SpecError` says what is wrong)."""
    path = run_dir / SPEC_FILE
    try:
        spec = rundir.load_json(path, nofollow=True, shape=None)  # a FIFO or a folder: never read
    except FileNotFoundError:
        raise SpecError(f"{path}: no spec.json (queue the run with `stilts-tui queue add`)") from None
    except rundir.DamagedFile as e:
        raise SpecError(f"{path}: not a valid spec ({e.what})") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: a spec is a JSON object, not {type(spec).__name__}")
    for key in ("run_id", "stage", "task", "model", "params", "seed"):
        if key not in spec:
            raise SpecError(f"{path}: spec has no '{key}'")
    if spec["stage"] == "synth":
        raise SpecError(f"{path}: a synth run is run by `stilts-tui synth`, not the trainer")
    if not isinstance(spec["params"], dict) or not isinstance(spec["task"], dict):
        raise SpecError(f"{path}: 'params' and 'task' must be JSON objects")
    wrong = debug.problem(spec)
    if wrong:
        raise SpecError(f"{path}: {wrong} (docs/training.md, Debug keys)")
    missing = missing_params(spec)
    if missing:
        raise SpecError(
            f"{path}: params lacks {', '.join(missing)} (a plan's expansion writes every training "
            "default into spec.json: `queue add` its plan again, or add them)"
        )
    for key in ("batch_size", "epochs", "max_len"):
        if not isinstance(spec["params"].get(key), int) or isinstance(spec["params"].get(key), bool):
            raise SpecError(f"{path}: params.{key} must be an integer, not {spec['params'].get(key)!r}")
    return spec


def new_result() -> dict:
    """A run's result before it has one: failed until it is done (the contract's :class:`Result`)."""
    return Result().record()


def finish_run(worker: Worker, run_dir: Path, log: RunLog, result: dict, t0: float) -> dict:
    """End a run: peak memory, wall time, the end event and the log closed, then ``result.json``."""
    if worker.s.device.type == "cuda":
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    result["device"] = device_record(worker.s.device)  # the cost estimate times a device from its own runs
    result["wall_seconds"] = round(time.time() - t0, 3)
    if result["status"] != ResultStatus.DONE:
        log.line(f"run {result['status']}: {result['error']}")
    log.event(Event.END, status=result["status"], score=result.get("score"), error=result["error"])
    log.close()
    if log.tracker_states:  # how each tracker of report_to fared (one that failed never fails the run)
        result["trackers"] = log.tracker_states
    write_result(run_dir, result)
    return result


def device_record(device: torch.device) -> dict:
    """Where a run trained: ``{"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}`` (NVML's name too), or the
    CPU (its architecture)."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    import platform

    return {"type": device.type, "name": platform.machine() or None}


def fail_run(worker: Worker, run_dir: Path, why: str) -> dict:
    """End a run that cannot start with a failed ``result.json`` saying why."""
    result = new_result()
    result["error"] = why
    return finish_run(worker, run_dir, RunLog(run_dir, echo=worker.s.echo), result, time.time())


@dataclass
class Prepared:
    """A run's data and its model with the run's starting weights in place."""

    tok: object
    labels: list[str] | None
    train: data.Split
    dev: data.Split
    kind: str
    n_out: int
    model: Model
    location: str


def prepare(
    worker: Worker,
    run_dir: Path,
    spec: dict,
    log: RunLog,
    same_data: Prepared | None = None,
    dump_weights: bool = False,
    timings: dict | None = None,
) -> Prepared:
    """Tokenized data (cached) and the shared model with this run's starting weights copied in.
    ``same_data``: a run of the same task, tokenizer and lengths (a fused array): its data is reused."""
    timings = {} if timings is None else timings
    p = spec["params"]
    task = spec["task"]
    kind = task["kind"]
    max_len = int(p["max_len"])
    location = transfer.model_location(spec["model"])
    t_data = time.time()
    if same_data is not None:
        tok, labels, train, dev = same_data.tok, same_data.labels, same_data.train, same_data.dev
    else:
        tok, tok_fp = worker.tokenizer(location)
        labels = labels_for(task)
        if kind == "classification" and not labels:
            raise SpecError(f"{run_dir / SPEC_FILE}: classification task '{task['name']}' has no labels")
        cache = run_dir.parent / ".cache" / "tokenized"
        train = data.load_split(task, "train", tok, tok_fp, max_len, cache, optional(p, "max_train_samples"), labels)
        dev = data.load_split(task, "dev", tok, tok_fp, max_len, cache, optional(p, "max_dev_samples"), labels)
    n_out = len(labels) if kind == "classification" else 1
    t_model = time.time()
    model = worker.model(location, kind, n_out)
    module = model.module
    if is_lora(p):
        source = lora.source(worker, spec, module.base_model_prefix)
    else:
        source = worker.source(spec["model"])
    taken, new = transfer.match(module, source, p["transfer"])
    std = getattr(module.config, "initializer_range", 0.02)
    transfer.apply(module, source, taken, new, int(spec["seed"]), std)
    src_name = spec["model"].get("parent") or spec["model"]["name"]
    log.line(
        f"model {spec['model']['name']} ({kind}, {n_out if kind != 'multiple_choice' else 'choice'} outputs) "
        f"from {src_name}: {len(taken)} weights loaded, {len(new)} new: {', '.join(new) or 'none'}"
    )
    log.event(Event.TRANSFER, source=src_name, loaded=len(taken), new=new)
    timings["data_s"], timings["model_s"] = round(t_model - t_data, 3), round(time.time() - t_model, 3)
    if dump_weights:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            str(run_dir / debug.INITIAL_WEIGHTS),
        )
    return Prepared(tok, labels, train, dev, kind, n_out, model, location)


@dataclass
class Schedule:
    """Steps, warmup and the learning-rate factor of a run: linear warmup, then linear decay to 0.

    With gradient accumulation, as the reference: an optimizer step every ``grad_accum`` micro-batches
    of an epoch; the leftover micro-batches' gradients carry into the next epoch's first step (those
    of the last epoch are never applied); ``floor(batches / grad_accum)`` steps an epoch."""

    epochs: int
    steps_per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, p: dict, n_train: int) -> Schedule:
        bs, accum, epochs = int(p["batch_size"]), int(p["grad_accum"]), int(p["epochs"])
        steps_per_epoch = max(1, math.ceil(n_train / bs) // accum)
        total = steps_per_epoch * epochs
        return cls(epochs, steps_per_epoch, total, int(float(p["warmup"]) * total))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


@dataclass
class Member:
    """One run of the call: its folder, log, spec and, as it trains, its schedule and metrics."""

    dir: Path
    log: RunLog
    t0: float
    spec: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    schedule: Schedule | None = None
    epoch_metrics: list = field(default_factory=list)
    done: bool = False
    stop: dict | None = None  # its stop_degenerate rule, or None (off)

    def finish(self, worker: Worker, status: str, error: str | None) -> dict:
        self.result.update(status=status, error=error)
        self.done = True
        return finish_run(worker, self.dir, self.log, self.result, self.t0)

    @property
    def primary(self) -> str:
        """The name of the run's primary metric (its score)."""
        return self.spec["task"].get("metric", "acc")

    def record(self, engine, setup: Setup, steplog: StepLog, step: int, seconds: float) -> None:
        """The run's scores so far (the last evaluated epoch's), its curve and its training time
        (``seconds``: the array's, read once for all its members) in its result."""
        scores = [x[self.primary] for x in self.epoch_metrics]
        self.result.update(
            metrics=self.epoch_metrics[-1],
            score=scores[-1],
            best_epoch=int(np.argmax(scores)) + 1,
            best_score=max(scores),
            epoch_metrics=self.epoch_metrics,
            train_seconds=round(seconds, 3),
            samples_per_s=round(steplog.seen / max(seconds, 1e-9), 2),
            timings={**self.result.get("timings", {}), **steplog.timings(engine.mode != "off", seconds)},
            steps=step,
            compile=engine.mode,
            pad=setup.pad,
            setup=setup.record(),
        )
        if setup.fused:
            self.result["fused"] = setup.fused
