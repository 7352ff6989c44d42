"""Issue 14, one test per defect, through the real CLI and the real daemon: damaged run files cost one run,
never the queue; a damaged ledger is an error, never an empty queue; `daemon stop` signals only its daemon;
the crash windows of the queue stay closed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import add, cli, make_plan, set_debug, start, statuses, until, wait
from filelock import FileLock

from stilts_tui.store.ledger import Ledger, LedgerError

GRID4 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4, 3e-4, 4e-4] }\n'
GRID2 = '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n'


def one_line_error(out: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Assert a command failed with exit ``code`` and one `stilts-tui: error:` line holding the needles."""
    err = out.stderr.strip()
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(err.splitlines()) == 1, out.stderr
    assert err.startswith("stilts-tui: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def daemon_alive(runs_dir: Path) -> bool:
    info = json.loads((runs_dir / "daemon.json").read_text())
    return psutil.pid_exists(info["pid"]) and psutil.Process(info["pid"]).status() != psutil.STATUS_ZOMBIE


def edit_spec(runs_dir: Path, run_id: str, fn) -> None:
    path = runs_dir / run_id / "spec.json"
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


# -- defect 1: one bad file never stops the queue ---------------------------------------------------


@pytest.mark.slow
def test_damaged_specs_and_ledger_rows_fail_only_their_runs_and_the_queue_goes_on(
    tmp_path, runs_dir, tiny_model, queue_env
):
    a, b, c, d = (r["id"] for r in add(make_plan(tmp_path, tiny_model, GRID4, baseline=True), runs_dir, queue_env))
    edit_spec(runs_dir, a, lambda s: {**s, "params": {**s["params"], "batch_size": "8"}})
    (runs_dir / b / "spec.json").write_text("[1, 2]")
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(c, priority=2**63 + 5)  # beyond int64: sorting and pids would overflow
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: set(statuses(runs_dir).values()) <= {"done", "failed"}, what="every run to end")
    final = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert final[d]["status"] == "done" and isinstance(final[d]["score"], float)
    assert final[a]["status"] == "failed" and "params.batch_size is '8'" in final[a]["error"]
    assert final[b]["status"] == "failed" and "spec.json holds list" in final[b]["error"]
    assert final[c]["status"] == "failed" and "priority" in final[c]["error"] and final[c]["priority"] == 0
    assert all("\n" not in r["error"] for r in final.values() if r["error"])
    assert daemon_alive(runs_dir)
    # a spec fixed by hand and retried runs: the daemon keeps no stale copy of a damaged file
    edit_spec(runs_dir, a, lambda s: {**s, "params": {**s["params"], "batch_size": 16}})
    assert cli("queue", "retry", a, runs_dir=runs_dir).returncode == 0
    wait(lambda: statuses(runs_dir)[a] == "done", what="the fixed run to finish")


def test_a_damaged_result_fails_its_run_and_stops_its_process(tmp_path, runs_dir, tiny_model, queue_env):
    runs = add(make_plan(tmp_path, tiny_model, GRID2, baseline=True), runs_dir, queue_env)
    for r in runs:
        set_debug(runs_dir, r["id"], sleep_per_step=2.0)
    start(runs_dir, queue_env, "--worker-runs", "1", "--cpu-slots", "2")
    wait(lambda: sum(1 for r in Ledger(runs_dir).runs() if r.get("pid")) == 2, what="both runs started")
    pids = {r["id"]: r["pid"] for r in Ledger(runs_dir).runs()}
    listed, wordy = (r["id"] for r in runs)
    (runs_dir / listed / "result.json").write_text("[]")
    (runs_dir / wordy / "result.json").write_text(json.dumps({"status": "done", "score": "high"}))
    wait(lambda: set(statuses(runs_dir).values()) == {"failed"}, 60, "both runs failed")
    final = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert "result.json holds list" in final[listed]["error"]
    assert "score is 'high'" in final[wordy]["error"]
    wait(
        lambda: (
            not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids.values())
        ),
        30,
        "their processes stopped",
    )
    assert daemon_alive(runs_dir)


