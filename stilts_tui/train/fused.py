"""Many runs of one model shape trained together as one array (after HFTA, MLSys 2021).

The K runs' weights live in one flat buffer ``W`` [K, P] (each parameter a view of its columns, decayed
parameters first) with its gradient buffer ``G`` [K, P]: every linear layer is one batched matmul
(``torch.baddbmm``), embeddings, LayerNorm and attention are batched over the runs, and the optimizer
(:class:`ArrayAdamW`) updates all of ``W`` with a handful of whole-buffer operations a step (compiled into
one fused kernel where compilation is on), with each run's learning rate, warmup schedule and weight
decay computed on the device (no host sync, no host-to-device copy a step), and gradient clipping
per run. Each run keeps its own data order (its seed), its own starting weights, run folder, log,
events, evaluation, result and checkpoint, exactly as if it ran alone: the runs do not interact,
since the loss is the sum of the runs' losses and each weight slice belongs to one run.

BERT/RoBERTa-style encoders (the reference's family) are covered; other architectures train alone.
Dropout: eager, each member draws its masks from its own stream, the one its run alone draws from
(:class:`MemberStreams`), so a fused run drops exactly what the run alone drops and, on the CPU, equals
it with dropout on (tests/test_fused_dropout.py); compiled, the array draws from one stream (the same
distribution, other masks: docs/fused.md). With dropout off the results are the same within
floating-point tolerance (tests/test_fused.py). The training loop itself
is :func:`stilts_tui.train.loop.fit`, shared with runs alone; :class:`ArrayEngine` is what differs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from stilts_tui.contract import SPEC_FILE, array_key
from stilts_tui.errors import UserError
from stilts_tui.train.loop import Member, Prepared, decays
from stilts_tui.train.step import Hooks, Setup, compiled, is_oom
from stilts_tui.train.step import compiled as compile_fn

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")
# the parameters are column views of one buffer (not dense), their gradients views of another: autograd
# accumulates into them in place, as intended, and warns that the layout is unusual
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def supported(config) -> bool:
    return (
        getattr(config, "model_type", None) in FAMILIES
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
    )


def can_fuse(run_dir: Path) -> bool:
    """Is this run's model of a family fused training covers? (False where its config cannot be read:
    the run then trains alone and reports its own error.)"""
    from transformers import AutoConfig

    from stilts_tui.train import transfer

    try:
        spec = json.loads((Path(run_dir) / SPEC_FILE).read_text())
        return supported(AutoConfig.from_pretrained(transfer.model_location(spec["model"])))
    except Exception:  # noqa: BLE001 - any failure here means: train alone
        return False


# ---- the batched model ----------------------------------------------------------------------------


class MemberStreams:
    """Each member's own random stream: the global generator state its run alone has at the start of
    training (seeded with its seed, as :func:`loop.seed_everything` does), swapped in around each of the
    member's draws and saved after. A run alone draws from that stream only for dropout, in forward order,
    so each member draws the very masks of its run alone. Eager only: a compiled graph cannot swap states."""

    def __init__(self, seeds: list[int], device: torch.device):
        # only the generator of the device the masks are drawn on (dropout on CUDA never reads the CPU's)
        if device.type == "cuda":
            self.gen = torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()
            ]
        else:
            self.gen = torch.default_generator
        self.states = []
        for seed in seeds:
            self.gen.manual_seed(seed)  # what torch.manual_seed(seed) gives this generator
            self.states.append(self.gen.get_state())

    def draw(self, i: int, fn, *args, **kwargs) -> torch.Tensor:
        """``fn(*args, **kwargs)`` with member i's stream as the device's global one."""
        self.gen.set_state(self.states[i])
        out = fn(*args, **kwargs)
        self.states[i] = self.gen.get_state()
        return out

    def keep(self, rows: list[int]) -> None:
        self.states = [self.states[r] for r in rows]


class FusedEncoder:
    """K copies of one BERT/RoBERTa-style task model, as stacked weights and a batched forward."""

    def __init__(self, config, kind: str, prefix: str, states: list[dict[str, torch.Tensor]], device):
        self.config, self.kind, self.prefix = config, kind, prefix
        self.names = list(states[0])
        order = [n for n in self.names if decays(n)] + [n for n in self.names if not decays(n)]
        self.layout: dict[str, tuple[int, int, torch.Size]] = {}
        offset = 0
        for n in order:
            self.layout[n] = (offset, states[0][n].numel(), states[0][n].shape)
            offset += states[0][n].numel()
        self.n_decay = sum(self.layout[n][1] for n in order if decays(n))  # decayed columns come first
        self.W = torch.empty(len(states), offset, device=device, dtype=torch.float32)
        with torch.no_grad():
            for i, s in enumerate(states):
                for n, (off, size, _) in self.layout.items():
                    self.W[i, off : off + size].copy_(s[n].detach().reshape(-1))
        self.G = torch.zeros_like(self.W)
        self._views()
        self.roberta = config.model_type != "bert"
        self.pad_idx = getattr(config, "pad_token_id", 1) if self.roberta else None
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.hidden_act]
        self.training = True
        self.streams: MemberStreams | None = None  # None: one stream for the whole array
        self.lengths: list[int] | None = None  # with streams: each member's own padded length, this batch
        self.compiled_layer = None  # regional compilation: the compiled :meth:`layer`, used in training

    def _views(self) -> None:
        """Each parameter as a leaf view of its columns of ``W``, its gradient the same view of ``G``
        (autograd adds into it in place, so the optimizer and clipping see one buffer)."""
        k = self.W.shape[0]
        self.p: dict[str, torch.Tensor] = {}
        for n in self.names:
            off, size, shape = self.layout[n]
            t = self.W[:, off : off + size].view(k, *shape).requires_grad_(True)
            t.grad = self.G[:, off : off + size].view(k, *shape)
            self.p[n] = t

    @property
    def k(self) -> int:
        return self.W.shape[0]

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Run i's weights, by the Hugging Face module's parameter names."""
        return {n: t[i].detach() for n, t in self.p.items()}

    def keep(self, rows: list[int]) -> None:
        """Drop every run not in ``rows`` (a run cancelled or failed: the others go on)."""
        index = torch.tensor(rows, device=self.W.device)
        if self.streams is not None:
            self.streams.keep(rows)
        self.W = self.W.index_select(0, index)
        self.G = self.G.index_select(0, index)
        self._views()

    # building blocks, each over the K runs at once; x is [K, N, H]
    # ``w``: the weights the name is looked up in: a layer's (:meth:`layer_weights`), else the array's
    def _lin(self, x: torch.Tensor, name: str, w: dict | None = None) -> torch.Tensor:
        w = self.p if w is None else w
        weight, b = w[name + ".weight"], w.get(name + ".bias")
        if b is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), x, weight.transpose(1, 2))

    def _ln(self, x: torch.Tensor, name: str, w: dict | None = None) -> torch.Tensor:
        w = self.p if w is None else w
        y = F.layer_norm(x, x.shape[-1:], eps=self.config.layer_norm_eps)
        return y * w[name + ".weight"].unsqueeze(1) + w[name + ".bias"].unsqueeze(1)

    def _drop(self, x: torch.Tensor, p: float | None, t: int | None = None) -> torch.Tensor:
        """Dropout over x [K, N, H]: one draw for the array, or with member streams one a member, over
        the positions its batch has alone (x read as [K, N/t, t, H], its first ``lengths[i]`` of each t:
        the rest is padding the array added, which no real position sees)."""
        if not (self.training and p):
            return x
        if self.streams is None:
            return F.dropout(x, p, training=True)
        out = []
        for i in range(x.shape[0]):
            own = self.lengths[i] if self.lengths is not None and t is not None else None
            if own is None or own >= t:
                out.append(self.streams.draw(i, F.dropout, x[i], p, training=True))
                continue
            rows = x[i].view(-1, t, x.shape[-1])
            kept = self.streams.draw(i, F.dropout, rows[:, :own].contiguous(), p, training=True)
            out.append(torch.cat([kept, rows[:, own:]], dim=1).view_as(x[i]))
        return torch.stack(out)

    def _attention(self, q, kk, v, attn_mask, p: float, k: int) -> torch.Tensor:
        """SDPA over the K runs' heads at once; with member streams and attention dropout, one call a
        member over the positions its batch has alone, under its own stream (SDPA draws its mask
        inside); the padded positions' outputs are zeros (masked out as keys; no loss reads them)."""
        if not p or self.streams is None:
            return F.scaled_dot_product_attention(q, kk, v, attn_mask=attn_mask, dropout_p=p)
        n, t = q.shape[0] // k, q.shape[2]
        out = []
        for i in range(k):
            own = min(self.lengths[i], t) if self.lengths is not None else t
            rows = slice(i * n, (i + 1) * n)
            ctx = self.streams.draw(
                i,
                F.scaled_dot_product_attention,
                q[rows, :, :own],
                kk[rows, :, :own],
                v[rows, :, :own],
                attn_mask=attn_mask[rows, ..., :own],
                dropout_p=p,
            )
            out.append(F.pad(ctx, (0, 0, 0, t - own)) if own < t else ctx)
        return torch.cat(out)

    def _embed(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Row ``ids[k, n]`` of run k's table ``name``: one gather over the stacked [K*V, H] table."""
        table = self.p[name]
        k, v, h = table.shape
        offset = (torch.arange(k, device=ids.device) * v).view(k, *([1] * (ids.dim() - 1)))
        return F.embedding(ids + offset, table.reshape(k * v, h))

    def layer_weights(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's weights by their names inside the layer (``attention.self.query.weight``): the same
        names and shapes for every layer, so one compiled :meth:`layer` serves them all."""
        return self._layer_of(i, self.p)

    def _layer_of(self, i: int, *tables: dict) -> dict[str, torch.Tensor]:
        start = f"{self.prefix}.encoder.layer.{i}."
        return {n[len(start) :]: t for table in tables for n, t in table.items() if n.startswith(start)}

    def layer(self, x: torch.Tensor, attn_mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """One encoder layer over the K runs: x [K, N*T, H], attn_mask [K*N, 1, 1, T], ``w`` the layer's
        weights (:meth:`layer_weights`). A function of its tensors: compiled once, called for every layer."""
        cfg = self.config
        k, t = x.shape[0], attn_mask.shape[-1]
        n = x.shape[1] // t
        heads = cfg.num_attention_heads
        hd = cfg.hidden_size // heads
        attn_p = cfg.attention_probs_dropout_prob if self.training else 0.0

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(k * n, t, heads, hd).transpose(1, 2)

        q = split(self._lin(x, "attention.self.query", w))
        kk = split(self._lin(x, "attention.self.key", w))
        v = split(self._lin(x, "attention.self.value", w))
        ctx = self._attention(q, kk, v, attn_mask, attn_p, k)
        ctx = ctx.transpose(1, 2).reshape(k, n * t, cfg.hidden_size)
        a = self._drop(self._lin(ctx, "attention.output.dense", w), cfg.hidden_dropout_prob, t)
        x = self._ln(a + x, "attention.output.LayerNorm", w)
        # one expression: the [K, N*T, I] activation is freed once output.dense has read it (a name
        # holding it would keep it alive through the dropout below: K members' worth at the step's peak)
        h = self._lin(self.act(self._lin(x, "intermediate.dense", w)), "output.dense", w)
        h = self._drop(h, cfg.hidden_dropout_prob, t)
        return self._ln(h + x, "output.LayerNorm", w)

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
        x = (
            self._embed(f"{e}.word_embeddings.weight", ids)
            + self._embed(f"{e}.token_type_embeddings.weight", types)
            + self._embed(f"{e}.position_embeddings.weight", pos)
        ).reshape(k, n * t, -1)
        x = self._drop(self._ln(x, f"{e}.LayerNorm"), cfg.hidden_dropout_prob, t)

        attn_mask = mask.reshape(k * n, 1, 1, t).bool()
        for i in range(cfg.num_hidden_layers):
            fn = self.compiled_layer if self.compiled_layer is not None and self.training else self.layer
            if fn is not self.layer:  # the sizes a batch changes: N*T, K*N, T (compiled for any)
                for t_, dim in ((x, 1), (attn_mask, 0), (attn_mask, 3)):
                    torch._dynamo.maybe_mark_dynamic(t_, dim)
            x = fn(x, attn_mask, self.layer_weights(i))

        first = x.view(k, n, t, -1)[:, :, 0]  # the <s> / [CLS] token of each sequence: [K, N, H]
        drop = (
            cfg.classifier_dropout if getattr(cfg, "classifier_dropout", None) is not None else cfg.hidden_dropout_prob
        )
        if self.roberta and self.kind == "multiple_choice":  # RobertaForMultipleChoice (and XLM-R's,
            drop = cfg.hidden_dropout_prob  # CamemBERT's) ignore classifier_dropout, unlike BERT's heads
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


def _schedule_lr(t, lr0, warm, total: float):
    """Each run's learning rate for the update after ``t`` updates (LambdaLR's factor), on the device."""
    up = t / warm.clamp(min=1)
    down = ((total - t) / (total - warm).clamp(min=1)).clamp(min=0)
    return (lr0 * torch.where(t < warm, up, down)).float()


def _adamw(W, G, m, v, t, lr0, warm, wd, total: float, n_decay: int, b1: float, b2: float, eps: float):
    """One AdamW update of every run: torch's AdamW arithmetic, each row with its own lr and decay."""
    lr = _schedule_lr(t, lr0, warm, total)
    t.add_(1)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    W[:, :n_decay].mul_((1 - lr * wd).unsqueeze(1))
    m.lerp_(G, 1 - b1)
    v.mul_(b2).addcmul_(G, G, value=1 - b2)
    denom = (v.sqrt() / bc2.sqrt().float()).add_(eps)
    W.sub_(m / denom * (lr / bc1.float()).unsqueeze(1))


def _clip(G, max_norm: float):
    """Clip each run's gradient (its row of ``G``) to ``max_norm``, as torch.nn.utils.clip_grad_norm_."""
    norms = torch.linalg.vector_norm(G, dim=1)
    G.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1))
    return norms


