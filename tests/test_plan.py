"""Plan expansion: counts, dependency edges, stable content-hash ids, re-adding and editing plans."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REFERENCE_PLAN, cli

from stilts_tui import plan as plans
from stilts_tui.contract import Status


def test_reference_plan_expands_to_the_studys_1008_target_runs():
    plan, runs = plans.load_and_expand(REFERENCE_PLAN)
    assert plans.counts(runs) == {"synth": 1, "intermediate": 3, "target": 1008}
    matrix = plans.matrix(runs)
    assert set(matrix) == {"none", "hellaswag", "hellaswag-p", "syngpt2"}
    for row in matrix.values():
        assert row == {t: 36 for t in ("rte", "mednli", "wic", "cola", "siqa", "winogrande-xs", "winogrande-m")}
    assert len({r.id for r in runs}) == len(runs)


def test_reference_plan_dependency_edges():
    _, runs = plans.load_and_expand(REFERENCE_PLAN)
    by_id = {r.id: r for r in runs}
    synth = [r for r in runs if r.stage == "synth"]
    inter = {r.name: r for r in runs if r.stage == "intermediate"}
    assert len(synth) == 1 and synth[0].parent is None
    assert inter["syngpt2"].parent == synth[0].id  # trained on the synth stage's output
    assert inter["syngpt2"].task_spec["from_run"] == synth[0].id
    assert inter["hellaswag"].parent is None and inter["hellaswag-p"].parent is None
    for r in runs:
        if r.stage != "target":
            continue
        if r.intermediate == "none":
            assert r.parent is None
        else:
            assert by_id[r.parent] is inter[r.intermediate]
        # parents always come before their children in plan order
        assert r.parent is None or by_id[r.parent].order < r.order


def test_reference_plan_hyperparameters_are_the_papers():
    _, runs = plans.load_and_expand(REFERENCE_PLAN)
    inter = {r.name: r.params for r in runs if r.stage == "intermediate"}
    hs = inter["hellaswag"]
    assert (hs["batch_size"], hs["epochs"], hs["max_len"]) == (8, 3, 120)
    assert (inter["hellaswag-p"]["batch_size"], inter["hellaswag-p"]["max_len"]) == (16, 50)
    assert (inter["syngpt2"]["batch_size"], inter["syngpt2"]["epochs"], inter["syngpt2"]["max_len"]) == (16, 2, 60)
    rte = [r for r in runs if r.stage == "target" and r.name == "rte" and r.intermediate == "none"]
    assert len(rte) == 36 and {r.seed for r in rte} == {12, 42}
    assert {r.params["lr"] for r in rte} == {5e-6, 1e-5, 2e-5}
    assert {r.params["batch_size"] for r in rte} == {8, 16, 32}
    assert {r.params["warmup"] for r in rte} == {0.0, 0.2}
    assert all(r.params["epochs"] == 5 and r.params["max_len"] == 100 for r in rte)
    wino = [r for r in runs if r.name == "winogrande-xs"]
    assert all(r.params["epochs"] == 10 for r in wino)


def test_ids_are_stable_across_processes():
    code = (
        "import json; from stilts_tui import plan; "
        f"print(json.dumps([r.id for r in plan.load_and_expand({str(REFERENCE_PLAN)!r})[1]]))"
    )
    out = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={"PYTHONHASHSEED": str(seed)},
            ).stdout
        )
        for seed in (1, 2)
    ]
    assert out[0] == out[1]
    assert out[0] == [r.id for r in plans.load_and_expand(REFERENCE_PLAN)[1]]


def test_ids_unchanged_when_an_unrelated_stage_changes(tmp_path):
    text = REFERENCE_PLAN.read_text()
    edited = text.replace('[target.wic]\ntask = "wic"\nepochs = 5', '[target.wic]\ntask = "wic"\nepochs = 7')
    assert edited != text
    path = tmp_path / "edited.toml"
    path.write_text(edited)
    before = {
        (r.stage, r.name, r.intermediate, r.seed, json.dumps(r.grid)): r.id
        for r in plans.load_and_expand(REFERENCE_PLAN)[1]
    }
    after = {
        (r.stage, r.name, r.intermediate, r.seed, json.dumps(r.grid)): r.id for r in plans.load_and_expand(path)[1]
    }
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(k[0] == "target" and k[1] == "wic" for k in changed)
    assert len(changed) == 4 * 36


def test_an_intermediate_change_changes_its_children_ids_only(tmp_path):
    text = REFERENCE_PLAN.read_text().replace(
        "batch_size = 8\nepochs = 3\nmax_len = 120", "batch_size = 8\nepochs = 4\nmax_len = 120"
    )
    path = tmp_path / "p.toml"
    path.write_text(text)
    old = plans.load_and_expand(REFERENCE_PLAN)[1]
    new = plans.load_and_expand(path)[1]
    diff = [(a, b) for a, b in zip(old, new, strict=True) if a.id != b.id]
    assert {(a.stage, a.intermediate) for a, _ in diff} == {("intermediate", "hellaswag"), ("target", "hellaswag")}
    assert len(diff) == 1 + 252


def test_readding_a_plan_queues_nothing_new(small_plan, runs_dir):
    path = small_plan()
    first = cli("queue", "add", str(path), runs_dir=runs_dir)
    assert first.returncode == 0, first.stderr
    # 1 intermediate; (none + inter) x (rte: 2 seeds x 2 lrs + cola: 2 seeds x 1 lr) = 12 targets
    assert "13 runs queued, 0 already" in first.stdout
    again = cli("queue", "add", str(path), runs_dir=runs_dir)
    assert again.returncode == 0 and "0 runs queued, 13 already" in again.stdout
    runs = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    assert len(runs) == 13 and len({r["id"] for r in runs}) == 13


def test_editing_one_grid_queues_only_the_new_runs(small_plan, runs_dir):
    cli("queue", "add", str(small_plan("[1e-5]")), runs_dir=runs_dir)
    before = {r["id"] for r in json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)}
    out = cli("queue", "add", str(small_plan("[1e-5, 3e-5]")), runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    assert "4 runs queued, 13 already" in out.stdout  # cola: 2 starting points x 2 seeds x one new lr
    after = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    new = [r for r in after if r["id"] not in before]
    assert len(new) == 4 and all(r["task"] == "cola" and r["params"]["lr"] == 3e-5 for r in new)


def test_queue_add_writes_a_spec_for_every_run(small_plan, runs_dir):
    cli("queue", "add", str(small_plan()), runs_dir=runs_dir)
    runs = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    for r in runs:
        spec = json.loads((runs_dir / r["id"] / "spec.json").read_text())
        assert spec["run_id"] == r["id"] and spec["params"] == r["params"] and spec["seed"] == r["seed"]
        assert spec["task"]["data_dir"].endswith(
            "data/rte" if r["task"] == "rte" else "data/cola" if r["task"] == "cola" else "data/hs"
        )
        if r["parent"]:
            assert spec["model"]["source"] == "parent"
            assert spec["model"]["path"] == str(runs_dir / r["parent"] / "checkpoint")
        else:
            assert spec["model"] == {"source": "hub", "name": "roberta-large", "path": None}
    inter = [r for r in runs if r["stage"] == "intermediate"]
    assert json.loads((runs_dir / inter[0]["id"] / "spec.json").read_text())["keep_checkpoint"] is True


def test_queue_ls_json_shape_and_filters(small_plan, runs_dir):
    cli("queue", "add", str(small_plan()), "--priority", "3", runs_dir=runs_dir)
    runs = json.loads(cli("queue", "ls", "--json", "--plan", "small", runs_dir=runs_dir).stdout)
    keys = {"id", "plan", "stage", "task", "intermediate", "seed", "params", "parent", "status", "gpu", "score"}
    assert all(keys <= set(r) for r in runs)
    assert runs[0]["stage"] == "intermediate"  # stage order: intermediates before targets
    assert {r["status"] for r in runs} == {Status.QUEUED} and {r["priority"] for r in runs} == {3}
    assert {r["intermediate"] for r in runs if r["stage"] == "target"} == {"none", "inter"}
    assert json.loads(cli("queue", "ls", "--json", "--status", Status.DONE, runs_dir=runs_dir).stdout) == []
    bad = cli("queue", "ls", "--status", "finished", runs_dir=runs_dir)
    assert bad.returncode == 2 and "--status" in bad.stderr


def test_plan_show_json():
    out = cli("plan", "show", str(REFERENCE_PLAN), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"] == {"synth": 1, "intermediate": 3, "target": 1008}
    assert data["matrix"]["syngpt2"]["rte"] == 36
    assert any("mednli" in w for w in data["warnings"])  # MedNLI is local only


def test_tasks_lists_every_builtin_with_aliases():
    out = cli("tasks", "--json")
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert {"rte", "mednli", "wic", "cola", "siqa", "hellaswag", "hellaswag-p", "syngpt2"} <= set(rows)
    assert "iqa" in rows["siqa"]["aliases"] and "hella-p" in rows["hellaswag-p"]["aliases"]
    assert "cont" in rows["syngpt2"]["aliases"]
