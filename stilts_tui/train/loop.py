"""Training runs: config, data, model, optimizer, loop, evaluation, checkpoint — one straight path,
the same for a run alone and for a fused array of runs (an *engine* holds what differs: the model's
forward and the optimizer).

A :class:`Worker` holds what several runs of one process share: tokenizers, starting weights,
tokenized data, and one model object per architecture whose compiled step is reused (a new run
copies its starting weights into it in place, so compiled code and CUDA graphs stay valid).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stilts_tui.contract import CANCEL_FILE, CHECKPOINT_DIR, SPEC_FILE, Result, is_lora, missing_params, optional
from stilts_tui.errors import UserError, first_line
from stilts_tui.fmt import duration
from stilts_tui.tasks import labels_for
from stilts_tui.tasks.metrics import compute as compute_metrics
from stilts_tui.train import data, degenerate, transfer
from stilts_tui.train.events import RunLog, write_result
from stilts_tui.train.step import (
    Hooks,
    Parts,
    Setup,
    StepLog,
    compiled,
    is_oom,
    live_tensor_mb,
    make_batch,
    resolve_setup,
)

_VOLATILE = {
    "_name_or_path",
    "architectures",
    "id2label",
    "label2id",
    "problem_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "num_labels",
    "_attn_implementation_autoset",
}


class SpecError(UserError):
    """A spec.json that is missing or malformed."""


@dataclass
class Settings:
    """The trainer's flags. Anything but ``auto`` overrides the run's spec (recorded in result.json)."""

    device: torch.device
    compile: str = "auto"  # auto | off | cudagraphs | inductor
    compile_scope: str = "regional"  # regional (each encoder layer, one graph for all) | whole (the loss)
    pad: str = "auto"  # auto | max | buckets | longest
    attn: str = "sdpa"  # sdpa | eager
    group: str = "auto"  # auto (the spec's batching) | on (grouped) | off (random)
    dropout_streams: str = "member"  # fused arrays, eager: member (each its run's own) | one (the array's)
    echo: bool | None = None


def compile_options(setup: Setup, backend=None) -> dict:
    """``torch.compile``'s arguments for ``setup``: CUDA graphs of the eager kernels (the cudagraphs
    backend, fixed shapes), or inductor with dynamic sizes (one compilation for every length bucket) and
    CUDA graphs per shape where ``setup.cuda_graphs``; ``backend``: a test's failing compiler."""
    if backend is not None:
        return {"backend": backend, "dynamic": True}
    if setup.compile == "cudagraphs" and setup.cuda_graphs:
        return {"backend": "cudagraphs", "dynamic": False}
    return {"mode": "reduce-overhead" if setup.cuda_graphs else None, "dynamic": True}


def encoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The encoder's layers of a Hugging Face BERT-style model (``<prefix>.encoder.layer``), or None."""
    base = getattr(module, getattr(module, "base_model_prefix", ""), None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


@contextmanager
def compiled_layers(layers: torch.nn.ModuleList, fns: list) -> Iterator[None]:
    """Run ``layers`` through their compiled ``fns`` inside the block, eagerly after it (evaluation and
    an eager run of the same model object). ``_compiled_call_impl`` is the slot ``nn.Module.compile``
    fills and ``nn.Module.__call__`` reads; filling it for a block leaves the module's names as they are."""
    for layer, fn in zip(layers, fns, strict=True):
        layer._compiled_call_impl = fn
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


class Model:
    """One task model on the device, with its training loss (compiled per setup, cached)."""

    def __init__(self, module: torch.nn.Module, kind: str):
        self.module, self.kind = module, kind
        self._compiled: dict[tuple, object] = {}

    def scope(self, setup: Setup) -> str:
        """The compile scope ``setup`` gets on this model: regional only where it has encoder layers."""
        return "regional" if setup.compile_scope == "regional" and encoder_layers(self.module) else "whole"

    def loss_fn(self, setup: Setup, backend=None):
        """The loss for ``setup``: eager, or compiled; regionally, each encoder layer is compiled (every
        layer reuses the first one's graph: the layers share their code and their shapes) and the
        embeddings, head and loss run eagerly; else the whole loss is compiled."""
        if setup.compile == "off":
            return self._loss
        if backend is not None:  # a test's failing compiler: never cached
            return self._compile(setup, backend)
        key = (setup.compile, setup.cuda_graphs, self.scope(setup))
        if key not in self._compiled:
            self._compiled[key] = self._compile(setup, None)
        return self._compiled[key]

    def _compile(self, setup: Setup, backend):
        options = compile_options(setup, backend)
        if self.scope(setup) == "whole":
            return compiled(self._loss, **options)
        layers = encoder_layers(self.module)
        fns = [compiled(layer._call_impl, **options) for layer in layers]  # what nn.Module.compile does

        def regional_loss(*args):
            with compiled_layers(layers, fns):
                return self._loss(*args)

        return regional_loss

    def _forward(self, ids, types, mask, amp_dtype):
        with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if types is not None:
                kwargs["token_type_ids"] = types
            return self.module(**kwargs).logits.float()

    def _loss(self, ids, types, mask, labels, weights, amp_dtype: torch.dtype | None):
        logits = self._forward(ids, types, mask, amp_dtype)
        if self.kind == "regression":
            per = (logits.squeeze(-1) - labels) ** 2
        else:
            per = F.cross_entropy(logits, labels, reduction="none")
        return (per * weights).sum() / weights.sum()

    @torch.no_grad()
    def logits(self, ids, types, mask, amp_dtype):
        return self._forward(ids, types, mask, amp_dtype)


class Worker:
    """What the runs of one training process share."""

    def __init__(self, settings: Settings, startup_s: float = 0.0, threads: dict | None = None):
        self.s = settings
        self.threads = threads  # the process's thread pools and why (recorded in every result.json)
        self.vec_isa: tuple | None = None  # (inductor's CPU vector sets, how they are known), once settled
        self._startup_s = startup_s  # the process's start and imports, counted to its first run (or array)
        self._tok: dict[str, tuple] = {}
        self._source: dict[str, dict] = {}
        self._models: dict[str, Model] = {}

    def take_startup(self) -> float:
        """The process's start-up seconds, given to the runs of its first group (each member of a first
        array gets the array's figure); 0 for every later group: the process was up."""
        out, self._startup_s = self._startup_s, 0.0
        return round(out, 3)

    def tokenizer(self, location: str):
        if location not in self._tok:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(location)
            except OSError as e:
                raise transfer.hub_error(location, e) from None
            self._tok[location] = (tok, data.tokenizer_fingerprint(tok))
        return self._tok[location]

    def source(self, model: dict) -> dict:
        key = model.get("path") or model["name"]
        if key not in self._source:
            if model.get("source") == "parent":  # keep at most one parent checkpoint in memory
                for k in [k for k in self._source if k.endswith("/checkpoint")]:
                    del self._source[k]
            self._source[key] = transfer.source_state(model)
        return self._source[key]

    def model(self, location: str, kind: str, n_out: int) -> Model:
        from transformers import AutoConfig, AutoModelForMultipleChoice, AutoModelForSequenceClassification

        try:
            config = AutoConfig.from_pretrained(location)
        except OSError as e:
            raise transfer.hub_error(location, e) from None
        if kind != "multiple_choice":
            config.num_labels = n_out
            config.problem_type = "regression" if kind == "regression" else "single_label_classification"
        signature = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
        key = repr((sorted(signature.items(), key=lambda kv: kv[0]), kind, n_out, self.s.attn))
        if key not in self._models:
            cls = AutoModelForMultipleChoice if kind == "multiple_choice" else AutoModelForSequenceClassification
            with torch.device(self.s.device):
                module = cls.from_config(config, attn_implementation=self.s.attn)
            self._models[key] = Model(module.float(), kind)
        return self._models[key]

    def release(self, model: Model) -> None:
        """Forget a model this worker made (a LoRA run changes its module in place): the next run of
        the architecture gets a new one."""
        self._models = {k: m for k, m in self._models.items() if m is not model}

    def free_memory(self) -> float:
        """After an out-of-memory error (called outside the ``except`` block, so no traceback keeps the
        tensors alive): drop models, starting weights, compiled code and CUDA-graph pools. Returns the
        MB of tensors still alive on the device."""
        self._models.clear()
        self._source.clear()
        torch._dynamo.reset()  # compiled graphs and their CUDA-graph memory pools
        gc.collect()
        if self.s.device.type == "cuda":
            torch.cuda.empty_cache()
        return live_tensor_mb(self.s.device)


def read_spec(run_dir: Path) -> dict:
    path = run_dir / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no spec.json (queue the run with `stilts-tui queue add`)") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: not a valid spec ({e})") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: a spec is a JSON object, not {type(spec).__name__}")
    for key in ("run_id", "stage", "task", "model", "params", "seed"):
        if key not in spec:
            raise SpecError(f"{path}: spec has no '{key}'")
    if spec["stage"] == "synth":
        raise SpecError(f"{path}: a synth run is run by `stilts-tui synth`, not the trainer")
    if not isinstance(spec["params"], dict) or not isinstance(spec["task"], dict):
        raise SpecError(f"{path}: 'params' and 'task' must be JSON objects")
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
    result["wall_seconds"] = round(time.time() - t0, 3)
    if result["status"] != "done":
        log.line(f"run {result['status']}: {result['error']}")
    log.event("end", status=result["status"], score=result.get("score"), error=result["error"])
    log.close()
    write_result(run_dir, result)
    return result


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
        from stilts_tui.train import lora

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
    log.event("transfer", source=src_name, loaded=len(taken), new=new)
    timings["data_s"], timings["model_s"] = round(t_model - t_data, 3), round(time.time() - t_model, 3)
    if dump_weights:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            str(run_dir / "initial_weights.safetensors"),
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


