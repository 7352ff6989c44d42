"""The intermediate x target matrix of a plan, coloured by the gain over "none"; a cell opens the
distribution of its runs; exports from a key."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, OptionList, Static
from textual.worker import Worker

from stilts_tui import results
from stilts_tui.contract import Status
from stilts_tui.errors import UserError
from stilts_tui.fmt import terminal_safe
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.widgets.key_bar import KeyBar

VIEWS = ("mean", "max", "best")


def cell_text(
    c: results.Cell | None, view: str, without_failed: bool = False, base: results.Cell | None = None
) -> Text:
    """A cell in ``view``: its value (± std for the mean of two runs or more), n, failed runs, and the gain
    of that same value over ``base`` (the "none" cell), none where the value is missing."""
    if c is None:
        return Text("–", style="dim")
    if c.mean is None:
        return Text(f"missing {c.missing}" + results.pruned_text(c) + results.predicted_text(c), style="dim")
    value, std = results.view_value(c, view, without_failed)
    text = ("–" if value is None else f"{100 * value:.1f}") + ("*" if c.setup_note else "")
    text += f" ± {100 * std:.1f}" if std is not None else ""
    text += f"  n={c.n}" + (f"/{c.n + c.missing}" if c.missing else "") + results.failed_text(c)
    gain = results.view_gain(c, base, view, without_failed)
    text += f"  {gain}" if gain else ""
    text += results.predicted_text(c)  # the predicted rank beside the measured gain
    return Text(text, style=results.gain_style(c) if gain else "")


def distribution(c: results.Cell, width: int = 60) -> str:
    """A dot plot of a cell's runs in the terminal: one row of marks per run value bin."""
    if not c.values:
        return "no finished runs"
    lo, hi = min(c.values), max(c.values)
    span = (hi - lo) or 1e-9
    bins = [0] * width
    for v in c.values:
        bins[min(width - 1, int((v - lo) / span * (width - 1)))] += 1
    rows = []
    for level in range(max(bins), 0, -1):
        rows.append("".join("●" if b >= level else " " for b in bins))
    axis = f"{100 * lo:.1f}".ljust(width - 6) + f"{100 * hi:.1f}"
    stats = (
        f"n={c.n} missing={c.missing}  mean {100 * c.mean:.2f}  std {100 * c.std:.2f} (ddof 0)  "
        f"median {100 * c.median:.2f}  min {100 * c.min:.2f}  max {100 * c.max:.2f}  "
        f"best-of-grid {100 * c.best_of_grid:.2f}"
    )
    if c.failed is not None:
        ok = "–" if c.mean_ok is None else f"{100 * c.mean_ok:.2f} ± {100 * c.std_ok:.2f}"
        stats += (
            f"\nfailed {c.failed}/{c.n} ({100 * c.failed_rate:.0f}%: at or below the majority-class score "
            f"{100 * c.majority:.2f}); without them {ok}"
        )
        if c.stopped:
            stats += f"\n{c.stopped} of them stopped as degenerate (stop_degenerate), scored at the epoch they stopped"
    if c.gain is not None:
        lo_ci, hi_ci = c.gain_ci or (float("nan"), float("nan"))
        stats += f"\ngain over none {100 * c.gain:+.2f} (95% CI {100 * lo_ci:+.2f} … {100 * hi_ci:+.2f})"
    if c.pairs:
        plo, phi = c.paired_ci or (float("nan"), float("nan"))
        stats += (
            f"\npaired by (seed, grid point): {c.pairs} pairs, mean difference {100 * c.paired_gain:+.2f} "
            f"(95% CI {100 * plo:+.2f} … {100 * phi:+.2f}); sign-flip test ({c.test}) p={c.p_value:.3g}, "
            f"smallest attainable p {c.min_p:.3g}: {c.verdict}"
        )
    if c.setup_note:
        stats += f"\n* mixed training setups: {c.setup_note}"
    return "\n".join(rows + ["─" * width, axis, "", stats])


