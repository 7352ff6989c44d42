"""Curves (issue 37, must-show 1 and 2): a log pane's curves grow as its run's events.jsonl grows (real
files written during the test) with the majority-class line on the dev metric; the queue's loss-trend
column; the compare view of marked runs, grouped by all settings but the seed (mean and min-max band);
the runs behind a score cell; and ``scores PLAN --curves -o curves.pdf`` (one column of panels per
target, one line per starting point)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cli, plan_text, until, write_text
from textual.widgets import DataTable, SelectionList

from stilts_tui.results import curves
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.columns import ColumnsScreen
from stilts_tui.tui.screens.compare import CompareScreen
from stilts_tui.tui.screens.logs import LogsScreen
from stilts_tui.tui.screens.scores import ScoresScreen
from stilts_tui.tui.widgets.log_pane import CURVES_S, LogPane

# RTE dev: 3 of 5 "entailment": the majority class scores 0.6
RTE_DEV = "index\tsentence1\tsentence2\tlabel\n" + "".join(
    f"{i}\tA.\tB.\t{lab}\n" for i, lab in enumerate(["entailment"] * 3 + ["not_entailment"] * 2)
)
PLAN = plan_text(
    name="cv",
    seeds=(1, 2),
    stages="""[intermediate.a]
task = "hellaswag"
[target.t1]
task = "rte"
data_dir = "data/rte"
grid = { lr = [1e-5, 2e-5] }
[target.t2]
task = "rte"
data_dir = "data/rte"
""",
)


@pytest.fixture
def queued(tmp_path, runs_dir) -> Path:
    write_text(tmp_path / "data" / "rte" / "train.tsv", RTE_DEV)
    write_text(tmp_path / "data" / "rte" / "dev.tsv", RTE_DEV)
    plan = write_text(tmp_path / "cv.toml", PLAN)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    return runs_dir


def targets(root: Path, name: str = "t1", inter: str = "none") -> list[dict]:
    """The plan's target runs of ``name`` from ``inter``, by (seed, lr)."""
    runs = [r for r in Ledger(root).runs() if r["stage"] == "target" and r["name"] == name]
    return sorted((r for r in runs if r["intermediate"] == inter), key=lambda r: (r["seed"], r["params"]["lr"]))


def append_events(root: Path, run_id: str, *events: dict) -> None:
    with open(root / run_id / "events.jsonl", "a") as f:
        for e in events:
            f.write(json.dumps({"t": time.time(), **e}) + "\n")


def steps(first: int, last: int, total: int = 100, epochs: int = 2, base: float = 1.0) -> list[dict]:
    return [
        {"event": "step", "step": s, "total_steps": total, "epoch": 1, "loss": base / s, "lr": 1e-5 * (1 - s / total)}
        for s in range(first, last + 1)
    ]


def finished_run(root: Path, run_id: str, accs: list[float], base: float) -> None:
    """A run's events: 2 epochs of 10 steps (loss base/step), an evaluation each epoch."""
    append_events(
        root,
        run_id,
        {"event": "start", "pid": 1},
        {"event": "begin", "total_steps": 10, "epochs": 2},
        *steps(1, 5, 10, base=base),
        {"event": "eval", "epoch": 1, "metrics": {"acc": accs[0]}},
        *steps(6, 10, 10, base=base),
        {"event": "eval", "epoch": 2, "metrics": {"acc": accs[1]}},
    )


