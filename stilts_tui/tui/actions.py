"""Every action of the app in one registry (as harlequin's ``actions.py``): its id, default keys, what the
key bar and the help call it, the screen it belongs to and its command-palette text ("queue: cancel
selected"). The screens' bindings, the command palette and the F1 / ``?`` help screen are all made from
it, so a key remapped by id (tui/keymap.py) reads the same in all three, and an action added here shows
in all three."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    """One action of the app. ``keys`` are Textual's key names, comma-separated ("l,enter"); none: a
    palette-only action. ``bound`` False: a key that Textual or the inputs answer themselves (the help
    lists it, no binding is made, and it is not remappable)."""

    id: str  # "queue.cancel": the keymap remaps it by this id
    keys: str
    description: str  # the key bar's and the help's name for it
    screen: str  # the screen it is bound on (SCREENS), or "app"
    action: str = ""  # the Textual action run on that screen (or the app)
    show: bool = True  # on the key bar
    priority: bool = False
    palette: str = ""  # "area: action" in the command palette; empty: not there
    palette_help: str = ""
    palette_action: str = ""  # the app action the palette runs, where it is not derived from ``action``
    bound: bool = True

    def binding(self) -> Binding:
        """The Textual binding of this action (remapped by the app's keymap through its id)."""
        return Binding(self.keys, self.action, self.description, show=self.show, priority=self.priority, id=self.id)

    def app_action(self) -> str:
        """What the palette runs on the app: the screen's own action is reached through the app
        (``screen_action``/``logs_action`` bring its screen forward or say to open it first)."""
        if self.palette_action:
            return self.palette_action
        if self.screen == "queue":
            return f"screen_action({self.action!r})"
        if self.screen == "logs":
            return f"logs_action({self.action!r})"
        return self.action


def _queue(aid: str, keys: str, text: str, action: str, show: bool, palette: str = "", hint: str = "") -> Action:
    """A queue screen's action: a priority binding (why: below)."""
    return Action(aid, keys, text, "queue", action, show, True, palette, hint)


# The queue screen's keys are priority bindings: the app runs them in the order the keys come, before it
# hands the next key to a widget. A screen's plain binding runs only after its key has bubbled up from the
# table, so in a burst of keys ("/" then "cola") the keys after a screen-opening key reached the table (c:
# cancel) before the prompt opened, and a "c" after "down" could act on the row the cursor left.
_QUEUE = [
    _queue("queue.filter", "slash", "Filter", "filter", True, "queue: filter runs", "show only matching runs"),
    _queue("queue.sort", "s", "Sort", "sort", True, "queue: sort", "sort by the next column"),
    _queue("queue.reverse", "S", "Reverse sort", "reverse", False, "queue: reverse sort", "the sort order reversed"),
    _queue(
        "queue.columns",
        "C",
        "Columns",
        "choose_columns",
        False,
        "queue: choose columns",
        "show or hide columns (remembered)",
    ),
    _queue("queue.down", "down,j", "Down", "cursor('down')", False),
    _queue("queue.up", "up,k", "Up", "cursor('up')", False),
    _queue("queue.top", "home", "First row", "cursor('top')", False),  # g stays the GPU view (app.gpus)
    _queue("queue.bottom", "end,G", "Last row", "cursor('bottom')", False),
    _queue("queue.add", "a", "Add plan", "add_plan", True, "queue: add a plan", "queue a plan file"),
    _queue(
        "queue.cancel", "c", "Cancel", "cancel", True, "queue: cancel selected", "cancel the selected or marked runs"
    ),
    _queue(
        "queue.retry",
        "r",
        "Retry",
        "retry",
        True,
        "queue: retry selected",
        "queue failed, cancelled or pruned runs again",
    ),
    _queue(
        "queue.priority_up",
        "plus,equals_sign",
        "Priority +",
        "priority(1)",
        False,
        "queue: raise priority",
        "run the selection sooner",
    ),
    _queue(
        "queue.priority_down",
        "minus",
        "Priority -",
        "priority(-1)",
        False,
        "queue: lower priority",
        "run the selection later",
    ),
    _queue(
        "queue.pause",
        "p",
        "Pause/resume",
        "toggle_pause",
        True,
        "queue: pause / resume",
        "start no new runs, or start them again",
    ),
    _queue("queue.mark", "space", "Mark", "mark", False),
    _queue(
        "queue.note",
        "n",
        "Note/tags",
        "note",
        False,
        "queue: note or tag selected",
        "a note and tags on the selected or marked runs",
    ),
    _queue("queue.logs", "l,enter", "Logs", "logs", True, "logs: open selected", "follow the selected runs' logs"),
    _queue(
        "queue.compare",
        "v",
        "Curves",
        "compare",
        True,
        "queue: compare curves",
        "the marked runs' curves on one plot; g groups them by all settings but the seed",
    ),
]

# the log panes' scrolling keys: key -> the Log's scroll method
LOG_SCROLLS = {
    "up": "scroll_up",
    "down": "scroll_down",
    "pageup": "scroll_page_up",
    "pagedown": "scroll_page_down",
    "home": "scroll_home",
    "end": "scroll_end",
    "left": "scroll_left",
    "right": "scroll_right",
}

_LOGS = [
    Action("logs.back", "escape,q", "Back", "logs", "app.pop_screen"),
    Action(
        "logs.filter",
        "f,slash",
        "Filter lines",
        "logs",
        "filter",
        palette="logs: filter lines",
        palette_help="show only the active pane's lines holding a text",
    ),
    Action("logs.j", "j", "Down", "logs", "scroll('scroll_down')", show=False),
    Action("logs.k", "k", "Up", "logs", "scroll('scroll_up')", show=False),
    Action("logs.next", "tab", "Next pane", "logs", "next_pane(1)"),
    Action(
        "logs.curves",
        "v",
        "Curves",
        "logs",
        "toggle_curves",
        palette="logs: show or hide curves",
        palette_help="each pane's loss, dev metric and learning rate beside its log",
    ),
    Action("logs.previous", "shift+tab", "Previous pane", "logs", "next_pane(-1)", show=False),
    *[
        Action(f"logs.{how}", key, how.replace("_", " "), "logs", f"scroll('{how}')", show=False)
        for key, how in LOG_SCROLLS.items()
    ],
]

_APP = [
    Action(
        "app.quit",
        "q",
        "Quit",
        "app",
        "ask_quit",
        palette="app: quit",
        palette_help="close the app (the daemon and the runs go on)",
    ),
    Action(
        "app.help",
        "f1,question_mark",
        "Keys",
        "app",
        "help",
        palette="help: keys",
        palette_help="every key of every screen",
    ),
    Action(
        "app.scores",
        "o",
        "Scores",
        "app",
        "scores",
        palette="scores: show matrix",
        palette_help="the intermediate x target matrix",
    ),
    Action(
        "app.builder",
        "b",
        "Plan builder",
        "app",
        "builder",
        palette="plan: build a new plan",
        palette_help="pick tasks, seeds and a grid",
    ),
    Action(
        "app.gpus",
        "g",
        "GPUs",
        "app",
        "gpus",
        palette="queue: show GPUs",
        palette_help="memory, utilization and the run behind each GPU process",
    ),
    # keys Textual and the inputs answer themselves: listed in the help, not remappable here
    Action("app.palette", "ctrl+p", "command palette", "app", bound=False),
    Action("input.clear", "ctrl+u", "clear an input left of the cursor", "app", bound=False),
]

_EXPORTS = [  # the score table's exports: palette-only (the scores screen's e opens a menu of them)
    ("csv", "csv", "write <runs-dir>/exports/PLAN.csv"),
    ("md", "markdown", "write <runs-dir>/exports/PLAN.md"),
    ("latex", "LaTeX", "write <runs-dir>/exports/PLAN.tex"),
    ("json", "json", "write <runs-dir>/exports/PLAN.json"),
    ("png", "png", "write <runs-dir>/exports/PLAN.png (300 dpi)"),
    ("pdf", "pdf", "write <runs-dir>/exports/PLAN.pdf (vector)"),
    ("svg", "svg", "write <runs-dir>/exports/PLAN.svg (vector)"),
]

_OTHERS = [
    Action("scores.back", "escape,q", "Back", "scores", "app.pop_screen"),
    Action("scores.view", "m", "Mean/max/best", "scores", "toggle_view"),
    Action("scores.failed", "f", "With/without failed", "scores", "toggle_failed"),
    Action("scores.plan", "left_square_bracket,right_square_bracket", "Plan", "scores", "next_plan"),
    Action("scores.cell", "enter", "Distribution", "scores", "open_cell"),
    Action("scores.curves", "v", "Curves", "scores", "cell_curves"),  # the runs behind the cell, grouped
    Action("scores.export", "e", "Export", "scores", "export"),
    *[
        Action(
            f"scores.export_{fmt}",
            "",
            f"Export as {name}",
            "scores",
            palette=f"scores: export as {name}",
            palette_help=text,
            palette_action=f"export({fmt!r})",
        )
        for fmt, name, text in _EXPORTS
    ],
    Action("builder.back", "escape", "Back", "builder", "back"),  # asks first when there are edits
    Action("builder.save", "ctrl+s", "Save and queue", "builder", "save"),
    Action("gpus.back", "escape,q", "Back", "gpus", "app.pop_screen"),
    Action("confirm.yes", "y,enter", "Yes", "confirm", "answer(True)"),
    Action("confirm.no", "n,escape", "No", "confirm", "answer(False)"),
    # the small screens' own keys (not in the help: each says its keys where it opens)
    Action("help.close", "escape,q,f1,question_mark", "Close", "help", "app.pop_screen"),
    Action("columns.keep", "enter", "Keep", "columns", "keep", priority=True),  # before the list takes enter
    Action("columns.close", "escape", "Close", "columns", "dismiss_none"),
    Action("prompt.close", "escape", "Close", "prompt", "dismiss_none"),
    Action("export.close", "escape", "Close", "export", "dismiss_none"),
    Action("cell.close", "escape,q,enter", "Close", "cell", "app.pop_screen"),
    Action("compare.back", "escape,q", "Back", "compare", "app.pop_screen"),
    Action("compare.group", "g", "Group by all but seed", "compare", "toggle_group"),
]

ACTIONS: tuple[Action, ...] = (*_APP, *_QUEUE, *_LOGS, *_OTHERS)

# the help screen's sections, in order: (screen, title); the other screens' keys are said where they open
HELP_SECTIONS = (
    ("app", "everywhere"),
    ("queue", "queue"),
    ("logs", "logs"),
    ("scores", "scores"),
    ("builder", "plan builder"),
    ("gpus", "gpus"),
    ("compare", "curves"),
    ("confirm", "questions"),
)


def bindings(screen: str) -> list[Binding]:
    """The bindings of ``screen`` ("app" for the app's own), in the registry's order."""
    return [a.binding() for a in ACTIONS if a.screen == screen and a.keys and a.bound]


def keys_of(action: Action, keymap: Mapping[str, str]) -> str:
    """The keys of ``action`` as a person types them, after the keymap (remapped by the action's id)."""
    return key_display(keymap.get(action.id, action.keys) if action.bound else action.keys)


def key_display(keys: str) -> str:
    """Bound keys as a person types them: "question_mark" -> "?", "left_square_bracket" -> "["."""
    from textual.keys import format_key

    return " ".join(k if "+" in k else format_key(k) for k in keys.split(","))


def help_sections(keymap: Mapping[str, str]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The help screen's rows, by section: (keys as typed, description, binding id; none where the key
    is Textual's own and not remappable)."""
    return [
        (
            title,
            [
                (keys_of(a, keymap), a.description, a.id if a.bound else "")
                for a in ACTIONS
                if a.screen == screen and a.keys
            ],
        )
        for screen, title in HELP_SECTIONS
    ]


def palette(keymap: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """The command palette's commands: (title "area: action", help with the keys, action on the app)."""
    out = []
    for a in ACTIONS:
        if a.palette:
            keys = f" ({keys_of(a, keymap)})".replace("[", "\\[") if a.keys else ""  # help is markup
            out.append((a.palette, a.palette_help + keys, a.app_action()))
    return out


def resolved(keymap: Mapping[str, str]) -> dict[str, str]:
    """The keymap as the app applies it: a key the user gives an action is taken from the default keys of
    every action it would meet (the same screen, or the app's own), so the user's key wins (a user's
    ``"app.gpus" = "G"`` keeps G for the GPU view; the queue's last-row key is then ``end`` alone)."""
    out = dict(keymap)
    for a in ACTIONS:
        if a.id in keymap or not (a.keys and a.bound):
            continue
        taken = {
            k
            for b in ACTIONS
            if b.id in keymap and b.id != a.id and (b.screen == a.screen or "app" in (a.screen, b.screen))
            for k in keymap[b.id].split(",")
        }
        left = [k for k in a.keys.split(",") if k not in taken]
        if left and len(left) < len(a.keys.split(",")):
            out[a.id] = ",".join(left)
    return out


def find(action_id: str) -> Action:
    """The action with id ``action_id``."""
    return next(a for a in ACTIONS if a.id == action_id)
