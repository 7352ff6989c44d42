"""The terminal app: Pilot tests of each screen's keys, SVG snapshots, and the real app in tmux."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import CONSOLE, cli, plan_text, until, wait, write_text
from textual.notifications import Notify
from textual.widgets import DataTable, Input, Label, Log, OptionList, SelectionList
from textual.worker import Worker, WorkerState

from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.builder import BuilderScreen
from stilts_tui.tui.screens.confirm import ConfirmScreen
from stilts_tui.tui.screens.help import HelpScreen
from stilts_tui.tui.screens.logs import LogsScreen
from stilts_tui.tui.screens.prompt import PromptScreen
from stilts_tui.tui.screens.queue import QueueScreen
from stilts_tui.tui.screens.scores import CellScreen, ExportScreen, ScoresScreen
from stilts_tui.tui.widgets.log_pane import ErrorHighlighter, LogPane

PLAN = plan_text(
    name="study",
    seeds=(1, 2),
    stages="""[intermediate.hs]
task = "hellaswag"
[target.rte]
task = "rte"
grid = { lr = [1e-5, 2e-5] }
[target.cola]
task = "cola"
""",
)
LOG = "".join(
    f"[10:00:{i:02d}] epoch 1/1 step {i}/20 loss 0.{70 - i:02d}00 lr 1e-05 50.0 samples/s ETA 0:00:{20 - i:02d}\n"
    for i in range(1, 11)
)


@pytest.fixture
def prepared(tmp_path, runs_dir) -> Path:
    """A runs-dir with a queued plan; some runs done with scores, one running, one failed, logs written."""
    plan = write_text(tmp_path / "plans" / "study.toml", PLAN)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    runs = Ledger(runs_dir).runs()
    inter = next(r for r in runs if r["stage"] == "intermediate")
    targets = [r for r in runs if r["stage"] == "target"]
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(inter["id"], status="done", score=0.81, gpu=0, started=1000.0, finished=1100.0)
        for i, r in enumerate(targets):
            if r["task"] == "rte":
                score = 0.6 + 0.05 * i if r["intermediate"] == "none" else 0.75 + 0.05 * (i % 4)
                tx.update_run(r["id"], status="done", score=score, gpu=i % 2, started=1100.0 + i, finished=1150.0 + i)
                (runs_dir / r["id"] / "result.json").write_text(
                    json.dumps({"status": "done", "score": score, "metrics": {"acc": score}, "primary_metric": "acc"})
                )
        cola = [r for r in targets if r["task"] == "cola"]
        tx.update_run(cola[0]["id"], status="running", gpu=1, started=time.time(), pid=None)
        tx.update_run(cola[1]["id"], status="failed", error="data file not found")
    (runs_dir / cola[0]["id"] / "train.log").write_text(LOG)
    (runs_dir / cola[0]["id"] / "events.jsonl").write_text(
        json.dumps(
            {
                "t": 1,
                "event": "step",
                "step": 10,
                "total_steps": 20,
                "epoch": 1,
                "loss": 0.6,
                "lr": 1e-5,
                "samples_per_s": 50.0,
                "eta_s": 20,
            }
        )
        + "\n"
    )
    return runs_dir


def app_for(root: Path, keymap: dict | None = None, confirm: bool = False, **kw) -> StiltsApp:
    """The app on ``root`` (destructive keys ask only where a test says so)."""
    return StiltsApp(root, keymap=keymap or {}, confirm=confirm, **kw)


def recorder(notes: list[tuple[str, str]], errors: list[Worker] | None = None):
    """A message hook keeping the app's notifications (severity, text) and its failed workers."""

    def hook(message) -> None:
        if isinstance(message, Notify):
            notes.append((message.notification.severity, message.notification.message))
        elif errors is not None and isinstance(message, Worker.StateChanged) and message.state == WorkerState.ERROR:
            errors.append(message.worker)

    return hook


async def ready(pilot) -> QueueScreen:
    await until(
        pilot,
        lambda: isinstance(pilot.app.screen, QueueScreen) and pilot.app.screen.query_one(DataTable).row_count > 0,
        "the queue screen filled",
    )
    return pilot.app.screen


async def settled(pilot) -> None:
    """Every worker of the app done (a repeating read cancels the one before it: that is done too), then
    the messages they posted handled."""
    from textual.worker import WorkerCancelled

    try:
        await pilot.app.workers.wait_for_complete()
    except WorkerCancelled:
        await pilot.app.workers.wait_for_complete()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()  # what the workers posted
    await pilot.pause()  # the layout it asked for (a table's new column widths)


def totals_of(screen) -> str:
    return str(screen.query_one("#totals").render())


async def to_queued(pilot, screen: QueueScreen, root: Path) -> str:
    """Put the cursor on the first queued target run; its id."""
    ids = row_ids(screen)
    rid = next(i for i in ids if Ledger(root).get(i)["status"] == "queued" and Ledger(root).get(i)["stage"] == "target")
    table = screen.query_one(DataTable)
    table.move_cursor(row=ids.index(rid))
    await until(pilot, lambda: table.cursor_row == ids.index(rid), "the cursor on the queued run")
    return rid


def row_ids(screen: QueueScreen) -> list[str]:
    table = screen.query_one(DataTable)
    return [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]


async def test_queue_screen_lists_runs_with_totals_progress_and_filter(prepared):
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        assert len(row_ids(screen)) == 13  # 1 intermediate + (none, hs) x (rte: 2 seeds x 2 lr + cola: 2 seeds)
        totals = str(screen.query_one("#totals").render())
        assert "9 done · 1 running · 2 queued · 1 failed" in totals
        running = next(r for r in Ledger(prepared).runs() if r["status"] == "running")
        row = screen.query_one(DataTable).get_row(running["id"])
        assert [str(c) for c in row[9:12]] == ["█████░░░░░  50%", "0.6000", "0:20"]
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the filter's prompt")
        await pilot.press(*"cola")
        await pilot.press("enter")
        await until(pilot, lambda: len(row_ids(screen)) == 4, "the filter applied")
        assert all(Ledger(prepared).get(i)["task"] == "cola" for i in row_ids(screen))
        await pilot.press("s")  # sort: by status
        await until(pilot, lambda: "sort: status" in totals_of(screen), "sorted by status")
        assert Ledger(prepared).get(row_ids(screen)[0])["status"] == "running"
        await pilot.press("slash")  # a filter with markup's brackets is shown as typed, never as markup
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the filter's prompt")
        await pilot.press("ctrl+u", *"[b]x[", "enter")
        await until(pilot, lambda: "filter: [b]x[" in totals_of(screen), "the filter shown as typed")


