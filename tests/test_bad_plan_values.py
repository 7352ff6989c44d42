"""Odd plan values and plan files (issue 14): each refused by `plan validate` and `queue add` in one
line naming the key, exit status 2, before anything is written to the runs-dir."""

from __future__ import annotations

import os
import time

import pytest
from conftest import cli, write_text

from stilts_tui.contract import Env

GOOD = """name = "p"
model = "roberta-large"
target_seeds = [1, 2]

[defaults]
weight_decay = 0.0

[intermediate.inter]
task = "hellaswag"
seeds = [42]

[target.rte]
task = "rte"
epochs = 2
grid = { lr = [1e-5, 2e-5] }
"""

CASES = {
    # case: (text replacement, the key named, what else the line says)
    "plan-name-escapes": (('name = "p"', 'name = "../../x"'), "key 'name'", "without '..'"),
    "plan-name-newline": (('name = "p"', 'name = "a\\nb"'), "key 'name'", "'a\\nb'"),
    "plan-name-escape-byte": (('name = "p"', 'name = "a\\u001b[31mred"'), "key 'name'", "\\x1b"),
    "plan-name-slash": (('name = "p"', 'name = "a/b"'), "key 'name'", "names are"),
    "stage-name-dots": (("[target.rte]", '[target."a..b"]'), "key 'target.a..b'", "without '..'"),
    "duplicate-target-seeds": (("target_seeds = [1, 2]", "target_seeds = [1, 1]"), "key 'target_seeds'", "distinct"),
    "duplicate-stage-seeds": (("seeds = [42]", "seeds = [42, 42]"), "key 'intermediate.inter.seeds'", "distinct"),
    "duplicate-grid-value": (("[1e-5, 2e-5]", "[1e-5, 0.00001]"), "key 'target.rte.grid.lr'", "listed twice"),
    "int-above-int64": (("epochs = 2", "epochs = 9223372036854775808"), "key 'target.rte.epochs'", "out of range"),
    "seed-above-int64": (
        ("seeds = [42]", "seeds = [99999999999999999999]"),
        "key 'intermediate.inter.seeds'",
        "out of range",
    ),
    "weight-decay-inf": (("weight_decay = 0.0", "weight_decay = inf"), "key 'defaults.weight_decay'", "finite"),
    "weight-decay-nan": (("weight_decay = 0.0", "weight_decay = nan"), "key 'defaults.weight_decay'", "finite"),
    "lr-inf-in-grid": (("[1e-5, 2e-5]", "[1e-5, inf]"), "key 'target.rte.grid.lr'", "finite"),
    "nested-deep": (("epochs = 2", "epochs = " + "[" * 40 + "]" * 40), "key 'target.rte.epochs'", "nested more than"),
    "nested-very-deep": (("epochs = 2", "epochs = " + "[" * 100_000 + "]" * 100_000), "", "nested too deeply"),
    "synth-without-dev": (
        ('[intermediate.inter]\ntask = "hellaswag"', '[synth.s]\ndev = 0\n[intermediate.inter]\ntask = "synth:s"'),
        "key 'intermediate.inter.task'",
        "no dev split: [synth.s] dev = 0 writes no SynGPT2_dev.jsonl",
    ),
    "bad-batching": (
        ("weight_decay = 0.0", 'weight_decay = 0.0\nbatching = "sorted"'),
        "key 'defaults.batching'",
        'one of "random", "grouped"',
    ),
    "bad-clip": (("epochs = 2", 'epochs = 2\nclip = "always"'), "key 'target.rte.clip'", '"micro_batch"'),
    "bad-fuse": (("epochs = 2", 'epochs = 2\nfuse = "yes"'), "key 'target.rte.fuse'", "true or false"),
    "bad-pad": (("epochs = 2", 'epochs = 2\npad = "none"'), "key 'target.rte.pad'", '"buckets"'),
    "bad-compile": (("epochs = 2", 'epochs = 2\ncompile = "fast"'), "key 'target.rte.compile'", '"inductor"'),
}


def assert_refused(out, path, key: str, needle: str, runs_dir) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr[-500:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-500:]
    assert lines[0].startswith(f"stilts-tui: error: {path}") and key in lines[0] and needle in lines[0], lines[0]
    assert "\x1b" not in out.stderr
    assert sorted(p.name for p in runs_dir.iterdir()) == []  # nothing written: no ledger, no run folder


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", [("plan", "validate"), ("queue", "add")])
def test_bad_value_is_refused_in_one_line_naming_the_key(case, command, tmp_path, runs_dir):
    (old, new), key, needle = CASES[case]
    assert old in GOOD
    path = write_text(tmp_path / "bad.toml", GOOD.replace(old, new, 1))
    assert_refused(cli(*command, str(path), runs_dir=runs_dir), path, key, needle, runs_dir)


def test_the_good_plan_is_valid_and_gets_the_reference_settings(tmp_path):
    from stilts_tui import plan as plans

    out = cli("plan", "validate", str(write_text(tmp_path / "good.toml", GOOD)))
    assert out.returncode == 0, out.stderr
    _, runs = plans.load_and_expand(tmp_path / "good.toml")
    p = runs[-1].params
    assert (p["precision"], p["batching"], p["pad"], p["clip"], p["fuse"]) == ("fp32", "random", "auto", "step", False)


