"""The score table: every statistic against hand-computed values (failed-run rate, the paired
sign-flip test and bootstraps), every export, and -o's file handling."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, plan_text, until, write_text

from stilts_tui import results
from stilts_tui.contract import Env, ResultStatus

PLAN = plan_text(
    name="sc",
    seeds=(1, 2),
    stages="""[intermediate.a]
task = "hellaswag"
[target.t1]
task = "rte"
data_dir = "data/rte"
grid = { lr = [1e-5, 2e-5] }
[target.t2]
task = "cola"
data_dir = "data/cola"
grid = { lr = [1e-5, 2e-5] }
""",
)

FAILED = ResultStatus.FAILED  # in SCORES: a run whose result says failed

# (intermediate, target) -> the four runs' acc in plan order: (seed 1, lr1), (seed 1, lr2), (seed 2, lr1), ...
# None: the run has no result yet; FAILED: its result says failed. Both count as missing.
SCORES = {
    ("none", "t1"): [0.50, 0.60, 0.70, 0.80],
    ("a", "t1"): [0.70, 0.90, 0.80, 1.00],
    ("none", "t2"): [0.40, FAILED, 0.60, None],
    ("a", "t2"): [None, None, FAILED, None],
}


# dev sets: RTE 3 of 5 "entailment" (majority-class accuracy 0.6), CoLA 2 of 3 acceptable (2/3)
RTE_DEV = "index\tsentence1\tsentence2\tlabel\n" + "".join(
    f"{i}\tA.\tB.\t{lab}\n" for i, lab in enumerate(["entailment"] * 3 + ["not_entailment"] * 2)
)
COLA_DEV = "s\t1\t\tGood .\ns\t1\t\tFine .\ns\t0\t*\tBad bad .\n"


def write_result(root, run_id, value, **extra) -> None:
    res = (
        {"status": FAILED, "error": "x", "metrics": {}, "score": None}
        if value == FAILED
        else {
            "status": ResultStatus.DONE,
            "metrics": {"acc": value, "f1": value / 2},
            "primary_metric": "acc",
            "score": value,
            "error": None,
        }
    )
    (root / run_id / "result.json").write_text(json.dumps({**res, **extra}))


def target_runs(runs_dir) -> list[dict]:
    runs = json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)
    return sorted((r for r in runs if r["stage"] == "target"), key=lambda r: (r["seed"], r["params"]["lr"]))


def write_plan(tmp_path):
    for name, text in (("rte", RTE_DEV), ("cola", COLA_DEV)):
        write_text(tmp_path / "data" / name / "train.tsv", text)
        write_text(tmp_path / "data" / name / "dev.tsv", text)
    return write_text(tmp_path / "sc.toml", PLAN)


@pytest.fixture
def scored(tmp_path, runs_dir):
    plan = write_plan(tmp_path)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    targets = target_runs(runs_dir)
    for (inter, target), values in SCORES.items():
        cell = [r for r in targets if r["intermediate"] == inter and r["name"] == target]
        for r, v in zip(cell, values, strict=True):
            if v is not None:
                write_result(runs_dir, r["id"], v)
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
    assert 0 < lo < 0.20 < hi
    # paired by (seed, lr): differences .2 .3 .1 .2, all positive: only the all-+ and all-- sign patterns
    # reach |mean| >= .2, so the exact p is 2/16; the smallest p four pairs can give is 2/16 > 0.05
    assert (a.pairs, a.paired_gain, a.test) == (4, pytest.approx(0.2), "exact")
    assert a.p_value == pytest.approx(2 / 16) and a.min_p == pytest.approx(2 / 16)
    assert a.verdict == "too few pairs" and not a.gain_significant
    # failed runs: RTE's dev majority class scores 3/5; .5 and .6 (at, not only below) failed
    c = t.cell("none", "t1")
    assert (c.majority, c.failed, c.failed_rate, c.n_ok) == (pytest.approx(0.6), 2, 0.5, 2)
    assert c.mean_ok == pytest.approx(0.75) and c.std_ok == pytest.approx(0.05)
    assert (a.failed, a.mean_ok) == (0, pytest.approx(0.85))
    partial = t.cell("none", "t2")  # a failed run and a run without result: missing, not zero
    assert (partial.n, partial.missing) == (2, 2)
    assert partial.mean == pytest.approx(0.5) and partial.std == pytest.approx(0.1)
    assert partial.majority == pytest.approx(2 / 3) and (partial.failed, partial.mean_ok) == (2, None)
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
    s1 = t.cell("a", "t1", seed=1)  # pairs within seed 1: differences .2 and .3 -> p = 2/4
    assert (s1.pairs, s1.p_value, s1.verdict) == (2, pytest.approx(0.5), "too few pairs")
    out = cli("scores", "sc", "--by-seed", "--format", "md", runs_dir=scored)
    assert "| a (seed 1) | 80.0 ± 10.0 (+25.0, too few pairs) n=2 fail 0/2 |" in out.stdout
    f1 = results.build(scored, "sc", metric="f1")
    assert f1.cell("none", "t1").mean == pytest.approx(0.325) and f1.metrics["t1"] == "f1"


def test_csv_export_parses_back(scored):
    out = cli("scores", "sc", "--format", "csv", runs_dir=scored)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 4 and set(rows[0]) == set(results.CSV_FIELDS)
    row = next(r for r in rows if (r["intermediate"], r["target"]) == ("a", "t1"))
    assert float(row["mean"]) == pytest.approx(0.85) and float(row["std_ddof0"]) == pytest.approx(0.1118, abs=1e-4)
    assert float(row["gain"]) == pytest.approx(0.2) and row["gain_significant"] == "false"
    assert row["verdict"] == "too few pairs" and float(row["p_value"]) == pytest.approx(0.125)
    none = next(r for r in rows if (r["intermediate"], r["target"]) == ("none", "t1"))
    assert (none["failed"], none["failed_rate"], float(none["mean_without_failed"])) == ("2", "0.5", 0.75)
    empty = next(r for r in rows if (r["intermediate"], r["target"]) == ("a", "t2"))
    assert (empty["n"], empty["missing"], empty["mean"]) == ("0", "4", "")


def test_json_export_parses_back(scored, tmp_path):
    out = cli("scores", "sc", "--format", "json", "-o", str(tmp_path / "s.json"), runs_dir=scored)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["plan"] == "sc" and "ddof 0" in data["std"] and data["bootstrap"]["seed"] == 0
    cell = next(c for c in data["cells"] if (c["intermediate"], c["target"]) == ("none", "t2"))
    assert cell["values"] == [0.4, 0.6] and cell["missing"] == 2 and cell["std_ddof"] == 0
    none = next(c for c in data["cells"] if (c["intermediate"], c["target"]) == ("none", "t1"))
    assert none["mean"] == pytest.approx(0.65) and none["mean_without_failed"] == pytest.approx(0.75)
    assert (none["failed"], none["failed_rate"], none["majority_score"]) == (2, 0.5, pytest.approx(0.6))
    a = next(c for c in data["cells"] if (c["intermediate"], c["target"]) == ("a", "t1"))
    assert (a["p_value"], a["test"], a["verdict"], a["pairs"]) == (0.125, "exact", "too few pairs", 4)
    assert "majority-class" in data["failed_rule"] and "exact up to 16 pairs" in data["test"]


def test_markdown_export_row_by_row(scored):
    out = cli("scores", "sc", "--format", "md", runs_dir=scored)
    lines = out.stdout.splitlines()
    assert lines[0] == "| from \\ target | t1 (acc) | t2 (acc) |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| none | 65.0 ± 11.2 n=4 fail 2/4 | 50.0 ± 10.0 n=2/4 fail 2/2 |"
    assert lines[3] == "| a | 85.0 ± 11.2 (+20.0, too few pairs) n=4 fail 0/4 | missing 4 |"
    assert "ddof 0" in out.stdout and "majority-class" in out.stdout
    without = cli("scores", "sc", "--format", "md", "--without-failed", runs_dir=scored).stdout.splitlines()
    assert without[2] == "| none | 75.0 ± 5.0 n=4 fail 2/4 | – n=2/4 fail 2/2 |"


def test_latex_export_row_by_row(scored):
    out = cli("scores", "sc", "--format", "latex", runs_dir=scored)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("%") and "ddof 0" in lines[0]
    assert lines[1:4] == [r"\begin{tabular}{lcc}", r"\toprule", r"from & t1 (acc) & t2 (acc) \\"]
    assert lines[4] == r"\midrule"
    assert lines[5] == r"none & 65.0 $\pm$ 11.2 \tiny{n=4 fail 2/4} & 50.0 $\pm$ 10.0 \tiny{n=2/4 fail 2/2} \\"
    assert lines[6] == r"a & 85.0 $\pm$ 11.2 (+20.0, too few pairs) \tiny{n=4 fail 0/4} & missing 4 \\"
    assert lines[7:] == [r"\bottomrule", r"\end{tabular}"]


def test_figures_are_for_print_png_at_300_dpi_pdf_and_svg_vector(scored, tmp_path):
    from PIL import Image

    out = cli("scores", "sc", "--format", "png", "-o", str(tmp_path / "s.png"), runs_dir=scored)
    assert out.returncode == 0, out.stderr
    img = Image.open(tmp_path / "s.png")
    assert img.info["Description"] == "panels: 2" and round(img.info["dpi"][0]) == 300
    assert img.size[0] >= 1800 and img.size[1] >= 1100  # 6.2 x 3.8 in at 300 dpi (it was 640 x 360)
    assert cli("scores", "sc", "-o", str(tmp_path / "s.pdf"), runs_dir=scored).returncode == 0
    assert (tmp_path / "s.pdf").read_bytes()[:5] == b"%PDF-"
    assert cli("scores", "sc", "-o", str(tmp_path / "s.svg"), runs_dir=scored).returncode == 0
    svg = (tmp_path / "s.svg").read_text()
    # text stays text (editable in a paper): the legend, n and the gain over none of each distribution
    for text in ("one run", "mean", "majority class (runs on or below: failed)", "n=4", "+20.0", "t1</text>"):
        assert text in svg, text


def test_each_panel_shows_every_run_as_a_point_with_its_mean(scored):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results.build(scored, "sc")
    fig, ax = plt.subplots()
    results._panel(ax, t, "t2")  # none: 2 runs done (a one-run cell too shows its point); a: none done
    # both runs at or below CoLA's majority class (2/3): drawn as failed runs; the mean as a marker and bar
    points = {c.get_label(): len(c.get_offsets()) for c in ax.collections if c.get_label() in ("one run", "failed run")}
    assert points == {"failed run": 2}
    assert [c.get_label() for c in ax.containers] == ["mean ± std (std: 2 runs or more)"]
    assert [x.get_text() for x in ax.get_xticklabels()] == ["none\nn=2"]
    assert any(line.get_linestyle() == ":" for line in ax.get_lines())  # the majority-class line
    plt.close(fig)


def test_a_figure_without_matplotlib_is_exit_1_naming_the_extra(scored, tmp_path):
    """matplotlib missing: a failure of the installation (exit 1), with the extra that installs it."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.argv = ['stilts-tui', *sys.argv[1:]]; "
        "from stilts_tui.cli import main; main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "scores", "sc", "-o", str(tmp_path / "s.png")],
        capture_output=True,
        text=True,
        env={**os.environ, Env.RUNS_DIR: str(scored)},
    )
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "pip install 'stilts-tui[plot]'" in out.stderr and not (tmp_path / "s.png").exists()
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    demo = next(line for line in pyproject.splitlines() if line.startswith("demo = "))
    assert '"matplotlib' in demo  # the demo extra installs what the app offers


