"""The plan builder: pick model, tasks, seeds and grid values; see how many runs the plan expands
to as you type; save a valid TOML plan to plans/ and queue it."""

from __future__ import annotations

import re
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, Label, SelectionList, Static

from stilts_tui import plan as plans
from stilts_tui import tasks, tomlio
from stilts_tui.errors import UserError
from stilts_tui.tui.actions import bindings
from stilts_tui.tui.data import plural
from stilts_tui.tui.widgets.inputs import KeyedInput
from stilts_tui.tui.widgets.key_bar import KeyBar

FIELDS = [  # id, label, default
    ("name", "plan name", "my-study"),
    ("model", "model (hub id or local folder)", "roberta-large"),
    ("seeds", "target seeds", "12, 42"),
    ("lr", "grid: learning rates", "5e-6, 1e-5, 2e-5"),
    ("batch_size", "grid: batch sizes", "8, 16, 32"),
    ("warmup", "grid: warmup ratios", "0.0, 0.2"),
    ("epochs", "epochs", "3"),
    ("max_len", "max_len", "128"),
    ("data", "local data folder (DIR/TASK for each task; empty: the hub)", ""),
]


def _numbers(text: str) -> list[str]:
    return [x for x in re.split(r"[,\s]+", text.strip()) if x]


def _number(x: str) -> int | float | str:
    """A field's text as the number it spells (an int where it is one), else the text itself (which the
    plan's validation then names as the wrong type)."""
    for kind in (int, float):
        try:
            return kind(x)
        except ValueError:
            pass
    return x


def build_toml(values: dict[str, str], inters: list[str], targets: list[str]) -> str:
    """A plan's TOML from the builder's fields, written by tomli_w; with a data folder, each stage reads its
    task's files from a subfolder of it named for the task (so a plan built here can run offline)."""
    grid = {k: [_number(x) for x in _numbers(values[k])] for k in ("lr", "batch_size", "warmup") if _numbers(values[k])}
    folder = values.get("data", "").strip()

    def stage(t: str, **more: object) -> dict:
        return {"task": t, **({"data_dir": str(Path(folder) / t)} if folder else {}), **more}

    data: dict = {
        "name": values["name"],
        "model": values["model"],
        "baseline": True,
        "target_seeds": [_number(x) for x in _numbers(values["seeds"])],
        "defaults": {"epochs": _number(values["epochs"] or "3"), "max_len": _number(values["max_len"] or "128")},
        "intermediate": {t: stage(t) for t in inters},
        "target": {t: stage(t, **({"grid": grid} if grid else {})) for t in targets},
    }
    return tomlio.dumps({k: v for k, v in data.items() if v != {}})


