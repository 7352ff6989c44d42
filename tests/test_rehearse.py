"""`plan rehearse`: the reference plan end to end through the real daemon on tiny models and the
fixture files laid out like every real task in it (tests/fixtures/chang_lu_2021)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REFERENCE_PLAN, cli, write_jsonl, write_text

from stilts_tui import plan as plans
from stilts_tui import tasks
from stilts_tui.cli.rehearse import Options, rewrite, to_toml
from stilts_tui.tomlio import tomllib

FIXTURES = Path(__file__).parent / "fixtures" / "chang_lu_2021"
STAGES = [
    "synth.syngpt2",
    "intermediate.hellaswag",
    "intermediate.hellaswag-p",
    "intermediate.syngpt2",
    "target.rte",
    "target.mednli",
    "target.wic",
    "target.cola",
    "target.siqa",
    "target.winogrande-xs",
    "target.winogrande-m",
]


@pytest.mark.slow
def test_the_reference_plan_rehearses_end_to_end(tmp_path, runs_dir):
    out_dir = tmp_path / "rehearsal"
    out = cli(
        "plan",
        "rehearse",
        str(REFERENCE_PLAN),
        "--data-dir",
        str(FIXTURES),
        "--examples",
        "6",
        "--out",
        str(out_dir),
        runs_dir=runs_dir,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for stage in STAGES:
        assert any(x.startswith(f"ok    {stage}: ") for x in lines), (stage, out.stdout)
    assert "one target run per (starting point, target) cell" in out.stdout
    assert any(x.startswith("ok    scores: 4 starting points x 7 targets") for x in lines), out.stdout
    assert "rehearsal passed" in lines[-1]
    assert list(runs_dir.iterdir()) == []  # the real runs-dir and its ledger untouched
    specs = [json.loads(p.read_text()) for p in out_dir.glob("*/spec.json")]
    assert len(specs) == 32  # 1 synth + 3 intermediates + 4 starting points x 7 targets
    mednli = next(s for s in specs if s["name"] == "mednli")
    assert mednli["task"]["data_dir"] == str((FIXTURES / "mednli").resolve())
    siqa = next(s for s in specs if s["name"] == "siqa")
    assert (siqa["params"]["batch_size"], siqa["params"]["clip"], siqa["params"]["grad_accum"]) == (4, "micro_batch", 2)
    assert all(
        s["params"]["precision"] == "fp32" and s["params"]["batching"] == "random"
        for s in specs
        if s["stage"] != "synth"
    )
    synth = next(s for s in specs if s["stage"] == "synth")
    assert (out_dir / synth["run_id"] / "data" / "SynGPT2_dev.jsonl").is_file()


def clip60_plan(tmp_path: Path) -> Path:
    """The reference plan with the documented SocialIQA route taken: the two commented lines, uncommented."""
    text = REFERENCE_PLAN.read_text()
    assert '# data_dir = "data/siqa"\n# train_file = "clip60_iqa_train.jsonl"' in text
    text = text.replace('# data_dir = "data/siqa"\n# train_file', 'data_dir = "data/siqa"\ntrain_file')
    return write_text(tmp_path / "chang_lu_2021.toml", text)


def test_the_documented_clip60_route_trains_siqa_on_the_users_file(tmp_path):
    shutil.copytree(FIXTURES / "siqa", tmp_path / "data" / "siqa")
    plan, runs = plans.load_and_expand(clip60_plan(tmp_path))
    spec = next(r for r in runs if r.name == "siqa").task_spec
    assert spec["train_file"] == str(tmp_path / "data/siqa/clip60_iqa_train.jsonl")
    assert not [x for x in plans.missing_data(plan, runs) if "siqa" in x]
    assert tasks.required_files(spec)[:2] == [
        tmp_path / "data/siqa/clip60_iqa_train.jsonl",
        tmp_path / "data/siqa/clip60_iqa_train-labels.lst",
    ]
    labels = (tmp_path / "data/siqa/clip60_iqa_train-labels.lst").read_text().split()
    assert [e["label"] for e in tasks.load_examples(spec, "train")] == [int(x) - 1 for x in labels]


def test_a_rehearsal_keeps_a_stages_file_names_under_its_fixture_folder(tmp_path):
    path = clip60_plan(tmp_path)
    data = tomllib.loads(path.read_text())
    small = rewrite(data, tmp_path, tmp_path / "r", Options(examples=5, data_dir=FIXTURES))
    siqa = small["target"]["siqa"]
    assert siqa["data_dir"] == str((FIXTURES / "siqa").resolve()) and siqa["train_file"] == "clip60_iqa_train.jsonl"
    assert siqa["seeds"] == [12] and siqa["grid"] == {"lr": [5e-6], "grad_accum": [2], "warmup": [0.0]}
    assert siqa["max_train_samples"] == siqa["max_dev_samples"] == 5
    assert small["model"] == str(tmp_path / "r" / "models" / "encoder")
    full = rewrite(data, tmp_path, tmp_path / "r", Options(data_dir=FIXTURES, full_grid=True))
    assert full["target"]["siqa"]["grid"] == data["target"]["siqa"]["grid"]


def test_a_stage_whose_data_cannot_be_read_fails_the_rehearsal_in_one_line(tmp_path, runs_dir):
    write_text(tmp_path / "data/rte/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    write_text(tmp_path / "data/rte/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    write_jsonl(
        tmp_path / "data/hs/hellaswag_train.jsonl", [{"ctx_a": "a", "ctx_b": "b", "endings": ["1"] * 4, "label": 0}]
    )
    write_text(tmp_path / "data/hs/hellaswag_val.jsonl", "{not json\n")
    plan = write_text(
        tmp_path / "p.toml",
        'name = "p"\nmodel = "roberta-large"\n[intermediate.hs]\n'
        'task = "hellaswag"\ndata_dir = "data/hs"\n[target.rte]\ntask = "rte"\ndata_dir = "data/rte"\n',
    )
    out = cli("plan", "rehearse", str(plan), "--out", str(tmp_path / "r"), runs_dir=runs_dir, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  intermediate.hs: " in out.stdout and "hellaswag_val.jsonl:1: not valid JSON" in out.stdout
    assert "FAIL  target.rte: " in out.stdout and "label 'maybe'" in out.stdout
    assert "stopped before training: 2 stage(s)" in out.stdout
    assert list(runs_dir.iterdir()) == []


def test_the_rehearsal_refuses_the_real_runs_dir(tmp_path, runs_dir):
    out = cli("plan", "rehearse", str(REFERENCE_PLAN), "--out", str(runs_dir), runs_dir=runs_dir)
    assert out.returncode == 2 and "is the real runs-dir" in out.stderr


def test_the_rehearsal_plan_round_trips_through_toml():
    data = tomllib.loads(REFERENCE_PLAN.read_text())
    assert tomllib.loads(to_toml(data)) == data
    odd = {
        "name": "x",
        "model": "m",
        "description": 'quote " and \\ and \x7f and \u00e9',
        "target": {"a.b": {"grid": {"lr": [1e-05, 2.5e-05]}, "fuse": True}},
    }
    assert tomllib.loads(to_toml(odd)) == odd
