"""Notes and tags on runs and plans (issue 37, must-show 4): written as a request the queue's owner carries
out (the daemon's tick, or with no daemon the client under the daemon's lock), shown by `queue ls
--json`, the app's table and its `/` filter, and the score table's exports. The real CLI in subprocesses,
the real ledger and tick, the real app under Pilot."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import CONSOLE, cli, plan_text, until, wait, write_text
from filelock import FileLock
from textual.widgets import DataTable

from stilts_tui.contract import DAEMON_LOCK, RESULT_FILE
from stilts_tui.queue import daemon as qd
from stilts_tui.queue import requests
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.logs import LogsScreen
from stilts_tui.tui.screens.note import NoteScreen
from stilts_tui.tui.screens.queue import QueueScreen
from stilts_tui.tui.widgets.log_pane import LogPane

PLAN = plan_text(
    name="study",
    seeds=(1, 2),
    stages='[intermediate.hs]\ntask = "hellaswag"\n[target.rte]\ntask = "rte"\ngrid = { lr = [1e-5, 2e-5] }\n',
)


@pytest.fixture
def queued(tmp_path, runs_dir):
    """A queued plan "study" (nothing runs); the target runs done with a result, for the score table."""
    plan = write_text(tmp_path / "plans" / "study.toml", PLAN)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    for i, r in enumerate(r for r in Ledger(runs_dir).runs() if r["stage"] == "target"):
        score = 0.6 + 0.02 * i
        result = {"status": "done", "score": score, "metrics": {"acc": score}, "primary_metric": "acc"}
        (runs_dir / r["id"] / RESULT_FILE).write_text(json.dumps(result))
    return runs_dir


def _targets(root) -> list[str]:
    return [r["id"] for r in Ledger(root).runs() if r["stage"] == "target"]


def _tick(root) -> None:
    with Ledger(root).transaction() as tx:  # launch nothing: the tick's requests are what is tested
        tx.put(tx.meta, "paused", {"value": True})
    qd.Daemon(root, qd.Settings(interval=0)).tick()


def test_a_note_stays_a_request_while_the_daemon_serves_then_its_tick_records_it(queued):
    a, b = _targets(queued)[:2]
    serving = FileLock(str(queued / DAEMON_LOCK), timeout=0)
    serving.acquire()  # as a serving daemon holds it: the client only asks
    try:
        out = cli("note", a, "diverged", "at step 300", "--tag", "lr:high", "--tag", "v2", "--no-wait", runs_dir=queued)
        plan_out = cli("note", "--plan", "study", "table 2 of the paper", "--tag=paper", "--no-wait", runs_dir=queued)
        # without --no-wait the client waits for the daemon's tick, which comes while it waits
        cmd = [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-m", "stilts_tui.cli"]
        waiting = subprocess.Popen(
            [*cmd, "note", b, "--tag", "seen"],
            env={**os.environ, "STILTS_RUNS_DIR": str(queued), "STILTS_NO_DAEMON": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait(
            lambda: len((Ledger(queued).meta(requests.KEY) or {}).get("open") or []) >= 3,
            60,
            "the third request",
            alive=waiting,
        )
        assert out.returncode == 0 and plan_out.returncode == 0, out.stderr + plan_out.stderr
        assert "waits for the daemon" in out.stdout
        ledger = Ledger(queued)
        assert ledger.get(a).get("note") is None and ledger.get(a).get("tags") is None  # nothing written yet
        assert ledger.plans()["study"].get("note") is None
        book = ledger.meta(requests.KEY)
        assert [(r["kind"], r["runs"]) for r in book["open"]] == [("note", [a]), ("note", []), ("note", [b])]

        _tick(queued)  # the real tick, while the lock stays held (the daemon's serve loop holds it)

        said, err = waiting.communicate(timeout=60)
    finally:
        serving.release()
    assert waiting.returncode == 0, err
    assert said.strip() == f"{b}: no note · tags: seen"
    ledger = Ledger(queued)
    assert ledger.get(a)["note"] == "diverged at step 300" and ledger.get(a)["tags"] == ["lr:high", "v2"]
    assert ledger.get(b)["tags"] == ["seen"] and ledger.get(b).get("note") is None
    assert ledger.plans()["study"]["note"] == "table 2 of the paper" and ledger.plans()["study"]["tags"] == ["paper"]
    assert ledger.get(a)["status"] == "queued"  # words only: nothing else of the run changed
    book = ledger.meta(requests.KEY)
    assert book["open"] == [] and [r["kind"] for r in book["done"]] == ["note"] * 3


def test_with_no_daemon_the_cli_records_it_at_once_and_queue_ls_shows_and_filters_it(queued):
    a, b, c = _targets(queued)[:3]
    assert cli("note", a, "lr too high", "--tag", "lr:high", "--tag", "rerun", runs_dir=queued).returncode == 0
    assert cli("note", b, "--tag", "rerun", runs_dir=queued).returncode == 0
    out = cli("note", a, "--untag", "rerun", runs_dir=queued)
    assert out.returncode == 0 and out.stdout.strip() == f"{a}: note: lr too high · tags: lr:high"
    assert Ledger(queued).meta(requests.KEY)["done"][-1]["kind"] == "note"

    rows = {r["id"]: r for r in json.loads(cli("queue", "ls", "--json", runs_dir=queued).stdout)}
    assert (rows[a]["note"], rows[a]["tags"]) == ("lr too high", ["lr:high"])
    assert (rows[b]["note"], rows[b]["tags"]) == (None, ["rerun"])
    assert (rows[c]["note"], rows[c]["tags"]) == (None, [])
    tagged = json.loads(cli("queue", "ls", "--json", "--tag", "rerun", runs_dir=queued).stdout)
    assert [r["id"] for r in tagged] == [b]

    cleared = cli("note", a, "--clear", runs_dir=queued)
    assert cleared.returncode == 0 and Ledger(queued).get(a)["note"] is None
    assert cli("note", a, runs_dir=queued).stdout.strip() == "no note · tags: lr:high"  # nothing asked: shown


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("{a}", "x" * 2001), "note: the note has 2001 characters; at most 2000"),
        (("{a}", "--tag", "two words"), "--tag: 'two words' is not a tag (1 to 40 of A-Z a-z 0-9 _ . : -)"),
        (("{a}", "--tag", "t" * 41), "is not a tag"),
        (("{a}", *[f"--tag=t{i}" for i in range(21)]), "would have 21 tags; at most 20"),
        (("{a}", "   "), "note: the note is empty (--clear removes a note)"),
        (("{a}", "text", "--clear"), "give a note or --clear, not both"),
        (("0123456789ab", "text"), "no run '0123456789ab' in"),
        (("../../etc", "text"), "is not a run id"),
        (("--plan", "nope", "text"), "--plan: no plan named 'nope'"),
        ((), "name a run id (or --plan NAME)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(queued, args, said):
    a = _targets(queued)[0]
    before = (queued / "ledger.json").read_bytes()
    out = cli("note", *(x.format(a=a) for x in args), runs_dir=queued)
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert (queued / "ledger.json").read_bytes() == before


def test_the_score_exports_carry_the_plans_note_and_tags(queued):
    note = "table 2 of the paper\n\\input{/etc/passwd} \x1b[2J"
    assert cli("note", "--plan", "study", note, "--tag", "paper", "--tag", "v1", runs_dir=queued).returncode == 0

    def scores(fmt: str) -> str:
        out = cli("scores", "study", "--format", fmt, runs_dir=queued)
        assert out.returncode == 0, out.stderr
        return out.stdout

    rows = list(csv.DictReader(io.StringIO(scores("csv"))))
    assert rows and all(r["plan_tags"] == "paper v1" for r in rows)
    assert all(r["plan_note"] == "table 2 of the paper\n\\input{/etc/passwd} \\x1b[2J" for r in rows)
    doc = json.loads(scores("json"))
    assert (doc["plan_note"], doc["plan_tags"]) == (note, ["paper", "v1"])
    md = scores("md")
    assert md.startswith("> note: table 2 of the paper  \n> note: \\input{/etc/passwd} \\x1b[2J  \n> tags: paper v1")
    latex = scores("latex").splitlines()
    assert latex[:3] == ["% note: table 2 of the paper", "% note: \\input{/etc/passwd} \\x1b[2J", "% tags: paper v1"]
    assert "\x1b" not in scores("table")  # the terminal's table: its caption says the note, made safe
    # a plan added again keeps its note (the ledger's plan document is updated, not replaced)
    assert cli("queue", "add", str(queued.parent / "plans" / "study.toml"), runs_dir=queued).returncode == 0
    assert json.loads(scores("json"))["plan_tags"] == ["paper", "v1"]


# ---- the app ---------------------------------------------------------------------------------


def _row_ids(screen: QueueScreen) -> list[str]:
    table = screen.query_one(DataTable)
    return [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]


def _cell(screen: QueueScreen, rid: str, column: str) -> str:
    return str(screen.query_one(DataTable).get_cell(rid, column))


async def test_the_note_key_writes_a_request_and_the_table_and_filter_show_it(queued):
    a, b, c = _targets(queued)[:3]
    assert cli("note", c, "kept as it is", runs_dir=queued).returncode == 0
    app = StiltsApp(queued, keymap={}, confirm=False)
    n = len(Ledger(queued).runs())
    async with app.run_test(size=(220, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, QueueScreen) and len(_row_ids(app.screen)) == n, "the runs")
        screen = app.screen
        screen.query_one(DataTable).move_cursor(row=_row_ids(screen).index(a))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen), "the note dialog")
        await pilot.press(*"diverged [b]", "tab", *"lr:high #rerun", "enter")
        await until(pilot, lambda: Ledger(queued).get(a).get("tags") == ["lr:high", "rerun"], "the note recorded")
        assert Ledger(queued).get(a)["note"] == "diverged [b]"
        assert Ledger(queued).meta(requests.KEY)["done"][-1]["kind"] == "note"  # through a request
        await until(pilot, lambda: _cell(screen, a, "notes") == "#lr:high #rerun diverged [b]", "the notes column")
        assert "#lr:high #rerun diverged [b]" in str(screen.query_one("#totals").render())  # the cursor's run

        # two runs marked: a tag added to both, each keeps its own note (the dialog shows no shared note)
        ids = _row_ids(screen)
        screen.query_one(DataTable).move_cursor(row=ids.index(b))
        await pilot.press("space")
        screen.query_one(DataTable).move_cursor(row=ids.index(c))
        await pilot.press("space", "n")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen), "the note dialog again")
        assert app.screen.query_one("#note").value == "" and app.screen.query_one("#tags").value == ""
        await pilot.press("tab", *"both", "enter")
        await until(pilot, lambda: Ledger(queued).get(c).get("tags") == ["both"], "the marked runs tagged")
        assert Ledger(queued).get(b)["tags"] == ["both"] and Ledger(queued).get(c)["note"] == "kept as it is"
        assert Ledger(queued).get(b).get("note") is None

        # `/` finds a run by its tag
        await pilot.press("slash", *"rerun", "enter")
        await until(pilot, lambda: _row_ids(screen) == [a], "only the tagged run shown")
        await pilot.press("l")  # its logs: the pane's title says its tags and note
        await until(pilot, lambda: isinstance(app.screen, LogsScreen), "the logs")
        title = str(app.screen.query_one(LogPane).query_one(".title").render())
        assert title == f"{a}  #lr:high #rerun diverged [b]"

    # a note on a run whose words hold control characters shows them escaped
    assert cli("note", b, "bell\x07 \u202eevil", runs_dir=queued).returncode == 0
    app = StiltsApp(queued, keymap={}, confirm=False)
    async with app.run_test(size=(220, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, QueueScreen) and len(_row_ids(app.screen)) == n, "the runs")
        assert _cell(app.screen, b, "notes") == "#both bell\\x07 \\u202eevil"
