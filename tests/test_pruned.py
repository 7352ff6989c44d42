"""The rank stage in a plan's DAG (``[target.X] rank = { top = K }``) and the ``pruned`` status, through the
real plan, CLI, daemon, trainer entry and score table: the starting points below the top K are pruned (the
order is built into the data), re-adding the plan keeps them pruned, ``queue retry --pruned`` trains them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    REFERENCE_PLAN,
    add,
    cli,
    make_plan,
    start,
    statuses,
    until,
    wait,
    wait_ticks,
    write_jsonl,
    write_text,
)
from test_rank import LEARNED, _rows

from stilts_tui import contract
from stilts_tui.cli import rehearse
from stilts_tui.plan import load_and_expand
from stilts_tui.store.ledger import Ledger, run_problems

# On the tiny model, seeded on the CPU: "learned" trains on the target's own data until its features
# separate the labels (dev acc 1.0: LogME ranks it first); "idle" barely moves from the model's random
# weights (lr 1e-6, one epoch), so it ranks below "learned". With top = 1, the target's run from "idle" is
# pruned; those from "learned" and from none train.
STAGES = (
    LEARNED
    + """[intermediate.idle]
task = "pair"
lr = 1e-6
[target.t]
task = "pair"
{rank}
"""
)


def _plan(tmp_path: Path, model: Path, rank: str = "rank = { top = 1 }") -> Path:
    plan = make_plan(tmp_path, model, STAGES.format(rank=rank), baseline=True)
    write_jsonl(tmp_path / "data/tr.jsonl", _rows(32, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", _rows(16, 2))
    return plan


def _settled(runs_dir: Path) -> bool:
    return all(s in contract.SETTLED for s in statuses(runs_dir).values())


def _runs(runs_dir: Path) -> dict[str, dict]:
    """The plan's runs by a short name: rank, learned, idle (intermediates), t:none, t:learned, t:idle."""
    out = {}
    for r in Ledger(runs_dir).runs():
        out[f"t:{r['intermediate']}" if r["stage"] == "target" else r["name"] if r["stage"] != "rank" else "rank"] = r
    return out


