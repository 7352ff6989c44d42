"""The score table says only what is true (issue 35, "The score table"): a gain only beside the value it
is the gain of, no spread for one run, no empty metric in a column head, and the scores screen never
showing one plan's table under another plan's title. Real plans, real result.json files, the real CLI
and the real app."""

from __future__ import annotations

import pytest
import test_tui
from conftest import cli, until, write_text
from test_results import target_runs, write_plan, write_result
from test_tui import PLAN, app_for, ready, row_ids, settled
from textual.widgets import DataTable

from stilts_tui import results

prepared = test_tui.prepared  # the app tests' runs-dir: a plan, some runs done, one running, one failed


@pytest.fixture
def queued(tmp_path, runs_dir):
    """The score tests' plan queued (targets t1: RTE, t2: CoLA; 2 seeds x 2 lr), nothing scored yet."""
    assert cli("queue", "add", str(write_plan(tmp_path)), runs_dir=runs_dir).returncode == 0
    return runs_dir


def fill(runs_dir, scores: dict[tuple[str, str], list[float | None]]) -> None:
    """Write each listed cell's result.json files, in plan order (seed, lr); None: no result."""
    targets = target_runs(runs_dir)
    for (inter, target), values in scores.items():
        cell = [r for r in targets if r["intermediate"] == inter and r["name"] == target]
        for r, v in zip(cell, values, strict=True):
            if v is not None:
                write_result(runs_dir, r["id"], v)


def md_row(runs_dir, row: str, *args: str) -> str:
    out = cli("scores", "sc", "--format", "md", *args, runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if line.startswith(f"| {row} |"))


def test_no_gain_beside_a_missing_value_without_failed_runs(queued):
    # CoLA's dev majority scores 2/3: a's runs at .5 and .6 all failed, none's .7 and .8 did not
    fill(queued, {("none", "t2"): [0.7, 0.8, None, None], ("a", "t2"): [0.5, 0.6, None, None]})
    fill(queued, {("none", "t1"): [0.7, 0.8, 0.7, 0.8], ("a", "t1"): [0.8, 0.9, 0.8, 0.9]})
    row = md_row(queued, "a", "--without-failed")
    cell = row.split(" | ")[2]
    assert cell.startswith("– n=2/4 fail 2/2"), row  # old: "– ± – (-20.0, too few pairs) n=2/4 fail 2/2"
    assert "(" not in cell.split(" n=")[0]
    # where both values exist, the gain without failed runs is of those means (.85 - .75), untested
    assert row.split(" | ")[1].startswith("85.0 ± 5.0 (+10.0 over none's mean without failed) n=4")


def test_one_run_shows_no_spread_and_an_unscored_target_no_empty_metric(queued):
    fill(queued, {("none", "t1"): [0.7, 0.8, 0.7, 0.8], ("a", "t1"): [0.703, None, None, None]})
    row = md_row(queued, "a")
    assert row.split(" | ")[1].startswith("70.3 (-4.7, too few pairs) n=1/4"), row  # old: "70.3 ± 0.0 (..."
    assert md_row(queued, "none").split(" | ")[1].startswith("75.0 ± 5.0 n=4")
    latex = cli("scores", "sc", "--format", "latex", runs_dir=queued).stdout
    head = next(line for line in latex.splitlines() if line.startswith("from &"))
    assert head == r"from & t1 (acc) & t2 \\", head  # old: "t2 ()"
    md = cli("scores", "sc", "--format", "md", runs_dir=queued).stdout
    assert "| from \\ target | t1 (acc) | t2 |" in md and "()" not in md


def test_the_max_and_best_views_show_the_gain_of_what_they_show(queued):
    # none: max .8, best of grid (.8 + .8)/2; a: max 1.0, best (.9 + 1.0)/2; means .75 and .85
    fill(queued, {("none", "t1"): [0.7, 0.8, 0.7, 0.8], ("a", "t1"): [0.7, 0.9, 0.8, 1.0]})
    t = results.build(queued, "sc")
    a, none = t.cell("a", "t1"), t.cell("none", "t1")
    assert results.view_gain(a, none, "max") == "+20.0 over none's max"  # old: the mean's "+10.0, too few pairs"
    assert results.view_gain(a, none, "best") == "+15.0 over none's best of grid"
    assert results.view_gain(a, none, "mean").startswith("+10.0, too few pairs")


