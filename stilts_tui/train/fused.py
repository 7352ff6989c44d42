"""Many runs of one model shape trained together as one array (after HFTA, MLSys 2021).

The K runs' weights are stacked (K x ...); every linear layer is one batched matmul
(``torch.baddbmm``), embeddings, LayerNorm and attention are batched over the runs, and the
optimizer is AdamW with a learning rate, warmup schedule and weight decay per run, and gradient
clipping per run. Each run keeps its own data order (its seed), its own starting weights, run
folder, log, events, evaluation, result and checkpoint, exactly as if it ran alone: the runs do not
interact, since the loss is the sum of the runs' losses and each weight slice belongs to one run.

BERT/RoBERTa-style encoders (the reference's family) are covered; other architectures train alone.
Dropout draws its masks from one generator for the whole array, so with dropout on, a fused run's
masks differ from those of the run alone (the same distribution); with dropout off the results are
the same within floating-point tolerance (tests/test_fused.py).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stilts_tui import rundir
from stilts_tui.errors import UserError, first_line
from stilts_tui.tasks.metrics import compute as compute_metrics
from stilts_tui.train import data, loop
from stilts_tui.train.events import RunLog, fmt_duration

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")
CANCEL_FILE = rundir.CANCEL_FILE


def supported(config) -> bool:
    return getattr(config, "model_type", None) in FAMILIES and getattr(config, "position_embedding_type",
                                                                       "absolute") == "absolute"


def can_fuse(run_dir: Path) -> bool:
    """Is this run's model of a family fused training covers? (False where its config cannot be read:
    the run then trains alone and reports its own error.)"""
    from transformers import AutoConfig

    from stilts_tui.train import transfer

    try:
        spec = json.loads((Path(run_dir) / "spec.json").read_text())
        return supported(AutoConfig.from_pretrained(transfer.model_location(spec["model"])))
    except Exception:  # noqa: BLE001 - any failure here means: train alone
        return False


# ---- the batched model ----------------------------------------------------------------------------


class FusedEncoder:
    """K copies of one BERT/RoBERTa-style task model, as stacked weights and a batched forward."""

    def __init__(self, config, kind: str, prefix: str, states: list[dict[str, torch.Tensor]], device):
        self.config, self.kind, self.prefix = config, kind, prefix
        self.names = list(states[0])
        self.p: dict[str, torch.Tensor] = {
            n: torch.stack([s[n].detach().to(device, torch.float32) for s in states]).requires_grad_(True)
            for n in self.names}
        self.roberta = config.model_type != "bert"
        self.pad_idx = getattr(config, "pad_token_id", 1) if self.roberta else None
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.hidden_act]
        self.training = True

    @property
    def k(self) -> int:
        return next(iter(self.p.values())).shape[0]

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Run i's weights, by the Hugging Face module's parameter names."""
        return {n: t[i].detach() for n, t in self.p.items()}

    def keep(self, rows: list[int]) -> None:
        """Drop every run not in ``rows`` (a run cancelled or failed: the others go on)."""
        index = torch.tensor(rows, device=next(iter(self.p.values())).device)
        self.p = {n: t.detach().index_select(0, index).requires_grad_(True) for n, t in self.p.items()}

    # building blocks, each over the K runs at once; x is [K, N, H]
    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self.p[name + ".weight"], self.p.get(name + ".bias")
        if b is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:], eps=self.config.layer_norm_eps)
        return y * self.p[name + ".weight"].unsqueeze(1) + self.p[name + ".bias"].unsqueeze(1)

    def _drop(self, x: torch.Tensor, p: float | None) -> torch.Tensor:
        return F.dropout(x, p, training=True) if self.training and p else x

    def _embed(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Row ``ids[k, n]`` of run k's table ``name``: one gather over the stacked [K*V, H] table."""
        table = self.p[name]
        k, v, h = table.shape
        offset = (torch.arange(k, device=ids.device) * v).view(k, *([1] * (ids.dim() - 1)))
        return F.embedding(ids + offset, table.reshape(k * v, h))

    def forward(self, ids: torch.Tensor, types: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """ids, types, mask: [K, B, T] (or [K, B, C, T] for multiple choice); logits [K, B, n] ([K, B, C])."""
        cfg, pre = self.config, self.prefix
        k, b = ids.shape[:2]
        choices = ids.shape[2] if ids.dim() == 4 else None
        t = ids.shape[-1]
        ids, mask = ids.reshape(k, -1, t), mask.reshape(k, -1, t)
        n = ids.shape[1]  # sequences per run
        types = torch.zeros_like(ids) if types is None else types.reshape(k, -1, t)
        if self.roberta:  # positions count real tokens from padding_idx + 1; padding keeps padding_idx
            real = ids.ne(self.pad_idx).long()
            pos = torch.cumsum(real, dim=-1) * real + self.pad_idx
        else:
            pos = torch.arange(t, device=ids.device).expand(k, n, t)
        e = f"{pre}.embeddings"
        x = (self._embed(f"{e}.word_embeddings.weight", ids) + self._embed(f"{e}.token_type_embeddings.weight", types)
             + self._embed(f"{e}.position_embeddings.weight", pos)).reshape(k, n * t, -1)
        x = self._drop(self._ln(x, f"{e}.LayerNorm"), cfg.hidden_dropout_prob)

        heads = cfg.num_attention_heads
        hd = cfg.hidden_size // heads
        attn_mask = mask.reshape(k * n, 1, 1, t).bool()
        attn_p = cfg.attention_probs_dropout_prob if self.training else 0.0
        for i in range(cfg.num_hidden_layers):
            layer = f"{pre}.encoder.layer.{i}"

            def split(y: torch.Tensor) -> torch.Tensor:
                return y.view(k * n, t, heads, hd).transpose(1, 2)

            q = split(self._lin(x, f"{layer}.attention.self.query"))
            kk = split(self._lin(x, f"{layer}.attention.self.key"))
            v = split(self._lin(x, f"{layer}.attention.self.value"))
            ctx = F.scaled_dot_product_attention(q, kk, v, attn_mask=attn_mask, dropout_p=attn_p)
            ctx = ctx.transpose(1, 2).reshape(k, n * t, cfg.hidden_size)
            a = self._drop(self._lin(ctx, f"{layer}.attention.output.dense"), cfg.hidden_dropout_prob)
            x = self._ln(a + x, f"{layer}.attention.output.LayerNorm")
            h = self.act(self._lin(x, f"{layer}.intermediate.dense"))
            h = self._drop(self._lin(h, f"{layer}.output.dense"), cfg.hidden_dropout_prob)
            x = self._ln(h + x, f"{layer}.output.LayerNorm")

        first = x.view(k, n, t, -1)[:, :, 0]  # the <s> / [CLS] token of each sequence: [K, N, H]
        drop = cfg.classifier_dropout if getattr(cfg, "classifier_dropout", None) is not None \
            else cfg.hidden_dropout_prob
        if f"{pre}.pooler.dense.weight" in self.p:  # BERT heads, and RoBERTa's multiple-choice head
            pooled = torch.tanh(self._lin(first, f"{pre}.pooler.dense"))
            logits = self._lin(self._drop(pooled, drop), "classifier")
        else:  # RobertaClassificationHead
            h = torch.tanh(self._lin(self._drop(first, drop), "classifier.dense"))
            logits = self._lin(self._drop(h, drop), "classifier.out_proj")
        return logits.view(k, b, choices) if choices else logits.view(k, b, -1)

    def loss(self, ids, types, mask, labels, weights, amp_dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sum of the runs' losses, to backpropagate; each run's loss [K], detached)."""
        with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = self.forward(ids, types, mask).float()
        if self.kind == "regression":
            per = (logits.squeeze(-1) - labels) ** 2
        else:
            per = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
        each = (per * weights).sum(1) / weights.sum(1)
        return each.sum(), each.detach()

    @torch.no_grad()
    def logits(self, ids, types, mask, amp_dtype) -> torch.Tensor:
        was, self.training = self.training, False
        try:
            with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                return self.forward(ids, types, mask).float()
        finally:
            self.training = was


class ArrayAdamW:
    """AdamW over stacked weights: the same update as ``torch.optim.AdamW`` for each run, with each
    run's own learning rate and weight decay (none on biases and LayerNorm, as for runs alone)."""

    def __init__(self, model: FusedEncoder, weight_decay: list[float], betas=(0.9, 0.999), eps: float = 1e-8):
        self.model, self.betas, self.eps, self.t = model, betas, eps, 0
        device = next(iter(model.p.values())).device
        self.wd = torch.tensor(weight_decay, dtype=torch.float32, device=device)
        self.decay = {n for n in model.names
                      if not (n.endswith("bias") or "layernorm" in n.lower() or "layer_norm" in n.lower())}
        self.m = {n: torch.zeros_like(t) for n, t in model.p.items()}
        self.v = {n: torch.zeros_like(t) for n, t in model.p.items()}

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.wd.device)
        self.wd = self.wd.index_select(0, index)
        self.m = {n: t.index_select(0, index) for n, t in self.m.items()}
        self.v = {n: t.index_select(0, index) for n, t in self.v.items()}

    @torch.no_grad()
    def clip(self, max_norm: float = 1.0) -> torch.Tensor:
        """Clip each run's gradient to ``max_norm`` (its norm over all its weights); the norms [K]."""
        grads = [t.grad for t in self.model.p.values() if t.grad is not None]
        sq = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)
        norms = sq.sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        return norms

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update with the runs' current learning rates ``lr`` [K]."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for n, p in self.model.p.items():
            g = p.grad
            if g is None:
                continue
            shape = (-1, *([1] * (p.dim() - 1)))
            lr_k = lr.view(shape)
            if n in self.decay:
                p.mul_(1 - lr_k * self.wd.view(shape))
            m, v = self.m[n], self.v[n]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_((lr_k / bc1) * m / denom)

    def zero_grad(self) -> None:
        for t in self.model.p.values():
            t.grad = None


