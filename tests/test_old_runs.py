"""Runs-dirs written by older commits keep working: their specs and results read, their plans re-added
queue nothing, a cancelled run retried and trained, their scores computed. tests/fixtures/old_runs (made by
its make.py with the code at 0a16bb7) holds three runs; tests/fixtures/today_runs (its make.py, the code at
dc01865) every status and field that code wrote: done, failed, cancelled, blocked, degenerate, pruned with
its pruned.json, a rank run, runs retried with result.attemptN.json, a LoRA run, fused-array fields."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli, start, wait, write_jsonl

from stilts_tui import contract
from stilts_tui.cli.demo import pair_rows
from stilts_tui.estimate import cost
from stilts_tui.store.ledger import Ledger

FIXTURE = Path(__file__).parent / "fixtures" / "old_runs"
TODAY = Path(__file__).parent / "fixtures" / "today_runs"


def copy_fixture(fixture: Path, tmp_path: Path, model: Path, *keep: str) -> Path:
    """``fixture``'s ``keep`` files and runs copied under ``tmp_path`` with ``@ROOT@`` replaced, the model
    beside them; the runs-dir."""
    shutil.copytree(model, tmp_path / "model")
    for src in [*(fixture / k for k in keep), *sorted((fixture / "runs").rglob("*"))]:
        dst = tmp_path / src.relative_to(fixture)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text().replace("@ROOT@", str(tmp_path)))
    return tmp_path / "runs"


def old_runs_dir(tmp_path: Path, model: Path) -> Path:
    """The 0a16bb7 fixture, and the data it names (make.py wrote it; the fixture does not keep it)."""
    write_jsonl(tmp_path / "data/tr.jsonl", pair_rows(48, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", pair_rows(16, 2))
    return copy_fixture(FIXTURE, tmp_path, model, "old.toml")


def score_doc(runs_dir: Path, plan: str) -> dict:
    out = cli("scores", plan, "--format", "json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def scores(runs_dir: Path) -> dict:
    (cell,) = score_doc(runs_dir, "old")["cells"]
    return cell


@pytest.mark.slow
def test_a_runs_dir_of_the_older_code_reads_retries_and_scores(tmp_path, tiny_model, queue_env):
    assert json.loads((FIXTURE / "made_by.json").read_text())["commit"].startswith("0a16bb7")
    runs_dir = old_runs_dir(tmp_path, tiny_model)
    listed = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    assert sorted(r["status"] for r in listed) == ["cancelled", "done", "done"]
    assert scores(runs_dir)["n"] == 2
    # its results feed the cost estimate under the shape the contract computes from its specs
    rates = cost.measured(runs_dir, "cpu")  # results older than `device`, without GPU memory: the CPU's
    assert rates.used == 2 and len(rates.shapes) == 1

    # the same plan file added again: the resolved defaults hash to the same run ids, so nothing is new
    out = cli("queue", "add", str(tmp_path / "old.toml"), "--no-daemon", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0, out.stderr
    assert sorted(r["id"] for r in Ledger(runs_dir).runs()) == sorted(r["id"] for r in listed)

    (cancelled,) = [r["id"] for r in listed if r["status"] == contract.Status.CANCELLED]
    assert cli("queue", "retry", cancelled, runs_dir=runs_dir, env=queue_env).returncode == 0
    start(runs_dir, queue_env)
    wait(lambda: Ledger(runs_dir).get(cancelled)["status"] in contract.SETTLED, what="the retried old run")
    assert Ledger(runs_dir).get(cancelled)["status"] == contract.Status.DONE
    assert contract.Result.read(json.loads((runs_dir / cancelled / contract.RESULT_FILE).read_text())).score is not None
    assert scores(runs_dir)["n"] == 3


def _by_name(listed: list[dict]) -> dict[str, dict]:
    """The today fixture's runs by plan:stage-name:intermediate:lr (each is one run)."""
    return {f"{r['plan']}:{r['stage']}:{r['name']}:{r['intermediate']}:{r['params'].get('lr')}": r for r in listed}