def optimizer(module: torch.nn.Module, lr: float, weight_decay: float):
    """AdamW as the reference: betas 0.9/0.999, eps 1e-8, no decay on biases and LayerNorm. Torch's fused
    kernel (CUDA and, since torch 2.4, the CPU): one pass over all weights instead of a Python loop over
    every tensor, which costs as much as a quarter of a small model's step on the CPU."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:  # a LoRA run's frozen encoder
            continue
        (no_decay if not decays(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):  # a device or torch without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def decays(name: str) -> bool:
    """Does weight decay apply to this parameter? (Not to biases and LayerNorm weights.)"""
    lname = name.lower()
    return not (name.endswith("bias") or "layernorm" in lname or "layer_norm" in lname)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class AloneEngine:
    """One Hugging Face model and torch's AdamW with its LambdaLR schedule."""

    k = 1

    def __init__(self, prep: Prepared, member: Member, setup: Setup, hooks: Hooks, device):
        p = member.spec["params"]
        self.model, self.module, self.setup = prep.model, prep.model.module, setup
        self.opt = optimizer(self.module, float(p["lr"]), float(p["weight_decay"]))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, member.schedule.factor)
        self.scaler = torch.amp.GradScaler(enabled=setup.amp == torch.float16)
        if self.scaler.is_enabled() and setup.clip == "micro_batch":
            raise UserError('clip = "micro_batch" is not available with fp16 (loss scaling unscales once a step)')
        if setup.compile != "off":  # an architecture without encoder layers compiles whole
            setup.compile_scope = self.model.scope(setup)
        self.loss_fn = self.model.loss_fn(setup, hooks.backend())
        self.mode = setup.compile
        self.fill_to = int(p["batch_size"]) if self.mode != "off" else None  # few shapes when compiled

    def disable_compile(self) -> None:
        self.loss_fn, self.mode, self.fill_to = self.model._loss, "off", None

    def loss(self, parts: list, amp) -> tuple[torch.Tensor, torch.Tensor]:
        if self.setup.cuda_graphs and self.mode != "off":
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.loss_fn(*parts[0], amp)
        return loss, loss.detach().view(1)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def clip(self) -> None:
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)

    def step(self) -> None:
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def lrs(self, step: int) -> list[float]:
        return [self.sched.get_last_lr()[0]]

    def predict(self, batch, amp) -> torch.Tensor:
        ids, types, mask, _, _ = batch
        return self.model.logits(ids, types, mask, amp).unsqueeze(0)

    def train(self, on: bool) -> None:
        self.module.train(on)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def keep(self, rows: list[int]) -> None:  # an engine of one run has nothing to drop
        pass


