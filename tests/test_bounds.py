"""One table of bounds (issue 38, must-show 3; items 8 and "bad values accepted"): every daemon flag, cost
flag and plan value is held to stilts_tui/bounds.py's table, in ASCII digits only, with sensible maxima and
the cross-field rule of stop_degenerate; each refusal is one line and exit status 2, and nothing is started."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import cli, write_text

from stilts_tui.bounds import BOUNDS
from stilts_tui.contract import EXIT_BAD_INPUT
from stilts_tui.queue import settings

HUGE = "1" + "0" * 400  # 10^400


def assert_one_line(out, *needles: str) -> str:
    assert out.returncode == EXIT_BAD_INPUT, (out.stdout, out.stderr[-800:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-800:]
    assert lines[0].startswith("stilts-tui: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpu-slots", "100000000000000000000"], "--cpu-slots: expected an integer >= 1 and <= 1024"),
        (["--cpu-slots", "-1"], "--cpu-slots: expected an integer >= 1"),
        (["--worker-runs", "100000000000000000000"], "--worker-runs: expected an integer >= 1"),
        (["--per-gpu", "-1"], "--per-gpu: expected an integer >= 1 and <= 64"),
        (["--per-gpu", "\u0663"], "--per-gpu: expected"),  # an Arabic-Indic 3: int() takes it
        (["--max-retries", "-1"], "--max-retries: expected an integer >= 0 and <= 100"),
        (["--max-retries", "100000000000000000000"], "--max-retries: expected an integer >= 0"),
        (["--executor", "slurm", "--max-jobs", "-1"], "--max-jobs: expected an integer >= 1"),
        (["--gpus", "-1"], "--gpus: expected indices like 0,1"),
        (["--gpus", HUGE], "--gpus: expected indices like 0,1"),
        (["--gpus", "0,0,0"], "--gpus: GPU 0 is listed twice"),
        (["--gpus", "\u0663"], "--gpus: expected indices like 0,1"),  # shown as [3] by `daemon status` before
        (["--fuse", "\u00b9"], "--fuse: expected off, auto or an array size"),  # isdigit() true, int() fails
        (["--fuse", HUGE], "--fuse: expected off, auto or an array size"),
        (["--interval", "\u0663"], "--interval: expected seconds between"),
    ],
)
def test_daemon_start_refuses_each_value_out_of_the_table_in_one_line_and_starts_nothing(args, needle, runs_dir):
    out = cli("daemon", "start", *args, runs_dir=runs_dir)
    line = assert_one_line(out, needle)
    assert "\u0663" not in line and "\u00b9" not in line  # the value is shown escaped
    assert not (runs_dir / "daemon.json").exists()
    status = cli("daemon", "status", runs_dir=runs_dir)
    assert status.returncode == 0 and "no daemon is running" in status.stdout


@pytest.mark.parametrize(
    ("flag", "value"), [("--per-gpu", "\u0663"), ("--cpu-slots", "-1"), ("--max-retries", "101"), ("--gpus", "1,1")]
)
def test_the_daemon_started_by_hand_reads_the_same_table(flag, value, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "stilts_tui.queue.daemon", "--runs-dir", str(tmp_path), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line(out, flag)
    assert not (tmp_path / "daemon.json").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["queue", "add", "PLAN", "--priority", "1" + "0" * 400], "--priority: expected an integer >= -1000000"),
        (["queue", "add", "PLAN", "--priority", "\u0663"], "--priority: expected an integer"),
        (["queue", "add", "PLAN", "--max-runs", "0"], "--max-runs: expected an integer >= 1"),
        (["queue", "priority", "1" + "0" * 30, "abc"], "priority: expected an integer"),
        (["queue", "cancel", "abc", "--grace", "1e400"], "--grace: expected a number >= 0 and <= 3600"),
        (["queue", "cancel", "abc", "--grace", "-1"], "--grace: expected a number >= 0"),
        (["daemon", "stop", "--wait", "nan"], "--wait: expected a number >= 0 and <= 3600"),
        (["plan", "rehearse", "PLAN", "--examples", "\u00b9"], "--examples: expected an integer >= 1"),
        (["plan", "rehearse", "PLAN", "--timeout", "1e308"], "--timeout: expected a number >= 1"),
        (["scores", "PLAN", "--alpha", "1"], "--alpha: expected a number > 0 and < 1"),
        (["rank", "PLAN", "--examples", "1" + "0" * 20], "--examples: expected an integer >= 2"),
        (["tasks", "show", "rte", "-n", "-3"], "-n: expected an integer >= 1"),
        (["tasks", "show", "rte", "--max-len", "\u0663\u0663"], "--max-len: expected an integer >= 8"),
        (["tasks", "check", "PLAN", "--max-runs", "1e9"], "--max-runs: expected an integer >= 1"),
    ],
)
def test_every_other_commands_number_is_read_through_the_table(args, needle, tmp_path, runs_dir):
    """Issue 38, must-show 3: typer's own int and float took an Arabic-Indic digit, 10^400 or nan; every
    number on every command line is read through the one table (ASCII digits, finite, in bounds) and a
    value out of it is one line naming the option, exit 2, with nothing done (no ledger made)."""
    plan = write_text(tmp_path / "p.toml", PLAN.format(extra=""))
    out = cli(*[str(plan) if a == "PLAN" else a for a in args], runs_dir=runs_dir)
    line = assert_one_line(out, needle)
    assert "\u0663" not in line and "\u00b9" not in line  # the value is shown escaped
    assert not (runs_dir / "ledger.json").exists()


PLAN = """name = "p"
model = "roberta-large"
baseline = true

