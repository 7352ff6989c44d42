"""Where a run may go: memory estimates (learned from finished runs of the same shape, a safe
formula before any) and the choice of a GPU with room."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# parameter counts of common encoders, for the first estimate of a hub model
KNOWN_PARAMS = {
    "roberta-large": 355e6, "roberta-base": 125e6, "bert-large-uncased": 335e6, "bert-base-uncased": 110e6,
    "bert-large-cased": 335e6, "bert-base-cased": 108e6, "microsoft/deberta-v3-large": 435e6,
    "microsoft/deberta-v3-base": 184e6, "sentence-transformers/all-MiniLM-L6-v2": 22.7e6,
}
DEFAULT_PARAMS = 355e6
MARGIN = 1.15  # learned peaks are padded by this much
HEADROOM = 0.95  # never plan beyond this share of a GPU's memory


def model_params(model: dict) -> float:
    """Parameter count from a local config.json, the table above, or the RoBERTa-large default."""
    path = model.get("path")
    if path:
        cfg = Path(path) / "config.json"
        try:
            c = json.loads(cfg.read_text())
            h, n, v = c["hidden_size"], c["num_hidden_layers"], c.get("vocab_size", 50265)
            inter = c.get("intermediate_size", 4 * h)
            return n * (4 * h * h + 2 * h * inter) + v * h
        except (OSError, ValueError, KeyError):
            pass
    return KNOWN_PARAMS.get(model.get("name", ""), DEFAULT_PARAMS)


def shape_key(run: dict, spec: dict) -> str:
    """Runs of one shape use the same memory: model, batch, max_len, task kind and choices."""
    p = spec.get("params", {})
    task = spec.get("task", {})
    return json.dumps([spec.get("model", {}).get("name"), p.get("batch_size"), p.get("max_len"),
                       task.get("kind"), task.get("num_choices")])


def formula_gb(spec: dict) -> float:
    """A safe first estimate: weights, gradients and AdamW state in fp32 (16 bytes a parameter, plus
    bf16 copies) and activations growing with batch x choices x length."""
    params = model_params(spec.get("model", {}))
    p = spec.get("params", {})
    choices = spec.get("task", {}).get("num_choices") or 1
    tokens = p.get("batch_size", 8) * choices * p.get("max_len", 128)
    act = tokens * 1.2e-3 * (params / 355e6)
    return round(max(1.0, 18 * params / 2**30 + act), 2)


@dataclass
class Device:
    """A GPU (or the CPU, index None) and what this queue has placed on it."""

    index: int | None
    total_gb: float
    free_gb: float
    slots: int
    reserved_gb: float = 0.0
    procs: int = 0
    alone: bool = False  # a run that must be alone holds it
    run_ids: list[str] = field(default_factory=list)

    def room_gb(self) -> float:
        return min(self.total_gb * HEADROOM - self.reserved_gb, self.free_gb)

    def fits(self, est_gb: float, alone: bool) -> bool:
        if self.alone or self.procs >= self.slots:
            return False
        if alone:
            return self.procs == 0
        return self.index is None or est_gb <= self.room_gb()


def choose(devices: list[Device], est_gb: float, alone: bool) -> Device | None:
    """The device with the most room that fits (spreads runs across GPUs)."""
    ok = [d for d in devices if d.fits(est_gb, alone)]
    if not ok:
        return None
    return max(ok, key=lambda d: (d.room_gb() if d.index is not None else 0, -d.procs))
