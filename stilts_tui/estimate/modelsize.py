"""How big a run's model is before it runs: its parameter count, for the queue's first memory estimate
and the cost estimate's first rate (below both: the queue's placement and estimate/cost.py read it)."""

from __future__ import annotations

from pathlib import Path

from stilts_tui.store import rundir

# parameter counts of common encoders, for the first estimate of a hub model
KNOWN_PARAMS = {
    "roberta-large": 355e6,
    "roberta-base": 125e6,
    "bert-large-uncased": 335e6,
    "bert-base-uncased": 110e6,
    "bert-large-cased": 335e6,
    "bert-base-cased": 108e6,
    "microsoft/deberta-v3-large": 435e6,
    "microsoft/deberta-v3-base": 184e6,
    "sentence-transformers/all-MiniLM-L6-v2": 22.7e6,
}
DEFAULT_PARAMS = 355e6


def model_params(model: dict) -> float:
    """Parameter count from a local config.json, the table above, or the RoBERTa-large default."""
    path = model.get("path")
    if path:
        c = rundir.read_json(Path(path) / "config.json") or {}
        try:
            h, n, v = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c.get("vocab_size", 50265))
            inter = int(c.get("intermediate_size", 4 * h))
            if min(h, n, v, inter) > 0:
                return float(n * (4 * h * h + 2 * h * inter) + v * h)
        except (KeyError, TypeError, ValueError, OverflowError):
            pass
    return KNOWN_PARAMS.get(model.get("name", ""), DEFAULT_PARAMS)
