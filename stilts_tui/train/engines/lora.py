"""The engine of a LoRA run alone: Hugging Face PEFT's LoRA layers injected into the task model in
place, so the loop's loss and compiled step are those of a full fine-tune (adapters: :mod:`stilts_tui.train.lora`)."""

from __future__ import annotations

from pathlib import Path

import torch

from stilts_tui.train.debug import Debug
from stilts_tui.train.engines.alone import AloneEngine
from stilts_tui.train.lora import is_head, layer_names, merged_state, save_checkpoint, scale, settings, starting_adapter
from stilts_tui.train.members import Member, Prepared
from stilts_tui.train.worker import Model, Worker


class LoraAloneEngine(AloneEngine):
    """A LoRA run alone: the task model with PEFT's LoRA layers injected, only adapters and head trained."""

    def __init__(self, worker: Worker, prep: Prepared, member: Member, setup, debug: Debug, device):
        from peft import LoraConfig, inject_adapter_in_model

        module = prep.model.module
        worker.release(prep.model)  # injected in place: never handed to another run of this worker
        self.cfg = settings(member.spec)
        self.names = layer_names(module, self.cfg["targets"])
        adapter = starting_adapter(module, member.spec)
        config = LoraConfig(
            r=int(self.cfg["r"]),
            lora_alpha=float(self.cfg["alpha"]),
            lora_dropout=float(self.cfg["dropout"]),
            target_modules=self.names,
            bias="none",
        )
        module = inject_adapter_in_model(config, module)
        prefix = module.base_model_prefix
        with torch.no_grad():
            for name in self.names:
                layer = module.get_submodule(name)
                layer.lora_A["default"].weight.copy_(adapter[f"{name}.lora_A"])
                layer.lora_B["default"].weight.copy_(adapter[f"{name}.lora_B"])
        for n, p in module.named_parameters():
            p.requires_grad_("lora_" in n or is_head(n.replace(".base_layer", ""), prefix))
        prep.model = Model(module, prep.kind)
        super().__init__(prep, member, setup, debug, device)

    def adapter(self, i: int = 0) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            layer = self.module.get_submodule(name)
            out[f"{name}.lora_A"] = layer.lora_A["default"].weight.detach()
            out[f"{name}.lora_B"] = layer.lora_B["default"].weight.detach()
        return out

    def state(self, i: int = 0) -> dict[str, torch.Tensor]:
        """The merged weights, by the plain Hugging Face model's names."""
        plain = {n.replace(".base_layer", ""): t for n, t in self.module.state_dict().items() if "lora_" not in n}
        return merged_state(plain, self.adapter(), scale(self.cfg))

    def save(self, i: int, folder: Path, prep: Prepared) -> None:
        save_checkpoint(self.module.config, self.state(i), self.adapter(i), self.cfg, prep.tok, folder, prep.labels)