# ---- which runs can share an array ---------------------------------------------------------------


def arrays(run_dirs: list[Path], size: int) -> list[list[Path]]:
    """Split the run folders into arrays of up to ``size`` runs of one key, in their order; a run
    that cannot be fused (or a spec that cannot be read) is an array of one."""
    groups: dict[str, list[Path]] = {}
    out: list[list[Path]] = []
    for d in run_dirs:
        try:
            key = rundir.array_key(json.loads((Path(d) / "spec.json").read_text()))
        except (OSError, ValueError):
            key = None
        if key is None:
            out.append([d])
            continue
        group = groups.setdefault(key, [])
        group.append(d)
        if len(group) == size:
            out.append(groups.pop(key))
    out.extend(groups.values())
    return out


# ---- training an array -----------------------------------------------------------------------------


@dataclass
class Member:
    dir: Path
    log: RunLog
    t0: float
    spec: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    schedule: loop.Schedule | None = None
    epoch_metrics: list = field(default_factory=list)


def _finish(m: Member, status: str, error: str | None, worker: loop.Worker) -> dict:
    m.result.update(status=status, error=error)
    return loop.finish_run(worker, m.dir, m.log, m.result, m.t0)


def train_array(worker: loop.Worker, run_dirs: list[Path]) -> list[dict]:
    """Train the runs as one array; each ends with its own ``result.json``. Runs that cannot join
    (their spec or their setup fails) end at once; the others go on. Never raises for a run's failure."""
    members: list[Member] = []
    results: dict[Path, dict] = {}
    for d in run_dirs:
        d = Path(d)
        m = Member(d, RunLog(d, echo=worker.s.echo), time.time())
        m.result = loop.new_result()
        try:
            m.spec = loop.read_spec(d)
            m.result["primary_metric"] = m.spec["task"].get("metric")
            m.log.event("start", run_id=m.spec["run_id"], pid=os.getpid(), device=str(worker.s.device))
            members.append(m)
        except UserError as e:
            results[d] = _finish(m, "failed", str(e), worker)
    if worker.s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        _train_array(worker, members)
    except torch.OutOfMemoryError as e:
        for m in members:
            if not m.log.closed:
                _finish(m, "oom", f"CUDA out of memory: {str(e).splitlines()[0][:300]}", worker)
        worker.forget_models()
    except Exception as e:  # noqa: BLE001 - a failure of the shared step fails the runs still in the array
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e, 300)}"
        for m in members:
            if not m.log.closed:
                if not isinstance(e, UserError):
                    m.log.line("".join(traceback.format_exception(e)).rstrip())
                _finish(m, "failed", why, worker)
    for m in members:
        results[m.dir] = m.result
    return [results[Path(d)] for d in run_dirs]


