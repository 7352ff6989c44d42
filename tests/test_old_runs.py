"""A runs-dir written by an older commit (tests/fixtures/old_runs, made by its make.py with the code
at 0a16bb7) keeps working: its specs and results read, its plan re-added queues nothing, its cancelled
run retried and trained, and its scores computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import cli, start, wait, write_jsonl

from stilts_tui import contract
from stilts_tui.cli.demo import pair_rows
from stilts_tui.estimate import cost
from stilts_tui.store.ledger import Ledger

FIXTURE = Path(__file__).parent / "fixtures" / "old_runs"


def old_runs_dir(tmp_path: Path, model: Path) -> Path:
    """The fixture copied under ``tmp_path`` with ``@ROOT@`` replaced, and the model and data it names."""
    shutil.copytree(model, tmp_path / "model")
    write_jsonl(tmp_path / "data/tr.jsonl", pair_rows(48, 1))  # what make.py wrote
    write_jsonl(tmp_path / "data/dv.jsonl", pair_rows(16, 2))
    for src in [FIXTURE / "old.toml", *sorted((FIXTURE / "runs").rglob("*"))]:
        dst = tmp_path / src.relative_to(FIXTURE)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text().replace("@ROOT@", str(tmp_path)))
    return tmp_path / "runs"


def scores(runs_dir: Path) -> dict:
    out = cli("scores", "old", "--format", "json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    (cell,) = json.loads(out.stdout)["cells"]
    return cell


@pytest.mark.slow
def test_a_runs_dir_of_the_older_code_reads_retries_and_scores(tmp_path, tiny_model, queue_env):
    assert json.loads((FIXTURE / "made_by.json").read_text())["commit"].startswith("0a16bb7")
    runs_dir = old_runs_dir(tmp_path, tiny_model)
    listed = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    assert sorted(r["status"] for r in listed) == ["cancelled", "done", "done"]
    assert scores(runs_dir)["n"] == 2
    # its results feed the cost estimate under the shape the contract computes from its specs
    assert [r.runs for r in cost.measured(runs_dir).values()] == [2]

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