class ArrayAdamW:
    """AdamW over the array's flat buffer: the same update as ``torch.optim.AdamW`` for each run, with
    each run's own learning rate schedule and weight decay (none on biases and LayerNorm, as for runs
    alone). A step is a few whole-buffer operations whatever the number of parameters (one kernel when
    compiled), and the schedule is computed on the device: no host sync, no copy from the host."""

    def __init__(
        self,
        model: FusedEncoder,
        weight_decay: list[float],
        lr: list[float] | None = None,
        warmup: list[int] | None = None,
        total: int = 1,
        compiled: bool = False,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.model, self.betas, self.eps, self.total = model, betas, eps, float(total)
        device = model.W.device
        k = model.k
        self.wd = torch.tensor(weight_decay, dtype=torch.float32, device=device)
        self.lr0 = torch.tensor(lr or [0.0] * k, dtype=torch.float64, device=device)
        self.warm = torch.tensor(warmup or [0] * k, dtype=torch.float64, device=device)
        # updates done; one element, not 0-d: inductor on the CPU drops in-place updates of a 0-d input
        # (torch 2.13: the count stayed 0, so the bias correction divided by zero and every weight went nan)
        self.t = torch.zeros(1, dtype=torch.float64, device=device)
        self.m = torch.zeros_like(model.W)
        self.v = torch.zeros_like(model.W)
        self._step, self._clip = _adamw, _clip
        if compiled:  # (the flag shadows step.compiled here: named apart)
            self._step = compile_fn(_adamw, dynamic=True)
            self._clip = compile_fn(_clip, dynamic=True)
        self.fallback: str | None = None

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.wd.device)
        self.wd, self.lr0, self.warm = (x.index_select(0, index) for x in (self.wd, self.lr0, self.warm))
        self.m, self.v = self.m.index_select(0, index), self.v.index_select(0, index)

    def _run(self, name: str, *args):
        fn = getattr(self, name)
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a compiler failure: the eager update is the same update
            if is_oom(e) or fn in (_adamw, _clip):
                raise
            self.fallback = f"optimizer: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self._step, self._clip = _adamw, _clip
            return getattr(self, name)(*args)

    @torch.no_grad()
    def clip(self, max_norm: float = 1.0) -> torch.Tensor:
        """Clip each run's gradient to ``max_norm`` (its norm over all its weights); the norms [K]."""
        return self._run("_clip", self.model.G, max_norm)

    @torch.no_grad()
    def step(self) -> None:
        """One update with the runs' scheduled learning rates."""
        b1, b2 = self.betas
        self._run(
            "_step",
            self.model.W,
            self.model.G,
            self.m,
            self.v,
            self.t,
            self.lr0,
            self.warm,
            self.wd,
            self.total,
            self.model.n_decay,
            b1,
            b2,
            self.eps,
        )

    def zero_grad(self) -> None:
        self.model.G.zero_()


