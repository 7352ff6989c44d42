"""The score table never shows a LoRA run as a full fine-tune: LoRA cells are marked, a cell mixing the two
methods (or two ranks) is flagged as a cell mixing setups is, in the table and in every export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import cli
from test_results import scored, target_runs, write_result  # noqa: F401 - scored: a fixture

from stilts_tui import results

FULL = {"method": "full", "precision": "fp32", "batching": "random", "fused": 0}
LORA = {
    **FULL,
    "method": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]},
    "transfer": "merge",
}


@pytest.mark.slow
def test_lora_cells_are_marked_and_a_cell_mixing_methods_is_flagged(scored):  # noqa: F811
    runs = target_runs(scored)
    for r in runs:
        if r["intermediate"] == "a":  # every "a" cell LoRA ...
            write_result(scored, r["id"], 0.8, setup=LORA)
        elif r["name"] == "t2":  # ... and "none" -> t2 mixes a LoRA run into full fine-tunes
            write_result(
                scored,
                r["id"],
                0.6,
                setup=LORA if r["seed"] == runs[0]["seed"] and r["params"]["lr"] == runs[0]["params"]["lr"] else FULL,
            )
    t = results.build(scored, "sc")
    assert t.cell("a", "t1").method == t.cell("a", "t2").method == "lora"
    assert t.cell("none", "t1").method is None  # the fixture's results record no setup: unmarked
    assert t.cell("a", "t1").setup_note is None
    mixed = t.cell("none", "t2")
    assert mixed.method == "full/lora" and mixed.setup_note.startswith("method full/lora; lora ")
    md = cli("scores", "sc", "--format", "md", runs_dir=scored).stdout
    assert "| a | LoRA 80.0 ± 0.0" in md and "LoRA 60.0" not in md and "60.0* ± 0.0" in md
    assert 'cells marked LoRA are LoRA runs (method = "lora"); the others are full fine-tunes' in md
    assert "none -> t2: method full/lora" in md
    rows = list(csv.DictReader(io.StringIO(cli("scores", "sc", "--format", "csv", runs_dir=scored).stdout)))
    assert {(r["intermediate"], r["target"]): r["method"] for r in rows}[("none", "t2")] == "full/lora"
    cells = json.loads(cli("scores", "sc", "--format", "json", runs_dir=scored).stdout)["cells"]
    assert {c["method"] for c in cells if c["intermediate"] == "a"} == {"lora"}


def test_results_written_before_lora_runs_existed_are_full_fine_tunes(scored):  # noqa: F811
    """A setup without ``method`` (every result.json before LoRA) is a full fine-tune: not flagged beside one
    that says so."""
    runs = [r for r in target_runs(scored) if (r["intermediate"], r["name"]) == ("a", "t1")]
    for i, r in enumerate(runs):
        write_result(scored, r["id"], 0.8, setup=FULL if i % 2 else {k: v for k, v in FULL.items() if k != "method"})
    cell = results.build(scored, "sc").cell("a", "t1")
    assert cell.method == "full" and cell.setup_note is None
