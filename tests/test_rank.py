"""`stilts-tui rank`: LogME against the paper's algorithm on fixed matrices, and the real command on a
plan whose expected order is built into its data (a trained intermediate vs the untrained model)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import add, cli, make_plan, train, write_jsonl

from stilts_tui.contract import Status
from stilts_tui.estimate import predicted
from stilts_tui.store.ledger import Ledger
from stilts_tui.train import data
from stilts_tui.train.rank import logme, problem


def _evidence_direct(f: np.ndarray, y: np.ndarray) -> float:
    """Log evidence per example by the textbook formulas on the full matrices (no eigen-decomposition):
    fixed-point updates of alpha and beta (MacKay; the paper's Algorithm 1), then the evidence."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    ftf = f.T @ f
    for _ in range(11):
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, f.T @ y)
        gamma = d - alpha * np.trace(np.linalg.inv(a))
        new_alpha, new_beta = gamma / (m @ m + 1e-5), (n - gamma) / (((y - f @ m) ** 2).sum() + 1e-5)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
        alpha, beta = new_alpha, new_beta
        if done:
            break
    a = alpha * np.eye(d) + beta * ftf
    m = beta * np.linalg.solve(a, f.T @ y)
    value = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.linalg.slogdet(a)[1]
        - beta / 2 * ((y - f @ m) ** 2).sum()
        - alpha / 2 * (m @ m)
        - n / 2 * np.log(2 * np.pi)
    )
    return value / n


F = np.array([[1.0, 0.2], [0.9, -0.1], [-1.1, 0.3], [-0.8, -0.2], [1.2, 0.1], [-1.0, 0.0]])


def test_logme_is_the_papers_evidence_on_a_fixed_matrix():
    labels = np.array([1, 1, 0, 0, 1, 0])
    expected = np.mean([_evidence_direct(F, (labels == k).astype(float)) for k in (0, 1)])
    assert logme(F, labels) == pytest.approx(expected, rel=1e-9)
    y = np.array([0.5, 0.4, -0.6, -0.3, 0.7, -0.5])
    assert logme(F, y, regression=True) == pytest.approx(_evidence_direct(F, y), rel=1e-9)


def test_features_that_separate_the_labels_score_higher():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    separating = np.c_[labels * 2.0 - 1.0, rng.normal(size=(200, 3))] + rng.normal(scale=0.1, size=(200, 4))
    noise = rng.normal(size=(200, 4))
    assert logme(separating, labels) > logme(noise, labels) + 0.1


def test_multiple_choice_is_scored_as_one_binary_problem_a_choice():
    split = data.Split(np.zeros((3, 4, 5), dtype=np.int64), None, np.full(3, 5), np.array([2, 0, 3]), 1)
    rows, labels, regression = problem(split, "multiple_choice")
    assert len(rows) == 12 and not regression
    assert labels.tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1]


# ---- the command ------------------------------------------------------------------------------------

# on the tiny model, seeded on the CPU: the intermediate "learned" reaches dev acc 1.0 on this task (the
# target's own data), "stuck" stays at 0.5 and is never trained here (no checkpoint: not a starting point)
LEARNED = """[intermediate.learned]
task = "pair"
epochs = 3
batch_size = 4
warmup = 0.4
lr = 1e-2
"""  # also tests/test_pruned.py's best starting point
STAGES = (
    LEARNED
    + """[intermediate.stuck]
task = "pair"
lr = 1e-3
[target.t]
task = "pair"
"""
)


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s1 = " ".join(f"w{rng.randrange(100, 5000)}" for _ in range(5))
        s2 = " ".join(f"w{rng.randrange(100, 5000)}" for _ in range(4)) + (" w7" if i % 2 else " w8")
        out.append({"s1": s1, "s2": s2, "label": "same" if i % 2 else "different"})
    return out