class BuilderScreen(Screen):
    BINDINGS = bindings("builder")
    DEFAULT_CSS = """
    BuilderScreen Horizontal { height: 1fr; }
    BuilderScreen SelectionList { height: 1fr; width: 1fr; border: round $primary; }
    BuilderScreen #form { width: 50; }
    BuilderScreen #form Label { width: 100%; }
    BuilderScreen #count { height: 3; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        names = tasks.names()
        with Vertical():
            yield Static("", id="count")
            with Horizontal():
                with VerticalScroll(id="form"):
                    for fid, label, default in FIELDS:
                        yield Label(label)
                        yield KeyedInput(value=default, id=f"f-{fid}")
                inters = SelectionList[str](*[(n, n) for n in names], id="inters")
                inters.border_title = "intermediate tasks"
                yield inters
                targets = SelectionList[str](*[(n, n, n == "rte") for n in names], id="targets")
                targets.border_title = "target tasks"
                yield targets
        yield KeyBar()

    rates = None  # this device's figures (stilts_tui.estimate.figures.Rates), read off the UI thread by measure()

    def on_mount(self) -> None:
        # the name field takes the keys at once: typed letters never reach the app's shortcuts
        self.query_one("#f-name", Input).focus()
        self.mark_choices()
        self.update_count()
        self.measure()
        self.opened_with = self.state()

    def state(self) -> tuple:
        """What the builder holds now: its fields and the tasks chosen (edits: a state unlike the first)."""
        boxes = (self.query_one("#inters", SelectionList), self.query_one("#targets", SelectionList))
        return (self.values(), *(sorted(box.selected) for box in boxes))

    def action_back(self) -> None:
        """Leave the builder; with edits, ask first (they are thrown away; ``STILTS_CONFIRM=0``: never asks)."""
        if not self.app.confirm or self.state() == self.opened_with:
            self.app.pop_screen()
            return
        from stilts_tui.tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.pop_screen()

        self.app.push_screen(ConfirmScreen("Leave the plan builder? Its edits are thrown away."), answered)

    @on(SelectionList.SelectedChanged)
    def mark_choices(self) -> None:
        """Each task's line says whether it is chosen ("[x]" or "[ ]"), not by colour alone. The prompt is
        plain text: as markup, "[x]" is a tag and vanished (a chosen task showed a blank box)."""
        for box in self.query(SelectionList):
            chosen = set(box.selected)
            for i in range(box.option_count):
                option = box.get_option_at_index(i)
                prompt = f"[x] {option.value}" if option.value in chosen else f"[ ] {option.value}"
                if str(option.prompt) != prompt:
                    box.replace_option_prompt_at_index(i, Text(prompt))

    @work(thread=True, exclusive=True, group="builder-cost", exit_on_error=False)
    def measure(self) -> None:
        """Read the ledger's finished runs once (off the UI thread), then show the cost from them."""
        from stilts_tui.estimate import cost, history
        from stilts_tui.queue import gpus

        rates = cost.measured(self.app.root, history.box_device(gpus.list_gpus()))  # this device's runs only
        if rates:
            self.rates = rates
            self.app.call_from_thread(self.update_count)

    def values(self) -> dict[str, str]:
        return {fid: self.query_one(f"#f-{fid}", Input).value for fid, _, _ in FIELDS}

    def text(self) -> str:
        return build_toml(
            self.values(),
            list(self.query_one("#inters", SelectionList).selected),
            list(self.query_one("#targets", SelectionList).selected),
        )

    def plans_dir(self) -> Path:
        return Path.cwd() / "plans"

    def check(self) -> tuple[plans.Plan, list[plans.Run]]:
        path = self.plans_dir() / f"{self.values()['name'] or 'plan'}.toml"
        plan = plans.parse(self.text(), path)
        return plan, plans.expand(plan)

    @on(Input.Changed)
    @on(SelectionList.SelectedChanged)
    def update_count(self) -> None:
        try:
            plan, runs = self.check()
        except UserError as e:
            self.query_one("#count").update(f"[red]{e}[/red]")
            return
        from stilts_tui.estimate import cost

        c = plans.counts(runs)
        n = len(runs)
        self.query_one("#count").update(
            f"[b]{n} {plural(n, 'run')}[/b]: {c['intermediate']} intermediate, "
            f"{c['target']} target — ctrl+s saves to plans/ and queues it\n"
            f"cost: {cost.summary(cost.estimate(plan, runs, self.rates))}"
        )

    def action_save(self) -> None:
        """Save the plan file (asking before it replaces one), then queue it in the app's worker (a large
        plan writes a spec per run)."""
        try:
            plan, _ = self.check()
            if not plans.NAME_RE.match(plan.name):
                raise UserError("plan name: letters, digits, '_', '-' and '.' only")
        except UserError as e:
            self.notify(str(e), severity="error", timeout=10)
            return
        path = self.plans_dir() / f"{plan.name}.toml"
        if not path.exists():
            self.save(path)
            return
        from stilts_tui.tui.screens.confirm import ConfirmScreen

        self.app.push_screen(
            ConfirmScreen(f"{path} exists. Replace it with this plan and queue it?"),
            lambda yes: self.save(path) if yes else self.notify(f"kept {path}; nothing saved"),
        )

    def save(self, path: Path) -> None:
        text = self.text()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            self.notify(f"cannot write {path}: {e.strerror or e}", severity="error", timeout=10)
            return
        self.notify(f"saved {path}; queueing it…")
        self.app.add_plan(path)
        self.app.pop_screen()
