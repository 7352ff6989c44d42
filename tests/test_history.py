"""A run's history of attempts (issue 35, item 2): every attempt kept with how it ended (cancelled by whom
and at which step, oom, failed, done) and every retry (by whom), in the ledger, `queue ls --json`, `logs`,
the run folder (train.log's lines, events.jsonl's cancelled event) and the app's log pane. The real daemon
with fake GPUs, real trainer processes on a tiny model, the real CLI, the app under Pilot."""

from __future__ import annotations

import getpass
import json
import re
import socket

import pytest
from conftest import add, cli, make_plan, set_debug, start, until, wait
from textual.widgets import DataTable, Static

from stilts_tui.contract import Event
from stilts_tui.queue import daemon as qd
from stilts_tui.store import history as run_history
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.logs import LogsScreen
from stilts_tui.tui.screens.queue.screen import QueueScreen
from stilts_tui.tui.widgets.log_pane import LogPane

ONE = '[target.t]\ntask = "pair"\nepochs = 4\n'  # 48 examples, batch 16: 3 steps an epoch, 12 in all
TOTAL = 12
BY = re.compile(rf"^{re.escape(getpass.getuser())}@{re.escape(socket.gethostname())} \(pid \d+\)$")


def _events(runs_dir, run_id: str) -> list[dict]:
    path = runs_dir / run_id / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _last_step(runs_dir, run_id: str) -> int:
    steps = [e["step"] for e in _events(runs_dir, run_id) if e["event"] == Event.STEP]
    return steps[-1] if steps else 0


def _status(runs_dir, run_id: str) -> str:
    return Ledger(runs_dir).get(run_id)["status"]


async def _pane_history(runs_dir, run_id: str) -> str:
    """What the app's log pane of the run shows above its log (opened with `l` from the queue screen)."""
    async with StiltsApp(runs_dir, keymap={}, confirm=False).run_test(size=(200, 40)) as pilot:
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, QueueScreen) and pilot.app.screen.query_one(DataTable).row_count,
            "the queue screen filled",
        )
        await pilot.press("l")
        await until(pilot, lambda: isinstance(pilot.app.screen, LogsScreen), "the logs screen")
        pane = pilot.app.screen.query_one(LogPane)
        block = pane.query_one(".history", Static)
        await until(pilot, lambda: bool(pane.history) and block.display, "the history block")
        return str(block.render())


