"""The plans expand to the run ids (and spec.json contents) recorded before plan.py became a package:
a run id is a content hash, so any change to expansion would queue a study's runs again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stilts_tui import plan as plans

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "plan_ids"
RECORDED = json.loads((FIXTURE / "ids.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED["ids"]))
def test_plan_expands_to_the_recorded_run_ids(name: str) -> None:
    path = FIXTURE / name if name == "features.toml" else ROOT / name
    ids = [r.id for r in plans.load_and_expand(path)[1]]
    assert len(ids) == len(RECORDED["ids"][name])
    assert ids == RECORDED["ids"][name], f"{name}: run ids differ from those of commit {RECORDED['commit']}"


def test_features_plan_writes_the_recorded_specs() -> None:
    plan, runs = plans.load_and_expand(FIXTURE / "features.toml")
    text = json.dumps([plans.spec_for(r, plan, Path("/runs-dir")) for r in runs], sort_keys=True)
    assert json.loads(text.replace(str(FIXTURE.resolve()), "<HERE>")) == RECORDED["features_specs"]


def test_features_plan_covers_every_stage_and_option() -> None:
    """The fixture plan keeps exercising what enters an id: a rank stage, LoRA, a method grid, custom tasks."""
    _, runs = plans.load_and_expand(FIXTURE / "features.toml")
    assert set(plans.counts(runs)) == {"synth", "intermediate", "rank", "target"}
    assert any(r.params.get("method") == "lora" for r in runs) and any("stop_degenerate" in r.params for r in runs)
    assert any(r.after for r in runs if r.stage == "target")
