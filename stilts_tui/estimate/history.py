"""The box's finished runs, read once for every estimate that learns from them by shape.

The cost estimate (:mod:`.cost`: samples/s and start-up overhead) and the wall-time prediction
(:mod:`.walltime`: time by phase, packing, fused speed-ups) both learn from the same runs: those the
ledger records ``done``, of a trained stage, whose run folder holds a readable ``spec.json`` and
``result.json``. Each is keyed by the contract's ``shape_key`` of its spec and says how many runs its
array trained at once. No torch; reads the ledger and run folders only, and a damaged one reads as none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import LEDGER_FILE, RESULT_FILE, SPEC_FILE, TRAINED_STAGES, Status, shape_key


@dataclass(frozen=True)
class Finished:
    """One finished trained run: its ledger row, spec.json, result.json, shape, and array size."""

    row: dict
    spec: dict
    result: dict
    shape: str
    fused: int  # runs trained in its process's array (1: alone)
    device: str = "cpu"  # where it trained (:func:`device_of`)


@dataclass
class History:
    """What the ledger says the box has finished."""

    runs: list[Finished] = field(default_factory=list)  # trained, done, both files readable
    done: list[dict] = field(default_factory=list)  # every row recorded done, any stage (who ran beside whom)

    @property
    def trained(self) -> int:
        """Done rows of a trained stage, read or not (what a history's size is said to be)."""
        return sum(1 for r in self.done if r.get("stage") in TRAINED_STAGES)


def finite(v: object) -> float | None:
    """A finite number as a float, or None (a bool, a string, NaN or inf is no figure)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def fused_of(result: dict) -> int:
    """How many runs trained in ``result``'s array: its setup's ``fused``, else the result's own (written
    before the setup kept it), else 1. Only a whole count of at least 1 counts; anything else is alone."""
    setup = result.get("setup") if isinstance(result.get("setup"), dict) else {}
    for v in (setup.get("fused"), result.get("fused")):
        n = finite(v)
        if n is not None and n >= 1 and n == int(n):
            return int(n)
    return 1


UNKNOWN_GPU = "cuda:?"  # a GPU run whose result does not say which GPU (written before results kept it)


def device_of(result: dict) -> str:
    """Where a finished run trained, as a key: ``cpu`` or ``cuda:<GPU name>`` (result.json's ``device``,
    written by the trainer). A result older than that field: a GPU run when it records peak GPU memory (the
    trainer records it only on a GPU), of an unknown GPU (:data:`UNKNOWN_GPU`); else the CPU."""
    d = result.get("device")
    if isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"]:
        if d["type"] == "cpu":
            return "cpu"
        name = d.get("name")
        return f"{d['type']}:{name}" if isinstance(name, str) and name else UNKNOWN_GPU
    return UNKNOWN_GPU if finite(result.get("peak_gpu_mem_gb")) is not None else "cpu"


def box_device(gpus: list) -> str:
    """The device a plan trains on here: the first usable real GPU's (``cuda:<name>``, as the trainer
    records it), else the CPU (a fake GPU, ``STILTS_FAKE_GPUS``, trains on the CPU)."""
    real = [g for g in gpus if not getattr(g, "fake", False) and getattr(g, "error", None) is None]
    return f"cuda:{real[0].name}" if real else "cpu"


def read(root: Path | None) -> History:
    """The finished runs of ``root``'s ledger (an empty history without a ledger, or with a damaged one)."""
    if root is None or not (Path(root) / LEDGER_FILE).exists():
        return History()
    from stilts_tui.errors import UserError
    from stilts_tui.store import rundir
    from stilts_tui.store.ledger import Ledger

    try:
        rows = Ledger(root).runs()
    except UserError:
        return History()
    out = History(done=[r for r in rows if isinstance(r, dict) and r.get("status") == Status.DONE])
    for r in out.done:
        if r.get("stage") not in TRAINED_STAGES:
            continue
        try:
            d = rundir.run_dir(root, r.get("id"))
        except UserError:
            continue
        res, spec = rundir.read_json(d / RESULT_FILE), rundir.read_json(d / SPEC_FILE)
        if res and spec:
            out.runs.append(Finished(r, spec, res, shape_key(spec), fused_of(res), device_of(res)))
    return out
