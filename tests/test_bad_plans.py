"""Every bad-plan case gets one clear line naming file and key, exit status 2, no traceback."""

from __future__ import annotations

import pytest
from conftest import cli, write_text

GOOD = """name = "p"
model = "roberta-large"
target_seeds = [1]

[defaults]
lr = 1e-5

[synth.syn]
n = 10

[intermediate.inter]
task = "synth:syn"

[target.rte]
task = "rte"
epochs = 2
grid = { lr = [1e-5, 2e-5] }
"""

CASES = {
    # case: (text replacement, what the message must name, line number or None)
    "toml-syntax": (("epochs = 2", "epochs = = 2"), "TOML syntax error", 16),
    "unknown-task": (('task = "rte"', 'task = "rtee"'), "key 'target.rte.task': unknown task 'rtee'", 15),
    "unknown-key": (("epochs = 2", "epoch = 2"), "key 'target.rte.epoch': unknown key", 16),
    "wrong-type": (("epochs = 2", 'epochs = "two"'), "key 'target.rte.epochs': expected an integer", 16),
    "out-of-range": (("lr = 1e-5\n", "lr = -1e-5\n"), "key 'defaults.lr': expected a number > 0", 6),
    "bad-grid-value": (("[1e-5, 2e-5]", "[1e-5, 2.0]"), "key 'target.rte.grid.lr': expected values", 17),
    "empty-grid": (("[1e-5, 2e-5]", "[]"), "key 'target.rte.grid.lr': expected a non-empty list", 17),
    "unknown-grid-key": (("grid = { lr", "grid = { lrate"), "key 'target.rte.grid.lrate': unknown", 17),
    "missing-synth": (('"synth:syn"', '"synth:nope"'), "key 'intermediate.inter.task': no [synth.nope]", 12),
    "missing-name": (('name = "p"\n', ""), "key 'name': is required", None),
    "no-target": (
        ('[target.rte]\ntask = "rte"\nepochs = 2\ngrid = { lr = [1e-5, 2e-5] }\n', ""),
        "key 'target': a plan needs at least one",
        None,
    ),
    "bad-stage-name": (("[target.rte]", '[target."../x"]'), "key 'target.../x'", None),
    "no-starting-point": (
        (
            "target_seeds = [1]\n\n[defaults]\nlr = 1e-5\n\n[synth.syn]\nn = 10\n\n"
            '[intermediate.inter]\ntask = "synth:syn"\n',
            "target_seeds = [1]\nbaseline = false\n\n[defaults]\nlr = 1e-5\n",
        ),
        "key 'baseline': with baseline = false and no [intermediate.NAME] stage",
        None,
    ),
    "bad-seeds": (("target_seeds = [1]", 'target_seeds = ["a"]'), "key 'target_seeds': expected", 3),
    "slurm-time": (
        ("target_seeds = [1]\n", 'target_seeds = [1]\n[slurm]\ntime = "soon"\n'),
        "key 'slurm.time': expected a time limit",
        5,
    ),
    "slurm-managed-flag": (
        ("target_seeds = [1]\n", 'target_seeds = [1]\n[slurm]\nsbatch_args = ["--output=/x"]\n'),
        "key 'slurm.sbatch_args': expected a list of",
        5,
    ),
    "slurm-abbreviated-managed-flag": (
        ("target_seeds = [1]\n", 'target_seeds = [1]\n[slurm]\nsbatch_args = ["--depend=afterok:1"]\n'),
        "key 'slurm.sbatch_args': expected a list of",
        5,
    ),
    "slurm-unknown-key": (
        ("target_seeds = [1]\n", 'target_seeds = [1]\n[slurm]\npartitions = "gpu"\n'),
        "key 'slurm.partitions': unknown key",
        5,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", [("plan", "validate"), ("plan", "show"), ("queue", "add")])
def test_bad_plan_gives_one_line_and_exit_2(case, command, tmp_path, runs_dir):
    (old, new), expected, line = CASES[case]
    assert old in GOOD
    path = write_text(tmp_path / "bad.toml", GOOD.replace(old, new, 1))
    out = cli(*command, str(path), runs_dir=runs_dir)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert str(path) + (f":{line}:" if line else ":") in lines[0]
    assert expected in lines[0]


def test_the_good_plan_is_valid(tmp_path):
    out = cli("plan", "validate", str(write_text(tmp_path / "good.toml", GOOD)))
    assert out.returncode == 0, out.stderr
    assert "6 runs (1 synth, 1 intermediate, 4 target)" in out.stdout


def test_missing_plan_file(tmp_path):
    out = cli("plan", "validate", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and out.stderr.strip().endswith("nope.toml: plan file not found")


def test_missing_data_file_warns_in_validate_and_fails_queue_add(tmp_path, runs_dir):
    text = GOOD.replace('task = "rte"\n', 'task = "rte"\ndata_dir = "data/rte"\n')
    path = write_text(tmp_path / "p.toml", text)
    ok = cli("plan", "validate", str(path), runs_dir=runs_dir)
    assert ok.returncode == 0 and "warning:" in ok.stderr and "data/rte/train.tsv" in ok.stderr
    shown = cli("plan", "show", str(path), runs_dir=runs_dir)
    assert shown.returncode == 0 and "data file not found" in shown.stderr
    bad = cli("queue", "add", str(path), runs_dir=runs_dir)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "[target.rte] data file not found" in bad.stderr and "train.tsv" in bad.stderr
    assert not (runs_dir / "ledger.json").exists()  # nothing queued


def test_a_bad_plan_leaves_the_ledger_as_it_was(tmp_path, runs_dir):
    good = write_text(tmp_path / "good.toml", GOOD)
    assert cli("queue", "add", str(good), runs_dir=runs_dir).returncode == 0
    before = (runs_dir / "ledger.json").read_bytes()
    bad = write_text(tmp_path / "good.toml", GOOD.replace("epochs = 2", "epochs = 0"))
    out = cli("queue", "add", str(bad), runs_dir=runs_dir)
    assert out.returncode == 2 and "key 'target.rte.epochs'" in out.stderr
    assert (runs_dir / "ledger.json").read_bytes() == before


def test_bad_run_id_never_becomes_a_path():
    from stilts_tui.errors import UserError
    from stilts_tui.store import rundir

    for bad in ("../etc", "/tmp/x", "abc", "ABCDEF012345", "0123456789ab/.."):
        with pytest.raises(UserError):
            rundir.run_dir("/tmp/runs", bad)
    assert str(rundir.run_dir("/tmp/runs", "0123456789ab")) == "/tmp/runs/0123456789ab"


def test_bad_slurm_settings_on_the_command_line_are_one_line_and_exit_2(runs_dir):
    for args, needle in (
        (["--time", "soon"], "--time: expected a time limit"),
        (["--sbatch-arg", "--output=/etc/passwd"], "--sbatch-arg: expected a list"),
        (["--sbatch-arg", "; rm -rf /"], "--sbatch-arg: expected a list"),
        (["--mem", "lots"], "--mem: expected a memory size"),
        (["--partition", "a b"], "--partition: expected a partition name"),
        (["--cpus-per-run", "0"], "--cpus-per-run: expected an integer >= 1"),
    ):
        out = cli("daemon", "start", "--executor", "slurm", *args, runs_dir=runs_dir)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1
    out = cli("daemon", "start", "--partition", "gpu", runs_dir=runs_dir)
    assert out.returncode == 2 and "needs --executor slurm" in out.stderr
    assert not (runs_dir / "daemon.json").exists()  # no daemon started
