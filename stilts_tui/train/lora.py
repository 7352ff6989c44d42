"""LoRA runs (``method = "lora"``): a frozen encoder, low-rank adapters on some of its linear layers, the
task head (and the pooler, where the model has one) trained fully.

A run alone trains through Hugging Face PEFT (:mod:`stilts_tui.train.engines.lora`,
``peft.inject_adapter_in_model``: the adapters go into the task model in place, so the loop's loss and
the compiled step stay those of a full fine-tune). Every adapter starts from this module (A as PEFT
initialises it, from the run's seed on the CPU; B zero), so a run alone and a member of a fused array
(:mod:`stilts_tui.train.engines.lora_array`) start alike.

A LoRA run's checkpoint holds the merged weights (``model.safetensors``, an ordinary Hugging Face
folder: a target starts from it with ``transfer = "merge"`` or ``"all"``, a full fine-tune too) and the
adapter alone (:data:`ADAPTER_FILE`, :data:`ADAPTER_CONFIG`) for ``transfer = "adapter"``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from stilts_tui.contract import is_lora
from stilts_tui.errors import TaskDataError
from stilts_tui.store import files
from stilts_tui.train.worker import Worker

# the plan's target names -> the linear layer of each encoder layer (BERT/RoBERTa naming)
LAYERS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
ADAPTER_FILE = "lora_adapter.safetensors"  # "<layer>.lora_A" [r, in] and "<layer>.lora_B" [out, r]
ADAPTER_CONFIG = "lora.json"
_A_SEED_OFFSET = 7919  # A's generator is not the head's (transfer.apply seeds that one with the seed itself)


def settings(spec: dict) -> dict | None:
    """A LoRA run's resolved ``lora`` table (r, alpha, dropout, targets), None for a full fine-tune."""
    p = spec.get("params") or {}
    return p.get("lora") if is_lora(p) else None


def is_head(name: str, prefix: str) -> bool:
    """Does this parameter train fully in a LoRA run? Everything but the encoder's embeddings and layers
    (the classification or multiple-choice head, and the pooler)."""
    return not (name.startswith(f"{prefix}.embeddings.") or name.startswith(f"{prefix}.encoder."))


def layer_names(module: torch.nn.Module, targets: list[str]) -> list[str]:
    """The full names of the linear layers that take an adapter, in forward order."""
    prefix = module.base_model_prefix
    n = module.config.num_hidden_layers
    return [f"{prefix}.encoder.layer.{i}.{LAYERS[t]}" for i in range(n) for t in LAYERS if t in targets]


def scale(cfg: dict) -> float:
    return float(cfg["alpha"]) / int(cfg["r"])


def initial_adapter(module: torch.nn.Module, cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """A fresh adapter: A as PEFT draws it (Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))),
    from a CPU generator seeded by the run's seed; B zero, so the model starts as its base."""
    gen = torch.Generator().manual_seed(int(seed) + _A_SEED_OFFSET)
    r = int(cfg["r"])
    out = {}
    for name in layer_names(module, cfg["targets"]):
        w = module.get_submodule(name).weight
        bound = 1.0 / math.sqrt(w.shape[1])
        out[f"{name}.lora_A"] = (torch.rand(r, w.shape[1], generator=gen) * 2 - 1) * bound
        out[f"{name}.lora_B"] = torch.zeros(w.shape[0], r)
    return out


def starting_adapter(module: torch.nn.Module, spec: dict) -> dict[str, torch.Tensor]:
    """The adapter a run starts from: its parent's (``transfer = "adapter"``), else a fresh one."""
    cfg = settings(spec)
    p = spec["params"]
    if p.get("transfer") == "adapter" and spec["model"].get("source") == "parent":
        from safetensors.torch import load_file

        path = Path(spec["model"]["path"]) / ADAPTER_FILE
        if not path.is_file():
            raise TaskDataError(
                f"parent run {spec['model'].get('parent')} left no adapter ({path}): "
                'transfer = "adapter" needs a LoRA intermediate'
            )
        adapter = load_file(str(path), device="cpu")
        want = initial_adapter(module, cfg, 0)
        if {k: v.shape for k, v in adapter.items()} != {k: v.shape for k, v in want.items()}:
            raise TaskDataError(f"{path}: the parent's adapter does not have this run's rank and targets")
        return adapter
    return initial_adapter(module, cfg, int(spec["seed"]))


def source(worker: Worker, spec: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The starting weights of a LoRA run's model. With ``transfer = "adapter"``: the encoder of the
    intermediate's own (unmerged) base, and the intermediate's head (as today's name-and-shape rule
    takes it); otherwise what a full fine-tune starts from (a parent's merged weights, or the model)."""
    model = spec["model"]
    if spec["params"].get("transfer") != "adapter" or not model.get("base"):
        return worker.source(model)
    heads = {k: v for k, v in worker.source(model).items() if is_head(k, prefix)}
    base = worker.source(model["base"])  # the bare encoder: names without the task model's prefix
    return {**{k: v for k, v in base.items() if not k.startswith("pooler.")}, **heads}


def merged_state(
    module_state: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], factor: float
) -> dict[str, torch.Tensor]:
    """The full model's weights with the adapter merged in: W + factor * B @ A for each adapted layer."""
    out = {}
    for name, w in module_state.items():
        layer = name[: -len(".weight")] if name.endswith(".weight") else None
        if layer is not None and f"{layer}.lora_A" in adapter:
            a, b = adapter[f"{layer}.lora_A"], adapter[f"{layer}.lora_B"]
            w = w + factor * (b.to(w) @ a.to(w))
        out[name] = w.detach().contiguous()
    return out


def save_checkpoint(config, state: dict, adapter: dict, cfg: dict, tok, folder: Path, labels: list[str] | None) -> None:
    """The merged weights as a Hugging Face folder, and the adapter beside them; written beside the
    folder and renamed into place."""
    from safetensors.torch import save_file

    with files.folder_built_beside(folder) as tmp:  # an unguessable name: never a planted link written through
        if labels:
            config.id2label = dict(enumerate(labels))
            config.label2id = {v: k for k, v in config.id2label.items()}
        config.save_pretrained(str(tmp))
        save_file(
            {k: v.cpu().contiguous() for k, v in state.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok.save_pretrained(str(tmp))


def member_state(module: torch.nn.Module, spec: dict) -> dict[str, torch.Tensor]:
    """What a member of a fused LoRA array owns (CPU copies): its head and its adapter."""
    prefix = module.base_model_prefix
    own = {n: t.detach().to("cpu", copy=True) for n, t in module.named_parameters() if is_head(n, prefix)}
    return {**own, **starting_adapter(module, spec)}