async def test_a_prompt_closes_without_laying_out_the_queue_again_and_asks_afresh_each_time(prepared, monkeypatch):
    """A prompt is kept, not removed on its close (a removed screen made Textual lay out the queue screen
    again, in the frame of the next key); asked again, it shows the text it is given, not the last typed."""
    from textual.screen import Screen

    drawn: list[tuple[str, str]] = []  # (what, screen): each layout and each frame, in order

    def counted(name: str):
        inner = getattr(Screen, name)

        def call(self, *a, **kw):
            drawn.append((name, type(self).__name__))
            return inner(self, *a, **kw)

        monkeypatch.setattr(Screen, name, call)

    counted("_refresh_layout")
    counted("_compositor_refresh")
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        for attempt in range(2):
            await pilot.press("slash")
            await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the filter's prompt")
            box = pilot.app.screen.query_one(Input)
            await until(pilot, lambda b=box: b.has_focus and b.value == "", "the prompt's input focused, empty")
            await pilot.press(*"xyz")  # typed, then escaped: never the filter, never shown again
            await until(pilot, lambda b=box: b.value == "xyz", "the typed text")
            drawn.clear()
            await pilot.press("escape")
            await until(pilot, lambda: pilot.app.screen is screen, "the queue screen back")
            row = table.cursor_row
            mark = len(drawn)
            await pilot.press("down")  # the key whose frame the removed prompt's layout landed in
            await until(
                pilot,
                lambda r=row, m=mark: table.cursor_row == r + 1 and ("_compositor_refresh", "QueueScreen") in drawn[m:],
                "a frame drawn after the key",
            )
            assert ("_refresh_layout", "QueueScreen") not in drawn, (attempt, drawn)
        assert screen.filter == ""


async def test_queue_keys_cancel_retry_priority_pause(prepared):
    notes: list[tuple[str, str]] = []
    async with app_for(prepared).run_test(size=(170, 40), message_hook=recorder(notes)) as pilot:
        screen = await ready(pilot)
        target = await to_queued(pilot, screen, prepared)
        run = lambda: Ledger(prepared).get(target)  # noqa: E731
        await pilot.press("c")
        await until(pilot, lambda: ("information", "cancelled 1 run") in notes, "the cancel's note")
        assert run()["status"] == "cancelled"
        await until(
            pilot,
            lambda: "cancelled" in str(screen.query_one(DataTable).get_row(target)[7]),
            "the table showing the cancel",
        )
        await pilot.press("r")
        await until(pilot, lambda: run()["status"] == "queued", "the run requeued")
        await pilot.press("plus")
        await until(pilot, lambda: run()["priority"] == 1, "priority +1")
        await pilot.press("minus")
        await until(pilot, lambda: run()["priority"] == 0, "priority 0")
        await pilot.press("minus")
        await until(pilot, lambda: run()["priority"] == -1, "priority -1")
        await pilot.press("p")
        await until(pilot, lambda: Ledger(prepared).meta("paused") is True, "the queue paused")
        assert "PAUSED" in str(screen.query_one("#totals").render())
        await pilot.press("p")
        await until(pilot, lambda: Ledger(prepared).meta("paused") is False, "the queue resumed")
        assert not [n for n in notes if n[0] == "error"]


# a run's process that ignores SIGTERM: the daemon carries out the cancel, waiting out its whole grace period
SLOW_TO_STOP = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)\n"
)


async def test_keys_are_answered_while_a_cancel_waits_out_its_grace_period(prepared):
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TO_STOP], stdout=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as the daemon starts runs
    try:
        assert proc.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
        running = next(r for r in Ledger(prepared).runs() if r["status"] == "running")["id"]
        Ledger(prepared).update(running, pid=proc.pid, pid_started=psutil.Process(proc.pid).create_time())
        assert cli("queue", "pause", runs_dir=prepared).returncode == 0  # the daemon launches nothing else
        assert cli("daemon", "start", "--interval", "0.2", runs_dir=prepared).returncode == 0  # it adopts proc
        notes: list[tuple[str, str]] = []
        grace = 6.0
        async with app_for(prepared, cancel_grace=grace).run_test(
            size=(170, 40), message_hook=recorder(notes)
        ) as pilot:
            screen = await ready(pilot)
            table = screen.query_one(DataTable)
            row = row_ids(screen).index(running)
            table.move_cursor(row=row)
            await until(pilot, lambda: table.cursor_row == row, "the cursor on the running run")
            t0 = time.monotonic()
            await pilot.press("c")
            # the cancel is asked at once; the daemon sends SIGTERM, and SIGKILL once the grace is over
            await until(pilot, lambda: Ledger(prepared).get(running).get("cancel_signalled"), "the daemon's SIGTERM")
            await pilot.press("down")  # handled while the cancel waits for the process
            await until(pilot, lambda: table.cursor_row == row + 1, "the cursor moved")
            assert f"row {row + 2}/" in str(screen.query_one("#totals").render())
            assert proc.poll() is None  # the process is alive: the cancel still waits (SIGKILL comes after the grace)
            await until(pilot, lambda: ("information", "cancelled 1 run") in notes, "the cancel's note", 60)
            assert time.monotonic() - t0 >= grace - 0.5
            assert proc.wait(timeout=10) == -9  # killed once the grace period was over
            assert Ledger(prepared).get(running)["status"] == "cancelled"
    finally:
        cli("daemon", "stop", runs_dir=prepared)
        proc.kill()
        proc.wait()


# another process (a daemon's tick, say) holding the ledger's lock until it reads a line
LOCK_HOLDER = (
    "import sys\nfrom filelock import FileLock\nlock = FileLock(sys.argv[1])\nlock.acquire()\n"
    "print('locked', flush=True)\nsys.stdin.readline()\n"
)


async def test_keys_are_answered_while_a_plan_is_added(prepared, tmp_path):
    plan = write_text(tmp_path / "plans" / "other.toml", PLAN.replace('"study"', '"other"'))
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, f"{Ledger(prepared).path}.lock"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        notes: list[tuple[str, str]] = []
        async with app_for(prepared).run_test(size=(170, 40), message_hook=recorder(notes)) as pilot:
            screen = await ready(pilot)
            table = screen.query_one(DataTable)
            await pilot.press("a")
            await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the prompt")
            pilot.app.screen.query_one(Input).value = str(plan)
            await pilot.press("enter")
            await until(pilot, lambda: f"queueing {plan}…" in totals_of(screen), "the add started")
            specs = lambda: len(list(prepared.glob("*/spec.json")))  # noqa: E731
            await until(pilot, lambda: specs() == 26, "the new runs' specs written")  # then it waits on the lock
            # the add's own process runs only when the CPU has nothing else to do (the app's keys first)
            (child,) = [p for p in psutil.Process().children() if "stilts_tui.tui.apart" in " ".join(p.cmdline())]
            assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
            await pilot.press("down")
            await until(pilot, lambda: table.cursor_row == 1, "the cursor moved while the add waits")
            assert "other" not in Ledger(prepared).plans() and table.row_count == 13
            holder.stdin.write("\n")
            holder.stdin.flush()
            await until(
                pilot,
                lambda: ("information", "other: 13 runs queued, 0 already in the ledger") in notes,
                "the add's note",
            )
            await until(pilot, lambda: table.row_count == 26, "the table showing the new runs")
    finally:
        holder.kill()
        holder.wait()