def compile_array(fused: FusedEncoder, scope: str, backend=None):
    """The array's training loss, compiled with inductor (dynamic sizes): regionally, the one function
    that runs a layer over the array's weights (:meth:`FusedEncoder.layer`: every layer reuses its
    graph), with embeddings, head and loss eager; or the whole loss. No CUDA graphs: the stacked weights
    are graph inputs, and a graph would copy them every step. ``backend``: a test's failing compiler.

    Regionally, only the sizes a batch changes are dynamic (:meth:`FusedEncoder.forward` marks them);
    the weights' sizes are fixed. With every size dynamic, dynamo reasoned over the symbols of 16 [K, out,
    in] weights: an array of 4 RoBERTa-base layers took 27 s cold and 6-9 s warm on this 2-core CPU,
    against 13 s and 2 s (bench/compile_regional.py; one graph still serves every batch and length)."""
    if scope == "regional":
        fused.compiled_layer = compiled(fused.layer, dynamic=None, backend=backend or "inductor")
        return fused.loss
    return compiled(fused.loss, dynamic=True, backend=backend or "inductor")


class ArrayEngine:
    """The engine of a fused array for :func:`stilts_tui.train.loop.fit`."""

    fill_to = None

    def __init__(self, prep: Prepared, members: list[Member], states: list[dict], setup: Setup, hooks: Hooks, device):
        module = prep.model.module
        if not supported(module.config):
            raise UserError(f"fused training covers {', '.join(FAMILIES)} encoders, not '{module.config.model_type}'")
        if len({m.schedule.total for m in members}) != 1:
            raise UserError("the runs of a fused array must have the same number of steps")
        self.fused = self.encoder(prep, members, states, device)
        states.clear()
        params = [m.spec["params"] for m in members]
        self.members = list(members)
        compiled = setup.compile != "off"
        self.opt = ArrayAdamW(
            self.fused,
            [float(p["weight_decay"]) for p in params],
            [float(p["lr"]) for p in params],
            [m.schedule.warmup for m in members],
            members[0].schedule.total,
            compiled=compiled and hooks.backend() is None,
        )
        self.loss_fn = self.fused.loss
        if compiled:
            self.loss_fn = compile_array(self.fused, setup.compile_scope, hooks.backend())
        elif setup.dropout_streams == "member":  # each member drops what its run alone drops
            self.fused.streams = MemberStreams([int(m.spec["seed"]) for m in members], torch.device(device))
        self.mode = setup.compile if compiled else "off"
        self.k = self.fused.k

    def encoder(self, prep: Prepared, members: list[Member], states: list[dict], device) -> FusedEncoder:
        """The batched model of the members' weights ``states``."""
        module = prep.model.module
        return FusedEncoder(module.config, prep.kind, module.base_model_prefix, states, device)

    def disable_compile(self) -> None:
        self.loss_fn, self.mode = self.fused.loss, "off"
        self.fused.compiled_layer = None

    def loss(self, parts: list, amp) -> tuple[torch.Tensor, torch.Tensor]:
        ids, types, mask, y, w = (None if parts[0][j] is None else torch.stack([q[j] for q in parts]) for j in range(5))
        if self.fused.streams is not None:  # eager: the members' own lengths decide their masks
            self.fused.lengths = getattr(parts, "lengths", None)
        return self.loss_fn(ids, types, mask, y, w, amp)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self) -> None:
        self.opt.clip(1.0)

    def step(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def lrs(self, step: int) -> list[float]:
        return [float(m.spec["params"]["lr"]) * m.schedule.factor(step) for m in self.members]

    def predict(self, batch, amp) -> torch.Tensor:
        ids, types, mask, _, _ = batch

        def many(x):
            return None if x is None else x.unsqueeze(0).expand(self.k, *x.shape)

        return self.fused.logits(many(ids), many(types), many(mask), amp)

    def train(self, on: bool) -> None:
        self.fused.training = on

    def state(self, i: int) -> dict[str, torch.Tensor]:
        return self.fused.state(i)

    def keep(self, rows: list[int]) -> None:
        self.fused.keep(rows)
        self.opt.keep(rows)
        self.members = [self.members[i] for i in rows]
        self.k = self.fused.k


# ---- which runs can share an array ---------------------------------------------------------------


def arrays(run_dirs: list[Path], size: int) -> list[list[Path]]:
    """Split the run folders into arrays of up to ``size`` runs of one key, in their order; a run
    that cannot be fused (or a spec that cannot be read) is an array of one."""
    groups: dict[str, list[Path]] = {}
    out: list[list[Path]] = []
    for d in run_dirs:
        try:
            key = array_key(json.loads((Path(d) / SPEC_FILE).read_text()))
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