def first_plan(runs: list[dict], plans: list[str], near: str | None) -> str:
    """The plan the screen opens on: the one of the queue's selected run, else the newest plan with a
    finished run, else the newest."""
    if near in plans:
        return near
    finished = {r["plan"] for r in runs if r["status"] == Status.DONE}
    return next((p for p in reversed(plans) if p in finished), plans[-1])


class CellScreen(ModalScreen):
    BINDINGS = bindings("cell")
    DEFAULT_CSS = """
    CellScreen { align: center middle; }
    CellScreen > Vertical { width: 90; height: auto; border: round $accent; background: $panel; padding: 1 2; }
    """

    def __init__(self, cell: results.Cell):
        super().__init__()
        self.cell = cell

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(f"{self.cell.intermediate} → {self.cell.target}", style="bold"))
            yield Static(distribution(self.cell), id="plot")


class ExportScreen(ModalScreen[str | None]):
    """The export formats, in a menu at the right that covers neither the table's cells nor the notes under
    it: below the notes where the screen has room (``below``: the first free row), else over the table's
    right margin."""

    BINDINGS = bindings("export")
    DEFAULT_CSS = """
    ExportScreen { align: right top; background: transparent; }
    ExportScreen > OptionList { width: 40; height: auto; border: round $accent; }
    """
    MENU_ROWS = 9  # seven formats and the border

    def __init__(self, below: int | None = None, **kw):
        super().__init__(**kw)
        self.below = below

    def on_mount(self) -> None:
        rows = self.app.size.height - 1  # the key bar's row stays visible
        if self.below is not None and self.below + self.MENU_ROWS <= rows:
            self.query_one(OptionList).styles.margin = (self.below, 0, 0, 0)

    def compose(self) -> ComposeResult:
        figures = results.figures_available()  # offer figures only where matplotlib is installed
        yield OptionList(*[f for f in results.FORMATS if f != "table" and (figures or f not in results.FIGURES)])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(event.option.prompt))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ScoresScreen(Screen):
    BINDINGS = bindings("scores")

    def __init__(self, plan: str | None = None, near: str | None = None, **kw):
        super().__init__(**kw)
        self.plan, self.view, self.table_data = plan, "mean", None
        self.near = near  # the plan of the run the queue's cursor is on: shown first
        self.without_failed = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("", id="title")
            yield DataTable(id="matrix", cursor_type="cell")
            yield Static("", id="note")
        yield KeyBar()

    def on_mount(self) -> None:
        self.load()
        self.set_interval(5.0, self.load)

    @on(Worker.StateChanged)
    def forward_worker_errors(self, event: Worker.StateChanged) -> None:
        """This screen's workers fail where the app shows every worker's error."""
        self.app.show_worker_error(event)

    @work(thread=True, exclusive=True, group="scores", exit_on_error=False)
    def load(self, advance: bool = False) -> None:
        """Read the plans and build the table off the UI thread (``advance``: the next plan first)."""
        ledger = Ledger(self.app.root)
        plans = list(ledger.plans())
        if plans and (self.plan is None or advance):
            self.plan = (
                plans[(plans.index(self.plan) + 1) % len(plans)]
                if advance and self.plan in plans
                else first_plan(ledger.runs(), plans, self.near)
                if self.plan is None
                else plans[0]
            )
        if self.plan is None:
            self.app.call_from_thread(self.show_nothing, "no plan queued yet")
            return
        try:
            data = results.build(self.app.root, self.plan)
        except UserError as e:
            self.app.call_from_thread(self.show_nothing, str(e))
            return
        self.app.call_from_thread(self.show, data)

    def show_nothing(self, why: str) -> None:
        """Say why there is no table, and show none: never the previous plan's table under this title."""
        self.table_data = None
        self.query_one("#title").update(why)
        self.query_one("#note").update("")
        self.query_one(DataTable).clear(columns=True)

    def show(self, data: results.ScoreTable) -> None:
        self.table_data = data
        data.without_failed = self.without_failed
        title = Text(data.plan, style="bold")
        title.append(f" — {self.view}{' without failed runs' if self.without_failed else ''} (x100), gain over none  ")
        title.append(
            " m: mean/max/best-of-grid · f: with/without failed · [ ]: plan · enter: distribution · v: curves"
            " · e: export",
            style="dim",
        )
        self.query_one("#title").update(title)
        self.query_one("#note").update(
            Text(  # a saved ranking's method is data from a file: one line each, nothing a terminal acts on
                "\n".join(
                    terminal_safe(line)
                    for line in [
                        results.STD_NOTE,
                        results.FAILED_NOTE,
                        results.test_note(data),
                        *results.footnotes(data),
                    ]
                )
            )
        )
        table = self.query_one(DataTable)
        cursor = table.cursor_coordinate
        table.clear(columns=True)
        wf = self.without_failed
        rows = [
            [Text(r), *(cell_text(data.cell(r, t), self.view, wf, data.cell("none", t)) for t in data.targets)]
            for r in data.rows
        ]
        labels = ["from \\ target", *(results.target_label(data, t) for t in data.targets)]
        for i, (key, label) in enumerate(zip(["row", *data.targets], labels, strict=True)):
            # each column as wide as its widest cell, set here: never a frame drawn with cells cut short
            width = max([len(label), *(row[i].cell_len for row in rows)])
            table.add_column(label, key=key, width=width)
        for r, row in zip(data.rows, rows, strict=True):
            table.add_row(*row, key=r)
        if cursor.row < table.row_count and cursor.column < len(table.columns):
            table.cursor_coordinate = cursor

    def action_toggle_view(self) -> None:
        self.view = VIEWS[(VIEWS.index(self.view) + 1) % len(VIEWS)]
        if self.table_data:
            self.show(self.table_data)

    def action_toggle_failed(self) -> None:
        self.without_failed = not self.without_failed
        if self.table_data:
            self.show(self.table_data)

    def action_next_plan(self) -> None:
        self.load(advance=True)

    def selected_cell(self) -> results.Cell | None:
        if not self.table_data:
            return None
        table = self.query_one(DataTable)
        row, col = table.cursor_coordinate
        if row >= len(self.table_data.rows) or not self.table_data.targets:
            return None
        # the row's name (column 0) stands for its first cell: enter there opens it rather than nothing
        return self.table_data.cell(self.table_data.rows[row], self.table_data.targets[max(col, 1) - 1])

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        self.action_open_cell()

    def action_open_cell(self) -> None:
        cell = self.selected_cell()
        if cell is not None:
            self.app.push_screen(CellScreen(cell))

    def action_cell_curves(self) -> None:
        """The curves of the runs behind the cell, grouped by all settings but the seed."""
        from stilts_tui.tui.screens.compare import CompareScreen

        cell, plan, root = self.selected_cell(), self.plan, self.app.root
        if cell is None or plan is None:
            return

        def find() -> list[dict]:
            return [
                r
                for r in Ledger(root).runs(plan=plan)
                if r.get("stage") == "target"
                and r.get("name") == cell.target
                and r.get("intermediate") == cell.intermediate
            ]

        title = f"{plan}: {cell.intermediate} → {cell.target}"
        self.app.push_screen(CompareScreen(title, find=find, grouped=True))

    def action_export(self) -> None:
        def chosen(fmt: str | None) -> None:
            if fmt and self.table_data:
                self.export(fmt)

        note = self.query_one("#note")
        self.app.push_screen(ExportScreen(below=note.region.bottom + 1), chosen)

    @work(thread=True, group="scores-export", exit_on_error=False, name="export")
    def export(self, fmt: str) -> None:
        """Write an export off the UI thread (a png draws a figure: seconds)."""
        try:
            out = results.export_path(self.app.root, self.table_data.plan, fmt)  # inside the runs-dir, always
            out.parent.mkdir(parents=True, exist_ok=True)
            results.write_output(out, results.export_bytes(self.table_data, fmt), force=True)
        except OSError as e:
            self.app.call_from_thread(self.notify, f"cannot write the export: {e.strerror or e}", severity="error")
            return
        except UserError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            return
        self.app.call_from_thread(self.notify, f"wrote {out}")
