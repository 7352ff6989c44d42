"""stop_degenerate: runs stuck at the majority class end early as ``degenerate`` (alone and in a fused
array), through the real plan, daemon, trainer and score table; and the status in every reader."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import (
    REFERENCE_PLAN,
    add,
    all_final,
    cli,
    make_plan,
    start,
    statuses,
    until,
    wait,
    write_jsonl,
    write_text,
)

from stilts_tui import contract, results
from stilts_tui.cli import rehearse
from stilts_tui.plan import load_and_expand
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.screens.scores import distribution

# On the tiny model and the data below (label: the last word of s2 is w7 or w8), seeded on the CPU:
# lr 1e-3 stays at the majority class (dev acc 0.5, 0.5, 0.5); lr 1e-2 is there at its first evaluation and
# learns by its second (0.5, 1.0, 1.0). patience = 2: the first is stopped at epoch 2, the second is not.
STAGES = """[target.t]
task = "pair"
epochs = 3
batch_size = 4
warmup = 0.4
stop_degenerate = {{ patience = 2 }}
grid = {{ lr = [1e-3, 1e-2] }}
{extra}
"""


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s1 = " ".join(f"w{rng.randrange(100, 5000)}" for _ in range(5))
        s2 = " ".join(f"w{rng.randrange(100, 5000)}" for _ in range(4)) + (" w7" if i % 2 else " w8")
        out.append({"s1": s1, "s2": s2, "label": "same" if i % 2 else "different"})
    return out


def _plan(tmp_path: Path, model: Path, extra: str = "") -> Path:
    plan = make_plan(tmp_path, model, STAGES.format(extra=extra), baseline=True)
    write_jsonl(tmp_path / "data/tr.jsonl", _rows(32, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", _rows(16, 2))  # balanced: the majority class scores 0.5
    return plan


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def _by_lr(runs_dir: Path) -> dict[float, dict]:
    return {r["params"]["lr"]: r for r in Ledger(runs_dir).runs()}


@pytest.mark.slow
def test_a_collapsed_run_is_stopped_degenerate_and_one_that_recovers_trains_on(
    tmp_path, runs_dir, tiny_model, queue_env
):
    add(_plan(tmp_path, tiny_model), runs_dir, queue_env)
    start(runs_dir, queue_env, "--per-gpu", "1")
    wait(lambda: all_final(runs_dir), what="both runs to end")
    runs = _by_lr(runs_dir)
    stuck, learns = runs[1e-3], runs[1e-2]
    assert (stuck["status"], learns["status"]) == ("degenerate", "done")

    res = json.loads((runs_dir / stuck["id"] / "result.json").read_text())
    assert res["status"] == "degenerate" and res["score"] == 0.5 and len(res["epoch_metrics"]) == 2
    assert res["stopped"]["epoch"] == 2 and res["stopped"]["patience"] == 2 and res["stopped"]["after_epochs"] == 1
    assert res["stopped"]["majority_score"] == 0.5 and "majority-class" in res["stopped"]["rule"]
    assert res["train_seconds"] > 0 and res["steps"] == 16  # 2 of 3 epochs of 8 steps: its time is kept
    events = _events(runs_dir / stuck["id"])
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [1, 2]  # its curve, up to the stop
    assert [e["status"] for e in events if e["event"] == "end"] == ["degenerate"]
    assert stuck["error"].startswith("degenerate: dev acc 0.5000, 0.5000 at or below")
    # what the stop saved: the third epoch's 8 steps at the run's own pace (half its 16 steps' time)
    stop = res["stopped"]
    assert (stop["steps_done"], stop["total_steps"]) == (16, 24)
    assert abs(stop["saved_seconds"] - res["train_seconds"] / 2) <= 0.25 * res["train_seconds"] + 0.1
    assert "stopped at step 16 of 24, about 0:" in stuck["error"] and "of training saved" in stuck["error"]

    done = json.loads((runs_dir / learns["id"] / "result.json").read_text())
    assert [m["acc"] for m in done["epoch_metrics"]] == [0.5, 1.0, 1.0] and "stopped" not in done

    ls = cli("queue", "ls", "--status", "degenerate", runs_dir=runs_dir)
    assert ls.returncode == 0 and stuck["id"] in ls.stdout and learns["id"] not in ls.stdout
    assert "at or below the majority" in ls.stdout

    table = json.loads(cli("scores", "q", "--format", "json", runs_dir=runs_dir).stdout)
    cell = table["cells"][0]
    assert (cell["n"], cell["failed"], cell["stopped"]) == (2, 1, 1)  # counted as failed, said to be stopped
    assert cell["mean"] == 0.75 and cell["mean_without_failed"] == 1.0
    md = cli("scores", "q", "--format", "md", runs_dir=runs_dir).stdout
    assert "fail 1/2 (1 stopped)" in md and "runs stopped as degenerate" in md
    assert "1 of them stopped as degenerate" in distribution(results.build(runs_dir, "q").cells[0])  # the app's

    # undone by a retry: the next attempt trains to its last epoch (and is not stopped again)
    assert cli("queue", "retry", stuck["id"], runs_dir=runs_dir).returncode == 0
    wait(lambda: statuses(runs_dir)[stuck["id"]] == "done", what="the retried run to finish")
    again = json.loads((runs_dir / stuck["id"] / "result.json").read_text())
    assert len(again["epoch_metrics"]) == 3 and "stopped" not in again
    assert again["stop_degenerate"] == "off: retried after a degenerate attempt"
    assert (runs_dir / stuck["id"] / "result.attempt1.json").is_file()  # the stopped attempt is kept


def test_a_degenerate_member_leaves_its_fused_array_and_the_others_go_on(tmp_path, runs_dir, tiny_model, queue_env):
    add(_plan(tmp_path, tiny_model, extra="fuse = true"), runs_dir, queue_env)
    start(runs_dir, queue_env, "--per-gpu", "1", "--fuse", "2")
    wait(lambda: all_final(runs_dir), what="the array to end")
    runs = _by_lr(runs_dir)
    stuck = json.loads((runs_dir / runs[1e-3]["id"] / "result.json").read_text())
    learns = json.loads((runs_dir / runs[1e-2]["id"] / "result.json").read_text())
    assert (runs[1e-3]["status"], runs[1e-2]["status"]) == ("degenerate", "done")
    assert stuck["fused"] == 2 and learns["fused"] == 2  # they trained as one array
    assert stuck["stopped"]["epoch"] == 2 and len(learns["epoch_metrics"]) == 3
    assert learns["score"] > 0.5


def test_stop_degenerate_is_checked_resolved_into_params_and_off_by_default(tmp_path, tiny_model):
    plan = _plan(tmp_path, tiny_model)
    _, runs = load_and_expand(plan)
    assert {json.dumps(r.params["stop_degenerate"]) for r in runs} == {'{"after_epochs": 1, "patience": 2}'}
    _, reference = load_and_expand(REFERENCE_PLAN)
    assert all("stop_degenerate" not in r.params for r in reference)  # off: the reference's run ids unchanged
    for bad, why in (
        ("stop_degenerate = { patience = 0 }", "stop_degenerate.patience"),
        ("stop_degenerate = { after = 1 }", "unknown key"),
        ("stop_degenerate = 1", "expected a table"),
        ("grid = { stop_degenerate = [{ patience = 1 }] }", "not a grid axis"),
    ):
        text = plan.read_text().replace("stop_degenerate = { patience = 2 }", "")
        text = text.replace(
            "grid = { lr = [1e-3, 1e-2] }", bad if bad.startswith("grid") else f"{bad}\ngrid = {{ lr = [1e-3] }}"
        )
        out = cli("plan", "validate", str(write_text(tmp_path / "bad.toml", text)))
        assert out.returncode == 2 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_degenerate_status_in_the_contract_the_ledger_and_the_rehearsal(runs_dir):
    assert contract.Status.DEGENERATE in contract.FINAL and contract.Status.DEGENERATE in contract.SETTLED
    assert contract.Status.DEGENERATE in contract.RETRYABLE and contract.Status.DEGENERATE in contract.BLOCKING
    assert contract.Status.DEGENERATE not in contract.UNBLOCKING and contract.Status.DEGENERATE not in contract.ACTIVE
    # both executors (local and Slurm) reap a result through ledger_status
    assert [contract.ledger_status(s) for s in ("done", "degenerate", "failed", "oom")] == [
        "done",
        "degenerate",
        "failed",
        "failed",
    ]
    runs = [
        {"id": "a", "stage": "target", "name": "t", "status": "done", "order": 0, "started": 0, "finished": 5},
        {"id": "b", "stage": "target", "name": "t", "status": "degenerate", "order": 1, "started": 0, "finished": 2},
    ]
    lines, ok = rehearse.stage_lines(runs_dir, runs)
    assert ok and lines == ["ok    target.t: 2 runs (7 s of runs; 1 stopped as degenerate)"]


async def test_the_queue_screen_shows_degenerate_runs_with_their_reason(tmp_path, runs_dir, tiny_model):
    from textual.widgets import DataTable

    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.screens.queue import COLUMNS, QueueScreen

    assert cli("queue", "add", str(_plan(tmp_path, tiny_model)), runs_dir=runs_dir).returncode == 0
    run = Ledger(runs_dir).runs()[0]
    why = "degenerate: dev acc 0.5000 at or below the majority class's 0.5000 by epoch 1"
    Ledger(runs_dir).update(run["id"], status="degenerate", error=why, score=0.5)
    async with StiltsApp(runs_dir, keymap={}, confirm=False).run_test(size=(220, 40)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

        def shown() -> bool:
            screen = pilot.app.screen
            return isinstance(screen, QueueScreen) and screen.query_one(DataTable).row_count == 2

        await until(pilot, shown, "the queue screen filled")
        table = pilot.app.screen.query_one(DataTable)
        row = table.get_row(run["id"])
        assert str(row[COLUMNS.index("status")]) == "degenerate" and str(row[COLUMNS.index("reason")]) == why
        assert "1 degenerate (stopped early)" in str(pilot.app.screen.query_one("#totals").render())