async def test_a_plan_added_from_the_prompt_is_said_in_the_totals_bar_until_it_is_queued(prepared, tmp_path):
    """Not in a toast: a toast's mount lays the whole screen out twice, the second time in the frame of
    the key that follows the prompt's close (bench/prompt_close.py)."""
    plan = write_text(tmp_path / "plans" / "other.toml", PLAN.replace('"study"', '"other"'))
    notes: list[tuple[str, str]] = []
    async with app_for(prepared).run_test(size=(170, 40), message_hook=recorder(notes)) as pilot:
        screen = await ready(pilot)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the prompt")
        pilot.app.screen.query_one(Input).value = str(plan)
        await pilot.press("enter")
        await until(pilot, lambda: f"queueing {plan}…" in totals_of(screen), "the add said in the totals bar")
        assert " · row 1/13 · queueing" in totals_of(screen)  # the row first: a narrow terminal cuts the rest
        await until(pilot, lambda: "queueing" not in totals_of(screen), "the add's end")
        # the note comes by a message of its own to the app, posted just after the screen's AddEnded
        note = ("information", "other: 13 runs queued, 0 already in the ledger")
        await until(pilot, lambda: note in notes, "the add's note")
        assert not [n for n in notes if "queueing" in n[1]]  # no toast said it
        # a failed add ends it too (its error in a note)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the prompt again")
        pilot.app.screen.query_one(Input).value = str(tmp_path / "nope.toml")
        await pilot.press("enter")
        await until(pilot, lambda: [n for n in notes if n[0] == "error"], "the add's error")
        await until(pilot, lambda: "queueing" not in totals_of(screen), "the failed add's end")


# a child's start-up hook (sitecustomize runs before the child's own code): waits up to 2 s for the
# child to be SCHED_IDLE, then writes the policy it found
SCHED_AT_START = (
    "import os, time\n"
    "deadline = time.monotonic() + 2\n"
    "while os.sched_getscheduler(0) != os.SCHED_IDLE and time.monotonic() < deadline:\n"
    "    time.sleep(0.001)\n"
    "open(os.environ['STILTS_TEST_SCHED'], 'w').write(str(os.sched_getscheduler(0)))\n"
)


def test_a_queue_operations_process_is_idle_before_its_own_code_runs(tmp_path, monkeypatch, runs_dir):
    """The app sets the child's SCHED_IDLE as soon as the child exists: its Python start and imports
    (20-30 ms of CPU, as the prompt closes and the next key comes) no longer run at normal priority
    until the child's own call."""
    from stilts_tui.errors import UserError
    from stilts_tui.tui import apart

    write_text(tmp_path / "site" / "sitecustomize.py", SCHED_AT_START)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("STILTS_TEST_SCHED", str(tmp_path / "sched"))
    with pytest.raises(UserError, match="nope.toml"):
        apart.run("add", runs_dir, path=str(tmp_path / "nope.toml"))
    assert int((tmp_path / "sched").read_text()) == os.SCHED_IDLE


async def test_runs_added_in_between_are_shown_in_queue_order_with_the_cursor_on_its_run(prepared, tmp_path):
    """More runs than one chunk (100 a frame), some sorting before the rows shown: one sort places them."""
    lrs = ", ".join(f"{i}e-6" for i in range(1, 31))  # 1 intermediate + (none, hs) x 2 seeds x 30 lr = 121 runs
    plan = write_text(
        tmp_path / "plans" / "wide.toml",
        PLAN.replace('"study"', '"wide"')
        .replace("grid = { lr = [1e-5, 2e-5] }", f"grid = {{ lr = [{lrs}] }}")
        .replace('[target.cola]\ntask = "cola"\n', ""),
    )
    notes: list[tuple[str, str]] = []
    async with app_for(prepared).run_test(size=(170, 40), message_hook=recorder(notes)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        target = await to_queued(pilot, screen, prepared)
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the prompt")
        pilot.app.screen.query_one(Input).value = str(plan)
        await pilot.press("enter")
        await until(pilot, lambda: ("information", "wide: 121 runs queued, 0 already in the ledger") in notes, "added")
        await until(pilot, lambda: table.row_count == 13 + 121, "every new run shown")
        # the new intermediate run sorts before the first plan's targets: one sort put it there
        await until(pilot, lambda: row_ids(screen) == [r["id"] for r in Ledger(prepared).runs()], "queue order")
        assert screen.current_id() == target


async def test_a_failed_worker_is_shown_once_in_place_of_loading_and_the_screen_recovers(prepared, tmp_path):
    ledger = Ledger(prepared).path
    good = ledger.read_bytes()
    ledger.unlink()
    ledger.mkdir()  # reading it fails: the ledger says so in one line (a LedgerError)
    notes: list[tuple[str, str]] = []
    failed: list[Worker] = []
    async with app_for(prepared).run_test(size=(170, 40), message_hook=recorder(notes, failed)) as pilot:
        screen = pilot.app.queue_screen
        totals = lambda: str(screen.query_one("#totals").render())  # noqa: E731
        await until(pilot, lambda: len(failed) >= 3, "three failed reads")  # one a second
        assert totals().startswith(f"error: {ledger}: not a ledger: is a directory, not a regular file")
        assert [n for n in notes if n[0] == "error"] == [("error", totals().removeprefix("error: "))]  # said once
        ledger.rmdir()
        ledger.write_bytes(good)
        await ready(pilot)
        assert totals().startswith("9 done · 1 running")
        # an operation's failure goes to the same handler: a plan file that is not there
        await pilot.press("a")
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the prompt")
        pilot.app.screen.query_one(Input).value = str(tmp_path / "nope.toml")
        await pilot.press("enter")
        await until(pilot, lambda: len([n for n in notes if n[0] == "error"]) == 2, "the add's error")
        assert "nope.toml" in notes[-1][1] and "\n" not in notes[-1][1]


@pytest.fixture(autouse=True)
def own_columns_file(tmp_path, monkeypatch):
    """The chosen columns go to the test's own file, never the user's ~/.config."""
    monkeypatch.setenv("STILTS_COLUMNS", str(tmp_path / "columns.json"))


async def test_cancel_and_quit_ask_first_and_cancel_asks_for_the_marked_set(prepared):
    notes: list[tuple[str, str]] = []
    async with app_for(prepared, confirm=True).run_test(size=(170, 40), message_hook=recorder(notes)) as pilot:
        screen = await ready(pilot)
        queued = [i for i in row_ids(screen) if Ledger(prepared).get(i)["status"] == "queued"]
        table = screen.query_one(DataTable)
        for rid in queued:
            table.move_cursor(row=row_ids(screen).index(rid))
            await pilot.press("space")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the cancel's question")
        assert "the 2 marked runs" in str(pilot.app.screen.query_one(Label).render())
        await pilot.press("c", "q", "n")  # keys typed at the question do nothing else; n: no
        await until(pilot, lambda: pilot.app.screen is screen, "the question gone")
        await settled(pilot)
        assert all(Ledger(prepared).get(i)["status"] == "queued" for i in queued) and screen.marked == queued
        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "asked again")
        await pilot.press("y")
        await until(pilot, lambda: all(Ledger(prepared).get(i)["status"] == "cancelled" for i in queued), "cancelled")
        await until(pilot, lambda: ("information", "cancelled 2 runs") in notes, "the cancel's note")
        await pilot.press("q")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the quit's question")
        await pilot.press("escape")
        await until(pilot, lambda: pilot.app.screen is screen, "still open")
        assert pilot.app.is_running
        await pilot.press("q", "y")
        await until(pilot, lambda: not pilot.app.is_running, "the app quit")


