"""Word when a plan ends: a real command, run by the real daemon (fake GPUs, tiny real runs), writes a
file with what happened; the app rings the bell when a plan finishes."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from conftest import cli, make_plan, until, wait, write_text

from stilts_tui.queue.notify import PlanWatch
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp

# a real program: writes its STILTS_* environment to DIR/<event>-<tag>.json
WRITER = (
    "import json, os, sys; env = {k: v for k, v in os.environ.items() if k.startswith('STILTS_')}; "
    "open(os.path.join(sys.argv[1], env['STILTS_EVENT'] + '-' + sys.argv[2] + '.json'), 'w')"
    ".write(json.dumps(env))"
)


@pytest.mark.slow
def test_a_finished_plan_and_a_failed_run_run_the_commands(tmp_path, runs_dir, tiny_model, queue_env):
    env = queue_env
    out_dir = tmp_path / "word"
    out_dir.mkdir()
    hook = json.dumps([sys.executable, "-c", WRITER, str(out_dir), "plan"])
    plan = make_plan(
        tmp_path,
        tiny_model,
        '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n',
        baseline=True,
        header=f"on_finish = {hook}",
    )
    assert cli("queue", "add", str(plan), runs_dir=runs_dir, env=env).returncode == 0
    bad, good = Ledger(runs_dir).runs()
    spec = json.loads((runs_dir / bad["id"] / "spec.json").read_text())
    spec["task"]["train_file"] = str(tmp_path / "data/missing.jsonl")  # this run fails
    (runs_dir / bad["id"] / "spec.json").write_text(json.dumps(spec))
    daemon_cmd = shlex.join([sys.executable, "-c", WRITER, str(out_dir), "daemon"])
    started = cli(
        "daemon",
        "start",
        "--interval",
        "0.2",
        "--worker-runs",
        "1",
        "--on-finish",
        daemon_cmd,
        runs_dir=runs_dir,
        env=env,
    )
    assert started.returncode == 0, started.stderr
    for tag in ("daemon", "plan"):  # both commands: the daemon's and the plan's own
        done = wait(lambda tag=tag: (out_dir / f"plan_finished-{tag}.json").exists(), what=f"the {tag} command")
        assert done
    word = wait(lambda: _read(out_dir / "plan_finished-daemon.json"), what="the file written")
    assert word["STILTS_PLAN"] == "q" and word["STILTS_RUNS_DIR"] == str(runs_dir)
    assert (word["STILTS_TOTAL"], word["STILTS_DONE"], word["STILTS_FAILED"]) == ("2", "1", "1")
    assert json.loads(word["STILTS_COUNTS"])["failed"] == 1
    scores = json.loads(Path(word["STILTS_SCORES"]).read_text())  # the table, written before the command ran
    assert scores["plan"] == "q" and Path(word["STILTS_SCORES"]).parent == runs_dir / "exports"
    assert Path(word["STILTS_SCORES_MD"]).read_text().startswith("| from \\ target |")
    failed_word = [_read(p) for p in out_dir.glob("*-daemon.json")]  # the failure: its own word or the end's
    assert any(bad["id"] in w["STILTS_FAILED_RUNS"].split() for w in failed_word)
    assert "on-finish:" in (runs_dir / "daemon.log").read_text()


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_on_finish_that_is_not_a_program_is_one_line_and_exit_2(runs_dir):
    out = cli("daemon", "start", "--on-finish", "no-such-program-xyz --flag", runs_dir=runs_dir)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--on-finish: 'no-such-program-xyz' is not an executable program" in out.stderr
    assert not (runs_dir / "daemon.json").exists()


def test_a_plan_on_finish_that_is_not_a_list_of_strings_is_refused(tmp_path):
    plan = write_text(tmp_path / "p.toml", 'name = "p"\nmodel = "m"\non_finish = "echo hi"\n[target.t]\ntask = "rte"\n')
    out = cli("plan", "validate", str(plan))
    assert out.returncode == 2 and "key 'on_finish': expected a non-empty list of strings" in out.stderr


def test_plan_watch_reports_each_end_and_each_new_failure_once():
    watch = PlanWatch()
    runs = [{"id": "a", "plan": "p", "status": "running"}, {"id": "b", "plan": "p", "status": "queued"}]
    assert watch.update(runs) == []  # the baseline
    runs[0]["status"] = "failed"
    (event,) = watch.update(runs)
    assert (event["event"], event["failed_runs"], event["counts"]["failed"]) == ("run_failed", ["a"], 1)
    assert watch.update(runs) == []
    runs[1]["status"] = "done"
    (event,) = watch.update(runs)
    assert event["event"] == "plan_finished" and event["counts"] == {
        "total": 2,
        "done": 1,
        "failed": 1,
        "cancelled": 0,
        "blocked": 0,
        "queued": 0,
        "running": 0,
        "degenerate": 0,
        "pruned": 0,
    }
    assert watch.update(runs + [7, {"plan": None}]) == []  # damaged rows are ignored
    # a run stopped as degenerate is word of a failure too, and counted as what it is
    runs.append({"id": "c", "plan": "p", "status": "degenerate"})
    (event,) = watch.update(runs)
    assert event["failed_runs"] == ["c"] and event["counts"]["degenerate"] == 1


class BellApp(StiltsApp):
    rings = 0

    def bell(self) -> None:  # the terminal's bell, counted
        self.rings += 1


async def test_the_app_rings_the_bell_when_a_plan_finishes(tmp_path, runs_dir):
    plan = write_text(tmp_path / "b.toml", 'name = "b"\nmodel = "m"\n[target.t]\ntask = "rte"\n')
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    (run,) = Ledger(runs_dir).runs()
    app = BellApp(runs_dir, keymap={})
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.plan_watch.seen is not None, "the watch's first look", 10)
        assert app.rings == 0
        with Ledger(runs_dir).transaction() as tx:
            tx.update_run(run["id"], status="done", score=0.5)
        await until(pilot, lambda: app.rings, "the bell", 12)
        assert app.rings == 1
        finished = lambda: any("plan 'b' finished" in n.message for n in app._notifications)  # noqa: E731
        await until(pilot, finished, "the finished note", 12)  # a message handled after the bell


def test_plan_watch_reads_failures_through_the_run_view(runs_dir):
    """A run that ran out of memory alone is word of a failure as its one view reads it (store/view.py):
    "oom" with its reason, as `queue ls` and the app show it."""
    import json as _json

    oom = "CUDA out of memory: tried to allocate 2.00 GiB"
    rid = "0" * 11 + "1"
    (runs_dir / rid).mkdir()
    (runs_dir / rid / "result.json").write_text(_json.dumps({"status": "oom", "error": oom}))
    watch = PlanWatch(runs_dir)
    runs = [{"id": rid, "plan": "p", "status": "running"}, {"id": "0" * 12, "plan": "p", "status": "queued"}]
    assert watch.update(runs) == []
    runs[0].update(status="failed", error=oom, finished=1.0)
    (event,) = watch.update(runs)
    assert event["failed_runs"] == [rid] and event["why"] == {rid: f"oom: {oom}"}
    assert event["counts"]["failed"] == 1  # the counts stay the ledger's (STILTS_FAILED...)


async def test_the_finished_note_says_errors_apart_from_what_the_score_table_calls_failed(tmp_path, runs_dir):
    """Issue 35, item 9: the note said "0 failed" while the table said "fail 1/1" (a done run at or below the
    majority class is what the table calls failed; a run that ended with an error is another thing)."""
    import json as _json

    data = tmp_path / "data" / "rte"
    rows = "index\tsentence1\tsentence2\tlabel\n" + "".join(f"{i}\ta\tb\tentailment\n" for i in range(3))
    write_text(data / "train.tsv", rows)
    write_text(data / "dev.tsv", rows + "3\ta\tb\tnot_entailment\n")  # majority class: 3 of 4
    plan = write_text(
        tmp_path / "f.toml",
        'name = "f"\nmodel = "m"\nbaseline = true\n[target.t]\ntask = "rte"\ndata_dir = "data/rte"\n',
    )
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    (run,) = Ledger(runs_dir).runs()
    app = BellApp(runs_dir, keymap={})
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.plan_watch.seen is not None, "the watch's first look", 10)
        result = {"status": "done", "metrics": {"acc": 0.5}, "primary_metric": "acc", "score": 0.5, "error": None}
        (runs_dir / run["id"] / "result.json").write_text(_json.dumps(result))
        with Ledger(runs_dir).transaction() as tx:
            tx.update_run(run["id"], status="done", score=0.5)
        await until(pilot, lambda: app.rings, "the bell", 12)
        # the note is a message the app handles after the bell rings: wait for it, not for the clock
        finished = lambda: [n.message for n in app._notifications if "finished" in n.message]  # noqa: E731
        await until(pilot, finished, "the finished note", 12)
        (note,) = finished()
        assert note == (
            "plan 'f' finished: 1 done, 0 ended with an error, 0 cancelled, 0 blocked, "
            "scores: fail 1/1 (at or below the majority class)"
        )
