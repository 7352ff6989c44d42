"""The score table: every statistic against hand-computed values, the bootstrap, every export."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from conftest import cli, write_text

from stilts_tui import results

PLAN = """name = "sc"
model = "roberta-large"
baseline = true
target_seeds = [1, 2]
[intermediate.a]
task = "hellaswag"
[target.t1]
task = "rte"
grid = { lr = [1e-5, 2e-5] }
[target.t2]
task = "cola"
grid = { lr = [1e-5, 2e-5] }
"""

# (intermediate, target) -> the four runs' acc in plan order: (seed 1, lr1), (seed 1, lr2), (seed 2, lr1), ...
# None: the run has no result yet; "failed": its result says failed. Both count as missing.
SCORES = {
    ("none", "t1"): [0.50, 0.60, 0.70, 0.80],
    ("a", "t1"): [0.70, 0.90, 0.80, 1.00],
    ("none", "t2"): [0.40, "failed", 0.60, None],
    ("a", "t2"): [None, None, "failed", None],
}


@pytest.fixture
def scored(tmp_path, runs_dir):
    plan = write_text(tmp_path / "sc.toml", PLAN)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    runs = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    targets = sorted((r for r in runs if r["stage"] == "target"), key=lambda r: (r["seed"], r["params"]["lr"]))
    for (inter, target), values in SCORES.items():
        cell = [r for r in targets if r["intermediate"] == inter and r["name"] == target]
        for r, v in zip(cell, values, strict=True):
            if v is None:
                continue
            res = ({"status": "failed", "error": "x", "metrics": {}, "score": None} if v == "failed" else
                   {"status": "done", "metrics": {"acc": v, "f1": v / 2}, "primary_metric": "acc", "score": v,
                    "error": None})
            (runs_dir / r["id"] / "result.json").write_text(json.dumps(res))
    return runs_dir


def test_every_statistic_matches_a_hand_computed_value(scored):
    t = results.build(scored, "sc")
    assert t.rows == ["none", "a"] and t.targets == ["t1", "t2"] and t.metrics == {"t1": "acc", "t2": "acc"}
    c = t.cell("none", "t1")
    assert (c.n, c.missing) == (4, 0)
    assert c.mean == pytest.approx(0.65) and c.median == pytest.approx(0.65)
    assert c.std == pytest.approx(math.sqrt(0.0125))  # population std: ((.15²+.05²)*2/4) ** .5
    assert (c.max, c.min) == (0.8, 0.5)
    assert c.best_of_grid == pytest.approx((0.6 + 0.8) / 2)  # best lr per seed, averaged over seeds
    assert c.gain is None
    a = t.cell("a", "t1")
    assert a.mean == pytest.approx(0.85) and a.std == pytest.approx(math.sqrt(0.0125))
    assert a.best_of_grid == pytest.approx((0.9 + 1.0) / 2)
    assert a.gain == pytest.approx(0.20)
    lo, hi = a.gain_ci
    assert 0 < lo < 0.20 < hi and a.gain_significant
    partial = t.cell("none", "t2")  # a failed run and a run without result: missing, not zero
    assert (partial.n, partial.missing) == (2, 2)
    assert partial.mean == pytest.approx(0.5) and partial.std == pytest.approx(0.1)
    empty = t.cell("a", "t2")
    assert (empty.n, empty.missing, empty.mean, empty.gain) == (0, 4, None, None)


def test_bootstrap_interval_is_stable_for_a_seed_and_moves_with_it():
    x, base = [0.7, 0.9, 0.8, 1.0], [0.5, 0.6, 0.7, 0.8]
    assert results.bootstrap_gain(x, base) == results.bootstrap_gain(x, base)
    assert results.bootstrap_gain(x, base, seed=1) != results.bootstrap_gain(x, base, seed=0)
    lo, hi = results.bootstrap_gain([0.5, 0.6, 0.7], [0.55, 0.65, 0.6])
    assert lo < 0 < hi  # no clear gain


def test_by_seed_and_other_metrics(scored):
    t = results.build(scored, "sc", by_seed=True)
    c = t.cell("none", "t1", seed=1)
    assert (c.n, c.mean, c.best_of_grid) == (2, pytest.approx(0.55), 0.6) and c.std == pytest.approx(0.05)
    assert t.cell("a", "t1", seed=2).mean == pytest.approx(0.9)
    f1 = results.build(scored, "sc", metric="f1")
    assert f1.cell("none", "t1").mean == pytest.approx(0.325) and f1.metrics["t1"] == "f1"


def test_csv_export_parses_back(scored):
    out = cli("scores", "sc", "--format", "csv", runs_dir=scored)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 4 and set(rows[0]) == set(results.CSV_FIELDS)
    row = next(r for r in rows if (r["intermediate"], r["target"]) == ("a", "t1"))
    assert float(row["mean"]) == pytest.approx(0.85) and float(row["std_ddof0"]) == pytest.approx(0.1118, abs=1e-4)
    assert float(row["gain"]) == pytest.approx(0.2) and row["gain_significant"] == "true"
    empty = next(r for r in rows if (r["intermediate"], r["target"]) == ("a", "t2"))
    assert (empty["n"], empty["missing"], empty["mean"]) == ("0", "4", "")


def test_json_export_parses_back(scored, tmp_path):
    out = cli("scores", "sc", "--format", "json", "-o", str(tmp_path / "s.json"), runs_dir=scored)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["plan"] == "sc" and "ddof 0" in data["std"] and data["bootstrap"]["seed"] == 0
    cell = next(c for c in data["cells"] if (c["intermediate"], c["target"]) == ("none", "t2"))
    assert cell["values"] == [0.4, 0.6] and cell["missing"] == 2 and cell["std_ddof"] == 0


def test_markdown_export_row_by_row(scored):
    out = cli("scores", "sc", "--format", "md", runs_dir=scored)
    lines = out.stdout.splitlines()
    assert lines[0] == "| from \\ target | t1 (acc) | t2 (acc) |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| none | 65.0 ± 11.2 n=4 | 50.0 ± 10.0 n=2/4 |"
    assert lines[3] == "| a | 85.0 ± 11.2 (+20.0†) n=4 | missing 4 |"
    assert "ddof 0" in out.stdout


def test_latex_export_row_by_row(scored):
    out = cli("scores", "sc", "--format", "latex", runs_dir=scored)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("%") and "ddof 0" in lines[0]
    assert lines[1:4] == [r"\begin{tabular}{lcc}", r"\toprule", r"from & t1 (acc) & t2 (acc) \\"]
    assert lines[4] == r"\midrule"
    assert lines[5] == r"none & 65.0 $\pm$ 11.2 \tiny{n=4} & 50.0 $\pm$ 10.0 \tiny{n=2/4} \\"
    assert lines[6] == r"a & 85.0 $\pm$ 11.2 (+20.0$^\dagger$) \tiny{n=4} & missing 4 \\"
    assert lines[7:] == [r"\bottomrule", r"\end{tabular}"]


def test_png_has_one_panel_per_target(scored, tmp_path):
    from PIL import Image

    out = cli("scores", "sc", "--format", "png", "-o", str(tmp_path / "s.png"), runs_dir=scored)
    assert out.returncode == 0, out.stderr
    img = Image.open(tmp_path / "s.png")
    assert img.size == (640, 360)  # 3.2 in x 2 panels, 3.6 in, at 100 dpi
    assert img.info["Description"] == "panels: 2"


def test_table_prints_in_the_terminal(scored):
    out = cli("scores", str(scored.parent / "sc.toml"), runs_dir=scored, env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "65.0 ± 11.2 n=4" in out.stdout and "+20.0†" in out.stdout and "ddof 0" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("nope",), "unknown plan 'nope'"),
    (("sc", "--metric", "bleu"), "--metric: 'bleu' is not in the runs' results (available: acc, f1)"),
    (("sc", "--format", "xls"), "--format: 'xls' is not one of"),
    (("sc", "--format", "png"), "--format png needs -o FILE.png"),
])
def test_bad_input_is_one_line_and_exit_2(scored, args, message):
    out = cli("scores", *args, runs_dir=scored)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_no_finished_runs_is_one_line_and_exit_2(tmp_path, runs_dir):
    cli("queue", "add", str(write_text(tmp_path / "sc.toml", PLAN)), runs_dir=runs_dir)
    out = cli("scores", "sc", runs_dir=runs_dir)
    assert out.returncode == 2 and out.stderr.strip().endswith("plan 'sc' has no finished target runs yet (16 queued)")
