"""The run contract (stilts_tui/contract.py): one place for run-folder names, statuses and defaults."""

from __future__ import annotations

import json

import pytest
from conftest import cli, plan_text, write_plan, write_text

from stilts_tui import contract
from stilts_tui import plan as plans
from stilts_tui.contract import FINAL, SETTLED, STATUSES, Status
from stilts_tui.queue import ops
from stilts_tui.store.ledger import Ledger, LedgerError

PLAN = plan_text(name="c", pair=("tr.jsonl", "dv.jsonl"), fields=("a", "b"), stages='[target.pair]\ntask = "pair"\n')


def test_statuses_equal_their_strings_and_their_sets_nest():
    assert Status.DONE == "done" and f"{Status.DONE}" == "done" and json.dumps(Status.DONE) == '"done"'
    assert FINAL < SETTLED <= set(STATUSES)
    assert Status.BLOCKED in SETTLED and Status.BLOCKED not in FINAL
    assert set(contract.RESULT_STATUSES) == {"done", "failed", "oom", "degenerate"}


def test_the_ledger_accepts_every_contract_status_and_refuses_another(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.add_runs(
        [{"id": f"{i:012x}", "plan": "p", "stage": "target", "task": "rte", "order": i} for i in range(len(STATUSES))]
    )
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


def test_a_spec_that_lacks_a_default_is_a_bad_spec_in_one_line(tmp_path, tiny_workload):
    from conftest import result_of, train, write_tiny_run

    from stilts_tui.queue import checks

    d = write_tiny_run(tmp_path / "runs", "a1b2c3d4e5f6", tiny_workload)
    spec = json.loads((d / contract.SPEC_FILE).read_text())
    del spec["params"]["warmup"]
    (d / contract.SPEC_FILE).write_text(json.dumps(spec))
    assert checks.spec_problem(spec).startswith("spec.json: params lacks warmup")  # the daemon fails the run
    out = train([d])
    res = result_of(d)
    assert out.returncode != 0 and res["status"] == "failed" and "\n" not in res["error"]
    assert "params lacks warmup" in res["error"] and not (d / "checkpoint").exists()


@pytest.mark.slow
def test_a_default_changed_in_the_contract_alone_reaches_plan_trainer_cost_and_queue(tmp_path, tiny_model, monkeypatch):
    from conftest import result_of, train, write_jsonl

    from stilts_tui.cli.demo import pair_rows
    from stilts_tui.estimate import cost
    from stilts_tui.queue import placement

    write_jsonl(tmp_path / "tr.jsonl", pair_rows(48, 1))
    write_jsonl(tmp_path / "dv.jsonl", pair_rows(16, 2))
    plan_file = write_plan(
        tmp_path / "dflt.toml",
        name="dflt",
        model=tiny_model,
        defaults={"epochs": 1, "max_len": 24},
        pair=("tr.jsonl", "dv.jsonl"),
        stages='[target.pair]\ntask = "pair"\n',
    )

    def through_everything(runs_dir):
        plan, runs, _ = ops.add_plan(plan_file, runs_dir)
        (run,) = runs
        spec = json.loads((runs_dir / run.id / contract.SPEC_FILE).read_text())
        steps = cost.estimate(plan, runs).stages["target"].steps
        large = {**spec, "model": {"name": "roberta-large"}}  # a model whose activations count in the formula
        return run, spec, steps, placement.formula_gb(large), contract.shape_key(spec)

    stock = through_everything(tmp_path / "stock")
    monkeypatch.setitem(contract.TRAINING_DEFAULTS, "batch_size", 4)  # the one place
    run, spec, steps, est_gb, shape = through_everything(tmp_path / "changed")
    assert stock[0].params["batch_size"] == 8 and run.params["batch_size"] == 4  # the plan resolves it
    assert run.id != stock[0].id  # a run id hashes its resolved params
    assert spec["params"]["batch_size"] == 4  # spec.json carries it: the trainer and the daemon read it there
    assert (stock[2], steps) == (6, 12)  # cost: 48 examples, one epoch, batches of 8 then 4
    assert est_gb < stock[3] and shape != stock[4] and json.loads(shape)[1] == 4  # queue: memory and shape
    out = train([tmp_path / "changed" / run.id])
    assert out.returncode == 0, out.stderr[-2000:]
    assert result_of(tmp_path / "changed" / run.id)["steps"] == 12  # the trainer took batches of 4
