"""Training one run: config, data, model, optimizer, loop, evaluation, checkpoint — one straight path.

A :class:`Worker` holds what several runs of one process share: tokenizers, starting weights,
tokenized data, and one model object per architecture whose compiled step is reused (a new run
copies its starting weights into it in place, so compiled code and CUDA graphs stay valid).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stilts_tui.errors import UserError, first_line
from stilts_tui.tasks import labels_for
from stilts_tui.tasks.metrics import compute as compute_metrics
from stilts_tui.train import data, transfer
from stilts_tui.train.events import RunLog, fmt_duration, write_result

COMPILE_MODES = ("auto", "off", "cudagraphs", "inductor")
_VOLATILE = {"_name_or_path", "architectures", "id2label", "label2id", "problem_type", "transformers_version",
             "dtype", "torch_dtype", "num_labels", "_attn_implementation_autoset"}


class SpecError(UserError):
    """A spec.json that is missing or malformed."""


@dataclass
class Settings:
    device: torch.device
    compile: str = "auto"  # auto | off | cudagraphs | inductor
    pad: str = "auto"  # auto | max | buckets | longest
    attn: str = "sdpa"  # sdpa | eager
    group_by_length: bool | None = None  # None: on where padding is by bucket
    echo: bool | None = None

    def resolved_compile(self) -> str:
        if self.compile != "auto":
            return self.compile
        return "inductor" if self.device.type == "cuda" else "off"

    def resolved_pad(self) -> str:
        """Compiled code needs few shapes: never pad to each batch's longest when compiling."""
        if self.pad == "longest" and self.resolved_compile() != "off":
            return "buckets"
        if self.pad != "auto":
            return self.pad
        return "buckets" if self.device.type == "cuda" or self.resolved_compile() != "off" else "longest"


class Model:
    """One task model on the device with its (possibly compiled) training step."""

    def __init__(self, module: torch.nn.Module, kind: str, settings: Settings):
        self.module, self.kind = module, kind
        mode = settings.resolved_compile()
        self.fixed_shapes = mode != "off"  # partial batches are padded to full size (weight 0)
        self.loss_fn = self._loss
        if mode == "inductor":
            # one compilation for every length bucket (dynamic sizes); CUDA graphs recorded per shape
            self.loss_fn = torch.compile(self._loss, mode="reduce-overhead", dynamic=True)
        elif mode == "cudagraphs":
            self.loss_fn = torch.compile(self._loss, backend="cudagraphs", dynamic=False)
        self.mode = mode

    def disable_compile(self) -> None:
        self.loss_fn, self.mode = self._loss, "off"

    def _loss(self, ids, types, mask, labels, weights, amp_dtype: torch.dtype | None):
        with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if types is not None:
                kwargs["token_type_ids"] = types
            logits = self.module(**kwargs).logits.float()
        if self.kind == "regression":
            per = (logits.squeeze(-1) - labels) ** 2
        else:
            per = F.cross_entropy(logits, labels, reduction="none")
        return (per * weights).sum() / weights.sum()

    @torch.no_grad()
    def logits(self, ids, types, mask, amp_dtype):
        with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if types is not None:
                kwargs["token_type_ids"] = types
            return self.module(**kwargs).logits.float()


class Worker:
    """What the runs of one training process share."""

    def __init__(self, settings: Settings):
        self.s = settings
        self._tok: dict[str, tuple] = {}
        self._source: dict[str, dict] = {}
        self._models: dict[str, Model] = {}

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
            self._models[key] = Model(module.float(), kind, self.s)
        return self._models[key]

    def forget_models(self) -> None:
        self._models.clear()
        if self.s.device.type == "cuda":
            torch.cuda.empty_cache()


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    return None