def test_questions_can_be_turned_off(monkeypatch):
    from stilts_tui.tui.screens.confirm import confirm_wanted

    monkeypatch.setenv("STILTS_CONFIRM", "0")
    assert not confirm_wanted() and StiltsApp(Path("."), keymap={}).confirm is False
    monkeypatch.delenv("STILTS_CONFIRM")
    assert confirm_wanted() and StiltsApp(Path("."), keymap={}).confirm is True


async def test_a_run_waiting_in_a_worker_reads_waiting_and_is_not_counted_running(prepared):
    """Three runs of one worker process: the one it trains is running; the two it has not begun read
    "waiting" with "in worker 1", and the totals count one running run."""
    runs = Ledger(prepared).runs()
    cola = [r for r in runs if r["task"] == "cola"]
    training = next(r for r in cola if r["status"] == "running")
    others = [r["id"] for r in runs if r["status"] == "queued"]
    with Ledger(prepared).transaction() as tx:
        for rid in [training["id"], *others]:
            tx.update_run(rid, status="running", worker="w1", pid=4242, pid_started=1.0, gpu=1, started=2000.0)
    with open(prepared / training["id"] / "events.jsonl", "a") as f:
        f.write(
            json.dumps({"t": 1, "event": "start", "pid": 4242})
            + "\n"
            + json.dumps({"t": 2, "event": "step", "step": 12, "total_steps": 20, "loss": 0.5, "eta_s": 16})
            + "\n"
        )
    for rid in others:  # an earlier attempt's start, by another process: not begun by this worker
        (prepared / rid / "events.jsonl").write_text(json.dumps({"t": 0, "event": "start", "pid": 99}) + "\n")
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        await until(pilot, lambda: "1 running · 2 waiting in workers · 0 queued" in totals_of(screen), "the totals")
        table = screen.query_one(DataTable)
        for rid in others:
            row = [str(c) for c in table.get_row(rid)]
            assert row[7] == "waiting" and row[9] == "in worker 1" and row[10] == row[11] == ""
        row = [str(c) for c in table.get_row(training["id"])]
        assert row[7] == "running" and row[9] == "██████░░░░  60%"


