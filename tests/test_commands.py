"""Commands end to end through the real console script: `logs -f`, keymap files, and `stilts-tui demo`
in the real app under tmux."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from conftest import CONSOLE, add, all_final, cli, make_plan, set_debug, start, wait, write_text

from stilts_tui.contract import SETTLED, TRAIN_LOG, Status
from stilts_tui.errors import UserError
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.keymap import load_keymap


@pytest.mark.slow
def test_logs_follow_prints_the_whole_log_and_ends_with_the_run(tmp_path, runs_dir, tiny_model, queue_env):
    (run,) = add(make_plan(tmp_path, tiny_model, '[target.t]\ntask = "pair"\n', baseline=True), runs_dir, queue_env)
    set_debug(runs_dir, run["id"], sleep_per_step=0.3)  # a few seconds of steps to follow
    start(runs_dir, queue_env)
    follow = subprocess.Popen(
        [str(CONSOLE), "logs", run["id"], "-f"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "STILTS_RUNS_DIR": str(runs_dir), **queue_env},
    )
    out, _ = follow.communicate(timeout=300)  # it ends by itself once the run is over
    assert follow.returncode == 0
    assert Ledger(runs_dir).get(run["id"])["status"] == Status.DONE
    log = (runs_dir / run["id"] / TRAIN_LOG).read_text()
    assert out == log and "done: acc" in out  # every line, the last one included, once


def test_logs_of_an_unknown_run_is_one_line(runs_dir):
    out = cli("logs", "0123456789ab", runs_dir=runs_dir)
    assert out.returncode == 2 and out.stderr.strip().startswith("stilts-tui: error: no run '0123456789ab'")


def test_a_keymap_file_is_read_and_a_bad_one_is_one_line(tmp_path, monkeypatch):
    good = write_text(tmp_path / "keymap.toml", '"queue.cancel" = "x"\n')
    monkeypatch.setenv("STILTS_KEYMAP", str(good))
    assert load_keymap() == {"queue.cancel": "x"}  # $STILTS_KEYMAP names it
    table = write_text(tmp_path / "table.toml", '[keys]\n"queue.retry" = "ctrl+r"\n')
    assert load_keymap(table) == {"queue.retry": "ctrl+r"}
    assert load_keymap(tmp_path / "none.toml") == {}  # no file: the default keys
    with pytest.raises(UserError, match=r"keymap\.toml: TOML syntax error"):
        load_keymap(write_text(tmp_path / "keymap.toml", '"queue.cancel" = \n'))
    with pytest.raises(UserError, match=r"key 'queue.cancel': expected a key name"):
        load_keymap(write_text(tmp_path / "keymap.toml", '"queue.cancel" = 3\n'))


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_the_demo_runs_in_the_app_to_its_scores(tmp_path):
    """The README's main command: `stilts-tui demo` opens the app on the demo plan; every run ends done and
    the score table (`o`) shows the targets' scores; `q` quits and the daemon is stopped after."""
    assert shutil.which("tmux"), "the demo test drives the real app in tmux"
    runs_dir, session = tmp_path / "runs", f"stilts-demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "STILTS_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "170", "-y", "45", "-c", str(tmp_path), f"{CONSOLE} demo"],
        check=True,
        env=env,
    )
    try:
        wait(lambda: (runs_dir / "ledger.json").exists() and Ledger(runs_dir).runs(), 120, "the demo queued")
        wait(lambda: "demo" in _pane(session), 60, "the app showing the demo's runs")
        wait(lambda: all_final(runs_dir), 2400, "every demo run to end")  # 14 runs: minutes on a free box
        runs = Ledger(runs_dir).runs()
        assert all(r["status"] in SETTLED for r in runs) and {r["status"] for r in runs} == {Status.DONE}, runs
        subprocess.run(["tmux", "send-keys", "-t", session, "o"], check=True)
        wait(lambda: "gain over none" in _pane(session), 60, "the score table")
        screen = _pane(session)
        assert "pair" in screen and "choice3" in screen and "±" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        cli("daemon", "stop", runs_dir=runs_dir)


def test_doctor_checks_the_hub_at_hf_endpoint(runs_dir):
    import json
    import socket

    with socket.socket() as listener:  # a stand-in hub on this machine, for the length of the test
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        up = cli("doctor", "--json", runs_dir=runs_dir, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    down = cli("doctor", "--json", runs_dir=runs_dir, env={"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert json.loads(up.stdout)["hub_reachable"] is True and json.loads(down.stdout)["hub_reachable"] is False


def test_a_plan_refusing_a_managed_sbatch_option_names_the_executors_whole_set(tmp_path):
    plan = write_text(
        tmp_path / "p.toml",
        'name = "p"\nmodel = "roberta-large"\n[target.rte]\ntask = "rte"\n'
        '[slurm]\nsbatch_args = ["--export-file=/tmp/x"]\n',
    )
    out = cli("plan", "validate", str(plan))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "key 'slurm.sbatch_args'" in out.stderr and "export-file" in out.stderr  # slurm_options.MANAGED's
