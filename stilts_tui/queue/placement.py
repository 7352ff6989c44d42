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
    """Runs of one shape use the same memory and speed: model, batch, max_len, task kind and choices,
    precision (bf16 activations take half of fp32's)."""
    p = spec.get("params", {})
    task = spec.get("task", {})
    return json.dumps([spec.get("model", {}).get("name"), p.get("batch_size"), p.get("max_len"),
                       task.get("kind"), task.get("num_choices"), p.get("precision", "fp32")])


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


# -- fused arrays: what finished runs measured ---------------------------------------------------------

MAX_ARRAY = 16  # --fuse auto: at most this many runs in one array
PROBE_ARRAY = 4  # --fuse auto: an array of a shape with no measured peak yet holds at most this many


@dataclass
class Shape:
    """What finished runs of one shape measured."""

    share_gb: float | None = None  # the largest peak a run: an array's peak / its K, or a run's own peak
    share_from: str = ""  # which run gave it, for the log
    fused_rates: list[float] = field(default_factory=list)  # samples/s a run, trained in arrays
    alone_rates: list[float] = field(default_factory=list)  # samples/s a run, trained in its own process


def array_size(result: dict, ledger_fused: int | None) -> int:
    """How many runs shared the process that wrote ``result`` (1 when it trained alone): the trainer's
    own count (runs that failed to join an array are not in it), else what the daemon launched."""
    setup = result.get("setup") or {}
    for k in (setup.get("fused"), result.get("fused"), ledger_fused):
        if isinstance(k, int) and not isinstance(k, bool) and k >= 0:
            return max(1, k)
    return 1


class Measurements:
    """Per shape: the measured memory a run takes, and samples/s a run fused and alone, read from the
    ``result.json`` of finished runs. Each result is read once (keyed by run id and finish time)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple] = {}  # run id -> (finished, shape, peak_gb, k, samples/s)
        self._shapes: dict[str, Shape] = {}

    def update(self, runs: list[dict], read_result) -> None:
        for r in runs:
            if r["status"] != "done" or not r.get("shape"):
                continue
            mark = (r.get("finished"), r["shape"])
            old = self._seen.get(r["id"])
            if old is not None and old[:2] == mark:
                continue
            res = read_result(r["id"]) or {}
            peak = res.get("peak_gpu_mem_gb", r.get("peak_gpu_mem_gb"))
            rate = res.get("samples_per_s")
            self._seen[r["id"]] = (*mark, peak if _num(peak) else None, array_size(res, r.get("fused")),
                                   rate if _num(rate) else None)
        self._shapes = {}
        for rid, (_, shape, peak, k, rate) in self._seen.items():
            sh = self._shapes.setdefault(shape, Shape())
            if peak is not None and peak > 0 and (sh.share_gb is None or peak / k > sh.share_gb):
                # peak / K, not (peak - fixed) / K: one array cannot tell a fixed part from the runs' parts,
                # and charging each run its share of the fixed part errs on the safe side for larger K
                sh.share_gb, sh.share_from = peak / k, f"{rid} ({peak:g} GB, {k} run{'s' if k > 1 else ''})"
            if rate is not None and rate > 0:
                (sh.fused_rates if k > 1 else sh.alone_rates).append(rate)

    def shape(self, key: str) -> Shape:
        return self._shapes.get(key) or Shape()

    def packing_reason(self, key: str) -> str | None:
        """Why separate processes beat an array for this shape, or None (fuse) until both are measured."""
        sh = self.shape(key)
        if not sh.fused_rates or not sh.alone_rates:
            return None
        fused = sum(sh.fused_rates) / len(sh.fused_rates)
        alone = sum(sh.alone_rates) / len(sh.alone_rates)
        if fused >= alone:
            return None
        return (f"packing, not fusing: fused runs measured {fused:.1f} samples/s a run "
                f"({len(sh.fused_rates)} runs) < {alone:.1f} alone ({len(sh.alone_rates)} runs)")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