def _batch(split: data.Split, idx: np.ndarray, length: int, device, fill_to: int | None):
    """Tensors for one batch padded to ``length`` (and, for fixed shapes, to ``fill_to`` rows)."""
    ids = split.ids[idx, ..., :length]
    types = split.types[idx, ..., :length] if split.types is not None else None
    labels = split.labels[idx]
    weights = np.ones(len(idx), dtype=np.float32)
    if fill_to and len(idx) < fill_to:
        extra = fill_to - len(idx)
        ids = np.concatenate([ids, np.full((extra, *ids.shape[1:]), split.pad_id, dtype=ids.dtype)])
        if types is not None:
            types = np.concatenate([types, np.zeros((extra, *types.shape[1:]), dtype=types.dtype)])
        labels = np.concatenate([labels, np.zeros(extra, dtype=labels.dtype)])
        weights = np.concatenate([weights, np.zeros(extra, dtype=np.float32)])
        ids[len(idx):, ..., 0] = split.ids[idx[0], ..., 0]  # a real first token keeps attention non-empty
    t_ids = torch.from_numpy(ids).to(device, non_blocking=True)
    mask = (t_ids != split.pad_id).long()
    mask[..., 0] = 1
    t_types = torch.from_numpy(types).to(device, non_blocking=True) if types is not None else None
    return (t_ids, t_types, mask, torch.from_numpy(labels).to(device, non_blocking=True),
            torch.from_numpy(weights).to(device, non_blocking=True))


def _optimizer(module: torch.nn.Module, lr: float, weight_decay: float, fused: bool):
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        lname = name.lower()
        (no_decay if name.endswith("bias") or "layernorm" in lname or "layer_norm" in lname else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate(model: Model, split: data.Split, batch_size: int, pad: str, max_len: int, buckets, amp, device,
             kind: str) -> tuple[np.ndarray, np.ndarray]:
    model.module.eval()
    preds = np.zeros(len(split), dtype=np.float32 if kind == "regression" else np.int64)
    for idx in data.eval_order(split.lengths, batch_size):
        length = data.pad_length(int(split.lengths[idx].max()), pad, max_len, buckets)
        ids, types, mask, _, _ = _batch(split, idx, length, device, None)
        logits = model.logits(ids, types, mask, amp)
        out = logits.squeeze(-1) if kind == "regression" else logits.argmax(-1)
        preds[idx] = out.cpu().numpy()
    model.module.train()
    return preds, split.labels


def read_spec(run_dir: Path) -> dict:
    import json

    path = run_dir / "spec.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no spec.json (queue the run with `stilts-tui queue add`)") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: not a valid spec ({e})") from None
    for key in ("run_id", "stage", "task", "model", "params", "seed"):
        if key not in spec:
            raise SpecError(f"{path}: spec has no '{key}'")
    if spec["stage"] == "synth":
        raise SpecError(f"{path}: a synth run is run by `stilts-tui synth`, not the trainer")
    return spec