async def test_reasons_show_why_runs_failed_or_are_blocked_and_long_values_end_in_an_ellipsis(prepared):
    runs = Ledger(prepared).runs()
    failed = next(r for r in runs if r["status"] == "failed")
    inter = next(r for r in runs if r["stage"] == "intermediate")
    child = next(r for r in runs if r["parent"] == inter["id"] and r["status"] == "queued")
    with Ledger(prepared).transaction() as tx:
        tx.update_run(inter["id"], status="failed", error="CUDA out of memory: tried to allocate " + "9" * 80)
        tx.update_run(child["id"], status="blocked")
        tx.update_run(failed["id"], grid={"lr": 1e-5, "batch_size": 16, "warmup": 0.1, "weight_decay": 0.01})
    async with app_for(prepared).run_test(size=(220, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        await until(pilot, lambda: str(table.get_row(child["id"])[13]) == f"parent {inter['id']} failed", "reason")
        assert str(table.get_row(failed["id"])[13]) == "data file not found"
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert any("CUDA out of memory: tried to allocate 9…" in x for x in lines)  # cut, and said to be
        assert any("lr=1e-05 bs=16 wu=0.1 w…" in x for x in lines)
        await pilot.press("slash", *"memory", "enter")  # the filter matches reasons too
        await until(pilot, lambda: row_ids(screen) == [inter["id"]], "filtered by reason")


async def test_sort_any_column_reverse_and_j_k(prepared):
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        for _ in range(3):  # queue -> status -> score -> task
            await pilot.press("s")
        await until(pilot, lambda: "sort: task" in totals_of(screen), "sorted by task")
        tasks = [Ledger(prepared).get(i)["task"] for i in row_ids(screen)]
        assert tasks == sorted(tasks)
        await pilot.press("S")
        await until(pilot, lambda: "sort: task (reversed)" in totals_of(screen), "reversed")
        tasks = [Ledger(prepared).get(i)["task"] for i in row_ids(screen)]
        assert tasks == sorted(tasks, reverse=True)
        while "sort: seed" not in totals_of(screen):  # every column is a sort key in turn
            await pilot.press("s")
        seeds = [str(Ledger(prepared).get(i).get("seed", "")) for i in row_ids(screen)]
        assert seeds == sorted(seeds, reverse=True)
        table.move_cursor(row=0)
        await pilot.press("j", "j", "k")
        await until(pilot, lambda: table.cursor_row == 1, "j/k move the cursor")


async def test_columns_chosen_are_shown_and_remembered(prepared, tmp_path):
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:
        screen = await ready(pilot)
        await pilot.press("C")
        await until(pilot, lambda: pilot.app.screen.__class__.__name__ == "ColumnsScreen", "the column chooser")
        chooser = pilot.app.screen.query_one(SelectionList)
        chooser.deselect("plan")
        chooser.deselect("loss")
        await pilot.press("enter")
        await until(
            pilot,
            lambda: "plan" not in [str(c.label) for c in screen.query_one(DataTable).columns.values()],
            "the plan column hidden",
        )
        assert json.loads((tmp_path / "columns.json").read_text())[:3] == ["id", "stage", "task"]
    async with app_for(prepared).run_test(size=(200, 40)) as pilot:  # the next session
        screen = await ready(pilot)
        labels = [str(c.label) for c in screen.query_one(DataTable).columns.values()]
        assert "plan" not in labels and "loss" not in labels and labels[0] == "id" and "status" in labels


def burst(pilot, *keys: str) -> None:
    """Send keys all at once, as a terminal delivers keys typed while the app is busy (Pilot's own
    press waits for the app to go idle after each key): the same Key events, none awaited."""
    from textual import events

    for key in keys:
        char = key if len(key) == 1 else {"slash": "/", "space": " "}.get(key)
        event = events.Key(key, char)
        event.set_sender(pilot.app)
        pilot.app._driver.send_message(event)


@pytest.fixture
def busy_machine():
    """Two processes spinning on the CPU (this machine has two cores): keys arrive while the app waits."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


async def test_palette_keys_sent_at_once_on_a_busy_machine_are_all_applied_in_order(prepared, busy_machine):
    """ctrl+p, "queue", eight backspaces, "pause" as one burst: the palette reads "pause" (Textual applied
    the backspaces after the letters typed later: "qu") and enter pauses the queue (it quit before)."""
    from textual.command import CommandInput, CommandList, CommandPalette

    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        burst(pilot, "ctrl+p", *"queue", *["backspace"] * 8, *"pause")
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, CommandPalette) and pilot.app.screen.query(CommandInput),
            "the palette and its input",
        )
        box = pilot.app.screen.query_one(CommandInput)
        await until(pilot, lambda: box.value == "pause", f"'pause' in the palette (it reads {box.value!r})", 60)
        commands = pilot.app.screen.query_one(CommandList)
        await until(
            pilot,
            lambda: (
                commands.highlighted is not None
                and "pause" in str(commands.get_option_at_index(commands.highlighted).prompt)
            ),
            "the pause command on top",
            60,
        )
        await pilot.press("enter")
        await until(pilot, lambda: Ledger(prepared).meta("paused") is True, "the queue paused")
        assert pilot.app.is_running and pilot.app.screen is screen
        # the same for a prompt opened in the burst: the keys after "/" are the filter's (c is not a cancel),
        # with ctrl+u and backspaces applied where they were typed
        burst(pilot, "slash", *"cola", "ctrl+u", *"rtx", "backspace", "backspace", *"te", "enter")
        await until(pilot, lambda: screen.filter == "rte", f"the filter 'rte' (it is {screen.filter!r})", 60)
        assert not [r for r in Ledger(prepared).runs() if r["status"] == "cancelled"]


async def test_a_keymap_remaps_a_binding_by_id(prepared):
    notes: list[tuple[str, str]] = []
    async with app_for(prepared, keymap={"queue.cancel": "x"}).run_test(
        size=(170, 40), message_hook=recorder(notes)
    ) as pilot:
        screen = await ready(pilot)
        target = await to_queued(pilot, screen, prepared)
        await pilot.press("c")  # no longer bound
        await pilot.press("x")
        await until(pilot, lambda: ("information", "cancelled 1 run") in notes, "x cancels")
        assert Ledger(prepared).get(target)["status"] == "cancelled"
        assert notes.count(("information", "cancelling 1 run…")) == 1  # c started nothing


async def test_the_key_bar_shows_the_keys_as_remapped_and_a_click_runs_its_key(prepared):
    from stilts_tui.tui.widgets.key_bar import KeyBar

    async with app_for(prepared, keymap={"queue.cancel": "x"}).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        bar = screen.query_one(KeyBar)
        text = lambda: str(bar.render())  # noqa: E731
        await until(pilot, lambda: "Cancel" in text(), "the key bar written")
        assert "x Cancel" in text() and "c Cancel" not in text() and "q Quit" in text() and "^p palette" in text()
        # a click on a key runs it, as on Textual's Footer: "o Scores" opens the scores screen
        await pilot.click(KeyBar, offset=(1 + text().index("o Scores"), 0))
        await until(pilot, lambda: isinstance(pilot.app.screen, ScoresScreen), "the click opened the scores")
        bar = pilot.app.screen.query_one(KeyBar)
        await until(pilot, lambda: "Plan" in str(bar.render()), "the scores screen's key bar written")
        assert "[ Plan" in str(bar.render())  # a key that is markup's own character shows as itself
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "back on the queue")
        assert "x Cancel" in str(pilot.app.screen.query_one(KeyBar).render())


async def test_log_panes_follow_filter_and_keep_following_a_restarted_run(prepared):
    running = next(r for r in Ledger(prepared).runs() if r["status"] == "running")["id"]
    done = next(r for r in Ledger(prepared).runs() if r["status"] == "done")["id"]
    (prepared / done / "train.log").write_text("[10:00:00] eval epoch 1: acc 0.8100\n")
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        ids = row_ids(screen)
        for rid in (running, done):  # mark two runs, open both
            screen.query_one(DataTable).move_cursor(row=ids.index(rid))
            await pilot.press("space")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(pilot.app.screen, LogsScreen), "the logs screen")
        panes = list(pilot.app.screen.query(LogPane))
        assert [p.run_id for p in panes] == [running, done]
        log = panes[0].query_one(Log)
        await until(pilot, lambda: log.line_count == 10, "the log read")
        assert "step 10/20" in log.lines[-1]
        with open(prepared / running / "train.log", "a") as f:  # appended live; \r progress collapses
            f.write("progress 10%\rprogress 50%\rprogress 100%\n[10:00:11] Traceback (most recent call last):\n")
        await until(pilot, lambda: "Traceback" in log.lines[-1], "the appended lines")
        assert log.lines[-2] == "progress 100%"
        await pilot.press("f")  # the filter asks in a prompt that takes every key typed after f
        await until(pilot, lambda: isinstance(pilot.app.screen, PromptScreen), "the filter's prompt")
        await pilot.press(*"step 1f", "backspace", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, LogsScreen), "the prompt closed")
        assert panes[0].filter == "step 1"
        assert list(log.lines) == [x for x in LOG.splitlines() if "step 1" in x]
        (prepared / running / "train.log").write_text("[11:00:00] restarted: step 1/20\n")  # a new attempt
        await until(pilot, lambda: log.lines[-1] == "[11:00:00] restarted: step 1/20", "the restarted run's log")
        # one pane is active: tab moves it (titles and key bar say which); scrolling keys go to it
        logs = pilot.app.screen
        assert logs.focused_pane() is panes[0] and panes[0].query_one(".title").has_class("active")
        await pilot.press("tab")
        assert logs.focused_pane() is panes[1] and panes[1].query_one(".title").has_class("active")
        assert not panes[0].query_one(".title").has_class("active")
        await pilot.press("tab")
        assert logs.focused_pane() is panes[0]
        with open(prepared / running / "train.log", "a") as f:
            f.write("".join(f"[11:00:{i % 60:02d}] step 1 line {i}\n" for i in range(200)))  # the filter is on
        await until(pilot, lambda: log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y, "following the end")
        await pilot.press("home")
        await until(pilot, lambda: log.scroll_y == 0, "scrolled to the top")
        assert panes[1].query_one(Log).scroll_y == 0
        await pilot.press("j", "j", "k")
        await until(pilot, lambda: log.scroll_y == 1, "j/k scroll a line")
        await pilot.press("end")
        await until(pilot, lambda: log.scroll_y == log.max_scroll_y, "scrolled to the end")
        with open(prepared / running / "train.log", "a") as f:
            f.write("step 1 " + "x" * 400 + " wide\n")  # the filter is still on
        await until(pilot, lambda: log.max_scroll_x > 0, "a line wider than the pane")
        await pilot.press("right", "right")
        await until(pilot, lambda: log.scroll_x > 0, "right scrolls a wide line into view")
        await pilot.press("left", "left")
        await until(pilot, lambda: log.scroll_x == 0, "left scrolls back")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(pilot.app.screen, QueueScreen), "the queue screen back")


def test_error_lines_are_highlighted():
    from rich.text import Text

    t = Text("RuntimeError: CUDA out of memory")
    ErrorHighlighter().highlight(t)
    assert t.spans and "red" in str(t.spans[0].style)
    t = Text("epoch 1/3 step 5/10 loss 0.5")
    ErrorHighlighter().highlight(t)
    assert not t.spans


async def test_scores_screen_views_cell_distribution_and_export(prepared):
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        await ready(pilot)
        await pilot.press("o")
        screen = pilot.app.screen
        assert isinstance(screen, ScoresScreen)
        await until(pilot, lambda: screen.table_data is not None, "the score table", 90)  # seconds of statistics
        await settled(pilot)
        table = screen.query_one(DataTable)
        assert table.row_count == 2
        none_rte = str(table.get_cell_at((0, 1)))
        assert none_rte.startswith("67.5 ± ") and "n=4" in none_rte
        hs_rte = str(table.get_cell_at((1, 1)))
        assert hs_rte.startswith("82.5 ± 5.6") and "+15.0" in hs_rte
        assert str(table.get_cell_at((0, 2))) == "missing 2"
        await pilot.press("m")  # max
        await until(pilot, lambda: str(table.get_cell_at((1, 1))).startswith("90.0  n=4"), "the max view")
        table.cursor_coordinate = (1, 1)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, CellScreen), "the cell's distribution")
        plot = str(pilot.app.screen.query_one("#plot").render())
        assert "●" in plot and "gain over none +15.00" in plot and "ddof 0" in plot
        await pilot.press("escape")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(pilot.app.screen, ExportScreen), "the export menu")
        assert [str(o.prompt) for o in pilot.app.screen.query_one(OptionList).options] == [
            "csv",
            "md",
            "latex",
            "json",
            "png",
            "pdf",
            "svg",
        ]  # matplotlib is installed: figures offered
        # the menu floats over the table's right margin, never over its cells: the table stays whole
        menu = pilot.app.screen.query_one(OptionList)
        assert pilot.app.screen_stack[-2] is screen and table.region.width > 0
        assert table.region.x + table.virtual_size.width <= menu.region.x, (table.virtual_size, menu.region)
        await pilot.press("down", "enter")  # the second format: md
        out = prepared / "exports" / "study.md"
        await until(pilot, lambda: out.exists(), "the export written")
        assert "| hs | 82.5 ± 5.6 (+15.0" in out.read_text()


async def test_scores_open_on_the_selected_runs_plan_and_say_why_nothing_finished(prepared, tmp_path):
    """The scores screen opens on the plan of the run the queue's cursor is on, not the newest; a plan
    with no finished run says how many runs are in which status (not "queued" for failed ones)."""
    other = write_text(tmp_path / "plans" / "newer.toml", PLAN.replace('"study"', '"newer"'))
    assert cli("queue", "add", str(other), runs_dir=prepared).returncode == 0
    newer = [r["id"] for r in Ledger(prepared).runs(plan="newer") if r["stage"] == "target"]
    with Ledger(prepared).transaction() as tx:
        tx.update_run(newer[0], status="failed", error="boom")
        for rid in newer[1:]:
            tx.update_run(rid, status="blocked")
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        table = screen.query_one(DataTable)
        table.move_cursor(row=0)  # the study's intermediate run
        await until(pilot, lambda: screen.current_id() == row_ids(screen)[0], "the cursor on a study run")
        await pilot.press("o")
        scores = pilot.app.screen
        await until(pilot, lambda: scores.table_data is not None, "the score table", 90)
        assert scores.table_data.plan == "study"
        await pilot.press("right_square_bracket")  # the next plan: newer, where nothing finished
        await until(pilot, lambda: "newer" in str(scores.query_one("#title").render()), "the next plan", 90)
        assert (
            str(scores.query_one("#title").render())
            == f"plan 'newer' has no finished target runs yet ({len(newer) - 1} blocked, 1 failed)"
        )


async def test_plan_builder_takes_typed_keys_counts_saves_and_queues(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with app_for(prepared).run_test(size=(170, 45)) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder")
        screen = pilot.app.screen
        count = lambda: str(screen.query_one("#count").render())  # noqa: E731
        await until(pilot, lambda: "36 runs" in count(), "the first count")  # none x rte x 2 seeds x 3 lr x 3 bs x 2 wu
        # the name field has the keys: typed letters (o, m, e, q, b are the app's shortcuts) go into it
        await pilot.press("ctrl+u", *"omeqb")
        assert isinstance(pilot.app.screen, BuilderScreen) and screen.query_one("#f-name", Input).value == "omeqb"
        targets = screen.query_one("#targets", SelectionList)
        assert "[x] rte" in [str(o.prompt) for o in targets.options]  # chosen, said in text (not colour alone)
        assert "[ ] cola" in [str(o.prompt) for o in targets.options]
        screen.query_one("#inters", SelectionList).select("hellaswag")
        await until(pilot, lambda: "73 runs" in count() and "1 intermediate, 72 target" in count(), "73 runs")
        assert "[x] hellaswag" in [str(o.prompt) for o in screen.query_one("#inters", SelectionList).options]
        screen.query_one("#f-seeds", Input).value = "1"
        await until(pilot, lambda: "37 runs" in count(), "37 runs")
        screen.query_one("#f-lr", Input).value = "-1"
        await until(pilot, lambda: "key 'target.rte.grid.lr'" in count(), "the grid's error")
        screen.query_one("#f-lr", Input).value = "1e-5"
        screen.query_one("#f-batch_size", Input).value = "8"
        screen.query_one("#f-warmup", Input).value = "0.1"
        screen.query_one("#inters", SelectionList).deselect("hellaswag")
        await until(pilot, lambda: "1 run:" in count(), "one run, said in the singular")
        screen.query_one("#f-name", Input).value = "built"
        write_text(tmp_path / "data" / "rte" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
        write_text(tmp_path / "data" / "rte" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
        screen.query_one("#f-data", Input).value = str(tmp_path / "data")
        await until(pilot, lambda: "1 run:" in count(), "the count after the name")
        await pilot.press("ctrl+s")
        path = tmp_path / "plans" / "built.toml"
        await until(pilot, lambda: "built" in Ledger(prepared).plans(), "the built plan queued")
        assert len(Ledger(prepared).runs(plan="built")) == 1
        assert f'data_dir = "{tmp_path / "data" / "rte"}"' in path.read_text()  # a local source: runs offline


async def test_plan_builder_asks_before_replacing_a_plan_file(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_text(tmp_path / "plans" / "mine.toml", "# my own plan, hand-written\n")
    notes: list[tuple[str, str]] = []
    async with app_for(prepared, confirm=False).run_test(size=(170, 45), message_hook=recorder(notes)) as pilot:
        await ready(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(pilot.app.screen, BuilderScreen), "the builder")
        builder = pilot.app.screen
        builder.query_one("#f-name", Input).value = "mine"
        await pilot.press("ctrl+s")  # asks even with the questions turned off: a file would be lost
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the question")
        assert str(path) in str(pilot.app.screen.query_one(Label).render())
        await pilot.press("n")
        await until(pilot, lambda: pilot.app.screen is builder, "back in the builder")
        assert path.read_text() == "# my own plan, hand-written\n" and "mine" not in Ledger(prepared).plans()
        assert ("information", f"kept {path}; nothing saved") in notes
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: "mine" in Ledger(prepared).plans(), "the replaced plan queued")
        assert path.read_text().startswith('name = "mine"')


async def test_help_lists_every_key_as_typed_with_its_id(prepared):
    async with app_for(prepared).run_test(size=(170, 50)) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "the help screen")
        text = str(pilot.app.screen.query_one("Static").render())
        sections = pilot.app.key_sections()
        for _, rows in sections:
            for key, _, bid in rows:
                assert (bid in text or not bid) and key in text
        assert all(bid for _, rows in sections[1:] for _, _, bid in rows)  # every binding has an id
        for raw in ("question_mark", "left_square_bracket", "right_square_bracket", "slash"):
            assert raw not in text
        assert "f1 ?" in text and "[ ]" in text


async def test_palette_commands_read_area_action_and_cover_the_keys(prepared):
    from stilts_tui.tui.actions import palette

    commands = palette({})
    assert all(
        ":" in title and title.split(":")[0] in ("queue", "logs", "scores", "plan", "help", "app")
        for title, _, _ in commands
    )
    titles = {t for t, _, _ in commands}
    for title in ("queue: reverse sort", "queue: choose columns", "logs: filter lines", "app: quit"):
        assert title in titles
    async with app_for(prepared).run_test(size=(170, 40)) as pilot:
        screen = await ready(pilot)
        target = await to_queued(pilot, screen, prepared)
        action = next(a for t, _, a in commands if t == "queue: cancel selected")
        await pilot.app.run_action(action)
        await until(pilot, lambda: Ledger(prepared).get(target)["status"] == "cancelled", "the palette's cancel")


async def palette_hits(app, query: str) -> dict[str, str]:
    """What the app's command palette offers for ``query``: title -> help text."""
    from stilts_tui.tui.app import StiltsCommands

    provider = StiltsCommands(app.screen)
    return {str(hit.text): hit.help or "" async for hit in provider.search(query)}


def binding_keys(app) -> dict[str, set[str]]:
    """Every binding of the app and its screens, by id, with its keys after the app's keymap: the live
    ones of the app and the queue screen (what the key bar shows), the other screens' as Textual makes
    them (their BINDINGS with the keymap applied)."""
    from textual.binding import BindingsMap

    from stilts_tui.tui.screens.columns import ColumnsScreen
    from stilts_tui.tui.screens.gpus import GpuScreen

    out: dict[str, set[str]] = {}
    for key, active in app.screen.active_bindings.items():
        out.setdefault(active.binding.id, set()).add(key)
    from stilts_tui.tui.screens.compare import CompareScreen

    others = (LogsScreen, ScoresScreen, BuilderScreen, GpuScreen, ConfirmScreen, HelpScreen, ColumnsScreen)
    others += (CompareScreen,)
    for cls in (*others, PromptScreen, ExportScreen, CellScreen):
        bmap = BindingsMap(cls.BINDINGS)
        bmap.apply_keymap(app._keymap)
        for key, bound in bmap.key_to_bindings.items():
            for binding in bound:
                out.setdefault(binding.id, set()).add(key)
    return out


@pytest.mark.parametrize("keymap", [{}, {"queue.cancel": "x", "app.gpus": "G", "logs.filter": "F"}])
async def test_palette_help_and_bindings_list_the_same_actions_with_the_same_keys(prepared, keymap):
    """The palette, the help screen and the bindings are all made from the registry (tui/actions.py):
    every action with keys is bound under its id and listed in the help with its keys as remapped;
    every action with palette text is in the palette, with the same keys; a remapped key shows in all
    three, its old key in none."""
    from stilts_tui.tui.actions import ACTIONS, HELP_SECTIONS, keys_of

    async with app_for(prepared, keymap=keymap).run_test(size=(170, 50)) as pilot:
        await ready(pilot)
        bound = binding_keys(pilot.app)
        hits: dict[str, str] = {}
        for area in ("queue", "logs", "scores", "plan", "help", "app"):
            hits |= await palette_hits(pilot.app, area)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen), "the help screen")
        help_text = str(pilot.app.screen.query_one("Static").render())
        help_rows = {bid: key for _, rows in pilot.app.key_sections() for key, _, bid in rows if bid}
        in_help = {screen for screen, _ in HELP_SECTIONS}
        for a in ACTIONS:
            keys = keys_of(a, pilot.app._keymap)
            if a.keys and a.bound:
                # a default key the keymap gives another action is that action's alone (actions.resolved)
                assert bound[a.id] == set((pilot.app._keymap.get(a.id) or a.keys).split(",")), a.id
                assert a.id in keymap or not bound[a.id] & set(keymap.values()), a.id
            if a.keys and a.bound and a.screen in in_help:
                assert help_rows[a.id] == keys and f"{keys:<16} {a.description:<28} {a.id}" in help_text, a.id
            if a.palette:
                assert hits[a.palette].endswith(f"({keys})" if a.keys else a.palette_help), a.palette
        assert set(help_rows) <= set(bound) and {a.palette for a in ACTIONS if a.palette} <= set(hits)
        for aid, key in keymap.items():
            a = next(a for a in ACTIONS if a.id == aid)
            assert bound[aid] == {key} and help_rows[aid] == key
            assert not a.palette or hits[a.palette].endswith(f"({key})")