@pytest.fixture
def ranked_plan(tmp_path, runs_dir, tiny_model, queue_env):
    plan = make_plan(tmp_path, tiny_model, STAGES, baseline=True)
    write_jsonl(tmp_path / "data/tr.jsonl", _rows(32, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", _rows(16, 2))
    runs = add(plan, runs_dir, queue_env)
    learned = next(r for r in runs if r["name"] == "learned")
    out = train([runs_dir / learned["id"]])
    assert out.returncode == 0, out.stderr
    return plan, learned["id"]


@pytest.mark.slow
def test_rank_puts_the_starting_point_whose_features_separate_the_labels_first(ranked_plan, runs_dir):
    plan, learned = ranked_plan
    out = cli("rank", str(plan), "--json", runs_dir=runs_dir, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["method"] == "LogME" and doc["examples"] == 2000 and doc["plan"] == "q"
    (t,) = doc["targets"]
    assert t["target"] == "t" and t["examples"] == 32  # fewer train examples than N: all of them
    assert [r["start"] for r in t["ranking"]] == ["learned", "none"]  # "stuck" has no checkpoint
    assert t["ranking"][0]["run_id"] == learned and t["ranking"][1]["run_id"] is None
    assert t["ranking"][0]["score"] > t["ranking"][1]["score"] and [r["rank"] for r in t["ranking"]] == [1, 2]
    assert "rank 1/2: t from none: LogME" in out.stderr and "rank 2/2: t from learned: LogME" in out.stderr

    again = cli("rank", "q", runs_dir=runs_dir)  # by the queued plan's name; from the cache: no scoring
    assert again.returncode == 0 and "rank 1/" not in again.stderr, again.stderr
    assert again.stdout.splitlines()[1].split() == ["1", "learned", f"{t['ranking'][0]['score']:.4f}"]

    cache = sorted((runs_dir / ".cache" / "rank").glob("*.json"))
    assert len(cache) == 2
    cache[0].write_text('{"method": "LogME", "score": "high"}')  # nothing read back is trusted
    third = cli("rank", str(plan), "--json", "--examples", "16", runs_dir=runs_dir, timeout=300)
    assert third.returncode == 0 and "rank 1/2" in third.stderr  # a new N: scored again, cached apart
    assert json.loads(third.stdout)["targets"][0]["examples"] == 16
    fourth = cli("rank", str(plan), "--json", runs_dir=runs_dir, timeout=300)
    assert fourth.returncode == 0 and "rank 1/1" in fourth.stderr  # only the damaged record is scored again
    assert json.loads(fourth.stdout) == doc
    assert Ledger(runs_dir).get(learned)["status"] == Status.QUEUED  # rank never touches the ledger
    # kept for the plan's score table: the newest ranking of each target (the one just asked)
    saved = predicted.from_saved(runs_dir, "q")["t"]
    assert saved.source == "stilts-tui rank" and saved.examples == 32
    assert saved.by_run == {learned: (1, t["ranking"][0]["score"]), None: (2, t["ranking"][1]["score"])}


def test_a_saved_ranking_that_is_damaged_is_no_ranking(runs_dir):
    doc = {"plan": "q", "method": "LogME", "targets": [{"target": "t", "examples": 8, "ranking": []}]}
    good = [{"rank": 1, "start": "none", "run_id": None, "score": 0.5}]
    doc["targets"][0]["ranking"] = good
    predicted.save(runs_dir, doc)
    assert predicted.from_saved(runs_dir, "q")["t"].by_run == {None: (1, 0.5)}
    assert predicted.from_saved(runs_dir, "other") == {}
    for bad in (
        [{"rank": "1", "start": "none", "run_id": None, "score": 0.5}],
        [{"rank": 1, "start": "none", "run_id": "../../etc", "score": 0.5}],
        [{"rank": 1, "start": "none", "run_id": None, "score": float("nan")}],
        [{"rank": 1, "start": "none", "run_id": None, "score": True}],
        "not a list",
    ):
        doc["targets"][0]["ranking"] = bad
        predicted.save(runs_dir, doc)
        assert predicted.from_saved(runs_dir, "q") == {}, bad
    (path,) = (runs_dir / predicted.SAVED_DIR).glob("plan-*.json")
    for text in ("{", "[]", '{"plan": "q", "targets": []}'):
        path.write_text(text)
        assert predicted.from_saved(runs_dir, "q") == {}
    doc["targets"][0]["ranking"] = good
    predicted.save(runs_dir, doc)  # a damaged file is replaced, never an error
    assert predicted.from_saved(runs_dir, "q")["t"].by_run == {None: (1, 0.5)}


def test_kendall_tau_of_the_predicted_and_measured_orders():
    assert predicted.kendall_tau([3, 2, 1], [0.9, 0.5, 0.1]) == 1.0
    assert predicted.kendall_tau([3, 2, 1], [0.1, 0.5, 0.9]) == -1.0
    assert predicted.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(2 / 3)
    assert predicted.kendall_tau([1.0], [2.0]) is None and predicted.kendall_tau([1, 1], [1, 2]) is None


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["nope"], "unknown plan 'nope'"),
        (["missing.toml"], "plan file not found"),
        (["{plan}", "--target", "x"], "--target: 'x' is not a target of plan 'q'"),
        (["{plan}", "--examples", "1"], "--examples: expected an integer >= 2"),
        (["{plan}", "--device", "tpu"], "--device: expected"),
    ],
)
def test_rank_refuses_bad_input_in_one_line(tmp_path, runs_dir, tiny_model, args, why):
    plan = make_plan(tmp_path, tiny_model, STAGES, baseline=True)
    out = cli("rank", *[a.format(plan=plan) for a in args], runs_dir=runs_dir)
    assert out.returncode == 2 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (runs_dir / ".cache").exists()


def test_rank_refuses_a_target_whose_data_is_missing_before_scoring(tmp_path, runs_dir, tiny_model):
    plan = make_plan(tmp_path, tiny_model, STAGES, baseline=True)
    (tmp_path / "data/tr.jsonl").unlink()
    out = cli("rank", str(plan), runs_dir=runs_dir)
    assert out.returncode == 2 and "[target.t] data file not found" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (runs_dir / ".cache").exists()