@pytest.mark.parametrize("what", ["data_dir", "model"])
def test_a_symlink_loop_is_refused(what, tmp_path, runs_dir):
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    if what == "model":
        text, key = GOOD.replace('model = "roberta-large"', 'model = "loop-a"'), "key 'model'"
    else:
        text, key = GOOD.replace('task = "rte"', 'task = "rte"\ndata_dir = "loop-a"'), "key 'target.rte.data_dir'"
    path = write_text(tmp_path / "bad.toml", text)
    for command in (("plan", "validate"), ("queue", "add")):
        assert_refused(cli(*command, str(path), runs_dir=runs_dir), path, key, "cannot resolve the path", runs_dir)


def test_dev_zero_and_a_fifo_are_not_plans(tmp_path, runs_dir):
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        for command in (("plan", "validate"), ("queue", "add")):
            t0 = time.time()
            out = cli(*command, path, runs_dir=runs_dir, timeout=30)
            assert time.time() - t0 < 30
            assert_refused(out, path, "", "not a regular file", runs_dir)


BIG = """name = "big"
model = "roberta-large"
target_seeds = [{seeds}]
[target.rte]
task = "rte"
grid = {{ lr = [{lrs}], batch_size = [{bss}] }}
"""


def test_a_plan_of_a_million_runs_is_refused_at_once(tmp_path, runs_dir):
    text = BIG.format(
        seeds=", ".join(map(str, range(100))),
        lrs=", ".join(f"{i + 1}e-6" for i in range(100)),
        bss=", ".join(map(str, range(1, 101))),
    )
    path = write_text(tmp_path / "big.toml", text)
    for command in (("plan", "validate"), ("queue", "add")):
        t0 = time.time()
        out = cli(*command, str(path), runs_dir=runs_dir)
        assert time.time() - t0 < 20
        assert_refused(out, path, "key 'target'", "expands to 1,000,000 runs, more than the limit of 100,000", runs_dir)
        assert "--max-runs 1000000" in out.stderr


def test_the_run_limit_is_configurable_and_the_user_can_ask_for_more(tmp_path, runs_dir):
    path = write_text(tmp_path / "p.toml", BIG.format(seeds="1, 2", lrs="1e-5, 2e-5", bss="8, 16, 32"))  # 12 runs
    low = {Env.MAX_RUNS: "10"}
    assert_refused(
        cli("plan", "validate", str(path), env=low, runs_dir=runs_dir),
        path,
        "key 'target'",
        "expands to 12 runs, more than the limit of 10",
        runs_dir,
    )
    assert_refused(
        cli("queue", "add", str(path), env=low, runs_dir=runs_dir), path, "key 'target'", "limit of 10", runs_dir
    )
    ok = cli("plan", "validate", str(path), "--max-runs", "12", env=low, runs_dir=runs_dir)
    assert ok.returncode == 0 and "12 runs" in ok.stdout, ok.stderr
    assert cli("queue", "add", str(path), runs_dir=runs_dir).returncode == 0  # the default limit: 100,000


def test_a_local_only_task_without_files_is_named_with_its_missing_split(tmp_path, runs_dir):
    path = write_text(tmp_path / "p.toml", GOOD.replace('task = "rte"', 'task = "mednli"'))
    warned = cli("plan", "validate", str(path), runs_dir=runs_dir)
    assert warned.returncode == 0
    assert "[target.rte] task 'mednli' has no train split" in warned.stderr
    assert "[target.rte] task 'mednli' has no dev split" in warned.stderr and "set data_dir" in warned.stderr
    refused = cli("queue", "add", str(path), runs_dir=runs_dir)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "task 'mednli' has no train split" in refused.stderr
    assert list(runs_dir.iterdir()) == []


def test_an_interrupted_add_leaves_no_orphans_and_max_runs_lets_a_big_plan_in(tmp_path, small_plan):
    from conftest import cli

    from stilts_tui.store.ledger import Ledger

    runs_dir = tmp_path / "runs"
    plan = small_plan("[1e-5, 2e-5]")
    # an earlier add of an older version of the plan, killed after writing a folder and before the ledger
    orphan = runs_dir / "0123456789ab"
    orphan.mkdir(parents=True)
    (orphan / "spec.json").write_text('{"plan": "small", "run_id": "0123456789ab"}')
    (orphan / ".queued-by-stilts").write_text("0123456789ab\n")  # the mark `queue add` writes first
    ran = runs_dir / "ba9876543210"  # a folder where something ran is never removed
    ran.mkdir()
    (ran / "spec.json").write_text('{"plan": "small"}')
    (ran / "train.log").write_text("x")
    out = cli("queue", "add", str(plan), "--no-daemon", "--max-runs", "1000", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    ids = {r["id"] for r in Ledger(runs_dir).runs()}
    assert not orphan.exists() and ran.exists() and all((runs_dir / i / "spec.json").exists() for i in ids)
    out = cli("queue", "add", str(plan), "--no-daemon", "--max-runs", "3", runs_dir=runs_dir)
    assert out.returncode == 2 and "more than the limit of 3" in out.stderr and len(out.stderr.splitlines()) == 1