# ---- snapshots: each screen, with a ledger and run folders prepared by the test ---------------

SIZE = (150, 32)


@pytest.fixture
def frozen(prepared) -> Path:
    """Snapshots need fixed content: no clock-dependent ETA."""
    with Ledger(prepared).transaction() as tx:
        for r in tx.runs.all():
            if r["status"] == "running":
                tx.update_run(r["id"], started=2000.0)
    return prepared


async def _settle(pilot, screen_type=QueueScreen):
    """The screen shown and filled: its rows (queue), its table (scores); then every worker done."""

    def filled() -> bool:
        s = pilot.app.screen
        if not isinstance(s, screen_type):
            return False
        if isinstance(s, QueueScreen):
            return s.query_one(DataTable).row_count > 0 and not totals_of(s).startswith("loading")
        if isinstance(s, ScoresScreen):
            return s.table_data is not None
        return True

    await until(pilot, filled, f"the {screen_type.__name__} filled", 90)
    await settled(pilot)


def test_snapshot_queue(frozen, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)

    assert snap_compare(app_for(frozen), terminal_size=SIZE, run_before=run_before)


def test_snapshot_logs(frozen, snap_compare):
    running = next(r for r in Ledger(frozen).runs() if r["status"] == "running")["id"]

    async def run_before(pilot):
        await _settle(pilot)
        pilot.app.open_logs([running])
        await _settle(pilot, LogsScreen)
        log = pilot.app.screen.query_one(Log)
        await until(pilot, lambda: log.line_count == 10, "the log read")
        plot = pilot.app.screen.query_one(LogPane).view.plots["loss"]
        await until(pilot, lambda: plot.frame is not None, "the curves drawn")
        await settled(pilot)

    assert snap_compare(app_for(frozen), terminal_size=SIZE, run_before=run_before)