@pytest.mark.slow
def test_an_unreadable_ledger_is_retried_with_back_off_and_the_queue_goes_on_once_restored(
    tmp_path, runs_dir, tiny_model, queue_env
):
    add(make_plan(tmp_path, tiny_model, GRID2, baseline=True), runs_dir, queue_env)
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    backup = runs_dir / "ledger.json.bak"
    assert len(Ledger(backup.parent).runs()) == 2 and backup.exists()
    info = start(runs_dir, queue_env)
    (runs_dir / "ledger.json").write_bytes(b"")  # what a power loss can leave
    log = runs_dir / "daemon.log"
    wait(lambda: "tick failed: LedgerError" in log.read_text(), 30, "the daemon to log the failure")
    assert "Traceback" in log.read_text()
    out = cli("queue", "pause", runs_dir=runs_dir)
    one_line_error(out, 2, str(runs_dir / "ledger.json"), "empty", f"cp {backup}")
    assert (runs_dir / "ledger.json").read_bytes() == b""  # never overwritten
    wait(lambda: "tick failed again (3 in a row)" in log.read_text(), 60, "the failure to repeat")
    assert daemon_alive(runs_dir) and log.read_text().count("Traceback") == 1  # logged once while it repeats
    os.replace(backup, runs_dir / "ledger.json")  # the recovery the error names (the copy before the pause)
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, 120, "the queue to go on and finish")
    assert "tick works again" in log.read_text()
    os.kill(info["pid"], signal.SIGTERM)
    wait(lambda: not (runs_dir / "daemon.json").exists(), 30, "daemon.json removed as the daemon ends")


# -- defect 2: the ledger never replaces what it cannot read --------------------------------------------


@pytest.mark.parametrize(
    "damage, what",
    [
        (b"", "empty"),
        (b"\n", "empty"),
        (b"null", "holds null"),
        (b"[]", "holds list"),
        (b'{"runs": {"aaaaaaaaaaaa": 5}}', "runs 'aaaaaaaaaaaa' is int"),
        (b'{"runs": []}', "table 'runs' is list"),
        (b'{"runs": {"aaaaaaaaaaaa": {"id": "aaaaaaaaaaaa", "status": "gone"}}}', "status 'gone'"),
        (b'{"runs": {', "not valid JSON"),
    ],
)
def test_a_damaged_ledger_is_an_error_naming_the_file_and_its_recovery_never_an_empty_queue(
    tmp_path, runs_dir, small_plan, damage, what
):
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    ledger = runs_dir / "ledger.json"
    ledger.write_bytes(damage)
    for args in (
        ("queue", "add", str(plan)),
        ("queue", "pause"),
        ("queue", "ls"),
        ("daemon", "status"),
        ("queue", "retry", "--failed"),
    ):
        one_line_error(cli(*args, runs_dir=runs_dir), 2, str(ledger), what, "cp ")
        assert ledger.read_bytes() == damage
    os.replace(ledger.with_name("ledger.json.bak"), ledger)
    out = cli("queue", "ls", "--json", runs_dir=runs_dir)
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 13  # nothing lost