@pytest.mark.slow
async def test_a_cancelled_then_retried_run_keeps_both_attempts_everywhere(tmp_path, runs_dir, tiny_model, queue_env):
    """Cancelled mid-training at step k, retried, done: the ledger says cancelled (by whom, at step k/12),
    retried (by whom), done; so do `queue ls --json`, `logs`, train.log, events.jsonl and the app."""
    (run,) = add(make_plan(tmp_path, tiny_model, ONE, baseline=True), runs_dir, queue_env)
    rid = run["id"]
    set_debug(runs_dir, rid, sleep_per_step=0.5)
    start(runs_dir, queue_env)
    wait(lambda: _last_step(runs_dir, rid) >= 2, 120, "step 2 of the first attempt")
    out = cli("queue", "cancel", rid, runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "cancelled 1 runs" in out.stdout, out.stdout + out.stderr
    wait(lambda: _status(runs_dir, rid) == "cancelled", 60, "the cancel carried out")
    k = _last_step(runs_dir, rid)
    assert 2 <= k < TOTAL
    set_debug(runs_dir, rid)  # the next attempt at full speed
    out = cli("queue", "retry", rid, runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0, out.stderr
    wait(lambda: _status(runs_dir, rid) == "done", 180, "the retried run done")
    cli("daemon", "stop", runs_dir=runs_dir, env=queue_env)

    # the ledger
    history = Ledger(runs_dir).get(rid)["history"]
    assert [(e["attempt"], e["status"]) for e in history] == [(1, "cancelled"), (None, "retried"), (2, "done")]
    cancelled, retried, done = history
    assert (cancelled["step"], cancelled["total_steps"]) == (k, TOTAL) and BY.match(cancelled["by"])
    assert cancelled["t_start"] < cancelled["t_end"] <= retried["t_end"] <= done["t_start"] < done["t_end"]
    assert BY.match(retried["by"]) and retried["by"] != cancelled["by"]  # two CLI processes asked
    assert (done["step"], done["total_steps"], done["by"], done["error"]) == (TOTAL, TOTAL, None, None)
    assert Ledger(runs_dir).get(rid)["cancel_by"] is None  # consumed by the entry

    # queue ls --json: the same entries under "history"
    out = cli("queue", "ls", "--json", runs_dir=runs_dir)
    assert out.returncode == 0 and json.loads(out.stdout)[0]["history"] == history

    # logs: the attempts above the log; --history alone
    lines = run_history.lines(history)
    assert lines[0].startswith(f"attempt 1 cancelled at step {k}/{TOTAL} by {cancelled['by']} at ")
    assert lines[1].startswith(f"retried by {retried['by']} at ") and lines[2].startswith("attempt 2 done")
    out = cli("logs", rid, runs_dir=runs_dir)
    assert out.returncode == 0 and out.stdout.splitlines()[:3] == [f"history: {x}" for x in lines]
    assert "eval epoch 1" in out.stdout  # the log follows
    only = cli("logs", rid, "--history", runs_dir=runs_dir)
    assert only.returncode == 0 and only.stdout.splitlines() == [f"history: {x}" for x in lines]

    # the run folder: the cancel's line and event, the retry's attempt header
    log = (runs_dir / rid / "train.log").read_text()
    assert log.count("── attempt 1 ──") == 1
    assert f"── attempt 1 cancelled at step {k}/{TOTAL} by {cancelled['by']} at " in log
    assert f"── attempt 2 ── retried by {retried['by']} at " in log
    assert log.index("attempt 1 cancelled") < log.index("── attempt 2 ──")
    (event,) = [e for e in _events(runs_dir, rid) if e["event"] == Event.CANCELLED]
    assert (event["attempt"], event["step"], event["total_steps"], event["by"]) == (1, k, TOTAL, cancelled["by"])

    # the app: the run's log pane lists the attempts
    shown = await _pane_history(runs_dir, rid)
    assert all(x in shown for x in lines), shown


@pytest.mark.slow
def test_an_oom_attempt_and_a_failed_attempt_then_retried_are_kept(tmp_path, runs_dir, tiny_model, queue_env):
    """One run runs out of memory once (requeued to run alone) then finishes: oom, done. Another fails (its
    training data gone), is retried by a person once the data is back, and finishes: failed, retried, done."""
    grid = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'
    a, b = (r["id"] for r in add(make_plan(tmp_path, tiny_model, grid, baseline=True), runs_dir, queue_env))
    set_debug(runs_dir, a, oom_at_step=1, oom_once=True)
    train = json.loads((runs_dir / b / "spec.json").read_text())["task"]["train_file"]
    assert isinstance(train, str)
    spec = json.loads((runs_dir / b / "spec.json").read_text())
    spec["task"]["train_file"] = str(tmp_path / "data" / "gone.jsonl")  # a bad spec: no such file
    (runs_dir / b / "spec.json").write_text(json.dumps(spec))
    start(runs_dir, queue_env)
    wait(lambda: _status(runs_dir, a) == "done" and _status(runs_dir, b) == "failed", 240, "a done, b failed")
    spec["task"]["train_file"] = train
    (runs_dir / b / "spec.json").write_text(json.dumps(spec))
    assert cli("queue", "retry", b, runs_dir=runs_dir, env=queue_env).returncode == 0
    wait(lambda: _status(runs_dir, b) == "done", 180, "b done")
    cli("daemon", "stop", runs_dir=runs_dir, env=queue_env)

    ha, hb = Ledger(runs_dir).get(a)["history"], Ledger(runs_dir).get(b)["history"]
    assert [(e["attempt"], e["status"]) for e in ha] == [(1, "oom"), (2, "done")]
    assert "out of memory" in ha[0]["error"] and ha[0]["step"] in (0, 1) and ha[0]["total_steps"] == 3
    assert [(e["attempt"], e["status"]) for e in hb] == [(1, "failed"), (None, "retried"), (2, "done")]
    assert "gone.jsonl" in hb[0]["error"] and BY.match(hb[1]["by"])
    log = (runs_dir / a / "train.log").read_text()
    assert "── attempt 2 ── again after attempt 1 ended oom" in log
    assert "── attempt 2 ── retried by " in (runs_dir / b / "train.log").read_text()
    listed = {r["id"]: r["history"] for r in json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)}
    assert listed == {a: ha, b: hb}
    out = cli("logs", b, "--history", runs_dir=runs_dir).stdout.splitlines()
    assert out[0].startswith("history: attempt 1 failed at ") and "gone.jsonl" in out[0]
    assert out[1].startswith("history: retried by ") and out[2].startswith("history: attempt 2 done")


def test_a_queued_run_cancelled_and_retried_is_kept_with_who_asked(tmp_path, runs_dir, tiny_model):
    """A queued run cancelled (with no daemon, the CLI carries its request out under the daemon's lock):
    cancelled before any attempt, by whom, and its folder says so; the retry is kept too (no training:
    the queue is paused); the tick after it leaves the history as it is."""
    (run,) = add(make_plan(tmp_path, tiny_model, ONE, baseline=True), runs_dir, {})
    rid = run["id"]
    with Ledger(runs_dir).transaction() as tx:
        tx.put(tx.meta, "paused", {"value": True})
    assert cli("queue", "cancel", rid, runs_dir=runs_dir).returncode == 0
    assert cli("queue", "retry", rid, runs_dir=runs_dir).returncode == 0
    qd.Daemon(runs_dir, qd.Settings(interval=0)).tick()
    row = Ledger(runs_dir).get(rid)
    assert row["status"] == "queued"
    cancelled, retried = row["history"]
    assert (cancelled["attempt"], cancelled["status"], cancelled["step"]) == (None, "cancelled", None)
    assert BY.match(cancelled["by"]) and retried["status"] == "retried" and BY.match(retried["by"])
    log = (runs_dir / rid / "train.log").read_text()
    assert f"── cancelled before it began by {cancelled['by']} at " in log
    (event,) = [e for e in _events(runs_dir, rid) if e["event"] == Event.CANCELLED]
    assert event["attempt"] is None and event["by"] == cancelled["by"]


def test_a_damaged_history_is_read_as_what_it_holds_of_entries(tmp_path, runs_dir, tiny_model):
    """A history written by hand (not a list, entries of the wrong types): `queue ls --json` and `logs`
    show only what is an entry, a wrong-typed value as null, and the next attempt counts from it."""
    (run,) = add(make_plan(tmp_path, tiny_model, ONE, baseline=True), runs_dir, {})
    rid = run["id"]
    bad = [
        7,
        {"status": ""},
        {"attempt": "3", "status": "failed", "t_end": float("1e300")},
        {"attempt": 4, "status": "oom"},
    ]
    Ledger(runs_dir).update(rid, history=bad)
    (shown,) = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    assert [(e["attempt"], e["status"], e["t_end"]) for e in shown["history"]] == [
        (None, "failed", None),
        (4, "oom", None),
    ]
    out = cli("logs", rid, "--history", runs_dir=runs_dir)
    assert out.returncode == 0 and out.stdout.splitlines() == [
        "history: before any attempt failed at ?",
        "history: attempt 4 oom at ?",
    ]
    assert run_history.next_attempt(bad) == 5


async def test_the_apps_log_pane_lists_the_last_attempts_and_counts_the_earlier_ones(tmp_path, runs_dir, tiny_model):
    """A run retried many times: its log pane shows the last entries of its history in the one view's words,
    says how many earlier ones `logs --history` prints, and follows a new entry as the ledger changes."""
    (run,) = add(make_plan(tmp_path, tiny_model, ONE, baseline=True), runs_dir, {})
    rid = run["id"]
    past = []
    for n in range(1, 9):
        past += [
            run_history.entry("failed", attempt=n, t_start=1000.0 * n, t_end=1000.0 * n + 61, error=f"boom {n}"),
            run_history.entry(run_history.RETRIED, t_end=1000.0 * n + 70, by="ana@gpu1 (pid 7)"),
        ]
    Ledger(runs_dir).update(rid, history=past)
    async with StiltsApp(runs_dir, keymap={}, confirm=False).run_test(size=(200, 40)) as pilot:
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, QueueScreen) and pilot.app.screen.query_one(DataTable).row_count,
            "the queue screen filled",
        )
        await pilot.press("l")
        await until(pilot, lambda: isinstance(pilot.app.screen, LogsScreen), "the logs screen")
        pane = pilot.app.screen.query_one(LogPane)
        block = pane.query_one(".history", Static)
        await until(pilot, lambda: len(pane.history) == 16, "the history block")
        shown = str(block.render()).splitlines()
        assert shown[0] == f"(10 earlier: stilts-tui logs {rid} --history)"
        assert shown[1:] == run_history.lines(past)[-6:]
        assert shown[-1].startswith("retried by ana@gpu1 (pid 7) at ") and "attempt 8 failed at " in shown[-2]
        assert "(ran 1:01): boom 8" in shown[-2]
        more = run_history.entry("cancelled", attempt=9, step=4, total_steps=8, t_end=9100.0, by="bo@gpu2 (pid 9)")
        Ledger(runs_dir).update(rid, history=[*past, more])
        await until(pilot, lambda: len(pane.history) == 17, "the new entry")
        assert str(block.render()).splitlines()[-1].startswith("attempt 9 cancelled at step 4/8 by bo@gpu2 (pid 9) at ")


