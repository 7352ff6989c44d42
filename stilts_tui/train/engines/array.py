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
(:class:`~stilts_tui.train.engines.array_model.MemberStreams`), so a fused run drops exactly what the
run alone drops and, on the CPU, equals it with dropout on (tests/test_fused_dropout.py); compiled, the
array draws from one stream (the same distribution, other masks: docs/fused.md). With dropout off the
results are the same within floating-point tolerance (tests/test_fused.py). The training loop itself is
:func:`stilts_tui.train.loop.fit`, shared with runs alone; :class:`ArrayEngine` is what differs. The
batched model is :mod:`stilts_tui.train.engines.array_model`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stilts_tui.contract import SPEC_FILE, array_key
from stilts_tui.errors import UserError
from stilts_tui.store import rundir
from stilts_tui.train.debug import Debug
from stilts_tui.train.engines.array_model import FAMILIES, FusedEncoder, MemberStreams, supported
from stilts_tui.train.members import Member, Prepared
from stilts_tui.train.step import Setup, compiled, is_oom
from stilts_tui.train.step import compiled as compile_fn


def can_fuse(run_dir: Path) -> bool:
    """Is this run's model of a family fused training covers? (False where its config cannot be read:
    the run then trains alone and reports its own error.)"""
    from transformers import AutoConfig

    from stilts_tui.train import transfer

    try:
        spec = rundir.load_json(Path(run_dir) / SPEC_FILE, nofollow=True)
        return supported(AutoConfig.from_pretrained(transfer.model_location(spec["model"])))
    except Exception:  # noqa: BLE001 - any failure here means: train alone
        return False


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

    def __init__(self, prep: Prepared, members: list[Member], states: list[dict], setup: Setup, debug: Debug, device):
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
            compiled=compiled and debug.backend() is None,
        )
        self.loss_fn = self.fused.loss
        if compiled:
            self.loss_fn = compile_array(self.fused, setup.compile_scope, debug.backend())
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
        spec = rundir.read_json(Path(d) / SPEC_FILE, nofollow=True)
        key = array_key(spec) if spec is not None else None
        if key is None:
            out.append([d])
            continue
        group = groups.setdefault(key, [])
        group.append(d)
        if len(group) == size:
            out.append(groups.pop(key))
    out.extend(groups.values())
    return out
