"""What a plan costs before it is queued: steps and GPU-hours by hand, from the default per model size
and from throughput measured by finished runs in a real ledger; the same in the plan builder."""

from __future__ import annotations

import json

import pytest
from conftest import cli, write_jsonl, write_plan

from stilts_tui import plan as plans
from stilts_tui.cli.demo import pair_rows
from stilts_tui.contract import ResultStatus, Status
from stilts_tui.estimate import cost
from stilts_tui.store.ledger import Ledger

STAGES = """[target.t]
task = "pair"
grid = { lr = [1e-4, 2e-4] }
[target.rte]
task = "rte"
epochs = 1
max_len = 128
"""


@pytest.fixture
def plan_file(tmp_path):
    write_jsonl(tmp_path / "data/tr.jsonl", pair_rows(48, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", pair_rows(16, 2))
    defaults = {"epochs": 2, "batch_size": 16, "max_len": 64}
    return write_plan(
        tmp_path / "c.toml", name="c", defaults=defaults, pair=("data/tr.jsonl", "data/dv.jsonl"), stages=STAGES
    )


def test_steps_and_hours_from_the_default_by_hand(plan_file):
    plan, runs = plans.load_and_expand(plan_file)
    c = cost.estimate(plan, runs)
    t = c.stages["target"]
    # pair: 48 rows (counted in the file), 2 epochs x ceil(48/16) = 6 steps, 96 samples, 2 runs
    # rte (hub, not on disk): 2490 known train examples, 1 epoch x ceil(2490/16) = 156 steps
    assert (t.runs, t.steps, t.samples) == (3, 2 * 6 + 156, 2 * 96 + 2490)
    # roberta-large: 200 samples/s at max_len 128 (rte) -> 400 at max_len 64 (pair), plus 30 s a run
    assert t.seconds == pytest.approx(2 * (96 / 400 + 30) + (2490 / 200 + 30))
    assert (t.default, t.measured) == (3, 0) and c.total.gpu_hours == pytest.approx(t.seconds / 3600)
    assert any("200 samples/s at max_len 128 for ~355M parameters" in n for n in c.notes)


def test_measured_throughput_of_the_same_shape_replaces_the_default(plan_file, runs_dir):
    assert cli("queue", "add", str(plan_file), runs_dir=runs_dir).returncode == 0
    runs = Ledger(runs_dir).runs()
    first = next(r for r in runs if r["name"] == "t")
    (runs_dir / first["id"] / "result.json").write_text(
        json.dumps(
            {
                "status": ResultStatus.DONE,
                "score": 0.5,
                "samples_per_s": 50.0,
                "wall_seconds": 20.0,
                "train_seconds": 12.0,
            }
        )
    )
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(first["id"], status=Status.DONE)
    out = cli("plan", "show", str(plan_file), "--cost", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    target = json.loads(out.stdout)["cost"]["stages"]["target"]
    # both pair runs share the measured shape: 96 samples / 50 per s + (20 - 12) s overhead; rte (max_len
    # 128, another shape): the default
    assert (target["measured"], target["default"]) == (2, 1)
    assert target["gpu_hours"] == pytest.approx((2 * (96 / 50 + 8) + 2490 / 200 + 30) / 3600, abs=1e-4)
    text = cli("plan", "show", str(plan_file), "--cost", runs_dir=runs_dir, env={"COLUMNS": "150"}).stdout
    assert "estimated cost" in text and "2 measured, 1 default" in text and "GPU-hours" in text


async def test_the_plan_builder_shows_the_cost(runs_dir, tmp_path, monkeypatch):
    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.screens.builder import BuilderScreen

    monkeypatch.chdir(tmp_path)
    async with StiltsApp(runs_dir, keymap={}).run_test(size=(170, 45)) as pilot:
        await pilot.pause()
        await pilot.press("b")
        for _ in range(300):  # the builder screen, then its first count
            await pilot.pause(0.02)
            if isinstance(pilot.app.screen, BuilderScreen) and str(pilot.app.screen.query_one("#count").render()):
                break
        screen = pilot.app.screen
        assert isinstance(screen, BuilderScreen)
        text = str(screen.query_one("#count").render())
        # none x rte x 2 seeds x 18 grid points, 3 epochs of 2490 at batch 8/16/32 (6 each)
        steps = 2 * 6 * 3 * sum(-(-2490 // bs) for bs in (8, 16, 32))
        assert f"cost: {steps:,} steps, ~" in text and "GPU-hours (defaults)" in text
