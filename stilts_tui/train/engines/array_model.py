"""The batched model of a fused array: K copies of one BERT/RoBERTa-style task model as stacked
weights in one flat buffer (:class:`FusedEncoder`), and each member's own dropout stream
(:class:`MemberStreams`). See :mod:`stilts_tui.train.engines.array`."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from stilts_tui.train.step import decays

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert")
# the parameters are column views of one buffer (not dense), their gradients views of another: autograd
# accumulates into them in place, as intended, and warns that the layout is unusual
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def supported(config) -> bool:
    """Is this model config of a family a fused array covers (BERT/RoBERTa-style, absolute positions)?"""
    return (
        getattr(config, "model_type", None) in FAMILIES
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
    )


class MemberStreams:
    """Each member's own random stream: the global generator state its run alone has at the start of
    training (seeded with its seed, as :func:`stilts_tui.train.step.seed_everything` does), swapped in
    around each of the member's draws and saved after. A run alone draws from that stream only for dropout,
    in forward order, so each member draws the very masks of its run alone. Eager only: a compiled graph
    cannot swap states."""

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