async def test_a_log_panes_curves_grow_with_its_events_and_draw_the_majority_class_line(queued):
    run = targets(queued)[0]["id"]
    append_events(queued, run, {"event": "start", "pid": 1}, {"event": "begin", "total_steps": 100, "epochs": 2})
    append_events(queued, run, *steps(1, 3))
    app = StiltsApp(queued, keymap={}, confirm=False)
    async with app.run_test(size=(160, 45)) as pilot:
        app.open_logs([run])
        await until(pilot, lambda: isinstance(app.screen, LogsScreen) and app.screen.query(LogPane), "the pane")
        pane = app.screen.query_one(LogPane)
        loss, metric = pane.view.plots["loss"], pane.view.plots["metric"]
        await until(pilot, lambda: loss.drawn.get("series", {}).get("loss", ([],))[0] == [1, 2, 3], "steps 1-3 drawn")
        assert "loss 0.3333 at step 3" in loss.frame.plain  # the frame shown holds its title
        # the file grows while the app runs: more steps and an evaluation below the majority class (0.6)
        append_events(queued, run, *steps(4, 50), {"event": "eval", "epoch": 1, "metrics": {"acc": 0.55}})
        await until(pilot, lambda: loss.drawn["series"]["loss"][0][-1] == 50, "step 50 drawn")
        assert loss.drawn["series"]["loss"][1][-1] == pytest.approx(1 / 50)
        await until(pilot, lambda: metric.drawn.get("series", {}).get("acc") == ([1.0], [0.55]), "the evaluation")
        await until(pilot, lambda: metric.drawn.get("hlines") == [pytest.approx(0.6)], "the majority-class line")
        assert "majority 0.6000" in metric.frame.plain
        # the learning rate as a sparkline, its last value said
        assert pane.view.lr[-1] == pytest.approx(1e-5 * 0.5)
        assert str(app.screen.query_one("#lr").render()).startswith("█")  # falling from the first step
        # v hides the curves: nothing is drawn while hidden, and steps written meanwhile show when they return
        await pilot.press("v")
        assert not pane.view.display
        append_events(queued, run, *steps(51, 60))
        await until(pilot, lambda: pane.curves.steps[-1:] == [60], "the reader took the new steps")
        await pilot.pause(CURVES_S + 0.3)
        assert loss.drawn["series"]["loss"][0][-1] == 50  # not drawn while hidden
        await pilot.press("v")
        await until(pilot, lambda: loss.drawn["series"]["loss"][0][-1] == 60, "drawn again once shown")


async def test_the_queue_offers_a_loss_trend_column_for_running_runs(queued, monkeypatch, tmp_path):
    run = targets(queued)[0]["id"]
    with Ledger(queued).transaction() as tx:
        tx.update_run(run, status="running", gpu=0, started=time.time())
    append_events(queued, run, {"event": "start", "pid": 1}, *steps(1, 20))
    app = StiltsApp(queued, keymap={}, confirm=False)
    async with app.run_test(size=(220, 40)) as pilot:
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count > 0, "the runs")
        assert "trend" not in [str(c.label) for c in table.columns.values()]  # hidden until chosen
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, ColumnsScreen), "the columns chooser")
        options = app.screen.query_one(SelectionList)
        assert "trend" in [options.get_option_at_index(i).value for i in range(options.option_count)]
        options.select("trend")
        await pilot.press("enter")
        await until(pilot, lambda: "trend" in [str(c.label) for c in table.columns.values()], "the trend column")
        cell = str(table.get_cell(run, "trend"))
        # loss 1/step over 20 steps, 10 blocks of 2 steps' mean (0.75, 0.29, 0.18, 0.13, ... 0.05) scaled to 8 levels
        assert cell == "█▃▂▁▁▁▁▁▁▁"
        assert all(str(table.get_cell(r["id"], "trend")) == "" for r in targets(queued)[1:])  # not running


async def test_compare_shows_marked_runs_and_groups_them_by_all_settings_but_the_seed(queued):
    t1 = targets(queued)  # (seed 1, lr 1e-5), (seed 1, lr 2e-5), (seed 2, lr 1e-5), (seed 2, lr 2e-5)
    accs = {0: [0.5, 0.7], 1: [0.6, 0.8], 2: [0.55, 0.9], 3: [0.65, 0.6]}
    for i, r in enumerate(t1):
        finished_run(queued, r["id"], accs[i], base=1.0 + i)
    app = StiltsApp(queued, keymap={}, confirm=False)
    async with app.run_test(size=(200, 50)) as pilot:
        screen = app.screen
        table = screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count > 0, "the runs")
        for r in t1:  # mark the four runs of t1 from none
            table.move_cursor(row=screen._shown.index(r["id"]), animate=False)
            await pilot.press("space")
        assert sorted(screen.marked) == sorted(r["id"] for r in t1)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), "the compare screen")
        cmp = app.screen
        await until(pilot, lambda: cmp.comparison is not None, "the curves read")
        assert [b.n for b in cmp.comparison.metrics] == [1, 1, 1, 1]  # one line a run
        plotted = cmp.plots["metric"].drawn["series"]
        assert len(plotted) == 4 and cmp.plots["metric"].drawn["hlines"] == [pytest.approx(0.6)]
        await pilot.press("g")
        await until(pilot, lambda: cmp.comparison.metrics[0].n == 2, "grouped by all but the seed")
        lr1, lr2 = cmp.comparison.metrics
        assert set(lr1.runs) == {t1[0]["id"], t1[2]["id"]} and set(lr2.runs) == {t1[1]["id"], t1[3]["id"]}
        assert lr1.x == [1.0, 2.0] and lr1.mean == pytest.approx([0.525, 0.8])
        assert (lr1.lo, lr1.hi) == (pytest.approx([0.5, 0.7]), pytest.approx([0.55, 0.9]))
        assert lr2.mean == pytest.approx([0.625, 0.7]) and (lr2.lo, lr2.hi) == ([0.6, 0.6], [0.65, 0.8])
        loss1 = cmp.comparison.loss[0]  # runs 0 and 2: loss 1/step and 3/step at the same epochs
        assert loss1.x[0] == pytest.approx(0.2) and loss1.x[-1] == pytest.approx(2.0)
        assert (loss1.mean[0], loss1.lo[0], loss1.hi[0]) == pytest.approx((2.0, 1.0, 3.0))
        assert (loss1.mean[-1], loss1.lo[-1], loss1.hi[-1]) == pytest.approx((0.2, 0.1, 0.3))
        legend = str(cmp.query_one("#legend").render())
        assert "t1 from none lr=1e-05 (n=2)" in legend and "dev acc 0.8000 [0.7000, 0.9000] at epoch 2" in legend
        assert len(cmp.plots["metric"].drawn["series"]) == 2