# ---- the runs of one call: alone, or as a fused array ----------------------------------------------------


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


def train_run(worker: Worker, run_dir: Path) -> dict:
    """Train one run folder to its ``result.json``. Never raises for a failure of the run itself."""
    return train_group(worker, [Path(run_dir)], fuse=False)[0]


def train_group(worker: Worker, run_dirs: list[Path], fuse: bool) -> list[dict]:
    """Train the runs (as one fused array when ``fuse``); each ends with its own ``result.json``.
    Runs that cannot join (their spec or setup fails) end at once; the others go on."""
    everyone: list[Member] = []
    process_s = worker.take_startup()
    for d in map(Path, run_dirs):
        m = Member(d, RunLog(d, echo=worker.s.echo), time.time(), result=new_result())
        m.result["timings"] = {"process_s": process_s}
        if worker.threads:
            m.result["threads"] = dict(worker.threads)
        everyone.append(m)
        if (d / CANCEL_FILE).exists():  # cancelled while it waited in this worker: never begun
            m.finish(worker, "cancelled", "cancelled while it waited for its turn in the worker")
            continue
        try:
            m.spec = read_spec(d)
            m.result["primary_metric"] = m.spec["task"].get("metric")
            m.log.event("start", run_id=m.spec["run_id"], pid=os.getpid(), device=str(worker.s.device))
            if worker.threads:
                t = worker.threads
                m.log.line(f"threads: {t['intra_op']} intra-op, {t['inter_op']} inter-op ({t['why']})")
            m.stop = _stop_rule(m)
        except UserError as e:
            m.finish(worker, "failed", str(e))
    members = [m for m in everyone if not m.done]
    if worker.s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    oom = None
    try:
        _train_members(worker, members, fuse)
    except Exception as e:  # noqa: BLE001 - the runs still training fail (or end oom); the process goes on
        if is_oom(e):
            oom = f"CUDA out of memory: {first_line(e, 300)}"
        else:
            why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e, 300)}"
            for m in members:
                if not m.done:
                    if not isinstance(e, UserError):
                        m.log.line("".join(traceback.format_exception(e)).rstrip())
                    m.finish(worker, "failed", why)
    if oom:  # outside the except block: its traceback no longer holds the step's tensors
        left = worker.free_memory()
        for m in members:
            if not m.done:
                m.log.line(f"out of memory; after clean-up {left:.1f} MB of tensors alive on {worker.s.device.type}")
                m.result["mem_after_cleanup_mb"] = round(left, 3)
                m.finish(worker, "oom", oom)
    return [m.result for m in everyone]


def _stop_rule(m: Member) -> dict | None:
    """The run's stop_degenerate rule; off for a retry of a run stopped before (it trains to its end)."""
    rule = degenerate.rule_of(m.spec)
    if rule is not None and degenerate.stopped_before(m.dir):
        m.log.line("stop_degenerate is off for this attempt: an earlier one was stopped as degenerate")
        m.result["stop_degenerate"] = "off: retried after a degenerate attempt"
        return None
    return rule