@pytest.mark.slow
def test_a_ranked_plan_prunes_below_the_top_k_keeps_them_pruned_and_retry_pruned_trains_them(
    tmp_path, runs_dir, tiny_model, queue_env
):
    plan = _plan(tmp_path, tiny_model)
    added = {r["id"]: r for r in add(plan, runs_dir, queue_env)}
    runs = _runs(runs_dir)
    assert set(runs) == {"rank", "learned", "idle", "t:none", "t:learned", "t:idle"} and len(added) == 6
    assert sorted(runs["rank"]["after"]) == sorted([runs["learned"]["id"], runs["idle"]["id"]])
    assert runs["t:learned"]["after"] == runs["t:idle"]["after"] == [runs["rank"]["id"]]
    assert "after" not in runs["t:none"]  # the baseline never waits: none always trains
    spec = json.loads((runs_dir / runs["rank"]["id"] / contract.SPEC_FILE).read_text())
    assert spec["stage"] == "rank" and spec["params"]["top"] == 1 and spec["params"]["examples"] == 2000
    assert [s["label"] for s in spec["starts"]] == ["none", "learned", "idle"]
    ls = cli("queue", "ls", runs_dir=runs_dir)
    assert f"waits for rank run {runs['rank']['id']}" in ls.stdout, ls.stdout

    start(runs_dir, queue_env)
    wait(lambda: _settled(runs_dir), timeout=300, what="every run settled")
    runs = _runs(runs_dir)
    assert {k: r["status"] for k, r in runs.items()} == {
        "rank": "done",
        "learned": "done",
        "idle": "done",
        "t:none": "done",
        "t:learned": "done",
        "t:idle": "pruned",
    }
    ranked = json.loads((runs_dir / runs["rank"]["id"] / contract.RESULT_FILE).read_text())
    assert ranked["status"] == "done" and ranked["method"] == "LogME" and ranked["top"] == 1
    assert ranked["ranking"][0]["start"] == "learned" and len(ranked["ranking"]) == 3
    idle_rank = next(e["rank"] for e in ranked["ranking"] if e["start"] == "idle")
    why = f"rank {idle_rank} of 3 on t (logme, top 1)"
    assert runs["t:idle"]["pruned_why"] == why
    record = json.loads((runs_dir / runs["t:idle"]["id"] / contract.PRUNED_FILE).read_text())
    assert record["by"] == runs["rank"]["id"] and record["ranking"] == ranked["ranking"] and record["why"] == why
    assert not (runs_dir / runs["t:idle"]["id"] / contract.RESULT_FILE).exists()  # never trained, nothing deleted
    assert "runs pruned" in (runs_dir / contract.DAEMON_LOG).read_text()

    # every reader: queue ls (and --json), the score table
    ls = cli("queue", "ls", "--status", "pruned", runs_dir=runs_dir)
    assert ls.returncode == 0 and f"pruned: {why}" in ls.stdout, ls.stdout
    doc = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    assert {r["status"] for r in doc} == {"done", "pruned"}
    assert next(r for r in doc if r["status"] == "pruned")["pruned_why"] == why
    scores = cli("scores", "q", runs_dir=runs_dir)
    assert scores.returncode == 0 and "missing 1 (1 pruned)" in scores.stdout, scores.stdout
    assert "runs pruned by a rank stage" in scores.stdout and "idle -> t: 1/1" in scores.stdout
    doc = json.loads(cli("scores", "q", "--format", "json", runs_dir=runs_dir).stdout)
    assert {c["intermediate"]: c["pruned"] for c in doc["cells"]} == {"none": 0, "learned": 0, "idle": 1}
    # the predicted rank beside each measured cell; tau only once every starting point has been measured
    order = {e["start"]: e["rank"] for e in ranked["ranking"]}
    assert {c["intermediate"]: c["predicted_rank"] for c in doc["cells"]} == order
    rk = doc["rankings"]["t"]
    assert rk["source"] == f"rank run {runs['rank']['id']}" and rk["method"] == "LogME"
    assert rk["pending"] == 0 and rk["tau_points"] == 2  # the pruned one has no mean: two points
    assert f"pred #{order['learned']}" in scores.stdout and "predicted order for t (LogME" in scores.stdout

    # re-adding the plan never brings a pruned run back; --failed does not either
    assert cli("queue", "add", str(plan), "--no-daemon", runs_dir=runs_dir, env=queue_env).returncode == 0
    assert cli("queue", "retry", "--failed", runs_dir=runs_dir).stdout.strip() == "requeued 0 runs"
    wait_ticks(runs_dir)
    assert statuses(runs_dir)[runs["t:idle"]["id"]] == "pruned"

    out = cli("queue", "retry", "--pruned", "--plan", "q", runs_dir=runs_dir)
    assert out.returncode == 0 and out.stdout.strip() == "requeued 1 runs", out.stderr
    wait(lambda: statuses(runs_dir)[runs["t:idle"]["id"]] == "done", timeout=120, what="the retried run trained")
    row = Ledger(runs_dir).get(runs["t:idle"]["id"])
    assert row["pruned_why"] is None and row["score"] is not None
    record = json.loads((runs_dir / runs["t:idle"]["id"] / contract.PRUNED_FILE).read_text())
    assert record["retried"] and record["by"] == runs["rank"]["id"]  # kept: why it was pruned, and that it came back
    # all three measured now: Kendall's tau between LogME's order and the measured means, in every export
    doc = json.loads(cli("scores", "q", "--format", "json", runs_dir=runs_dir).stdout)
    means = {c["intermediate"]: c["mean"] for c in doc["cells"]}
    scores_by = {c["intermediate"]: c["transferability"] for c in doc["cells"]}
    from scipy.stats import kendalltau

    expected = kendalltau([scores_by[k] for k in means], [means[k] for k in means]).statistic
    rk = doc["rankings"]["t"]
    assert rk["tau_points"] == 3 and rk["kendall_tau"] == pytest.approx(expected)
    md = cli("scores", "q", "--format", "md", runs_dir=runs_dir).stdout
    assert f"Kendall's tau with the measured order {expected:+.2f} over 3 starting points" in md
    csv_text = cli("scores", "q", "--format", "csv", runs_dir=runs_dir).stdout
    assert ",predicted_rank,transferability" in csv_text.splitlines()[0]  # (then the plan's note and tags)
    from stilts_tui import results
    from stilts_tui.tui.screens.scores import cell_text

    table = results.build(runs_dir, "q")  # the app's scores screen: its cells and the lines under them
    learned = next(c for c in table.cells if c.intermediate == "learned")
    assert str(cell_text(learned, "mean")).endswith(f"pred #{order['learned']}")
    assert any(line.startswith("predicted order for t (LogME") for line in results.footnotes(table))
    tex = cli("scores", "q", "--format", "latex", runs_dir=runs_dir).stdout
    assert "pred \\#1" in tex and "pred #" not in tex.replace("pred \\#", "")