def test_snapshot_scores(frozen, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("o")
        await _settle(pilot, ScoresScreen)

    assert snap_compare(app_for(frozen), terminal_size=SIZE, run_before=run_before)


def test_snapshot_builder(frozen, snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("b")
        await _settle(pilot, BuilderScreen)
        count = pilot.app.screen.query_one("#count")
        await until(pilot, lambda: "36 runs" in str(count.render()), "the builder's count")
        for box in pilot.app.screen.query(Input):  # the focused field's cursor would blink into the picture
            box.cursor_blink = False
        await settled(pilot)

    assert snap_compare(app_for(frozen), terminal_size=(150, 40), run_before=run_before)


def test_snapshot_help(frozen, snap_compare):
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("f1")
        await _settle(pilot, HelpScreen)

    assert snap_compare(app_for(frozen), terminal_size=(150, 50), run_before=run_before)


# ---- the real app in a real terminal ----------------------------------------------------------


# a tmux server of the test's own: a server already running (someone's tmux) would start the app with
# that server's environment, not the test's
TMUX_SOCKET = f"stilts-test-{os.getpid()}"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", TMUX_SOCKET, *args], capture_output=True, text=True, check=True).stdout


def test_real_tui_in_tmux_moves_opens_logs_and_cancels(prepared):
    session = f"stilts-{prepared.parent.name}"[:40]
    cmd = [
        str(CONSOLE) if CONSOLE.exists() else f"{sys.executable} -m stilts_tui.cli",
        "--no-daemon",
        "--runs-dir",
        str(prepared),
    ]
    tmux("new-session", "-d", "-s", session, "-x", "170", "-y", "40", "env", "TERM=xterm-256color", *cmd)
    try:

        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", session)

        # the screen is polled until it says it: rows appear a frame before the totals line is drawn; the
        # first frame waits on the interpreter's start, which a loaded 2-core box can stretch past 30 s
        wait(lambda: "9 done · 1 running · 2 queued · 1 failed" in screen(), 180, "the app's queue screen")
        runs = {r["id"]: r for r in Ledger(prepared).runs()}
        order = [line.split()[0] for line in screen().splitlines() if line.strip()[:12] in runs]
        # move to the running run, open its log (tmux delivers the keys in order, the app handles them so)
        target = next(i for i in order if runs[i]["status"] == "running")
        for _ in range(order.index(target)):
            tmux("send-keys", "-t", session, "Down")
        tmux("send-keys", "-t", session, "l")
        wait(lambda: "step 10/20" in screen(), 60, "the run's log pane")
        assert target in screen() and "step 10/20 loss 0.6000" in screen()
        tmux("send-keys", "-t", session, "Escape")
        wait(lambda: "step 10/20" not in screen() and "9 done" in screen(), 60, "the queue screen back")
        # cancel the next queued run
        victim = next(i for i in order[order.index(target) :] if runs[i]["status"] == "queued")
        for _ in range(order.index(victim) - order.index(target)):
            tmux("send-keys", "-t", session, "Down")
        tmux("send-keys", "-t", session, "c")
        wait(lambda: f"Cancel run {victim}?" in screen(), 60, "the cancel's question")
        assert Ledger(prepared).get(victim)["status"] == "queued"
        tmux("send-keys", "-t", session, "y")
        wait(lambda: Ledger(prepared).get(victim)["status"] == "cancelled", 60, "the run cancelled in the ledger")
        wait(lambda: "1 cancelled" in screen(), 60, "the app to show the cancel")
        tmux("send-keys", "-t", session, "q")
        wait(lambda: "Quit the app?" in screen(), 60, "the quit's question")
        tmux("send-keys", "-t", session, "y")
        wait(
            lambda: (
                subprocess.run(
                    ["tmux", "-L", TMUX_SOCKET, "has-session", "-t", session], capture_output=True
                ).returncode
                != 0
            ),
            60,
            "the app to quit",
        )
    finally:
        subprocess.run(["tmux", "-L", TMUX_SOCKET, "kill-server"], capture_output=True)


def test_tui_modules_import_without_torch():
    code = (
        "import sys, stilts_tui.tui.app, stilts_tui.tui.screens.scores, stilts_tui.tui.screens.builder, "
        "stilts_tui.tui.screens.logs\nprint([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
