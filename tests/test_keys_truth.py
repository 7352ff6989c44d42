"""Issue 35, "Keys and screens": each key and screen does and says what it claims (the real app under
Pilot, on a runs-dir made by the real CLI)."""

from __future__ import annotations

from conftest import until
from test_tui import app_for, prepared, ready, row_ids  # noqa: F401 - prepared: the fixture
from textual.widgets import DataTable, SelectionList


async def test_home_end_and_capital_g_move_the_queue_cursor_to_the_first_and_last_row(prepared):  # noqa: F811
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        last = table.row_count - 1
        assert last > 2
        table.move_cursor(row=2)
        await pilot.press("end")
        await until(pilot, lambda: table.cursor_row == last, "end: the last row")
        await pilot.press("home")
        await until(pilot, lambda: table.cursor_row == 0, "home: the first row")
        await pilot.press("G")
        await until(pilot, lambda: table.cursor_row == last, "G: the last row")
        assert type(pilot.app.screen) is type(screen)  # G is not g (the GPU view)


async def test_choosing_columns_keeps_the_cursor_on_its_run(prepared):  # noqa: F811
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        table.move_cursor(row=3)
        await until(pilot, lambda: table.cursor_row == 3, "the cursor on row 4")
        rid = row_ids(screen)[3]
        await pilot.press("C")
        await until(pilot, lambda: pilot.app.screen.__class__.__name__ == "ColumnsScreen", "the column chooser")
        pilot.app.screen.query_one(SelectionList).deselect("plan")
        await pilot.press("enter")
        await until(pilot, lambda: "plan" not in [str(c.label) for c in table.columns.values()], "plan hidden")
        await pilot.pause()
        assert row_ids(screen)[table.cursor_row] == rid


def shown_lines(widget) -> list[str]:
    """The widget's lines as the terminal shows them (its rendered text, markup already applied)."""
    return ["".join(seg.text for seg in widget.render_line(y)) for y in range(widget.size.height)]


async def test_the_builders_chosen_tasks_show_x_and_the_others_an_empty_box(prepared, tmp_path, monkeypatch):  # noqa: F811
    from stilts_tui.tui.screens.builder import BuilderScreen

    monkeypatch.chdir(tmp_path)
    async with app_for(prepared).run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder")
        targets = pilot.app.screen.query_one("#targets", SelectionList)
        await pilot.pause()
        lines = shown_lines(targets)
        assert any("[x] rte" in line for line in lines), lines
        assert any("[ ] cola" in line for line in lines), lines


async def test_escape_in_the_builder_asks_before_throwing_edits_away(prepared, tmp_path, monkeypatch):  # noqa: F811
    from textual.widgets import Input

    from stilts_tui.tui.screens.builder import BuilderScreen
    from stilts_tui.tui.screens.confirm import ConfirmScreen
    from stilts_tui.tui.screens.queue import QueueScreen

    monkeypatch.chdir(tmp_path)
    async with app_for(prepared, confirm=True).run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder")
        await pilot.press("escape")  # no edits: leaves at once
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "back on the queue, unasked")
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder again")
        builder = pilot.app.screen
        builder.query_one("#f-name", Input).value = "mine"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the question")
        await pilot.press("n")
        await until(pilot, lambda: pilot.app.screen is builder, "the builder kept")
        assert builder.query_one("#f-name", Input).value == "mine"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "left, the edits thrown away")


async def test_the_cpu_views_first_sample_shows_a_training_workers_real_share(tmp_path, runs_dir, monkeypatch):
    """A machine without a GPU, a run's worker spinning a core: the first figures the view shows are
    measured (old: "busy 0%" and the worker at 0 % until the second sample, INTERVAL later)."""
    import subprocess
    import sys
    import types

    import psutil
    from conftest import cli, write_text
    from test_gpu_view import PLAN, _no_driver, _NVMLError, plain

    from stilts_tui.store.ledger import Ledger
    from stilts_tui.tui.screens.gpus import GpuScreen

    monkeypatch.delenv("STILTS_FAKE_GPUS", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(NVMLError=_NVMLError, nvmlInit=_no_driver))
    assert cli("queue", "add", str(write_text(tmp_path / "g.toml", PLAN)), runs_dir=runs_dir).returncode == 0
    target = next(r for r in Ledger(runs_dir).runs() if r["stage"] == "target")
    worker = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 60: pass"])
    try:
        with Ledger(runs_dir).transaction() as tx:
            tx.update_run(target["id"], status="running", pid=worker.pid)
        async with app_for(runs_dir).run_test(size=(200, 30)) as pilot:
            await pilot.pause()
            await pilot.press("g")
            screen = pilot.app.screen
            assert isinstance(screen, GpuScreen)
            await until(pilot, lambda: screen.cpu is not None, "the first CPU sample shown", 20)
            first, history = screen.cpu, list(screen.cpu_history)
            assert len(history) == 1 and history[0] > 0, history
            (proc,) = first.procs
            # measured, not the 0 % of a first sample with nothing to compare (its share of 2 busy cores varies)
            assert proc.pid == worker.pid and proc.cpu_percent > 0, proc
            assert "busy 0%" not in plain(screen.shown)
    finally:
        psutil.Process(worker.pid).kill()
        worker.wait()


