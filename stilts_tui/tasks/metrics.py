"""Task metrics from predictions: accuracy, F1, MCC (scikit-learn), Pearson/Spearman (scipy)."""

from __future__ import annotations

import numpy as np


def compute(names: list[str] | tuple[str, ...], preds, labels) -> dict[str, float]:
    """Every metric in ``names`` for ``preds`` against ``labels`` (class ids or regression values)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    out: dict[str, float] = {}
    for name in names:
        if name == "acc":
            out["acc"] = float((preds == labels).mean())
        elif name == "f1":
            from sklearn.metrics import f1_score

            out["f1"] = float(f1_score(labels, preds, zero_division=0))
        elif name == "mcc":
            from sklearn.metrics import matthews_corrcoef

            out["mcc"] = float(matthews_corrcoef(labels, preds))
        elif name in ("pearson", "spearman"):
            from scipy import stats

            fn = stats.pearsonr if name == "pearson" else stats.spearmanr
            value = fn(preds, labels)[0] if np.std(preds) > 0 and np.std(labels) > 0 else 0.0
            out[name] = float(value)
        else:
            raise ValueError(f"unknown metric {name!r}")
    return out