def _train_array(worker: loop.Worker, members: list[Member]) -> None:
    s, device = worker.s, worker.s.device
    # every run's data (shared: one key means one task and tokenizer) and starting weights
    joined: list[Member] = []
    prep = None
    for m in members:
        try:
            prep = loop.prepare(worker, m.dir, m.spec, m.log, same_data=prep)  # one key: one task and data
            m.state = {n: t.detach().to("cpu", copy=True) for n, t in prep.model.module.named_parameters()}
            m.schedule = loop.Schedule.of(m.spec["params"], len(prep.train))
            joined.append(m)
        except UserError as e:
            _finish(m, "failed", str(e), worker)
    if not joined:
        return
    module = prep.model.module
    if not supported(module.config):
        raise UserError(f"fused training covers {', '.join(FAMILIES)} encoders, not '{module.config.model_type}'")
    p0 = joined[0].spec["params"]
    kind, train, dev = prep.kind, prep.train, prep.dev
    max_len, bs, accum = int(p0["max_len"]), int(p0["batch_size"]), int(p0.get("grad_accum", 1))
    fused = FusedEncoder(module.config, kind, module.base_model_prefix, [m.state for m in joined], device)
    for m in joined:
        m.state = {}
    opt = ArrayAdamW(fused, [float(m.spec["params"].get("weight_decay", 0.0)) for m in joined])
    base_lr = [float(m.spec["params"]["lr"]) for m in joined]
    amp = loop._amp_dtype(joined[0].spec.get("precision", p0.get("precision", "auto")), device)
    pad = s.resolved_pad()
    group = s.group_by_length if s.group_by_length is not None else pad == "buckets"
    buckets = data.buckets_for(max_len)
    sched = joined[0].schedule
    epochs, total = sched.epochs, sched.total
    torch.manual_seed(int(joined[0].spec["seed"]))  # dropout masks: one stream for the array
    for i, m in enumerate(joined):
        others = len(joined) - 1
        m.log.line(f"train {len(train)} / dev {len(dev)} examples, {epochs} epochs x {sched.steps_per_epoch} steps "
                   f"= {total}, batch {bs}x{accum}, lr {base_lr[i]}, warmup {m.schedule.warmup} steps, {device.type} "
                   f"{str(amp).replace('torch.', '') if amp else 'fp32'}, pad {pad}, compile "
                   f"{'inductor' if s.resolved_compile() != 'off' else 'off'}, fused with {others} other runs")
        m.log.event("begin", total_steps=total, epochs=epochs, n_train=len(train), n_dev=len(dev),
                    device=device.type, fused=len(joined))
    debug_sleep = max(float((m.spec.get("debug") or {}).get("sleep_per_step") or 0) for m in joined)
    oom_at = [(m.spec.get("debug") or {}).get("oom_at_step") for m in joined]
    oom_at = min((int(x) for x in oom_at if x is not None), default=None)
    eval_bs = int(p0.get("eval_batch_size") or max(bs, 32))
    log_every = max(1, min(50, total // 20))
    step, seen, t_train = 0, 0, time.time()
    t_mark, seen_mark = t_train, 0
    primary = joined[0].spec["task"].get("metric", "acc")
    live = list(joined)  # the runs still in the array, in the order of the array's rows
    # on CUDA, inductor fuses the elementwise work (LayerNorm, GELU, dropout) around the batched matmuls;
    # no CUDA graphs: the stacked weights are graph inputs, and a graph would copy them every step
    loss_fn = torch.compile(fused.loss, dynamic=True) if s.resolved_compile() != "off" else fused.loss

    running = torch.zeros(len(live), device=device)  # each run's summed loss since its last log line
    running_n = 0

    def drop(gone: list[Member], status: str, why: str) -> None:
        nonlocal live, base_lr, running
        rows = [i for i, m in enumerate(live) if m not in gone]
        for m in gone:
            _finish(m, status, why, worker)
        base_lr = [base_lr[i] for i in rows]
        running = running[rows]
        live = [live[i] for i in rows]
        if live:
            fused.keep(rows)
            opt.keep(rows)

    for epoch in range(1, epochs + 1):
        orders = [data.train_order(train.lengths, bs, int(m.spec["seed"]), epoch, group) for m in live]
        for b in range(len(orders[0])):
            cancelled = [m for m in live if (m.dir / CANCEL_FILE).exists()]
            if cancelled:
                keep = [i for i, m in enumerate(live) if m not in cancelled]
                orders = [orders[i] for i in keep]
                drop(cancelled, "cancelled", "cancelled while training in a fused array")
                if not live:
                    return
            idx = [o[b] for o in orders]
            length = max(data.pad_length(int(train.lengths[i].max()), pad, max_len, buckets) for i in idx)
            parts = [loop._batch(train, i, length, device, None) for i in idx]
            ids, types, mask, y, w = (None if parts[0][j] is None else torch.stack([q[j] for q in parts])
                                      for j in range(5))
            try:
                total_loss, each = loss_fn(ids, types, mask, y, w, amp)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the runs
                if loss_fn is fused.loss:
                    raise
                for m in live:
                    m.log.line(f"compile failed ({type(e).__name__}: {first_line(e, 200)}); going on without it")
                loss_fn = fused.loss
                total_loss, each = loss_fn(ids, types, mask, y, w, amp)
            (total_loss / accum).backward()
            running += each  # stays on the device: no sync until a log line
            running_n += 1
            seen += len(idx[0])
            if (b + 1) % accum and b + 1 != len(orders[0]):
                continue
            opt.clip(1.0)
            lr_now = torch.tensor([lr * m.schedule.factor(step) for lr, m in zip(base_lr, live, strict=True)],
                                  dtype=torch.float32, device=device)
            opt.step(lr_now)
            opt.zero_grad()
            step += 1
            if oom_at is not None and step >= oom_at:
                raise torch.OutOfMemoryError("test hook: CUDA out of memory (spec debug.oom_at_step)")
            if debug_sleep:
                time.sleep(debug_sleep)
            if step % log_every == 0 or step == total:
                now = time.time()
                rate = (seen - seen_mark) / max(now - t_mark, 1e-9)
                eta = (total - step) * (now - t_train) / step
                means = (running / max(1, running_n)).tolist()
                running.zero_()
                running_n = 0
                for lr, m, mean_loss in zip(base_lr, live, means, strict=True):
                    lr_used = lr * m.schedule.factor(step)  # what LambdaLR reports after its step
                    m.log.line(f"epoch {epoch}/{epochs} step {step}/{total} loss {mean_loss:.4f} lr {lr_used:.3g} "
                               f"{rate:.1f} samples/s ETA {fmt_duration(eta)}")
                    m.log.event("step", step=step, total_steps=total, epoch=epoch, loss=mean_loss, lr=lr_used,
                                samples_per_s=rate, eta_s=eta, fused=len(live))
                t_mark, seen_mark = now, seen
        preds = _evaluate(fused, dev, eval_bs, pad, max_len, buckets, amp, device, kind)
        failed: list[Member] = []
        for i, m in enumerate(live):
            try:
                metrics = compute_metrics(m.spec["task"].get("metrics") or [primary], preds[i], dev.labels)
            except Exception as e:  # noqa: BLE001 - this run fails, the array goes on
                m.result["error_detail"] = repr(e)
                failed.append(m)
                continue
            m.epoch_metrics.append(metrics)
            m.log.line(f"eval epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            m.log.event("eval", epoch=epoch, metrics=metrics)
        if failed:
            drop(failed, "failed", "evaluation failed")
            if not live:
                return
    train_seconds = time.time() - t_train

    for i, m in enumerate(live):
        try:
            if m.spec.get("keep_checkpoint"):
                module.load_state_dict(fused.state(i), strict=False)
                loop.save_checkpoint(module, prep.tok, m.dir / "checkpoint", prep.labels)
                m.log.line(f"checkpoint saved to {m.dir / 'checkpoint'}")
            scores = [x[primary] for x in m.epoch_metrics]
            best = int(np.argmax(scores)) + 1
            m.log.line(f"done: {primary} {scores[-1]:.4f} (last epoch; best {max(scores):.4f} at epoch {best}) "
                       f"in {fmt_duration(train_seconds)}, {seen / train_seconds:.1f} samples/s, fused "
                       f"({len(live)} runs at the end)")
            m.result.update(metrics=m.epoch_metrics[-1], score=scores[-1], best_epoch=best, best_score=max(scores),
                            epoch_metrics=m.epoch_metrics, train_seconds=round(train_seconds, 3),
                            samples_per_s=round(seen / train_seconds, 2), steps=step,
                            compile="off" if loss_fn is fused.loss else "inductor", pad=pad,
                            fused=len(joined))
            _finish(m, "done", None, worker)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk while saving one checkpoint
            _finish(m, "failed", f"{type(e).__name__}: {first_line(e, 300)}", worker)


def _evaluate(fused: FusedEncoder, split: data.Split, batch_size: int, pad: str, max_len: int, buckets, amp,
              device, kind: str) -> np.ndarray:
    """Every run's predictions on ``split`` [K, N]; the inputs are the same for all, so they are shared."""
    k = fused.k
    preds = np.zeros((k, len(split)), dtype=np.float32 if kind == "regression" else np.int64)
    for idx in data.eval_order(split.lengths, batch_size):
        length = data.pad_length(int(split.lengths[idx].max()), pad, max_len, buckets)
        ids, types, mask, _, _ = loop._batch(split, idx, length, device, None)

        def many(x):
            return None if x is None else x.unsqueeze(0).expand(k, *x.shape)

        logits = fused.logits(many(ids), many(types), many(mask), amp)
        out = logits.squeeze(-1) if kind == "regression" else logits.argmax(-1)
        preds[:, idx] = out.cpu().numpy()
    return preds
