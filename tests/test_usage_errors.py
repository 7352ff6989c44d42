"""Usage errors through the real console script: one line naming the command and what was wrong, exit 2."""

from __future__ import annotations

import pytest
from conftest import cli


@pytest.mark.parametrize(
    "args, env, says",
    [
        (("queue", "ls", "--bogus"), {}, "stilts-tui queue ls: No such option: --bogus"),
        (("scores",), {}, "stilts-tui scores: Missing argument 'plan'"),
        (("daemon", "start", "--per-gpu", "x"), {}, "stilts-tui: error: --per-gpu: expected an integer >= 1"),
        (
            ("queue", "cancel", "--grace", "soon"),
            {},
            "stilts-tui: error: --grace: expected a number >= 0 and <= 3600, got 'soon'",
        ),
        (("--bogus",), {}, "stilts-tui: No such option: --bogus"),
        (("--runs-dir",), {}, "stilts-tui: Option '--runs-dir' requires an argument"),
        (
            ("queue", "ls"),
            {"STILTS_NO_DAEMON": "banana"},
            "Invalid value for '--no-daemon' (env var: 'STILTS_NO_DAEMON')",
        ),
        ((), {"STILTS_NO_DAEMON": "banana"}, "Invalid value for '--no-daemon' (env var: 'STILTS_NO_DAEMON')"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(runs_dir, args, env, says):
    out = cli(*args, runs_dir=runs_dir, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stilts-tui: error: ") and says in lines[0], out.stderr
    assert "╭" not in out.stderr and "Traceback" not in out.stderr
    assert not (runs_dir / "ledger.json").exists()  # nothing was done


def test_a_command_group_alone_still_shows_its_help(runs_dir):
    out = cli("queue", runs_dir=runs_dir)
    assert "Usage: stilts-tui queue" in out.stderr + out.stdout and "cancel" in out.stderr + out.stdout


def test_queue_ls_without_a_runs_dir_says_so_rather_than_listing_nothing(tmp_path):
    """Issue 35, item 4: from a folder without ./runs, `queue ls` printed an empty table, "0 runs" and exit 0."""
    out = cli("queue", "ls", cwd=tmp_path, env={"STILTS_RUNS_DIR": ""})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (
        f"stilts-tui: error: no runs-dir at {tmp_path / 'runs'}: run this where `queue add` made one, "
        "or name it (--runs-dir, $STILTS_RUNS_DIR)"
    )
    assert not (tmp_path / "runs").exists()  # looking made nothing
