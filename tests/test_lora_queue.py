"""The queue and LoRA runs: arrays group LoRA runs by their frozen encoder, the memory estimate counts
that encoder once, and an out-of-memory LoRA array is split as full arrays are (the real daemon's tick on
fake GPUs, with the stand-in executor of tests/test_gpu_queue.py)."""

from __future__ import annotations

import json
from pathlib import Path

from test_gpu_queue import add_runs, finish, placements, tick_daemon  # noqa: F401 - tick_daemon: a fixture

from stilts_tui import contract
from stilts_tui.queue.placement import formula_gb

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}


def _as_lora(root: Path, ids: list[str]) -> dict:
    for rid in ids:
        path = root / rid / "spec.json"
        spec = json.loads(path.read_text())
        spec["params"].update(method="lora", lora=LORA)
        path.write_text(json.dumps(spec))
    return spec


def test_lora_arrays_count_the_frozen_encoder_once_and_split_on_oom(tmp_path, runs_dir, tick_daemon):  # noqa: F811
    """Full fine-tunes of roberta-large at this shape go 3 to a 24 GB GPU (6.41 GB each, test_gpu_queue);
    LoRA runs go in arrays of 4 (the probe size), two on one GPU, each array estimated at one encoder plus
    4 runs' own parts. An array out of memory comes back as arrays of half its size."""
    spec = _as_lora(runs_dir, add_runs(tmp_path, runs_dir, 12))
    one, four = formula_gb(spec, 1), formula_gb(spec, 4)
    assert four < 4 * one and four - one < 3 * 0.6  # each run after the first adds well under 1 GB
    d = tick_daemon(fuse="auto")
    d.tick()
    first = placements(runs_dir)
    assert [(len(p["runs"]), p["est_gb"]) for p in first] == [(4, four)] * 3  # a full array of 3: 19.23 GB
    finish(d, runs_dir, first[0]["runs"], status="oom")
    assert d.tick()["requeued"] == 4
    halves = placements(runs_dir)[3:]
    assert sorted(len(p["runs"]) for p in halves) == [2, 2]
    assert sorted(sum((p["runs"] for p in halves), [])) == sorted(first[0]["runs"])
    assert all("capped at 2 after an OOM" in p["fuse_why"] for p in halves)


def _spec(**over) -> dict:
    base = {
        "stage": "target",
        "task": {"name": "rte"},
        "params": {"batch_size": 8, "max_len": 64, "epochs": 1, "method": "lora", "lora": LORA},
    }
    model = over.pop("model", {"name": "roberta-large"})
    params = over.pop("params", {})
    return {**base, "model": model, **over, "params": {**base["params"], **params}}


def _parent(rid: str, **extra) -> dict:
    return {"source": "parent", "parent": rid, "name": "roberta-large", "path": f"/runs/{rid}/checkpoint", **extra}


def test_lora_runs_share_an_array_only_over_the_same_frozen_encoder():
    hub = {"source": "hub", "name": "roberta-large", "path": None}
    key = contract.array_key
    # full fine-tunes of one base share arrays whatever their parent (each member holds its own weights)
    full = [_spec(model=_parent(p), params={"method": None, "lora": None}) for p in ("a" * 12, "b" * 12)]
    for s in full:
        s["params"] = {k: v for k, v in s["params"].items() if k not in ("method", "lora")}
    assert key(full[0]) == key(full[1])
    # LoRA runs merging different intermediates freeze different weights: never one array
    assert key(_spec(model=_parent("a" * 12))) != key(_spec(model=_parent("b" * 12)))
    assert key(_spec(model=_parent("a" * 12))) == key(_spec(model=_parent("a" * 12), seed=3))
    # training the intermediates' adapters further freezes their common base: one array, with the baseline
    adapter = {"transfer": "adapter"}
    a = _spec(model=_parent("a" * 12, base=hub), params=adapter)
    b = _spec(model=_parent("b" * 12, base=hub), params=adapter)
    assert key(a) == key(b) == key(_spec(model=hub, params=adapter))
    # another rank or other layers, or a full fine-tune: another array
    assert key(_spec(model=hub)) != key(_spec(model=hub, params={"lora": {**LORA, "r": 16}}))
    assert key(_spec(model=hub)) != key(full[0])