def _train_members(worker: Worker, members: list[Member], fuse: bool) -> None:
    if not members:
        return
    hooks = Hooks.of([m.spec for m in members])
    lora_cfg = is_lora(members[0].spec.get("params"))
    if lora_cfg:
        from stilts_tui.train import lora
    joined: list[Member] = []
    prep = None
    states = []
    for m in members:
        try:
            prep = prepare(
                worker,
                m.dir,
                m.spec,
                m.log,
                same_data=prep if fuse else None,
                dump_weights=hooks.dump_initial_weights,
                timings=m.result.setdefault("timings", {}),
            )
            m.schedule = Schedule.of(m.spec["params"], len(prep.train))
            if fuse and lora_cfg:  # a member owns its head and adapter; the frozen encoder is shared
                states.append(lora.member_state(prep.model.module, m.spec))
            elif fuse:
                states.append({n: t.detach().to("cpu", copy=True) for n, t in prep.model.module.named_parameters()})
            joined.append(m)
        except UserError as e:
            m.finish(worker, "failed", str(e))
    if not joined:
        return
    p0 = joined[0].spec["params"]
    setup = resolve_setup(worker.s, p0, int(p0["grad_accum"]), joined[0].schedule.total, fused=bool(fuse))
    if setup.compile != "off" and worker.s.device.type == "cpu":
        _settle_isa(worker, joined)
    if fuse and lora_cfg:
        from stilts_tui.train import fused_lora

        setup.fused = len(joined)
        setup.dropout_streams = "one" if setup.compile != "off" else worker.s.dropout_streams
        engine = fused_lora.LoraArrayEngine(prep, joined, states, setup, hooks, worker.s.device)
    elif lora_cfg:
        engine = lora.LoraAloneEngine(worker, prep, joined[0], setup, hooks, worker.s.device)
    elif fuse:
        from stilts_tui.train import fused

        setup.fused = len(joined)
        # a compiled graph cannot swap generator states: compiled arrays draw from one stream
        setup.dropout_streams = "one" if setup.compile != "off" else worker.s.dropout_streams
        engine = fused.ArrayEngine(prep, joined, states, setup, hooks, worker.s.device)
    else:
        engine = AloneEngine(prep, joined[0], setup, hooks, worker.s.device)
    fit(worker, joined, engine, prep, setup, hooks)


def _settle_isa(worker: Worker, members: list[Member]) -> None:
    """Inductor's CPU vector check, once a process, before its first CPU compile (see
    :mod:`stilts_tui.train.isa`): its seconds go into the members' ``timings.isa_check_s`` (0 after the
    process's first group) and a line in their logs says what was found and how."""
    spent = 0.0
    if worker.vec_isa is None:
        from stilts_tui.train import isa

        t0 = time.time()
        sets, how = isa.settle()
        spent = round(time.time() - t0, 3)
        worker.vec_isa = (sets, how)
    sets, how = worker.vec_isa
    for m in members:
        m.result["timings"]["isa_check_s"] = spent
        found = ", ".join(sets) if sets else "left to inductor"
        m.log.line(f"inductor's CPU vector sets: {found} ({how}; {spent:.1f} s here)")


