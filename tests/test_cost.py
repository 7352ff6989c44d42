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


def test_steps_by_hand_and_no_hours_before_anything_was_measured(plan_file):
    plan, runs = plans.load_and_expand(plan_file)
    c = cost.estimate(plan, runs, cost.Rates(device="cpu"))
    t = c.stages["target"]
    # pair: 48 rows (counted in the file), 2 epochs x ceil(48/16) = 6 steps, 96 samples, 2 runs
    # rte (hub, not on disk): 2490 known train examples, 1 epoch x ceil(2490/16) = 156 steps
    assert (t.runs, t.steps, t.samples) == (3, 2 * 6 + 156, 2 * 96 + 2490)
    # nothing measured on this CPU: no hours (no GPU default on a CPU box), and it says so
    assert (t.measured, t.unmeasured) == (0, 3) and t.hours is None and c.total.hours is None
    assert c.unit == "CPU-hours" and any("nothing measured on the CPU yet" in n for n in c.notes)


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
    # both pair runs share the measured shape: 96 samples / 50 per s, (20 - 12) s outside the loop, 2 x 16
    # dev examples at 3 x 50 a second; rte (max_len 128, the same model): 50 x 64/128 = 25 samples/s, its
    # 1000 dev examples (hub: at most 1000 counted) at 3 x 25. All on this CPU: CPU-hours, no GPU-hours.
    assert (target["measured"], target["unmeasured"]) == (3, 0)
    pair = 96 / 50 + 8 + 32 / 150
    rte = 2490 / 25 + 8 + 1000 / 75
    assert target["hours"] == pytest.approx((2 * pair + rte) / 3600, abs=1e-4) and target["gpu_hours"] is None
    text = cli("plan", "show", str(plan_file), "--cost", runs_dir=runs_dir, env={"COLUMNS": "150"}).stdout
    assert "estimated cost" in text and "3 measured" in text and "CPU-hours" in text and "GPU-hours" not in text


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
        assert f"cost: {steps:,} steps; time: nothing measured on the CPU yet" in text
