"""What the command line prints when piped (never cut), `daemon status`, and `plan validate`'s data
sources: real subprocesses, a real ledger."""

from __future__ import annotations

import json

from conftest import cli, make_plan, plan_text, start, write_text

from stilts_tui.store.ledger import Ledger

PLAN = plan_text(
    name="a-rather-long-plan-name",
    stages="""[intermediate.hs]
task = "hellaswag"
[target.winogrande-xs]
task = "winogrande-xs"
grid = { lr = [1e-5], batch_size = [16], warmup = [0.1], weight_decay = [0.01] }
""",
)


def test_piped_output_is_never_cut(tmp_path, runs_dir):
    plan = write_text(tmp_path / "p.toml", PLAN)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    runs = Ledger(runs_dir).runs()
    failed = next(r for r in runs if r["stage"] == "intermediate")
    why = "data file not found: /a/long/path/that/goes/on/and/on/hellaswag_train.jsonl (set data_dir to it)"
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(failed["id"], status="failed", error=why)
    out = cli("queue", "ls", runs_dir=runs_dir, env={"COLUMNS": "80"})  # stdout is a pipe here
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "plan",
        "stage",
        "task",
        "from",
        "seed",
        "grid",
        "status",
        "gpu",
        "score",
        "reason",
    ]
    for r in runs:
        line = next(x for x in lines if x.split()[0] == r["id"])  # the whole id, to paste into `logs`
        assert "a-rather-long-plan-name" in line and "…" not in line
    child = next(r for r in runs if r["stage"] == "target" and r["intermediate"] == "hs")
    assert "lr=1e-05 bs=16 wu=0.1 weight_decay=0.01" in next(x for x in lines if x.split()[0] == child["id"])
    assert why in next(x for x in lines if x.split()[0] == failed["id"])
    show = cli("plan", "show", str(plan), "--cost", env={"COLUMNS": "80"})
    assert show.returncode == 0 and "winogrande-xs" in show.stdout and "winogran…" not in show.stdout


def test_daemon_status_prints_lines_or_json(tmp_path, runs_dir, tiny_model, queue_env):
    out = cli("daemon", "status", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0 and out.stdout.startswith(f"no daemon is running on {runs_dir}")
    make_plan(tmp_path, tiny_model, '[target.t]\ntask = "pair"\n')
    info = start(runs_dir, queue_env, "--per-gpu", "3")
    out = cli("daemon", "status", runs_dir=runs_dir, env=queue_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"daemon running (pid {info['pid']}) on {runs_dir}"
    assert "  per-gpu: 3" in lines and "  executor: local" in lines and "{" not in out.stdout
    data = json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir, env=queue_env).stdout)
    assert data["running"] is True and data["daemon"]["settings"]["per_gpu"] == 3


def test_plan_validate_says_where_each_stage_reads_its_data_and_never_fails_offline(tmp_path):
    data = tmp_path / "data" / "RTE"
    write_text(data / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    plan = write_text(
        tmp_path / "p.toml",
        """name = "v"
model = "roberta-large"
target_seeds = [1]
[intermediate.hs]
task = "hellaswag"
[target.rte]
task = "rte"
data_dir = "data/RTE"
""",
    )
    # a hub address where nothing answers: offline
    out = cli("plan", "validate", str(plan), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert out.returncode == 0, out.stderr  # right but offline: not a failure
    lines = out.stdout.splitlines()
    assert (
        lines[1] == "  [intermediate.hs] hellaswag: Hugging Face Hub Rowan/hellaswag @ main (unreachable now: "
        "http://127.0.0.1:9)"
    )
    assert lines[2] == f"  [target.rte] rte: local files {data} (1 of 2 missing)"
    assert "warning: the Hugging Face Hub (http://127.0.0.1:9) is unreachable now: [intermediate.hs]" in out.stderr
    write_text(data / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    out = cli("plan", "validate", str(plan), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert f"  [target.rte] rte: local files {data} (present)" in out.stdout.splitlines()
