"""The plans expand to the run ids (and spec.json contents) recorded before plan.py became a package:
a run id is a content hash, so any change to expansion would queue a study's runs again."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from stilts_tui import plan as plans
from stilts_tui import tasks

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "plan_ids"
RECORDED = json.loads((FIXTURE / "ids.json").read_text())
_spec = importlib.util.spec_from_file_location("plan_ids_make", FIXTURE / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


@pytest.mark.parametrize("name", sorted(RECORDED["ids"]))
def test_plan_expands_to_the_recorded_run_ids(name: str) -> None:
    path = make.staged() if name == "features.toml" else ROOT / name
    ids = [r.id for r in plans.load_and_expand(path)[1]]
    assert len(ids) == len(RECORDED["ids"][name])
    assert ids == RECORDED["ids"][name], f"{name}: run ids differ from those of commit {RECORDED['commit']}"


def test_features_plan_writes_the_recorded_specs() -> None:
    """The same spec.json files but one change made since on purpose: a task's hub source names the revision
    it is pinned to (docs/tasks.md), which no run id hashes."""
    now = make.specs(make.staged())
    for spec in now:
        hub = (spec.get("task") or {}).get("hub")
        if hub:
            assert len(hub) == 3 and hub[2] == tasks.get(spec["task"]["name"]).hub[2]
            spec["task"]["hub"] = hub[:2]
    assert now == RECORDED["features_specs"]


def test_features_plan_covers_every_stage_and_option() -> None:
    """The fixture plan keeps exercising what enters an id: a rank stage, LoRA, a method grid, custom tasks."""
    _, runs = plans.load_and_expand(FIXTURE / "features.toml")
    assert set(plans.counts(runs)) == {"synth", "intermediate", "rank", "target"}
    assert any(r.params.get("method") == "lora" for r in runs) and any("stop_degenerate" in r.params for r in runs)
    assert any(r.after for r in runs if r.stage == "target")