def test_commits_fsync_keep_the_file_mode_and_sweep_stale_temp_files(tmp_path, runs_dir, small_plan):
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    ledger = runs_dir / "ledger.json"
    os.chmod(ledger, 0o640)
    stale = runs_dir / ".ledger.abc123.tmp"
    stale.write_text("{half a commit")
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o640 and not stale.exists()
    umask = os.umask(0)
    os.umask(umask)
    spec = next(runs_dir.glob("*/spec.json"))
    assert stat.S_IMODE(spec.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert Ledger(runs_dir).meta("paused") is True


def test_a_change_that_cannot_be_encoded_leaves_file_and_cache_as_they_were(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": "a" * 12, "plan": "p", "stage": "target"}])
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(LedgerError, match="cannot be stored"):
        with ledger.transaction() as tx:
            tx.update_run("a" * 12, status="done", error={1, 2})
    assert (tmp_path / "ledger.json").read_bytes() == before
    assert ledger.get("a" * 12)["status"] == "queued" and ledger.get("a" * 12).get("error") is None
    ledger.update("a" * 12, priority=2**70)  # beyond orjson's 64 bits: stored, not lost
    assert Ledger(tmp_path).get("a" * 12)["priority"] == 2**70


# -- defect 3: daemon stop signals only the daemon it started --------------------------------------------


def test_daemon_stop_never_signals_a_process_named_by_a_stale_daemon_json(runs_dir):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = {"pid": sleeper.pid, "pid_started": psutil.Process(sleeper.pid).create_time(), "started": 0}
        (runs_dir / "daemon.json").write_text(json.dumps(stale))
        lock = FileLock(str(runs_dir / "daemon.lock"))
        with lock:  # as a new daemon that holds the lock and has not rewritten daemon.json yet
            out = cli("daemon", "stop", runs_dir=runs_dir)
        # the lock's holder is no daemon (the process table has none for this runs-dir): the truth, not a refusal
        assert out.returncode == 0 and "no daemon was running" in out.stdout, out.stderr
        assert f"daemon.json is stale (pid {sleeper.pid} is not this runs-dir's daemon" in out.stdout
        assert sleeper.poll() is None
        out = cli("daemon", "stop", runs_dir=runs_dir)  # no lock held: no daemon at all
        assert out.returncode == 0 and "no daemon was running" in out.stdout and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# -- defect 8: OSErrors are one line ---------------------------------------------------------------------


def test_a_ledger_that_is_a_directory_is_one_line(runs_dir):
    (runs_dir / "ledger.json").mkdir()
    for args in (("queue", "ls"), ("queue", "pause"), ("daemon", "status")):
        one_line_error(cli(*args, runs_dir=runs_dir), 2, "ledger.json", "is a directory")


# -- defect 10: crash windows ------------------------------------------------------------------------------


def test_a_run_id_with_a_trailing_newline_is_refused(runs_dir):
    one_line_error(cli("logs", "a" * 12 + "\n", runs_dir=runs_dir), 2, "is not a run id")


def test_a_result_left_by_an_interrupted_oom_requeue_is_retired_not_read_as_the_new_attempt(
    tmp_path, runs_dir, tiny_model, queue_env
):
    rid = add(make_plan(tmp_path, tiny_model, GRID2, baseline=True), runs_dir, queue_env)[0]["id"]
    # the daemon committed the requeue (queued, alone) and was killed before moving the oom result away
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(rid, status="queued", alone=True, attempts=1)
    (runs_dir / rid / "result.json").write_text(json.dumps({"status": "oom", "error": "CUDA out of memory"}))
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, what="every run done")
    run = Ledger(runs_dir).get(rid)
    assert run["attempts"] == 2 and isinstance(run["score"], float)
    assert json.loads((runs_dir / rid / "result.attempt1.json").read_text())["status"] == "oom"


def test_an_interrupted_cancel_is_finished_by_the_daemon(tmp_path, runs_dir, tiny_model, queue_env):
    rid = add(make_plan(tmp_path, tiny_model, GRID2, baseline=True), runs_dir, queue_env)[0]["id"]
    set_debug(runs_dir, rid, sleep_per_step=2.0)
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: (Ledger(runs_dir).get(rid) or {}).get("pid"), what="the run started")
    pid = Ledger(runs_dir).get(rid)["pid"]
    with Ledger(runs_dir).transaction() as tx:  # `queue cancel` recorded its request, then was killed
        tx.update_run(rid, cancel_requested=time.time() - 3600)
    wait(lambda: statuses(runs_dir)[rid] == "cancelled", 60, "the daemon to finish the cancel")
    wait(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        30,
        "the run's process stopped",
    )


# -- defect 8: the app shows a damaged ledger instead of "loading…" forever -----------------------------


async def test_the_app_shows_a_damaged_ledger_and_recovers_once_it_is_restored(runs_dir, small_plan):
    from textual.widgets import DataTable

    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.screens.queue import QueueScreen

    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    ledger = runs_dir / "ledger.json"
    ledger.write_text("null")
    async with StiltsApp(runs_dir, keymap={}).run_test(size=(170, 40)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, QueueScreen)
        await until(
            pilot,
            lambda: "error:" in str(screen.query_one("#totals").render()),
            "the damaged ledger said in the totals",
            10,
        )
        totals = str(screen.query_one("#totals").render())
        assert "error:" in totals and "ledger.json" in totals and "loading" not in totals
        os.replace(ledger.with_name("ledger.json.bak"), ledger)
        await until(pilot, lambda: screen.query_one(DataTable).row_count, "the runs shown again", 10)
        assert screen.query_one(DataTable).row_count == 13
        assert "13 queued" in str(screen.query_one("#totals").render())
