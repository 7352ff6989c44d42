"""The daemon's flags are declared once (queue/settings.FLAGS): the daemon's argparse, the argv `daemon
start` starts it with and `daemon start`'s options all come from that table."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
import typer
from conftest import cli

from stilts_tui.contract import EXIT_BAD_INPUT
from stilts_tui.queue import daemon, settings


def _start_options() -> dict:
    from stilts_tui.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands["daemon"].commands["start"].params}


def test_every_setting_has_one_flag_and_both_command_lines_show_its_type_default_and_help():
    assert set(settings.FLAG) == {f.name for f in fields(settings.Settings)}
    options, parser = _start_options(), daemon.arg_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in settings.FLAGS:
        assert actions[f.name].help == f.help and f.option in actions[f.name].option_strings
        if not f.on_cli:
            assert f.name not in options  # `daemon start` builds it from its own options
            continue
        assert options[f.name].opts == [f.option] and options[f.name].help == f.help
        assert options[f.name].default == f.default == getattr(settings.DEFAULTS, f.name)


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"per_gpu": 2, "cpu_slots": 3, "worker_runs": 1, "max_retries": 0, "interval": 0.5, "fuse": "auto"},
        {"gpus": "0,1", "mps": True, "fuse": "3"},
        {"executor": "slurm", "max_jobs": 7, "slurm": {"partition": "gpu", "gpus": 2}},
    ],
)
def test_the_argv_a_client_builds_gives_the_daemon_exactly_the_settings_it_was_given(given, tmp_path):
    root, parsed = daemon.parse_settings(["--runs-dir", str(tmp_path), *settings.argv(given)])
    assert parsed == settings.from_arguments({**{f.name: f.default for f in settings.FLAGS}, **given})
    assert parsed.per_gpu == given.get("per_gpu", settings.DEFAULTS.per_gpu)
    assert parsed.gpus == ([0, 1] if "gpus" in given else None)


def test_the_argv_leaves_out_defaults_and_the_slurm_cap_on_the_local_executor():
    assert settings.argv({"per_gpu": 4, "mps": False}) == []
    assert settings.argv({"max_jobs": 5}) == []  # only the Slurm executor submits jobs
    assert settings.argv({"max_jobs": 5, "executor": "slurm"}) == ["--executor", "slurm", "--max-jobs", "5"]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--per-gpu", "0", "--per-gpu: expected an integer >= 1 and <= 64, got 0"),
        ("--worker-runs", "-1", "--worker-runs: expected an integer >= 1 and <= 100000, got -1"),
        ("--max-jobs", "0", "--max-jobs: expected an integer >= 1 and <= 1000000, got 0"),
        ("--interval", "0", "--interval: expected seconds between 0.1 and 3600, got 0"),
    ],
)
def test_the_daemon_started_by_hand_holds_its_flags_to_the_bounds_daemon_start_does(flag, value, expected, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "stilts_tui.queue.daemon", "--runs-dir", str(tmp_path), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == EXIT_BAD_INPUT and out.stderr.strip() == f"stilts-tui: error: {expected}"
    assert not (tmp_path / "daemon.json").exists()  # it never served
    via_cli = cli("daemon", "start", flag, value, runs_dir=tmp_path)
    assert via_cli.returncode == EXIT_BAD_INPUT and via_cli.stderr.strip() == f"stilts-tui: error: {expected}"


@pytest.mark.parametrize(
    ("args", "flag"), [(["--gpus-per-run", "2"], "--gpus-per-run"), (["--sbatch-arg", "-x"], "--sbatch-arg")]
)
def test_a_slurm_setting_without_the_slurm_executor_names_the_option_that_was_given(args, flag, runs_dir):
    out = cli("daemon", "start", *args, runs_dir=runs_dir)
    assert out.returncode == EXIT_BAD_INPUT
    assert out.stderr.strip() == f"stilts-tui: error: {flag}: a Slurm setting needs --executor slurm"