def test_a_runs_dir_of_todays_code_reads_every_status_and_field(tmp_path, tiny_model):
    """What dc01865 wrote reads with the current code: statuses, reasons, attempts kept, pruned records,
    fused and LoRA fields, results, and the score tables."""
    assert json.loads((TODAY / "made_by.json").read_text())["commit"].startswith("dc01865")
    runs_dir = copy_fixture(TODAY, tmp_path, tiny_model, "ranked.toml", "today.toml", "data/tr.jsonl", "data/dv.jsonl")
    out = cli("queue", "ls", "--json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    S = contract.Status
    want = {S.DONE: 8, S.BLOCKED: 6, S.FAILED: 2, S.PRUNED: 1, S.DEGENERATE: 1, S.CANCELLED: 1}
    assert Counter(r["status"] for r in listed) == want
    runs = _by_name(listed)
    assert runs["ranked:rank:t:None:None"]["status"] == S.DONE
    pruned = runs["ranked:target:t:idle:1e-05"]
    assert pruned["status"] == S.PRUNED and pruned["pruned_why"].startswith("rank 3 of 3 on t")
    record = json.loads((runs_dir / pruned["id"] / contract.PRUNED_FILE).read_text())
    assert record["by"] == runs["ranked:rank:t:None:None"]["id"] and record["why"] == pruned["pruned_why"]
    assert runs["today:target:deg:none:0.001"]["error"].startswith("degenerate: dev acc 0.5000")
    assert "out of memory" in runs["today:target:plain:none:0.003"]["error"]
    assert {r["status"] for k, r in runs.items() if ":broken:" in k and r["stage"] == "target"} == {S.BLOCKED}
    # every result and every kept attempt reads as the contract's Result
    results = sorted(runs_dir.glob("*/result*.json"))
    assert len(results) == 16 and len([p for p in results if contract.attempt_of(p.name)]) == 6
    for path in results:
        contract.Result.read(json.loads(path.read_text()))
    # the ledger's fused and LoRA fields: the array's reason kept, the LoRA run's params
    rows = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert "daemon --fuse auto" in rows[runs["today:target:deg:none:0.01"]["id"]]["fuse_why"]
    assert runs["today:target:lo:none:0.001"]["params"]["method"] == "lora"
    assert rows[runs["today:target:plain:none:0.003"]["id"]]["attempts"] == 3
    placed = json.loads((runs_dir / "ledger.json").read_text())["placements"].values()
    assert sorted(p["fused"] for p in placed if p["fused"] > 1) == [2, 2, 3, 4]  # arrays of 2 to 4 runs
    # the score tables
    cells = {(c["intermediate"], c["target"]): c for c in score_doc(runs_dir, "today")["cells"]}
    assert {k: (c["n"], c["missing"]) for k, c in cells.items() if k[0] == "none"} == {
        ("none", "deg"): (2, 0),
        ("none", "lo"): (1, 0),
        ("none", "plain"): (1, 2),
    }
    ranked = {c["intermediate"]: (c["n"], c["pruned"]) for c in score_doc(runs_dir, "ranked")["cells"]}
    assert ranked == {"none": (1, 0), "learned": (1, 0), "idle": (0, 1)}
    assert cost.measured(runs_dir, "cpu").shapes


@pytest.mark.slow
def test_a_runs_dir_of_todays_code_re_adds_nothing_and_retries_a_cancelled_run(tmp_path, tiny_model, queue_env):
    runs_dir = copy_fixture(TODAY, tmp_path, tiny_model, "ranked.toml", "today.toml", "data/tr.jsonl", "data/dv.jsonl")
    before = {r["id"]: r["status"] for r in Ledger(runs_dir).runs()}
    for plan in ("ranked", "today"):
        out = cli("queue", "add", str(tmp_path / f"{plan}.toml"), "--no-daemon", runs_dir=runs_dir, env=queue_env)
        assert out.returncode == 0, out.stderr
    assert {r["id"]: r["status"] for r in Ledger(runs_dir).runs()} == before  # same ids; pruned stays pruned
    (cancelled,) = [i for i, s in before.items() if s == contract.Status.CANCELLED]
    assert cli("queue", "retry", cancelled, runs_dir=runs_dir, env=queue_env).returncode == 0
    start(runs_dir, queue_env)
    wait(lambda: Ledger(runs_dir).get(cancelled)["status"] in contract.SETTLED, what="the retried run of today's code")
    assert Ledger(runs_dir).get(cancelled)["status"] == contract.Status.DONE
    cells = {(c["intermediate"], c["target"]): c for c in score_doc(runs_dir, "today")["cells"]}
    assert cells[("none", "plain")]["n"] == 2
