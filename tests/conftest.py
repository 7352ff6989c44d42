"""Shared fixtures: the real console script, plan files and task data written by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PLAN = ROOT / "plans" / "chang_lu_2021.toml"
CONSOLE = Path(sys.executable).parent / "stilts-tui"


def cli(*args: str, runs_dir: Path | None = None, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``stilts-tui`` console script in a subprocess."""
    cmd = [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-m", "stilts_tui.cli"]
    full_env = {**os.environ, "STILTS_NO_DAEMON": "1", **(env or {})}
    if runs_dir is not None:
        full_env["STILTS_RUNS_DIR"] = str(runs_dir)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=full_env,
                          timeout=timeout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


SMALL_PLAN = """
name = "small"
model = "roberta-large"
baseline = true
target_seeds = [1, 2]

[intermediate.inter]
task = "hellaswag"
data_dir = "data/hs"

[target.rte]
task = "rte"
data_dir = "data/rte"
grid = {{ lr = [1e-5, 2e-5], batch_size = [8] }}

[target.cola]
task = "cola"
data_dir = "data/cola"
grid = {{ lr = {cola_lrs} }}
"""


@pytest.fixture
def small_plan(tmp_path: Path):
    """A plan with local data for every stage; returns a writer taking the CoLA grid's lrs."""
    write_jsonl(tmp_path / "data/hs/hellaswag_train.jsonl",
                [{"ctx_a": "a", "ctx_b": "b", "endings": ["1", "2", "3", "4"], "label": 0}])
    write_jsonl(tmp_path / "data/hs/hellaswag_val.jsonl",
                [{"ctx_a": "a", "ctx_b": "b", "endings": ["1", "2", "3", "4"], "label": 1}])
    rte = "index\tsentence1\tsentence2\tlabel\n0\tA man.\tA person.\tentailment\n"
    write_text(tmp_path / "data/rte/train.tsv", rte)
    write_text(tmp_path / "data/rte/dev.tsv", rte)
    cola = "src\t1\t\tGood sentence .\n"
    write_text(tmp_path / "data/cola/train.tsv", cola)
    write_text(tmp_path / "data/cola/dev.tsv", cola)

    def write(cola_lrs: str = "[1e-5]") -> Path:
        return write_text(tmp_path / "small.toml", SMALL_PLAN.format(cola_lrs=cola_lrs))

    return write