def fit(worker: Worker, members: list[Member], engine, prep: Prepared, setup: Setup, hooks: Hooks) -> None:
    """The loop: epochs of batches, forward, backward, clipping, optimizer step, logging, evaluation."""
    device = worker.s.device
    p0 = members[0].spec["params"]
    max_len, bs, accum = int(p0["max_len"]), int(p0["batch_size"]), int(p0["grad_accum"])
    seed_everything(int(members[0].spec["seed"]))  # an array's dropout masks: one stream
    sched = members[0].schedule
    buckets = data.buckets_for(max_len)
    _log_begin(members, prep, setup, sched, bs, accum, device)
    if hooks.spawn_sleeper:  # a child in the run's process group (cancel must stop it too)
        import subprocess

        child = subprocess.Popen(["sleep", "600"])
        (members[0].dir / "sleeper.pid").write_text(str(child.pid))
    live = list(members)
    steplog = StepLog([m.log for m in live], sched.total, sched.epochs, device)
    eval_bs = int(optional(p0, "eval_batch_size") or max(bs, 32))
    engine.train(True)
    engine.zero_grad()
    step = 0
    window: list[list] = []  # this step's micro-batches (replayed if the compiled backward fails)
    for epoch in range(1, sched.epochs + 1):
        orders = [
            data.train_order(prep.train.lengths, bs, int(m.spec["seed"]), epoch, setup.batching, buckets) for m in live
        ]
        for b in range(len(orders[0])):
            # a run alone too: a cancel that found it still waiting may land just as it began
            live, orders = _drop_cancelled(worker, engine, steplog, live, orders)
            if not live:
                return
            idx = [o[b] for o in orders]
            own = [data.pad_length(int(prep.train.lengths[i].max()), setup.pad, max_len, buckets) for i in idx]
            parts = Parts([make_batch(prep.train, i, max(own), device, engine.fill_to) for i in idx], own)
            window.append(parts)
            each = _micro_step(engine, parts, window, setup, accum, live)
            steplog.add(each, len(idx[0]))
            last = b + 1 == len(orders[0])
            if (b + 1) % accum and not (last and len(orders[0]) < accum):
                continue
            if setup.clip == "step":
                engine.clip()
            engine.step()
            engine.zero_grad()
            window = []
            step += 1
            hooks.after_step(step, live[0].dir)
            means = steplog.step(step, epoch, engine.lrs(step))
            if means is not None and not all(map(math.isfinite, means)):
                live, orders = _drop_diverged(worker, engine, steplog, live, orders, means, step)
                if not live:
                    return
        live = _evaluate_epoch(worker, engine, live, steplog, prep, setup, epoch, eval_bs, max_len, buckets)
        if epoch < sched.epochs:  # at the last epoch nothing is left to save: the run ends done
            live = _drop_degenerate(worker, engine, steplog, live, setup, step)
        if not live:
            return
    _summarise(worker, engine, live, prep, setup, steplog, step)


def _log_begin(members, prep, setup, sched, bs, accum, device) -> None:
    others = len(members) - 1
    for m in members:
        m.log.line(
            f"train {len(prep.train)} / dev {len(prep.dev)} examples, {sched.epochs} epochs x "
            f"{sched.steps_per_epoch} steps = {sched.total}, batch {bs}x{accum}, lr {m.spec['params']['lr']}, "
            f"warmup {m.schedule.warmup} steps, {device.type} {setup.line()}"
            + (f", fused with {others} other runs" if others else "")
        )
        m.log.event(
            "begin",
            total_steps=sched.total,
            epochs=sched.epochs,
            n_train=len(prep.train),
            n_dev=len(prep.dev),
            device=device.type,
            setup=setup.record(),
            **({"fused": len(members)} if others else {}),
        )


def _micro_step(engine, parts, window, setup: Setup, accum: int, live: list[Member]) -> torch.Tensor:
    """Forward and backward of one micro-batch; a compiler failure falls back to eager, recorded."""
    try:
        total, each = engine.loss(parts, setup.amp)
    except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the runs
        if engine.mode == "off" or is_oom(e):
            raise
        _fallback(engine, live, "forward", e)
        total, each = engine.loss(parts, setup.amp)
    try:
        engine.backward(total / accum)
    except Exception as e:  # noqa: BLE001 - the backward is compiled at its first call
        if engine.mode == "off" or is_oom(e):
            raise
        _fallback(engine, live, "backward", e)
        engine.zero_grad()  # redo this step's micro-batches eagerly: no gradient counted twice or lost
        for earlier in window:
            total, each = engine.loss(earlier, setup.amp)
            engine.backward(total / accum)
            if setup.clip == "micro_batch" and earlier is not parts:
                engine.clip()
    if setup.clip == "micro_batch":
        engine.clip()
    return each