@pytest.mark.slow
def test_a_failed_rank_run_prunes_nothing_every_run_trains(tmp_path, runs_dir, tiny_model, queue_env):
    add(_plan(tmp_path, tiny_model, "rank = { top = 1, examples = 8 }"), runs_dir, queue_env)
    rank = _runs(runs_dir)["rank"]
    path = runs_dir / rank["id"] / contract.SPEC_FILE
    spec = json.loads(path.read_text())
    spec["starts"][0]["model"]["path"] = str(tmp_path / "no-such-model")  # the scorer cannot load "none"
    path.write_text(json.dumps(spec))
    start(runs_dir, queue_env)
    wait(lambda: _settled(runs_dir), timeout=300, what="every run settled")
    runs = _runs(runs_dir)
    assert runs["rank"]["status"] == "failed"
    assert {k: r["status"] for k, r in runs.items() if k != "rank"} == dict.fromkeys(
        ("learned", "idle", "t:none", "t:learned", "t:idle"), "done"
    )
    assert "nothing pruned, every run trains" in (runs_dir / contract.DAEMON_LOG).read_text()


def test_rank_expands_to_one_rank_run_a_target_and_leaves_every_other_id_as_it_was(tmp_path, tiny_model):
    _, plain = load_and_expand(_plan(tmp_path, tiny_model, rank=""))
    _, ranked = load_and_expand(_plan(tmp_path, tiny_model))
    assert [r.id for r in ranked if r.stage != "rank"] == [r.id for r in plain]  # rank changes no run's id
    (rank,) = [r for r in ranked if r.stage == "rank"]
    assert rank.name == "t" and rank.order == 2 and rank.parent is None  # after the intermediates, before t
    _, more = load_and_expand(_plan(tmp_path, tiny_model, "rank = { top = 2 }"))
    _, other_n = load_and_expand(_plan(tmp_path, tiny_model, "rank = { top = 1, examples = 16 }"))
    assert next(r.id for r in more if r.stage == "rank") == rank.id  # top decides what is pruned, not a score
    assert next(r.id for r in other_n if r.stage == "rank") != rank.id  # what it scores: a new rank run
    show = json.loads(cli("plan", "show", str(tmp_path / "q.toml"), "--json").stdout)
    assert show["counts"] == {"synth": 0, "intermediate": 2, "rank": 1, "target": 3}
    # the reference plans keep it off: their counts (and run ids: test_plan.py) as they were
    ref = json.loads(cli("plan", "show", str(REFERENCE_PLAN), "--json").stdout)
    assert ref["counts"] == {"synth": 1, "intermediate": 3, "target": 1008}


def test_a_bad_rank_value_is_refused_in_one_line(tmp_path, tiny_model):
    cases = [
        ("rank = { top = 0 }", "key 'target.t.rank.top': expected an integer >= 1"),
        ("rank = { examples = 100 }", "key 'target.t.rank.top': is required"),
        ('rank = { top = "2" }', "key 'target.t.rank.top': expected an integer >= 1"),
        ("rank = { top = 1, examples = 1 }", "key 'target.t.rank.examples': expected an integer >= 2"),
        ("rank = { top = 1, n = 5 }", "key 'target.t.rank.n': unknown key (expected one of: top, examples)"),
        ("rank = 3", "key 'target.t.rank': expected a table { top = K, examples = N }"),
    ]
    alone = '[target.t]\ntask = "pair"\nrank = { top = 1 }\n'  # nothing to rank but the model itself
    none = make_plan(tmp_path, tiny_model, alone, baseline=True).read_text()
    cases.append((none, "key 'target.t.rank': ranks the target's starting points: the plan needs an [intermediate"))
    for rank, why in cases:
        text = rank if rank.startswith("name") else _plan(tmp_path, tiny_model, rank).read_text()
        plan = write_text(tmp_path / "bad.toml", text)
        out = cli("plan", "validate", str(plan))
        assert out.returncode == 2 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, (
            rank,
            out.stderr,
        )
        assert str(plan) in out.stderr