def test_the_tick_keeps_a_degenerate_and_an_oom_end_with_the_step_each_got_to(tmp_path, runs_dir, tiny_model):
    """The real tick reaps two attempts from their result.json files (the test stands in for their trainer:
    a start event from the process, a step event, the result): degenerate at step 2/6, and oom alone on its
    device (failed, shown oom); each kept with its attempt, step, times and error."""
    import subprocess
    import time

    grid = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'
    a, b = (r["id"] for r in add(make_plan(tmp_path, tiny_model, grid, baseline=True), runs_dir, {}))
    proc = subprocess.Popen(["sleep", "60"])
    try:
        t0 = time.time() - 30
        with Ledger(runs_dir).transaction() as tx:
            tx.put(tx.meta, "paused", {"value": True})
            for rid in (a, b):
                tx.update_run(rid, status="running", attempts=1, started=t0, pid=proc.pid, alone=rid == b)
        for rid, res in ((a, {"status": "degenerate", "score": 0.5}), (b, {"status": "oom", "error": "CUDA oom"})):
            events = [{"t": t0, "event": "start", "pid": proc.pid}, {"t": t0 + 1, "event": "begin", "total_steps": 6}]
            events.append({"t": t0 + 2, "event": "step", "step": 2, "total_steps": 6, "loss": 0.7})
            (runs_dir / rid / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
            (runs_dir / rid / "result.json").write_text(json.dumps({**res, "metrics": {}, "primary_metric": "acc"}))
        qd.Daemon(runs_dir, qd.Settings(interval=0)).tick()
    finally:
        proc.kill()
        proc.wait()
    ha, hb = Ledger(runs_dir).get(a)["history"], Ledger(runs_dir).get(b)["history"]
    assert [(e["attempt"], e["status"], e["step"], e["total_steps"], e["error"]) for e in ha + hb] == [
        (1, "degenerate", 2, 6, None),
        (1, "oom", 2, 6, "CUDA oom"),
    ]
    assert all(e["t_start"] == t0 and e["t_end"] > t0 for e in ha + hb)
    listed = {r["id"]: r for r in json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)}
    assert listed[b]["shown"] == "oom" and listed[b]["history"] == hb and listed[a]["history"] == ha