def _fallback(engine, live: list[Member], where: str, e: Exception) -> None:
    why = f"{where}: {type(e).__name__}: {first_line(e, 200)}"
    for m in live:
        m.log.line(
            f"compile {engine.mode} failed in the {why.split(': ', 1)[0]} ({why.split(': ', 1)[1]}); "
            "going on without compilation"
        )
        m.result["compile_fallback"] = why
    engine.disable_compile()


def _drop(
    worker: Worker,
    engine,
    steplog: StepLog,
    live: list[Member],
    gone: list[Member],
    status: str,
    why: str | Callable[[Member], str],
) -> list[int]:
    rows = [i for i, m in enumerate(live) if m not in gone]
    for m in gone:
        m.finish(worker, status, why(m) if callable(why) else why)
    if rows:
        engine.keep(rows)
        steplog.keep(rows)
    return rows


def _drop_cancelled(worker, engine, steplog, live, orders):
    gone = [m for m in live if (m.dir / CANCEL_FILE).exists()]
    if not gone:
        return live, orders
    rows = _drop(worker, engine, steplog, live, gone, "cancelled", "cancelled while training")
    return [live[i] for i in rows], [orders[i] for i in rows]


def _drop_diverged(worker, engine, steplog, live, orders, means: list[float], step: int):
    """Runs whose training loss is no longer finite fail (read at each log line: no sync a step); in an
    array the others go on (their rows and weights never meet the diverged run's)."""
    gone = [m for m, x in zip(live, means, strict=True) if not math.isfinite(x)]
    rows = _drop(
        worker,
        engine,
        steplog,
        live,
        gone,
        "failed",
        f"diverged: training loss {means[live.index(gone[0])]} by step {step}",
    )
    return [live[i] for i in rows], [orders[i] for i in rows]


def _drop_degenerate(worker, engine, steplog, live: list[Member], setup: Setup, step: int) -> list[Member]:
    """Runs whose dev scores meet their stop_degenerate rule end ``degenerate`` (scores, curve and time
    kept); in an array the others go on, as after a diverged member."""
    gone, seconds = [], steplog.seconds
    for m in live:
        if m.stop is None:
            continue
        stopped = degenerate.verdict(m.spec, m.stop, [x[_primary(m)] for x in m.epoch_metrics])
        if stopped is not None:
            _record(m, engine, setup, steplog, step, seconds)
            stopped.update(degenerate.saving(step, m.schedule.total, seconds))
            m.result["stopped"] = stopped
            m.log.event("stopped", **stopped)
            gone.append(m)
    if not gone:
        return live
    rows = _drop(worker, engine, steplog, live, gone, "degenerate", lambda m: degenerate.reason(m.result["stopped"]))
    return [live[i] for i in rows]


