"""LoRA plan keys (method, lora, transfer = "merge" | "adapter"): bad values refused in one line naming the
key (exit 2, nothing written), defaults filled in, and run ids unchanged for plans that do not use them."""

from __future__ import annotations

import pytest
from conftest import REFERENCE_PLAN, cli, write_text
from test_bad_plan_values import GOOD, assert_refused

from stilts_tui import plan as plans
from stilts_tui import tomlio
from stilts_tui.contract import ResultStatus

LORA_INTER = GOOD.replace(
    '[intermediate.inter]\ntask = "hellaswag"', '[intermediate.inter]\ntask = "hellaswag"\nmethod = "lora"'
)
CASES = {
    "bad-method": ((GOOD, "epochs = 2", 'epochs = 2\nmethod = "qlora"'), "key 'target.rte.method'", '"lora"'),
    "rank-zero": (
        (GOOD, "epochs = 2", 'epochs = 2\nmethod = "lora"\nlora = { r = 0 }'),
        "key 'target.rte.lora.r'",
        "an integer >= 1",
    ),
    "unknown-lora-key": (
        (GOOD, "epochs = 2", 'epochs = 2\nmethod = "lora"\nlora = { rank = 8 }'),
        "key 'target.rte.lora.rank'",
        "unknown key",
    ),
    "unknown-layer": (
        (GOOD, "epochs = 2", 'epochs = 2\nmethod = "lora"\nlora = { targets = ["q_proj"] }'),
        "key 'target.rte.lora.targets'",
        "attention_output",
    ),
    "dropout-one": (
        (GOOD, "weight_decay = 0.0", "weight_decay = 0.0\nlora = { dropout = 1.0 }"),
        "key 'defaults.lora.dropout'",
        "< 1",
    ),
    "lora-without-method": (
        (GOOD, "epochs = 2", "epochs = 2\nlora = { r = 4 }"),
        "key 'target.rte.lora'",
        'method = "full"',
    ),
    "lora-as-grid-axis": (
        (GOOD, "grid = { lr = [1e-5, 2e-5] }", "grid = { lora = [{ r = 4 }, { r = 8 }] }"),
        "key 'target.rte.grid.lora'",
        "not a grid axis",
    ),
    "adapter-for-full": (
        (LORA_INTER, "epochs = 2", 'epochs = 2\ntransfer = "adapter"'),
        "key 'target.rte.transfer'",
        'needs method = "lora"',
    ),
    "adapter-after-full": (
        (GOOD, "epochs = 2", 'epochs = 2\nmethod = "lora"\ntransfer = "adapter"'),
        "key 'target.rte.transfer'",
        "needs a LoRA intermediate",
    ),
    "adapter-other-rank": (
        (LORA_INTER, "epochs = 2", 'epochs = 2\nmethod = "lora"\ntransfer = "adapter"\nlora = { r = 16 }'),
        "key 'target.rte.transfer'",
        "rank and targets (r 8",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", [("plan", "validate"), ("queue", "add")])
def test_bad_lora_settings_are_refused_in_one_line_naming_the_key(case, command, tmp_path, runs_dir):
    (text, old, new), key, needle = CASES[case]
    assert old in text
    path = write_text(tmp_path / "bad.toml", text.replace(old, new, 1))
    assert_refused(cli(*command, str(path), runs_dir=runs_dir), path, key, needle, runs_dir)


def _ids(tmp_path, text: str) -> list[str]:
    return [r.id for r in plans.load_and_expand(write_text(tmp_path / "p.toml", text))[1]]


def test_run_ids_change_only_for_runs_that_use_lora(tmp_path):
    plain = _ids(tmp_path, GOOD)
    assert _ids(tmp_path, GOOD.replace("epochs = 2", 'epochs = 2\nmethod = "full"')) == plain
    lora = _ids(tmp_path, GOOD.replace("epochs = 2", 'epochs = 2\nmethod = "lora"'))
    assert lora[0] == plain[0] and set(lora[1:]).isdisjoint(plain)  # the (full) intermediate keeps its id
    ref = plans.load_and_expand(REFERENCE_PLAN)[1]
    assert all("method" not in r.params and "lora" not in r.params for r in ref)


def test_lora_runs_get_the_documented_defaults_and_method_is_a_grid_axis(tmp_path):
    text = GOOD.replace("weight_decay = 0.0", "weight_decay = 0.0\nlora = { alpha = 32 }").replace(
        "grid = { lr = [1e-5, 2e-5] }", 'grid = { lr = [1e-5, 2e-5], method = ["full", "lora"] }\nlora = { r = 4 }'
    )
    _, runs = plans.load_and_expand(write_text(tmp_path / "p.toml", text))
    targets = [r for r in runs if r.stage == "target"]
    lora = [r for r in targets if r.params.get("method") == "lora"]
    full = [r for r in targets if r.params.get("method") != "lora"]
    assert len(lora) == len(full) == len(targets) // 2
    # the stage's table over the defaults' key by key, the rest from the documented defaults
    assert all(r.params["lora"] == {"r": 4, "alpha": 32, "dropout": 0.0, "targets": ["query", "value"]} for r in lora)
    assert all("lora" not in r.params and "method" not in r.params for r in full)
    assert plans.LORA_DEFAULTS == {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}


LORA_PLAN = REFERENCE_PLAN.with_name("chang_lu_2021_lora.toml")


def test_the_lora_plan_is_the_reference_plan_with_the_changes_its_header_names():
    """Stage by stage the reference's tables, but for the keys the header lists: method, lora, transfer,
    fuse and the learning rates x 20."""
    ref, lora = (tomlio.loads(p.read_text()) for p in (REFERENCE_PLAN, LORA_PLAN))
    assert lora.pop("name") == "chang-lu-2021-lora" and ref.pop("name") == "chang-lu-2021"
    changed = {"method": "lora", "lora": plans.LORA_DEFAULTS, "transfer": "merge", "fuse": True, "lr": 2e-4}
    assert lora.pop("defaults") == {**ref.pop("defaults"), **changed}
    for kind in ("intermediate", "target"):
        for name, stage in ref.pop(kind).items():
            if "grid" in stage:
                stage["grid"]["lr"] = [round(x * 20, 12) for x in stage["grid"]["lr"]]
            assert lora[kind].pop(name) == stage, name
        assert lora.pop(kind) == {}
    assert lora == ref  # synth stage, seeds, baseline, model
    header = LORA_PLAN.read_text().split("\nname = ")[0]
    assert all(
        k in header for k in ('method   = "lora"', "lora     = {", 'transfer = "merge"', "lr x 20", "fuse     = true")
    )
    _, runs = plans.load_and_expand(LORA_PLAN)
    assert sum(r.stage == "target" for r in runs) == 1008
    assert all(r.params["method"] == "lora" for r in runs if r.stage != "synth")


@pytest.mark.slow
def test_the_lora_plan_rehearses_end_to_end(tmp_path, runs_dir):
    """`plan rehearse` on the fixture files: every stage trains (LoRA intermediates and their merged
    checkpoints, LoRA targets from them), and the score table marks its cells as LoRA."""
    import json
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "chang_lu_2021"
    out_dir = tmp_path / "rehearsal"
    out = cli(
        "plan",
        "rehearse",
        str(LORA_PLAN),
        "--data-dir",
        str(fixtures),
        "--examples",
        "6",
        "--out",
        str(out_dir),
        runs_dir=runs_dir,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rehearsal passed" in out.stdout.splitlines()[-1]
    assert list(runs_dir.iterdir()) == []
    specs = [json.loads(p.read_text()) for p in out_dir.glob("*/spec.json")]
    assert len(specs) == 32 and all(s["params"]["method"] == "lora" for s in specs if s["stage"] != "synth")
    trained = [json.loads((out_dir / s["run_id"] / "result.json").read_text()) for s in specs if s["stage"] != "synth"]
    assert len(trained) == 31 and all(r["status"] == ResultStatus.DONE for r in trained)
    assert all(r["setup"]["method"] == "lora" for r in trained)
    inter = [s for s in specs if s["stage"] == "intermediate"]
    assert all((out_dir / s["run_id"] / "checkpoint" / "lora_adapter.safetensors").is_file() for s in inter)


def test_queue_ls_shows_a_lora_run_as_one(tmp_path, runs_dir):
    text = GOOD.replace("grid = { lr = [1e-5, 2e-5] }", 'grid = { lr = [1e-5, 2e-5], method = ["full", "lora"] }')
    path = write_text(tmp_path / "p.toml", text)
    assert cli("queue", "add", str(path), "--no-daemon", runs_dir=runs_dir).returncode == 0
    out = cli("queue", "ls", "--plan", "p", runs_dir=runs_dir, env={"COLUMNS": "200"})
    lines = [ln for ln in out.stdout.splitlines() if " target " in ln]
    assert sum("lora r=8 lr=1e-05" in ln for ln in lines) == sum("lora r=8 lr=2e-05" in ln for ln in lines) == 4
    full = [ln for ln in lines if "lora" not in ln]
    assert len(full) == 8 and all("method=full" in ln for ln in full)  # the grid values of the full runs