def test_the_pruned_status_in_the_contract_the_ledger_and_the_rehearsal(runs_dir):
    s = contract.Status.PRUNED
    assert s in contract.FINAL and s in contract.SETTLED and s in contract.RETRYABLE
    assert s not in contract.BLOCKING and s not in contract.ACTIVE and s not in contract.UNBLOCKING
    row = {"id": "a" * 12, "status": "pruned", "pruned_why": "rank 3 of 4 on rte (logme, top 1)", "after": ["b" * 12]}
    assert run_problems(row) == {}
    assert set(run_problems({**row, "after": ["../x"], "pruned_why": 3})) == {"after", "pruned_why"}
    runs = [
        {"id": "a", "stage": "target", "name": "t", "status": "done", "order": 0, "started": 0, "finished": 5},
        {"id": "b", "stage": "target", "name": "t", "status": "pruned", "order": 1, "finished": 2},
    ]
    lines, ok = rehearse.stage_lines(runs_dir, runs)
    assert ok and lines == ["ok    target.t: 2 runs (5 s of runs; 1 pruned by the rank stage)"]


async def test_the_queue_screen_shows_pruned_runs_in_their_style_with_their_reason(tmp_path, runs_dir, tiny_model):
    from textual.widgets import DataTable

    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.screens.queue import COLUMNS, STATUS_STYLE, QueueScreen

    assert cli("queue", "add", str(_plan(tmp_path, tiny_model)), runs_dir=runs_dir).returncode == 0
    run, baseline = _runs(runs_dir)["t:idle"], _runs(runs_dir)["t:none"]
    Ledger(runs_dir).update(run["id"], status="pruned", pruned_why="rank 3 of 3 on t (logme, top 1)")
    Ledger(runs_dir).update(baseline["id"], status="done", started=1000.0, finished=1090.0, score=0.5)
    async with StiltsApp(runs_dir, keymap={}, confirm=False).run_test(size=(220, 40)) as pilot:
        await pilot.app.workers.wait_for_complete()

        def shown() -> bool:
            screen = pilot.app.screen
            return isinstance(screen, QueueScreen) and screen.query_one(DataTable).row_count == 6

        await until(pilot, shown, "the queue screen filled")
        row = pilot.app.screen.query_one(DataTable).get_row(run["id"])
        status = row[COLUMNS.index("status")]
        assert str(status) == "pruned" and str(status.value.style) == STATUS_STYLE["pruned"]
        assert STATUS_STYLE["pruned"] not in {v for k, v in STATUS_STYLE.items() if k != "pruned"}
        reason = "pruned: rank 3 of 3 on t (logme, top 1); saved ~1:30 (median of t's done runs)"
        assert str(row[COLUMNS.index("reason")]) == reason
        assert "1 pruned (rank stage)" in str(pilot.app.screen.query_one("#totals").render())


def test_re_adding_a_plan_updates_what_queued_runs_wait_for_and_a_queued_rank_runs_top(
    tmp_path, runs_dir, tiny_model, queue_env
):
    add(_plan(tmp_path, tiny_model), runs_dir, queue_env)
    rank = _runs(runs_dir)["rank"]
    add(_plan(tmp_path, tiny_model, "rank = { top = 2 }"), runs_dir, queue_env)
    spec = json.loads((runs_dir / rank["id"] / contract.SPEC_FILE).read_text())
    assert spec["params"]["top"] == 2 and _runs(runs_dir)["rank"]["id"] == rank["id"]  # one rank run, its top new
    add(_plan(tmp_path, tiny_model, rank=""), runs_dir, queue_env)  # the rank stage taken away: nothing waits
    assert all(not r.get("after") for k, r in _runs(runs_dir).items() if k.startswith("t:"))