def _evaluate_epoch(worker, engine, live, steplog, prep, setup, epoch, eval_bs, max_len, buckets) -> list[Member]:
    t_eval = time.time()
    preds = evaluate(engine, prep.dev, eval_bs, setup, max_len, buckets, worker.s.device, prep.kind)
    steplog.eval_s += time.time() - t_eval
    failed = []
    for i, m in enumerate(live):
        try:
            metrics = compute_metrics(m.spec["task"].get("metrics") or [_primary(m)], preds[i], prep.dev.labels)
        except Exception as e:  # noqa: BLE001 - this run fails, the others go on
            m.result["error_detail"] = repr(e)
            failed.append(m)
            continue
        m.epoch_metrics.append(metrics)
        m.log.line(f"eval epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        m.log.event("eval", epoch=epoch, metrics=metrics)
    if not failed:
        return live
    if len(live) == 1:
        raise RuntimeError(f"evaluation failed: {failed[0].result['error_detail']}")
    rows = _drop(worker, engine, steplog, live, failed, "failed", "evaluation failed")
    return [live[i] for i in rows]


def _primary(m: Member) -> str:
    return m.spec["task"].get("metric", "acc")


def evaluate(
    engine, split: data.Split, batch_size: int, setup: Setup, max_len: int, buckets, device, kind: str
) -> np.ndarray:
    """Every run's predictions on ``split`` [K, N] (the inputs are shared by the runs of an array)."""
    engine.train(False)
    preds = np.zeros((engine.k, len(split)), dtype=np.float32 if kind == "regression" else np.int64)
    for idx in data.eval_order(split.lengths, batch_size):
        length = data.pad_length(int(split.lengths[idx].max()), setup.pad, max_len, buckets)
        logits = engine.predict(make_batch(split, idx, length, device), setup.amp)
        out = logits.squeeze(-1) if kind == "regression" else logits.argmax(-1)
        preds[:, idx] = out.cpu().numpy()
    engine.train(True)
    return preds


def _summarise(worker, engine, live, prep, setup: Setup, steplog: StepLog, step: int) -> None:
    seconds = steplog.seconds
    rate = steplog.seen / max(seconds, 1e-9)
    for i, m in enumerate(live):
        try:
            if m.spec.get("keep_checkpoint") is True and hasattr(engine, "save"):  # LoRA: merged, and its adapter
                engine.save(i, m.dir / CHECKPOINT_DIR, prep)
                m.log.line(f"checkpoint saved to {m.dir / CHECKPOINT_DIR} (merged weights and the adapter)")
            elif m.spec.get("keep_checkpoint") is True:
                if engine.k > 1:
                    prep.model.module.load_state_dict(engine.state(i), strict=False)
                save_checkpoint(prep.model.module, prep.tok, m.dir / CHECKPOINT_DIR, prep.labels)
                m.log.line(f"checkpoint saved to {m.dir / CHECKPOINT_DIR}")
            scores = [x[_primary(m)] for x in m.epoch_metrics]
            best = int(np.argmax(scores)) + 1
            how = f", fused ({len(live)} runs at the end)" if setup.fused else ""
            m.log.line(
                f"done: {_primary(m)} {scores[-1]:.4f} (last epoch; best {max(scores):.4f} at epoch {best}) "
                f"in {duration(seconds)}, {rate:.1f} samples/s{how}"
            )
            _record(m, engine, setup, steplog, step, seconds)
            m.finish(worker, "done", None)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk while saving one checkpoint
            m.finish(worker, "failed", f"{type(e).__name__}: {first_line(e, 300)}")


def _record(m: Member, engine, setup: Setup, steplog: StepLog, step: int, seconds: float) -> None:
    """The run's scores so far (the last evaluated epoch's), its curve and its training time (``seconds``:
    the array's, read once for all its members) in its result."""
    scores = [x[_primary(m)] for x in m.epoch_metrics]
    m.result.update(
        metrics=m.epoch_metrics[-1],
        score=scores[-1],
        best_epoch=int(np.argmax(scores)) + 1,
        best_score=max(scores),
        epoch_metrics=m.epoch_metrics,
        train_seconds=round(seconds, 3),
        samples_per_s=round(steplog.seen / max(seconds, 1e-9), 2),
        timings={**m.result.get("timings", {}), **steplog.timings(engine.mode != "off", seconds)},
        steps=step,
        compile=engine.mode,
        pad=setup.pad,
        setup=setup.record(),
    )
    if setup.fused:
        m.result["fused"] = setup.fused


def save_checkpoint(module: torch.nn.Module, tok, folder: Path, labels: list[str] | None) -> None:
    """safetensors weights + config + tokenizer, written beside and renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if labels:
        module.config.id2label = dict(enumerate(labels))
        module.config.label2id = {v: k for k, v in module.config.id2label.items()}
    module.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
