"""Fused LoRA arrays: K LoRA runs over one frozen encoder, trained as one job.

The encoder's weights are held once (the worker's model, frozen: no gradient, no optimizer state); the
K members' batches go through it together, every frozen linear layer one matmul over the K x B rows.
Each member owns its adapters, stacked [K, r, in] and [K, out, r] and applied to its own rows by batched
matmuls (``torch.bmm``), and its head (the classification or multiple-choice head and the pooler), applied
the same way; these live in the flat [K, P] buffer of :class:`stilts_tui.train.engines.array_model.FusedEncoder`, so
the array's AdamW (:class:`stilts_tui.train.engines.array.ArrayAdamW`: each member's learning rate, schedule,
weight decay and gradient clipping) and the dropping of a cancelled or failed member are those of full
arrays. Dropout (the encoder's and the adapters') draws from each member's own stream, eager, as in full
arrays (:class:`stilts_tui.train.engines.array_model.MemberStreams`), so a member equals its run alone (PEFT's LoRA,
:mod:`stilts_tui.train.lora`) with dropout on: tests/test_lora.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stilts_tui.errors import UserError
from stilts_tui.train import lora
from stilts_tui.train.engines.array import ArrayEngine
from stilts_tui.train.engines.array_model import FAMILIES, FusedEncoder, supported
from stilts_tui.train.members import Member, Prepared


class FusedLora(FusedEncoder):
    """K LoRA runs of one frozen encoder: the frozen weights in ``base`` (shared), each member's adapters
    and head in the stacked buffer (``p``)."""

    def __init__(self, module: torch.nn.Module, kind: str, cfg: dict, states: list[dict], device):
        super().__init__(module.config, kind, module.base_model_prefix, states, device)
        prefix = module.base_model_prefix
        # the worker's own tensors, not copies: the base is in memory once
        self.base = {n: t.detach() for n, t in module.named_parameters() if not lora.is_head(n, prefix)}
        self.scale, self.lora_p = lora.scale(cfg), float(cfg["dropout"])
        self._t: int | None = None

    def layer_weights(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's frozen weights and its members' adapters, by their names inside the layer."""
        return self._layer_of(i, self.base, self.p)

    # a name's weight: stacked (a member's own: its head) or shared (the frozen base, plus any adapter)
    def _lin(self, x: torch.Tensor, name: str, w: dict | None = None) -> torch.Tensor:
        own = self.p if w is None else w
        if name + ".weight" in own and own[name + ".weight"].dim() == 3:  # a member's own layer (its head)
            return super()._lin(x, name, w)
        base = self.base if w is None else w
        y = F.linear(x, base[name + ".weight"], base.get(name + ".bias"))  # one matmul, K x N rows
        if name + ".lora_A" in own:  # PEFT's order: base(x) + B(A(dropout(x))) * scaling
            a, b = own[name + ".lora_A"], own[name + ".lora_B"]
            low = torch.bmm(self._drop(x, self.lora_p, self._t), a.transpose(1, 2))
            y = y + torch.bmm(low, b.transpose(1, 2)) * self.scale
        return y

    def _ln(self, x: torch.Tensor, name: str, w: dict | None = None) -> torch.Tensor:
        own = self.p if w is None else w
        if name + ".weight" in own and own[name + ".weight"].dim() == 2:  # stacked: [K, H]
            return super()._ln(x, name, w)
        base = self.base if w is None else w
        return F.layer_norm(
            x, x.shape[-1:], base[name + ".weight"], base[name + ".bias"], eps=self.config.layer_norm_eps
        )

    def _embed(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        if name in self.p:
            return super()._embed(name, ids)
        return F.embedding(ids, self.base[name])

    def forward(self, ids: torch.Tensor, types: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        self._t = ids.shape[-1]  # the adapters' dropout covers each member's own positions, as the encoder's
        return super().forward(ids, types, mask)

    def adapter(self, i: int) -> dict[str, torch.Tensor]:
        return {n: t[i].detach() for n, t in self.p.items() if ".lora_" in n}

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's full model, merged, by the Hugging Face module's names."""
        own = {n: t[i].detach() for n, t in self.p.items() if ".lora_" not in n}
        return {**lora.merged_state(self.base, self.adapter(i), self.scale), **own}


class LoraArrayEngine(ArrayEngine):
    """The engine of a fused LoRA array for :func:`stilts_tui.train.loop.fit`."""

    def encoder(self, prep: Prepared, members: list[Member], states: list[dict], device) -> FusedLora:
        module = prep.model.module
        if not supported(module.config):
            raise UserError(f"fused LoRA arrays cover {', '.join(FAMILIES)} encoders, not '{module.config.model_type}'")
        self.cfg = lora.settings(members[0].spec)
        return FusedLora(module, prep.kind, self.cfg, states, device)

    def save(self, i: int, folder, prep: Prepared) -> None:
        lora.save_checkpoint(
            prep.model.module.config,
            self.fused.state(i),
            self.fused.adapter(i),
            self.cfg,
            prep.tok,
            folder,
            prep.labels,
        )