async def test_v_on_a_score_cell_shows_the_curves_of_the_runs_behind_it(queued):
    t1 = targets(queued)
    for i, r in enumerate(t1):
        finished_run(queued, r["id"], [0.5 + 0.1 * i, 0.6 + 0.1 * i], base=1.0)
        (queued / r["id"] / "result.json").write_text(
            json.dumps({"status": "done", "metrics": {"acc": 0.6 + 0.1 * i}, "primary_metric": "acc", "score": 0.6})
        )
    app = StiltsApp(queued, keymap={}, confirm=False)
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, ScoresScreen), "the scores screen")
        scores = app.screen
        await until(pilot, lambda: scores.table_data is not None, "the table")
        matrix = scores.query_one(DataTable)
        matrix.cursor_coordinate = (scores.table_data.rows.index("none"), 1 + scores.table_data.targets.index("t1"))
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), "the compare screen")
        cmp = app.screen
        await until(pilot, lambda: cmp.comparison is not None, "the curves read")
        assert cmp.grouped and sorted(r["id"] for r in cmp.rows) == sorted(r["id"] for r in t1)
        assert [b.n for b in cmp.comparison.metrics] == [2, 2]  # the cell's grid points, each over its 2 seeds


def test_scores_curves_export_writes_a_figure_with_a_column_of_panels_per_target(queued, tmp_path):
    for name, inter, shift in (("t1", "none", 0.0), ("t1", "a", 0.1), ("t2", "none", 0.05), ("t2", "a", 0.2)):
        for i, r in enumerate(targets(queued, name, inter)):
            finished_run(queued, r["id"], [0.5 + shift + 0.01 * i, 0.6 + shift + 0.01 * i], base=1.0 + i)
    pc = curves.plan_curves(queued, "cv")
    assert pc.targets == ["t1", "t2"] and pc.metrics == {"t1": "acc", "t2": "acc"}
    none_t1, a_t1 = pc.dev["t1"]
    assert (none_t1.label, a_t1.label) == ("none (n=4)", "a (n=4)")  # a line per starting point, over grid x seeds
    assert none_t1.mean == pytest.approx([0.515, 0.615]) and (none_t1.lo[0], none_t1.hi[0]) == (0.5, 0.53)
    assert a_t1.mean == pytest.approx([0.615, 0.715])
    assert [b.label for b in pc.dev["t2"]] == ["none (n=2)", "a (n=2)"]
    assert pc.loss["t1"][0].lo[-1] == pytest.approx(0.1) and pc.loss["t1"][0].hi[-1] == pytest.approx(0.4)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = curves.draw_curves(plt, pc)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["t1", "t2"] and len(fig.axes) == 4
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["none (n=4)", "a (n=4)"]
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == pytest.approx([0.615, 0.715])
    plt.close(fig)
    out = tmp_path / "curves.pdf"
    done = cli("scores", "cv", "--curves", "-o", str(out), runs_dir=queued)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and b"panels: t1, t2" in data
    # a figure needs a figure's extension; an existing file needs --force
    bad = cli("scores", "cv", "--curves", "-o", str(tmp_path / "c.csv"), runs_dir=queued)
    assert bad.returncode == 2 and "a figure is pdf, png or svg" in bad.stderr and "Traceback" not in bad.stderr
    again = cli("scores", "cv", "--curves", "-o", str(out), runs_dir=queued)
    assert again.returncode == 2 and "--force" in again.stderr
