"""The engines of the training loop (:func:`stilts_tui.train.loop.fit`): what differs between a run
alone and a fused array, full fine-tune or LoRA — the model's forward and the optimizer.

- :mod:`~.alone`: one Hugging Face model, torch's AdamW and LambdaLR (a full fine-tune alone);
- :mod:`~.lora`: a run alone with PEFT's LoRA layers injected (adapters and head trained);
- :mod:`~.array`: K runs of one shape as stacked weights (:mod:`~.array_model`), ``ArrayAdamW``;
- :mod:`~.lora_array`: K LoRA runs over one frozen encoder.

Every engine has ``k``, ``mode``, ``fill_to``, ``loss``, ``backward``, ``clip``, ``step``, ``zero_grad``,
``lrs``, ``predict``, ``train``, ``state``, ``keep`` and ``disable_compile`` (and, LoRA, ``save``).
Engines import the shared types from below (:mod:`stilts_tui.train.members`, :mod:`~stilts_tui.train.worker`,
:mod:`~stilts_tui.train.step`), never the loop.
"""

from __future__ import annotations

import torch

from stilts_tui.contract import is_lora
from stilts_tui.train.debug import Debug
from stilts_tui.train.engines.alone import AloneEngine
from stilts_tui.train.engines.array import ArrayEngine
from stilts_tui.train.engines.lora import LoraAloneEngine
from stilts_tui.train.engines.lora_array import LoraArrayEngine
from stilts_tui.train.lora import member_state as lora_member_state  # not `lora`: engines.lora is a module here
from stilts_tui.train.members import Member, Prepared
from stilts_tui.train.step import Setup
from stilts_tui.train.worker import Worker


def member_state(module: torch.nn.Module, spec: dict) -> dict[str, torch.Tensor]:
    """What a member of an array owns, as CPU copies taken before the next member's weights replace
    them: every weight of a full fine-tune; a LoRA member's head and adapter (the encoder is shared)."""
    if is_lora(spec.get("params")):
        return lora_member_state(module, spec)
    return {n: t.detach().to("cpu", copy=True) for n, t in module.named_parameters()}


def choose(
    worker: Worker, prep: Prepared, members: list[Member], states: list[dict] | None, setup: Setup, debug: Debug
):
    """The engine of ``members``: an array when ``states`` (one per member) is given, else a run alone;
    LoRA or a full fine-tune by the first member's params. Records the array's size and dropout streams
    in ``setup``."""
    device = worker.s.device
    lora_run = is_lora(members[0].spec.get("params"))
    if states is None:
        if lora_run:
            return LoraAloneEngine(worker, prep, members[0], setup, debug, device)
        return AloneEngine(prep, members[0], setup, debug, device)
    setup.fused = len(members)
    # a compiled graph cannot swap generator states: compiled arrays draw from one stream
    setup.dropout_streams = "one" if setup.compile != "off" else worker.s.dropout_streams
    cls = LoraArrayEngine if lora_run else ArrayEngine
    return cls(prep, members, states, setup, debug, device)
