"""The engine of a run alone: one Hugging Face model and torch's AdamW with its LambdaLR schedule."""

from __future__ import annotations

import torch

from stilts_tui.errors import UserError
from stilts_tui.train.debug import Debug
from stilts_tui.train.members import Member, Prepared
from stilts_tui.train.step import Setup, decays


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


class AloneEngine:
    """One Hugging Face model and torch's AdamW with its LambdaLR schedule."""

    k = 1

    def __init__(self, prep: Prepared, member: Member, setup: Setup, debug: Debug, device):
        p = member.spec["params"]
        self.model, self.module, self.setup = prep.model, prep.model.module, setup
        self.opt = optimizer(self.module, float(p["lr"]), float(p["weight_decay"]))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, member.schedule.factor)
        self.scaler = torch.amp.GradScaler(enabled=setup.amp == torch.float16)
        if self.scaler.is_enabled() and setup.clip == "micro_batch":
            raise UserError('clip = "micro_batch" is not available with fp16 (loss scaling unscales once a step)')
        if setup.compile != "off":  # an architecture without encoder layers compiles whole
            setup.compile_scope = self.model.scope(setup)
        self.loss_fn = self.model.loss_fn(setup, debug.backend())
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