async def test_a_plan_without_finished_runs_shows_no_table_of_the_plan_before(prepared, tmp_path):
    """`o`, then `]` to a plan where nothing finished: the title says so and the table is empty, and it
    stays empty through the screen's reloads (before: the previous plan's table stayed under the title)."""
    other = write_text(tmp_path / "plans" / "newer.toml", PLAN.replace('"study"', '"newer"'))
    assert cli("queue", "add", str(other), runs_dir=prepared).returncode == 0
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        screen.query_one(DataTable).move_cursor(row=0)  # a study run: the screen opens on the study
        await until(pilot, lambda: screen.current_id() == row_ids(screen)[0], "the cursor on a study run")
        await pilot.press("o")
        scores = pilot.app.screen
        await until(pilot, lambda: scores.table_data is not None, "the study's table", 90)
        table = scores.query_one(DataTable)
        assert table.row_count == 2
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: "newer" in str(scores.query_one("#title").render()), "the next plan", 90)
        assert "no finished target runs yet" in str(scores.query_one("#title").render())
        assert (table.row_count, len(table.columns), scores.table_data) == (0, 0, None)
        assert str(scores.query_one("#note").render()).strip() == ""
        scores.load()  # the 5 s reload: the table stays empty
        await settled(pilot)
        assert (table.row_count, len(table.columns)) == (0, 0)
        assert "newer" in str(scores.query_one("#title").render())


async def test_the_max_view_shows_the_gain_of_the_max(prepared):
    """`m` in the scores screen: the gain beside a max is over none's max, not the mean's gain and test."""
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        await ready(pilot)
        await pilot.press("o")
        scores = pilot.app.screen
        await until(pilot, lambda: scores.table_data is not None, "the score table", 90)
        table = scores.query_one(DataTable)
        assert "p=" in str(table.get_cell_at((1, 1))) or "too few pairs" in str(table.get_cell_at((1, 1)))
        await pilot.press("m")  # max: hs 90.0, none 75.0
        await until(pilot, lambda: str(table.get_cell_at((1, 1))).startswith("90.0  n=4"), "the max view")
        assert str(table.get_cell_at((1, 1))) == "90.0  n=4  +15.0 over none's max"
        assert str(table.get_cell_at((0, 1))) == "75.0  n=4"


def test_the_figure_shows_spread_failed_runs_apart_every_equal_score_and_an_axis_to_100(queued, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # RTE's majority class scores .6: none's .5 and .6 failed; a's four runs all scored 1.0
    fill(queued, {("none", "t1"): [0.5, 0.6, 0.7, 0.8], ("a", "t1"): [1.0, 1.0, 1.0, 1.0]})
    t = results.build(queued, "sc")
    fig, ax = plt.subplots()
    results._panel(ax, t, "t1")
    points: dict[str, list] = {}
    for c in ax.collections:  # the scatter collections (one a cell and kind), by their legend's label
        points.setdefault(c.get_label(), []).extend(map(tuple, c.get_offsets()))
    assert sorted(y for _, y in points["failed run"]) == [50, 60]  # apart from the others (old: all "one run")
    ok = points["one run"]
    assert sorted(y for _, y in ok) == [70, 80, 100, 100, 100, 100]
    assert len({round(x, 3) for x, y in ok if y == 100}) == 4  # four equal scores, four points side by side
    none_bar, a_bar = (c for c in ax.containers if c.get_label() == "mean ± std (std: 2 runs or more)")
    (lo, hi) = none_bar.lines[2][0].get_segments()[0][:, 1]
    assert (lo, hi) == pytest.approx((65 - 100 * t.cell("none", "t1").std, 65 + 100 * t.cell("none", "t1").std))
    assert not a_bar.lines[2] or a_bar.lines[2][0].get_segments()[0][:, 1].tolist() == [100, 100]  # no spread
    assert ax.get_ylim()[1] <= 100  # accuracy ends at 100 (old: 110 and more, above the points' labels)
    plt.close(fig)
    out = cli("scores", "sc", "-o", str(tmp_path / "s.svg"), runs_dir=queued)
    assert out.returncode == 0, out.stderr
    assert "failed run" in (tmp_path / "s.svg").read_text()


def test_a_one_target_figure_has_a_title_inside_its_width(queued):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stilts_tui.results import figure

    fill(queued, {("none", "t1"): [0.7, 0.8, 0.7, 0.8], ("a", "t1"): [0.8, 0.9, 0.8, 0.9]})
    t = results.build(queued, "sc")
    t.targets = ["t1"]  # a study of one target: the narrowest figure
    fig = figure.draw(plt, t)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox)  # old: one line wider than the figure
    plt.close(fig)