def test_the_score_table_and_the_estimates_import_no_plotting_statistics_or_training_library():
    """The package split keeps matplotlib (figure.py) and scipy (stats.py) inside the functions that draw
    and test: the app, the CLI and the queue's notifications import results without them."""
    heavy = ("matplotlib", "scipy", "torch", "transformers", "textual", "rich")
    code = (
        "import sys, stilts_tui.results, stilts_tui.estimate.cost, stilts_tui.estimate.walltime\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_table_prints_in_the_terminal(scored):
    out = cli("scores", str(scored.parent / "sc.toml"), runs_dir=scored, env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "65.0 ± 11.2 n=4 fail 2/4" in out.stdout and "too few pairs" in out.stdout and "ddof 0" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope",), "unknown plan 'nope'"),
        (("sc", "--metric", "bleu"), "--metric: 'bleu' is not in the runs' results (available: acc, f1)"),
        (("sc", "--format", "xls"), "--format: 'xls' is not one of"),
        (("sc", "--format", "png"), "--format png needs -o FILE.png"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(scored, args, message):
    out = cli("scores", *args, runs_dir=scored)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_no_finished_runs_is_one_line_and_exit_2(tmp_path, runs_dir):
    cli("queue", "add", str(write_plan(tmp_path)), runs_dir=runs_dir)
    out = cli("scores", "sc", runs_dir=runs_dir)
    assert out.returncode == 2 and out.stderr.strip().endswith("plan 'sc' has no finished target runs yet (16 queued)")


# ---- the paired statistics against hand-computed values ----------------------------------------


def test_exact_sign_flip_p_values_by_hand():
    # three positive differences: of the 8 sign patterns only +++ and --- reach |sum| >= .6 -> 2/8
    assert results.sign_flip_test([0.1, 0.2, 0.3]) == (pytest.approx(0.25), "exact")
    # .1 -.2 .3 .4 (sum .6): |sum| >= .6 for sums -1, -.8, -.6, .6, .8, 1 -> 6 of 16 patterns
    assert results.sign_flip_test([0.1, -0.2, 0.3, 0.4]) == (pytest.approx(6 / 16), "exact")
    assert results.sign_flip_test([0.1] * 6)[0] == pytest.approx(2 / 64)
    assert results.min_attainable_p([0.1] * 5) == pytest.approx(2 / 32)
    assert results.min_attainable_p([0.1, 0.0, 0.2]) == pytest.approx(2 / 4)  # a zero difference cannot flip


@pytest.mark.parametrize(
    "d",
    [
        [0.02, -0.01, 0.03, 0.05, -0.02, 0.04, 0.01, 0.03, -0.03, 0.02],  # many tied sums (scores in steps of 1/100)
        [0.1, 0.1, 0.1, -0.1, 0.2, 0.0, 0.3],
        list(np.random.default_rng(3).normal(0.01, 0.03, 16)),
    ],
)
def test_the_exact_test_agrees_with_scipy_permutation_test(d):
    from scipy import stats

    ref = stats.permutation_test(
        (np.asarray(d),), np.mean, permutation_type="samples", n_resamples=2**16, vectorized=True
    )
    assert results.sign_flip_test(d) == (pytest.approx(ref.pvalue), "exact")


def test_monte_carlo_beyond_sixteen_pairs_is_seeded():
    d = [0.01 * (i + 1) for i in range(20)]  # all positive: the exact p would be 2/2^20
    p, how = results.sign_flip_test(d)
    assert how == "monte carlo" and p == results.sign_flip_test(d)[0]
    assert p <= 3 / (results.MC_RESAMPLES + 1)  # (hits + 1) / (N + 1), hits ~ N * 2^-19


def test_paired_bootstrap_by_hand():
    # two pairs: resampled means are .1, .2, .3 with probabilities 1/4, 1/2, 1/4 -> 2.5% and 97.5%: .1 and .3
    assert results.paired_bootstrap([0.1, 0.3]) == (pytest.approx(0.1), pytest.approx(0.3))
    assert results.paired_bootstrap([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.2))
    assert results.paired_bootstrap([0.2]) is None and results.sign_flip_test([0.2]) == (1.0, "exact")


def _cell(values: dict, inter: str = "a") -> results.Cell:
    return results.Cell(inter, "t", None, len(values), 0, list(values.values()), keyed=values)


def test_a_cell_is_marked_only_when_its_pairs_can_reach_the_level():
    base = _cell({(s, "{}"): 0.5 for s in range(6)}, "none")
    six = _cell({(s, "{}"): 0.5 + 0.01 * (s + 1) for s in range(6)})
    results.paired(six, base, alpha=0.05)
    assert (six.p_value, six.verdict, six.gain_significant) == (pytest.approx(2 / 64), "significant", True)
    five = _cell({(s, "{}"): 0.6 for s in range(5)})
    results.paired(five, base, alpha=0.05)  # every difference +.1, yet 2/32 > 0.05: the test cannot say
    assert (five.pairs, five.verdict, five.gain_significant) == (5, "too few pairs", False)
    results.paired(five, base, alpha=0.1)
    assert five.verdict == "significant"
    mixed = _cell(
        {
            (0, "{}"): 0.6,
            (1, "{}"): 0.4,
            (2, "{}"): 0.55,
            (3, "{}"): 0.45,
            (4, "{}"): 0.6,
            (5, "{}"): 0.52,
            (9, "{}"): 0.9,
        }
    )  # seed 9 has no "none" run: not a pair
    results.paired(mixed, base, alpha=0.05)
    assert mixed.pairs == 6 and mixed.verdict == "not significant" and mixed.min_p == pytest.approx(2 / 64)
    mixed.keyed[(5, "{}")] = 0.5  # a zero difference cannot change sign: 5 pairs that count, 2/32 > 0.05
    results.paired(mixed, base, alpha=0.05)
    assert mixed.min_p == pytest.approx(2 / 32) and mixed.verdict == "too few pairs"


# ---- setups, damaged results, -o -------------------------------------------------------------------


def test_cells_mixing_training_setups_are_marked(scored):
    cell = [r for r in target_runs(scored) if (r["intermediate"], r["name"]) == ("a", "t1")]
    for r, (v, precision) in zip(cell, [(0.7, "fp32"), (0.9, "bf16"), (0.8, "fp32"), (1.0, "fp32")], strict=True):
        write_result(scored, r["id"], v, setup={"precision": precision, "batching": "random", "fused": 0})
    t = results.build(scored, "sc")
    # the plan asks for fp32 (the default): a bf16 run both mixes the cell and differs from the plan
    note = "precision bf16/fp32; not as the plan asked: precision fp32->bf16"
    assert t.cell("a", "t1").setup_note == note and t.cell("none", "t1").setup_note is None
    md = cli("scores", "sc", "--format", "md", runs_dir=scored).stdout
    assert "| a | 85.0* ± 11.2" in md
    assert f"cells marked * mix training setups or data: a -> t1: {note}" in md


def test_cells_whose_runs_trained_on_different_data_are_marked(scored):
    cell = [r for r in target_runs(scored) if (r["intermediate"], r["name"]) == ("a", "t1")]
    same = {"train": {"kind": "files", "fingerprint": "sha256:aaaa"}, "dev": {"fingerprint": "sha256:dddd"}}
    other = {"train": {"kind": "hub", "fingerprint": "sha256:bbbb"}, "dev": {"fingerprint": "sha256:dddd"}}
    for r, data in zip(cell, [same, same, other, same], strict=True):
        write_result(scored, r["id"], 0.8, data=data)
    t = results.build(scored, "sc")
    note = "data differs between its runs (2 versions: sha256:aaaa/sha256:dddd, sha256:bbbb/sha256:dddd)"
    assert t.cell("a", "t1").setup_note == note
    for r in cell:  # the same data everywhere: no mark
        write_result(scored, r["id"], 0.8, data=same)
    assert results.build(scored, "sc").cell("a", "t1").setup_note is None
    for r, data in zip(cell, [same, same, other, same], strict=True):
        write_result(scored, r["id"], 0.8, data=data)
    md = cli("scores", "sc", "--format", "md", runs_dir=scored).stdout
    assert "| a | 80.0* ± 0.0" in md and f"a -> t1: {note}" in md


def test_damaged_results_are_missing_not_a_crash(scored):
    cell = [r for r in target_runs(scored) if (r["intermediate"], r["name"]) == ("a", "t1")]
    write_result(scored, cell[0]["id"], 0.7, score="0.7")  # a string score
    (scored / cell[1]["id"] / "result.json").write_text("[1, 2]")  # JSON, but not an object
    write_result(scored, cell[2]["id"], 0.8, score=float("nan"))
    out = cli("scores", "sc", "--format", "md", runs_dir=scored)
    assert out.returncode == 0, out.stderr
    assert "| a | 100.0 (+35.0, too few pairs) n=1/4 fail 0/1 |" in out.stdout.splitlines()[3]


def test_png_goes_to_exactly_the_path_given(scored, tmp_path):
    out = cli("scores", "sc", "--format", "png", "-o", str(tmp_path / "fig"), runs_dir=scored)
    assert out.returncode == 0 and out.stderr.strip() == f"wrote {tmp_path / 'fig'}"
    assert (tmp_path / "fig").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "fig.png").exists()
    out = cli("scores", "sc", "-o", str(tmp_path / "t.tex"), runs_dir=scored)  # the format from the extension
    assert out.returncode == 0 and (tmp_path / "t.tex").read_text().startswith("%")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--format", "png", "-o", "{tmp}/x.pdf"), "-o {tmp}/x.pdf: the extension '.pdf' does not match --format png"),
        (("-o", "{tmp}/x.xls"), "-o {tmp}/x.xls: name the format with --format"),
        (("--format", "csv", "-o", "{tmp}/old.csv"), "-o {tmp}/old.csv: the file exists; add --force to overwrite it"),
        (("--format", "csv", "-o", "{tmp}"), "is a directory"),
    ],
)
def test_bad_output_is_one_line_and_exit_2_and_nothing_is_written(scored, tmp_path, args, message):
    (tmp_path / "old.csv").write_text("keep me")
    out = cli("scores", "sc", *(a.format(tmp=tmp_path) for a in args), runs_dir=scored)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message.format(tmp=tmp_path) in out.stderr
    assert (tmp_path / "old.csv").read_text() == "keep me" and not (tmp_path / "x.pdf").exists()
    forced = cli("scores", "sc", "--format", "csv", "-o", str(tmp_path / "old.csv"), "--force", runs_dir=scored)
    assert forced.returncode == 0 and (tmp_path / "old.csv").read_text().startswith("intermediate,")