def shown_text(widget) -> str:
    """The widget's text as shown, its lines joined (a wrapped line reads as one): its lines as rendered,
    cut where its container's content ends (the container clips what is wider)."""
    visible = widget.region.intersection(widget.parent.content_region)
    width = visible.right - widget.region.x if visible.height else 0
    return " ".join(" ".join(line[:width].split()) for line in shown_lines(widget) if line[:width].strip())


async def test_at_200x50_the_prompt_the_column_chooser_and_the_builders_labels_show_their_whole_text(
    prepared,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from textual.widgets import Label

    from stilts_tui.tui.screens.builder import FIELDS, BuilderScreen
    from stilts_tui.tui.screens.columns import ColumnsScreen
    from stilts_tui.tui.screens.prompt import PromptScreen
    from stilts_tui.tui.screens.queue import QueueScreen

    monkeypatch.chdir(tmp_path)
    async with app_for(prepared).run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the filter prompt")
        await pilot.pause()
        assert shown_text(pilot.app.screen.query_one(Label)).endswith("reason…; empty: all):")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "back")
        await pilot.press("C")
        await until(pilot, lambda: isinstance(pilot.app.screen, ColumnsScreen), "the column chooser")
        await pilot.pause()
        assert shown_text(pilot.app.screen.query_one(Label)) == "Columns (space: show/hide, enter: keep)"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "back again")
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder")
        await pilot.pause()
        shown = [shown_text(label) for label in pilot.app.screen.query("#form Label")]
        assert shown == [label for _, label, _ in FIELDS]


async def test_a_key_the_keymap_gives_an_action_is_taken_from_the_default_that_had_it(prepared):  # noqa: F811
    from stilts_tui.tui.screens.gpus import GpuScreen

    async with app_for(prepared, keymap={"app.gpus": "G"}).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        await pilot.press("end")
        await until(pilot, lambda: table.cursor_row == table.row_count - 1, "end: still the last row")
        table.move_cursor(row=0)
        await pilot.press("G")
        await until(pilot, lambda: isinstance(pilot.app.screen, GpuScreen), "G: the user's GPU view")
        assert table.cursor_row == 0


async def test_sorting_by_grid_orders_each_value_as_a_number(tmp_path, runs_dir):
    """Issue 35, item 10: as text, lr = 0.0001 sorted before lr = 5e-05."""
    from conftest import cli, write_plan

    from stilts_tui.store.ledger import Ledger
    from stilts_tui.tui.screens.queue.order import SORTS

    stages = '[target.rte]\ntask = "rte"\ngrid = { lr = [1e-4, 5e-5, 2e-4, 1e-5] }\n'
    plan = write_plan(tmp_path / "g.toml", name="g", baseline=True, stages=stages)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    lr = {r["id"]: r["grid"]["lr"] for r in Ledger(runs_dir).runs()}
    async with app_for(runs_dir).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        await pilot.press(*["s"] * SORTS.index("grid"))
        await until(pilot, lambda: screen.sort == "grid", "the grid sort")
        await until(pilot, lambda: [lr[i] for i in row_ids(screen)] == [1e-5, 5e-5, 1e-4, 2e-4], "lr by value")


async def test_the_export_menu_covers_neither_the_table_nor_its_notes_and_enter_on_a_row_name_opens_a_cell(
    prepared,  # noqa: F811
):
    """Issue 35, items 13 and 14: at 200x50 the export menu covered the notes under the table; enter on the
    grid's first column (a row's name) did nothing."""
    from textual.widgets import OptionList

    from stilts_tui.tui.screens.scores import CellScreen, ExportScreen, ScoresScreen

    async with app_for(prepared).run_test(size=(200, 50)) as pilot:
        await ready(pilot)
        await pilot.press("o")
        screen = pilot.app.screen
        assert isinstance(screen, ScoresScreen)
        await until(pilot, lambda: screen.table_data is not None, "the score table", 90)
        table = screen.query_one(DataTable)
        table.cursor_coordinate = (1, 0)  # the row "hs", its name
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, CellScreen), "the row's first cell")
        assert pilot.app.screen.cell.intermediate == "hs"
        await pilot.press("escape")
        await until(pilot, lambda: pilot.app.screen is screen, "back to the scores")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(pilot.app.screen, ExportScreen), "the export menu")
        menu = pilot.app.screen.query_one(OptionList)
        await until(pilot, lambda: menu.region.height > 0, "the menu laid out")
        note = screen.query_one("#note")
        assert note.region.height > 0 and not menu.region.overlaps(note.region), (menu.region, note.region)
        assert not menu.region.overlaps(table.region), (menu.region, table.region)
        await pilot.press("escape")
