"""The run contract (stilts_tui/contract.py): one place for run-folder names, statuses and defaults."""

from __future__ import annotations

import json

import pytest
from conftest import cli, write_text

from stilts_tui import contract
from stilts_tui import plan as plans
from stilts_tui.contract import FINAL, SETTLED, STATUSES, Status
from stilts_tui.ledger import Ledger, LedgerError
from stilts_tui.queue import ops

PLAN = """name = "c"
model = "roberta-large"
baseline = true
target_seeds = [1]
[tasks.pair]
format = "jsonl"
train = "tr.jsonl"
dev = "dv.jsonl"
kind = "classification"
text_fields = ["a", "b"]
[target.pair]
task = "pair"
"""


def test_statuses_equal_their_strings_and_their_sets_nest():
    assert Status.DONE == "done" and f"{Status.DONE}" == "done" and json.dumps(Status.DONE) == '"done"'
    assert FINAL < SETTLED <= set(STATUSES)
    assert Status.BLOCKED in SETTLED and Status.BLOCKED not in FINAL
    assert set(contract.RESULT_STATUSES) == {"done", "failed", "oom"}


def test_the_ledger_accepts_every_contract_status_and_refuses_another(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs([{"id": f"{i:012x}", "plan": "p", "stage": "target", "task": "rte", "order": i}
                     for i in range(len(STATUSES))])
    for i, status in enumerate(STATUSES):
        ledger.update(f"{i:012x}", status=status)
    assert sorted(r["status"] for r in Ledger(tmp_path).runs()) == sorted(STATUSES)
    data = json.loads((tmp_path / contract.LEDGER_FILE).read_text())
    data["runs"][f"{0:012x}"]["status"] = "finished"
    (tmp_path / contract.LEDGER_FILE).write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="status 'finished'"):
        Ledger(tmp_path).runs()


def test_a_plan_without_defaults_resolves_the_contract_defaults_into_every_run(tmp_path):
    write_text(tmp_path / "tr.jsonl", '{"a": "x", "b": "y", "label": 0}\n')
    write_text(tmp_path / "dv.jsonl", '{"a": "x", "b": "y", "label": 1}\n')
    _, runs = plans.load_and_expand(write_text(tmp_path / "c.toml", PLAN))
    assert runs and all(r.params == contract.TRAINING_DEFAULTS for r in runs)


def test_a_retried_run_keeps_each_attempts_result_under_the_contract_name(tmp_path):
    runs_dir = tmp_path / "runs"
    write_text(tmp_path / "tr.jsonl", '{"a": "x", "b": "y", "label": 0}\n')
    write_text(tmp_path / "dv.jsonl", '{"a": "x", "b": "y", "label": 1}\n')
    out = cli("queue", "add", str(write_text(tmp_path / "c.toml", PLAN)), "--no-daemon", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    (run,) = Ledger(runs_dir).runs()
    for attempt in (1, 2):
        Ledger(runs_dir).update(run["id"], status=Status.FAILED, attempts=attempt)
        write_text(runs_dir / run["id"] / contract.RESULT_FILE, json.dumps({"status": "failed", "n": attempt}))
        assert ops.retry(runs_dir, [run["id"]]) == [run["id"]]
    kept = sorted(p.name for p in (runs_dir / run["id"]).iterdir() if contract.attempt_of(p.name))
    assert kept == [contract.attempt_result_name(1), contract.attempt_result_name(2)]
    assert json.loads((runs_dir / run["id"] / "result.attempt2.json").read_text())["n"] == 2
    assert not (runs_dir / run["id"] / contract.RESULT_FILE).exists()
    assert Ledger(runs_dir).get(run["id"])["status"] == Status.QUEUED