def train_run(worker: Worker, run_dir: Path) -> dict:
    """Train one run folder to its ``result.json``. Never raises for a failure of the run itself."""
    t0 = time.time()
    run_dir = Path(run_dir)
    log = RunLog(run_dir, echo=worker.s.echo)
    result = new_result()
    try:
        spec = read_spec(run_dir)
        result["primary_metric"] = spec["task"].get("metric")
        log.event("start", run_id=spec["run_id"], pid=os.getpid(), device=str(worker.s.device))
        result.update(_train(worker, run_dir, spec, log))
        result["status"] = "done"
    except torch.OutOfMemoryError as e:
        result.update(status="oom", error=f"CUDA out of memory: {str(e).splitlines()[0][:300]}")
        worker.forget_models()
    except UserError as e:
        result["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - the run fails, the process goes on to the next run
        result["error"] = f"{type(e).__name__}: {first_line(e, 300)}"
        log.line("".join(traceback.format_exception(e)).rstrip())
    return finish_run(worker, run_dir, log, result, t0)


def new_result() -> dict:
    """A run's result before it has one: failed until it is done."""
    return {"status": "failed", "metrics": {}, "primary_metric": None, "score": None, "best_epoch": None,
            "train_seconds": None, "wall_seconds": None, "peak_gpu_mem_gb": None, "error": None}


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


def prepare(worker: Worker, run_dir: Path, spec: dict, log: RunLog, same_data: Prepared | None = None) -> Prepared:
    """Tokenized data (cached) and the shared model with this run's starting weights copied in.
    ``same_data``: a run of the same task, tokenizer and lengths (a fused array): its data is reused."""
    p = spec["params"]
    task = spec["task"]
    kind = task["kind"]
    max_len = int(p["max_len"])
    location = transfer.model_location(spec["model"])
    if same_data is not None:
        tok, labels, train, dev = same_data.tok, same_data.labels, same_data.train, same_data.dev
    else:
        tok, tok_fp = worker.tokenizer(location)
        labels = labels_for(task)
        if kind == "classification" and not labels:
            raise SpecError(f"{run_dir / 'spec.json'}: classification task '{task['name']}' has no labels")
        cache = run_dir.parent / ".cache" / "tokenized"
        train = data.load_split(task, "train", tok, tok_fp, max_len, cache, p.get("max_train_samples"), labels)
        dev = data.load_split(task, "dev", tok, tok_fp, max_len, cache, p.get("max_dev_samples"), labels)
    n_out = len(labels) if kind == "classification" else 1

    model = worker.model(location, kind, n_out)
    module = model.module
    source = worker.source(spec["model"])
    taken, new = transfer.match(module, source, p.get("transfer", "all"))
    std = getattr(module.config, "initializer_range", 0.02)
    transfer.apply(module, source, taken, new, int(spec["seed"]), std)
    src_name = spec["model"].get("parent") or spec["model"]["name"]
    log.line(f"model {spec['model']['name']} ({kind}, {n_out if kind != 'multiple_choice' else 'choice'} outputs) "
             f"from {src_name}: {len(taken)} weights loaded, {len(new)} new: {', '.join(new) or 'none'}")
    log.event("transfer", source=src_name, loaded=len(taken), new=new)
    if (spec.get("debug") or {}).get("dump_initial_weights"):
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  str(run_dir / "initial_weights.safetensors"))
    return Prepared(tok, labels, train, dev, kind, n_out, model, location)