def test_a_run_its_rank_run_pruned_is_kept_as_pruned_before_any_attempt_with_why(tmp_path, runs_dir, tiny_model):
    """The real tick reaps a rank run (the test stands in for the rank process: its result.json ranks "idle"
    below the top 1) and prunes the target run from "idle": pruned before any attempt, the rank line as why;
    `queue retry --pruned` then keeps the retry."""
    import subprocess

    from test_pruned import _plan, _runs

    add(_plan(tmp_path, tiny_model), runs_dir, {})
    runs = _runs(runs_dir)
    rank, learned, idle = runs["rank"]["id"], runs["learned"]["id"], runs["idle"]["id"]
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with Ledger(runs_dir).transaction() as tx:
            tx.put(tx.meta, "paused", {"value": True})
            tx.update_run(rank, status="running", attempts=1, started=1.0, pid=proc.pid)
        ranking = [{"run_id": learned, "start": "learned", "rank": 1}, {"run_id": idle, "start": "idle", "rank": 2}]
        result = {"status": "done", "metrics": {}, "ranking": ranking, "top": 1}
        (runs_dir / rank / "result.json").write_text(json.dumps(result))
        qd.Daemon(runs_dir, qd.Settings(interval=0)).tick()
    finally:
        proc.kill()
        proc.wait()
    pruned = Ledger(runs_dir).get(runs["t:idle"]["id"])
    assert pruned["status"] == "pruned"
    (entry,) = pruned["history"]
    assert (entry["attempt"], entry["status"], entry["error"]) == (None, "pruned", pruned["pruned_why"])
    assert [e["status"] for e in Ledger(runs_dir).get(rank)["history"]] == ["done"]
    assert cli("queue", "retry", "--pruned", "--plan", "q", runs_dir=runs_dir).returncode == 0
    again = Ledger(runs_dir).get(runs["t:idle"]["id"])
    assert [e["status"] for e in again["history"]] == ["pruned", "retried"] and BY.match(again["history"][1]["by"])
    record = json.loads((runs_dir / runs["t:idle"]["id"] / "pruned.json").read_text())
    assert record["retried_by"] == again["history"][1]["by"]