def test_an_export_keeps_the_mode_of_the_file_it_replaces_and_a_new_one_gets_the_umasks(scored, tmp_path):
    old = tmp_path / "old.md"
    old.write_text("keep my mode")
    os.chmod(old, 0o644)
    assert cli("scores", "sc", "-o", str(old), "--force", runs_dir=scored).returncode == 0
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o644 and old.read_text().startswith("|")
    os.chmod(old, 0o640)
    assert cli("scores", "sc", "-o", str(old), "--force", runs_dir=scored).returncode == 0
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o640
    umask = os.umask(0o022)
    os.umask(umask)
    new = tmp_path / "new.json"
    assert cli("scores", "sc", "-o", str(new), runs_dir=scored).returncode == 0
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o666 & ~umask  # as a plain open() would make it, not 0600


def test_a_full_device_is_one_line_and_exit_1(scored):
    out = cli("scores", "sc", "--format", "csv", "-o", "/dev/full", runs_dir=scored)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "stilts-tui: error: cannot write /dev/full: No space left on device"


def test_export_paths_stay_in_the_runs_dir_whatever_the_plan_name(tmp_path):
    for name in ("../../x", "/etc/passwd", "..", "a/b\x1b[31m", "\n", "ok-name.v2"):
        path = results.export_path(tmp_path, name, "md")
        assert path.parent == (tmp_path / "exports").resolve() and path.name.endswith(".md")
        assert not path.name.startswith(".")
    assert results.export_path(tmp_path, "ok-name.v2", "latex").name == "ok-name.v2.tex"


async def test_the_app_exports_inside_the_runs_dir_whatever_the_plan_name(scored, tmp_path):
    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.screens.scores import ScoresScreen

    async with StiltsApp(scored, keymap={}).run_test(size=(170, 40)) as pilot:
        await pilot.pause()
        await pilot.press("o")
        screen = pilot.app.screen
        assert isinstance(screen, ScoresScreen)
        await until(pilot, lambda: screen.table_data, "the score table", 20)
        screen.table_data.plan = "../../escape"  # what an unchecked plan name would make of the path
        screen.export("md")
        for _ in range(300):  # the export written
            await pilot.pause(0.02)
            if (scored / "exports").is_dir() and any((scored / "exports").iterdir()):
                break
    written = list((scored / "exports").iterdir())
    assert [p.name for p in written] == ["_.._escape.md"] and "| none |" in written[0].read_text()
    assert not list(tmp_path.parent.glob("escape*")) and not list(tmp_path.glob("escape*"))