@dataclass
class Schedule:
    """Steps, warmup and the learning-rate factor of a run: linear warmup, then linear decay to 0."""

    epochs: int
    steps_per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, p: dict, n_train: int) -> Schedule:
        bs, accum, epochs = int(p["batch_size"]), int(p.get("grad_accum", 1)), int(p["epochs"])
        steps_per_epoch = math.ceil(math.ceil(n_train / bs) / accum)
        total = steps_per_epoch * epochs
        return cls(epochs, steps_per_epoch, total, int(float(p.get("warmup", 0.0)) * total))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def _train(worker: Worker, run_dir: Path, spec: dict, log: RunLog) -> dict:
    s = worker.s
    device = s.device
    p = spec["params"]
    seed = int(spec["seed"])
    debug = spec.get("debug") or {}
    task = spec["task"]
    max_len, bs, accum = int(p["max_len"]), int(p["batch_size"]), int(p.get("grad_accum", 1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prep = prepare(worker, run_dir, spec, log)
    tok, labels, train, dev, kind, model = prep.tok, prep.labels, prep.train, prep.dev, prep.kind, prep.model
    module = model.module

    # optimisation
    _seed_everything(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    module.train()
    module.zero_grad(set_to_none=True)
    opt = _optimizer(module, float(p["lr"]), float(p.get("weight_decay", 0.0)), fused=device.type == "cuda")
    pad = s.resolved_pad()
    group = s.group_by_length if s.group_by_length is not None else pad == "buckets"
    buckets = data.buckets_for(max_len)
    plan = Schedule.of(p, len(train))
    epochs, steps_per_epoch, total, warmup = plan.epochs, plan.steps_per_epoch, plan.total, plan.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, plan.factor)
    amp = _amp_dtype(spec.get("precision", p.get("precision", "auto")), device)
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    log.line(f"train {len(train)} / dev {len(dev)} examples, {epochs} epochs x {steps_per_epoch} steps = {total}, "
             f"batch {bs}x{accum}, lr {p['lr']}, warmup {warmup} steps, {device.type} "
             f"{str(amp).replace('torch.', '') if amp else 'fp32'}, pad {pad}, compile {model.mode}")
    if debug.get("spawn_sleeper"):  # a child in the run's process group (cancel must stop it too)
        import subprocess

        child = subprocess.Popen(["sleep", "600"])
        (run_dir / "sleeper.pid").write_text(str(child.pid))
    log.event("begin", total_steps=total, epochs=epochs, n_train=len(train), n_dev=len(dev), device=device.type)

    eval_bs = int(p.get("eval_batch_size") or max(bs, 32))
    step, seen, t_train = 0, 0, time.time()
    t_mark, seen_mark = t_train, 0
    log_every = max(1, min(50, total // 20))
    running = torch.zeros((), device=device)
    running_n = 0
    epoch_metrics: list[dict] = []
    primary = task.get("metric", "acc")
    oom_at = debug.get("oom_at_step")
    for epoch in range(1, epochs + 1):
        order = data.train_order(train.lengths, bs, seed, epoch, group)
        for b, idx in enumerate(order):
            length = data.pad_length(int(train.lengths[idx].max()), pad, max_len, buckets)
            ids, types, mask, y, w = _batch(train, idx, length, device, bs if model.fixed_shapes else None)
            if model.mode != "off" and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            try:
                loss = model.loss_fn(ids, types, mask, y, w, amp)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the run
                if model.mode == "off":
                    raise
                log.line(f"compile {model.mode} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "going on without compilation")
                model.disable_compile()
                loss = model.loss_fn(ids, types, mask, y, w, amp)
            scaler.scale(loss / accum).backward()
            running += loss.detach()
            running_n += 1
            seen += len(idx)
            if (b + 1) % accum and b + 1 != len(order):
                continue
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if oom_at is not None and step >= int(oom_at):
                marker = run_dir / "oom_hook.done"
                if not (debug.get("oom_once") and marker.exists()):
                    marker.touch()
                    raise torch.OutOfMemoryError("test hook: CUDA out of memory (spec debug.oom_at_step)")
            if debug.get("sleep_per_step"):
                time.sleep(float(debug["sleep_per_step"]))
            if step % log_every == 0 or step == total:
                now = time.time()
                mean_loss = (running / running_n).item()
                running.zero_()
                running_n = 0
                rate = (seen - seen_mark) / max(now - t_mark, 1e-9)
                eta = (total - step) * (now - t_train) / step
                lr_now = sched.get_last_lr()[0]
                log.line(f"epoch {epoch}/{epochs} step {step}/{total} loss {mean_loss:.4f} lr {lr_now:.3g} "
                         f"{rate:.1f} samples/s ETA {fmt_duration(eta)}")
                log.event("step", step=step, total_steps=total, epoch=epoch, loss=mean_loss, lr=lr_now,
                          samples_per_s=rate, eta_s=eta)
                t_mark, seen_mark = now, seen
        preds, gold = evaluate(model, dev, eval_bs, pad, max_len, buckets, amp, device, kind)
        metrics = compute_metrics(task.get("metrics") or [primary], preds, gold)
        epoch_metrics.append(metrics)
        log.line(f"eval epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        log.event("eval", epoch=epoch, metrics=metrics)
    train_seconds = time.time() - t_train

    if spec.get("keep_checkpoint"):
        save_checkpoint(module, tok, run_dir / "checkpoint", labels)
        log.line(f"checkpoint saved to {run_dir / 'checkpoint'}")
    scores = [m[primary] for m in epoch_metrics]
    best = int(np.argmax(scores)) + 1
    log.line(f"done: {primary} {scores[-1]:.4f} (last epoch; best {max(scores):.4f} at epoch {best}) "
             f"in {fmt_duration(train_seconds)}, {seen / train_seconds:.1f} samples/s")
    return {"metrics": epoch_metrics[-1], "score": scores[-1], "best_epoch": best, "best_score": max(scores),
            "epoch_metrics": epoch_metrics, "train_seconds": round(train_seconds, 3),
            "samples_per_s": round(seen / train_seconds, 2), "steps": step, "compile": model.mode, "pad": pad}


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