[defaults]
epochs = 3

[target.rte]
task = "rte"
{extra}
"""


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cpu-slots", HUGE), ("--fuse", HUGE), ("--per-gpu", "\u0663"), ("--worker-runs", "0"), ("--fuse", "1")],
)
def test_plan_show_cost_flags_are_held_to_the_daemons_bounds(flag, value, tmp_path, runs_dir):
    plan = write_text(tmp_path / "p.toml", PLAN.format(extra=""))
    out = cli("plan", "show", str(plan), "--cost", flag, value, runs_dir=runs_dir)
    name = flag[2:].replace("-", "_")
    assert_one_line(out, f"{flag}: expected {BOUNDS[name].what}")


@pytest.mark.parametrize(
    ("extra", "key", "needle"),
    [
        ('method = "lora"\nlora = { alpha = 1e308 }', "target.rte.lora.alpha", BOUNDS["lora.alpha"].what),
        ("weight_decay = 1e308", "target.rte.weight_decay", BOUNDS["weight_decay"].what),
        ("epochs = 2\nstop_degenerate = { after_epochs = 3 }", "target.rte.stop_degenerate", "could never stop"),
        ("epochs = 2\nstop_degenerate = { patience = 5 }", "target.rte.stop_degenerate", "train 2 epochs"),
        # after_epochs 2, patience 2: the earliest stop is epoch 3; the grid's 2-epoch runs could never stop
        (
            "stop_degenerate = { after_epochs = 2, patience = 2 }\ngrid = { epochs = [2, 5] }",
            "target.rte.stop_degenerate",
            "at epoch 3 at the earliest",
        ),
    ],
)
@pytest.mark.parametrize("command", [("plan", "validate"), ("queue", "add")])
def test_a_plan_value_out_of_the_table_or_a_stop_beyond_the_epochs_is_refused(
    extra, key, needle, command, tmp_path, runs_dir
):
    plan = write_text(tmp_path / "p.toml", PLAN.format(extra=extra))
    out = cli(*command, str(plan), runs_dir=runs_dir)
    assert_one_line(out, f"key '{key}'", needle)
    assert list(runs_dir.iterdir()) == []


def test_a_stop_rule_in_defaults_is_held_to_each_stages_epochs(tmp_path, runs_dir):
    text = PLAN.format(extra="epochs = 1").replace("epochs = 3", "epochs = 3\nstop_degenerate = { patience = 2 }")
    out = cli("plan", "validate", str(write_text(tmp_path / "p.toml", text)), runs_dir=runs_dir)
    assert_one_line(out, "key 'defaults.stop_degenerate'", "[target.rte] train 1 epoch:")


def test_values_at_the_edges_of_the_table_are_accepted(tmp_path, runs_dir):
    extra = 'method = "lora"\nlora = { alpha = 65536 }\nstop_degenerate = { after_epochs = 2, patience = 2 }'
    plan = write_text(tmp_path / "p.toml", PLAN.format(extra=extra))
    out = cli("plan", "validate", str(plan), runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr
    out = cli("plan", "show", str(plan), "--cost", "--fuse", "1024", "--cpu-slots", "1024", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("flag", "value"), [("--n", "\u0663"), ("--seed", "-1"), ("--temperature", "1e400")])
def test_the_synth_command_reads_the_plans_synth_bounds_in_ascii_digits(flag, value, tmp_path):
    out = cli("synth", "--out", str(tmp_path / "o"), "--corpus", "squad", flag, value)
    key = "synth." + flag[2:].replace("-", "_")
    assert_one_line(out, f"{flag}: expected {BOUNDS[key].what}")
    assert not (tmp_path / "o").exists()


def test_plan_show_cost_holds_a_hand_edited_daemon_json_to_the_table(tmp_path, runs_dir, queue_env):
    """The running daemon's settings fill in the cost flags not given: daemon.json is a file on disk, so
    its values are held to the same table (10^400 processes a device overflowed the wall-time estimate)."""
    import json

    from conftest import start

    assert cli("queue", "pause", runs_dir=runs_dir, env=queue_env).returncode == 0
    start(runs_dir, queue_env)
    info = json.loads((runs_dir / "daemon.json").read_text())
    info["settings"].update(per_gpu=10**400, cpu_slots=10**400, worker_runs=-5)
    (runs_dir / "daemon.json").write_text(json.dumps(info))
    plan = write_text(tmp_path / "p.toml", PLAN.format(extra=""))
    out = cli("plan", "show", str(plan), "--cost", "--json", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-800:]
    box = json.loads(out.stdout)["cost"]["wall"]["box"]
    defaults = settings.DEFAULTS  # two fake GPUs train on the CPU, --per-gpu processes each (its default)
    assert box["slots"] == 2 * defaults.per_gpu and box["worker_runs"] == defaults.worker_runs
