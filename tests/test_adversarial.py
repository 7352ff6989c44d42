"""Adversarial: damage the files and the disk under a runs-dir and drive the real CLI and daemon.

What must hold whatever is done: nothing stored is lost, nothing is written outside the runs-dir, every
command answers in one line (exit 0, 1 for a failure, 2 for bad input; never a traceback), and the queue
goes on once the damage is undone. The disk is a small tmpfs mounted for the test where the machine lets
root mount one; elsewhere a full or read-only disk is injected (ENOSPC / EROFS from every write under the
runs-dir, through a sitecustomize on the subprocesses' path, switched by a flag file)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import (
    CONSOLE,
    add,
    cli,
    make_plan,
    result_of,
    set_debug,
    start,
    statuses,
    ticks,
    train,
    until,
    wait,
    write_tiny_run,
)

from stilts_tui.store.ledger import Ledger

INJECT = textwrap.dedent('''
    """Test hook (tests/test_adversarial.py): writes under $STILTS_TEST_DISK fail with $STILTS_TEST_ERRNO
    while the flag file $STILTS_TEST_DISK_FLAG exists: a full or read-only disk where none can be mounted."""
    import builtins, io, os, tempfile
    _dir, _flag = os.environ.get("STILTS_TEST_DISK"), os.environ.get("STILTS_TEST_DISK_FLAG")
    _errno = int(os.environ.get("STILTS_TEST_ERRNO", "28"))

    def _hit(path):
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return bool(_dir) and p.startswith(_dir) and os.path.exists(_flag)

    def _fail(path):
        raise OSError(_errno, os.strerror(_errno), os.fspath(path))

    _open, _os_open, _mkstemp = builtins.open, os.open, tempfile.mkstemp

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and _hit(file):
            _fail(file)
        return _open(file, mode, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _hit(path) and not (
                _errno == 28 and os.path.exists(path) and not flags & os.O_TRUNC):
            _fail(path)
        return _os_open(path, flags, *a, **k)

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if dir is not None and _hit(dir):
            _fail(dir)
        return _mkstemp(suffix, prefix, dir, text)

    if _dir:
        builtins.open = io.open = open_
        os.open, tempfile.mkstemp = os_open, mkstemp
''')


@dataclass
class Disk:
    """A small disk holding the runs-dir: ``fill()`` / ``make_read_only()`` and ``restore()``."""

    path: Path
    mounted: bool
    env: dict
    flag: Path

    def fill(self) -> None:
        if not self.mounted:
            self.flag.write_text("full")
            return
        with open(self.path / ".filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as e:
                assert e.errno == errno.ENOSPC
            for size in (4096, 1):  # the last partial blocks too
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass

    def make_read_only(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, timeout=30)
        else:
            self.flag.write_text("ro")

    def restore(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True, timeout=30)
            (self.path / ".filler").unlink(missing_ok=True)
        self.flag.unlink(missing_ok=True)


def _disk(tmp_path: Path, size: str, err: int):
    path = tmp_path / "disk"
    path.mkdir()
    flag = tmp_path / "disk.flag"
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, timeout=30
        ).returncode
        == 0
    )
    env = {}
    if not mounted:
        hook = tmp_path / "inject"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(INJECT)
        env = {
            "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
            "STILTS_TEST_DISK": str(path),
            "STILTS_TEST_DISK_FLAG": str(flag),
            "STILTS_TEST_ERRNO": str(err),
        }
    disk = Disk(path, mounted, env, flag)
    yield disk
    if mounted:
        for p in psutil.process_iter(["pid", "cwd"]):  # nothing of this test may keep the mount busy
            if (p.info.get("cwd") or "").startswith(str(path)):
                p.kill()
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    yield from _disk(tmp_path, "24m", errno.ENOSPC)


@pytest.fixture
def ro_disk(tmp_path):
    yield from _disk(tmp_path, "8m", errno.EROFS)


def tree(root: Path, skip: Path) -> set[str]:
    """Every path under ``root`` but those under ``skip`` (to check that nothing was written elsewhere)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath).is_relative_to(skip):
            dirnames[:] = []
            continue
        out.update(os.path.join(dirpath, x) for x in filenames + dirnames)
    return out


def answers_in_one_line(out: subprocess.CompletedProcess, codes=(0, 1, 2)) -> None:
    assert out.returncode in codes, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stilts-tui: error: "), out.stderr


def run_ids(runs_dir: Path) -> set[str]:
    return set(json.loads((runs_dir / "ledger.json").read_bytes())["runs"])


def test_a_full_disk_is_one_line_for_every_writer_loses_nothing_and_leaves_no_temp_file(
    tmp_path, small_disk, small_plan
):
    runs = small_disk.path / "runs"
    env = small_disk.env
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs, env=env).returncode == 0
    before_ids, outside = run_ids(runs), tree(tmp_path, small_disk.path)
    ledger_bytes = (runs / "ledger.json").read_bytes()
    some = sorted(before_ids)[0]
    small_disk.fill()
    bigger = small_plan("[1e-5, 3e-5, 5e-5]")  # new runs: their specs and ledger entries need space
    for args in (
        ("queue", "pause"),
        ("queue", "add", str(bigger)),
        ("queue", "cancel", some),
        ("queue", "priority", "5", some),
        ("daemon", "start"),
        ("queue", "ls"),
        ("daemon", "status"),
    ):
        out = cli(*args, runs_dir=runs, env=env)
        answers_in_one_line(out)
        if args[1] in ("pause", "add", "cancel", "priority", "start"):
            assert out.returncode == 1 and "no space left" in out.stderr, (args, out.stderr)
        assert (runs / "ledger.json").read_bytes() == ledger_bytes  # not a byte of the ledger changed
    small_disk.restore()
    assert not list(runs.glob(".ledger.*.tmp")) and not list(runs.glob("*/.spec.json.*.tmp"))
    out = cli("queue", "add", str(bigger), runs_dir=runs, env=env)
    assert out.returncode == 0, out.stderr
    assert before_ids < run_ids(runs)  # nothing lost, the new runs added once there is room
    assert tree(tmp_path, small_disk.path) - outside <= {str(tmp_path / "small.toml")}  # nothing escaped


@pytest.mark.slow
def test_the_daemon_rides_out_a_full_disk_and_the_queue_goes_on(tmp_path, small_disk, tiny_model):
    runs = small_disk.path / "runs"
    env = {**small_disk.env, "STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "1"}
    ids = [
        r["id"]
        for r in add(
            make_plan(tmp_path, tiny_model, '[target.t]\ntask = "pair"\ngrid = { lr = [1e-4, 2e-4] }\n', baseline=True),
            runs,
            env,
        )
    ]
    for rid in ids:
        set_debug(runs, rid, sleep_per_step=0.5)
    info = start(runs, env, "--max-retries", "20", "--worker-runs", "1", "--per-gpu", "1")
    try:
        wait(lambda: any(r.get("pid") for r in Ledger(runs).runs()), what="a run started")
        small_disk.fill()
        wait(lambda: "run exited" in json.dumps(_dead_runs(runs)), 60, "a run killed by the full disk")
        assert psutil.pid_exists(info["pid"])  # the daemon did not die with it
        small_disk.restore()
        wait(lambda: set(statuses(runs).values()) == {"done"}, 180, "the queue to go on and finish")
        assert psutil.Process(info["pid"]).status() != psutil.STATUS_ZOMBIE and set(statuses(runs)) == set(ids)
    finally:
        small_disk.restore()
        cli("daemon", "stop", runs_dir=runs, env=env)
        for r in Ledger(runs).runs():
            if isinstance(r.get("pid"), int):
                try:
                    os.killpg(r["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def _dead_runs(runs: Path) -> list[str]:
    """Runs marked running whose process is gone (the trainer could not write to the full disk)."""
    dead = []
    for r in Ledger(runs).runs():
        pid = r.get("pid")
        if (
            r["status"] == "running"
            and pid
            and (not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        ):
            dead.append(f"{r['id']} run exited")
    return dead


def test_a_read_only_runs_dir_still_answers_status_and_listing_and_refuses_writes_in_one_line(ro_disk, small_plan):
    runs = ro_disk.path / "runs"
    env = ro_disk.env
    assert cli("queue", "add", str(small_plan()), runs_dir=runs, env=env).returncode == 0
    ledger_bytes = (runs / "ledger.json").read_bytes()
    ro_disk.make_read_only()
    try:
        status = cli("daemon", "status", runs_dir=runs, env=env)
        assert status.returncode == 0 and "no daemon is running" in status.stdout and "13 queued" in status.stdout
        listing = cli("queue", "ls", "--json", runs_dir=runs, env=env)
        assert listing.returncode == 0 and len(json.loads(listing.stdout)) == 13
        for args in (("queue", "pause"), ("daemon", "start"), ("queue", "retry", "--failed")):
            out = cli(*args, runs_dir=runs, env=env)
            answers_in_one_line(out)
            if args[1] != "retry":
                assert out.returncode == 1 and "read-only" in out.stderr, (args, out.stderr)
    finally:
        ro_disk.restore()
    assert (runs / "ledger.json").read_bytes() == ledger_bytes


@pytest.mark.parametrize(
    "name, content",
    [
        ("daemon.json", "[]"),
        ("daemon.json", '{"pid": "12"}'),
        ("daemon.json", '{"pid": 1180591620717411303424}'),
        ("daemon.json", '{"pid": 1, "pid_started": 0}'),
        ("daemon.json", ""),
        ("ledger.json.lock", "garbage"),
        ("ledger.json.bak", "[]"),
    ],
)
def test_damaged_side_files_never_stop_a_command(runs_dir, small_plan, name, content):
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    ids = run_ids(runs_dir)
    (runs_dir / name).write_text(content)
    for args in (("daemon", "status"), ("daemon", "stop"), ("queue", "pause"), ("queue", "ls"), ("doctor",)):
        out = cli(*args, runs_dir=runs_dir)
        answers_in_one_line(out, (0,))
    assert run_ids(runs_dir) == ids
    assert psutil.pid_exists(1)  # `daemon stop` signalled nobody


# ---- issue 23: what a file, a second client or an edit did, and what must hold --------------------

PAIR = '[target.t]\ntask = "pair"\n'


def one_line(out: subprocess.CompletedProcess, code: int = 2) -> str:
    """The command failed with ``code`` in one line (never a traceback); that line."""
    answers_in_one_line(out, (code,))
    assert out.returncode == code, (out.returncode, out.stderr)
    return out.stderr.strip()


def edit_rows(runs: Path, **rows: dict) -> None:
    """Damage the ledger as a hostile user or a bad disk would: put rows in by hand (key = id)."""
    path = runs / "ledger.json"
    data = json.loads(path.read_text())
    data["runs"].update(rows)
    path.write_text(json.dumps(data))


@pytest.mark.slow
def test_a_finished_runs_damaged_result_never_stops_the_queue(tmp_path, runs_dir, queue_env, tiny_model):
    """Item 1: a done run's result.json replaced by [] and the daemon restarted: new runs still train."""
    (first,) = add(make_plan(tmp_path, tiny_model, PAIR, baseline=True), runs_dir, queue_env)
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: statuses(runs_dir) == {first["id"]: "done"}, 180, "the first run")
    assert cli("daemon", "stop", runs_dir=runs_dir, env=queue_env).returncode == 0
    (runs_dir / first["id"] / "result.json").write_text("[]")
    more = make_plan(tmp_path, tiny_model, PAIR + "grid = { lr = [1e-4, 2e-4] }\n", baseline=True)
    ids = {r["id"] for r in add(more, runs_dir, queue_env)}
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: set(statuses(runs_dir).values()) == {"done"}, 240, "the new runs despite the damaged result")
    assert ids - {first["id"]} and statuses(runs_dir)[first["id"]] == "done"
    assert "is ignored (the run is final)" in (runs_dir / "daemon.log").read_text()


@pytest.mark.parametrize("interval", ["inf", "nan", "0", "-1", "1e9"])
def test_an_interval_that_never_ticks_or_spins_is_refused(runs_dir, interval):
    """Item 2: --interval inf never ticks again, nan/0/-1 spin: refused by `daemon start` and the daemon."""
    line = one_line(cli("daemon", "start", f"--interval={interval}", runs_dir=runs_dir))
    assert "--interval" in line and not (runs_dir / "daemon.json").exists()
    direct = subprocess.run(
        [sys.executable, "-m", "stilts_tui.queue.daemon", "--runs-dir", str(runs_dir), f"--interval={interval}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one_line(direct) and not (runs_dir / "daemon.json").exists()


def test_two_adds_of_two_versions_of_a_plan_at_once_lose_no_run_folder(tmp_path, runs_dir, small_plan):
    """Item 3: each add's orphan clean-up deleted the folders the other had just written."""
    lrs = lambda k: "[" + ", ".join(f"{k}{i}e-7" for i in range(1, 400)) + "]"  # noqa: E731
    plan = small_plan(lrs(1))  # about 1,600 runs
    procs = [
        subprocess.Popen(
            [str(CONSOLE), "queue", "add", str(plan)],
            env={**os.environ, "STILTS_NO_DAEMON": "1", "STILTS_RUNS_DIR": str(runs_dir)},
            stderr=subprocess.PIPE,
            text=True,
        )
    ]
    wait(lambda: any(runs_dir.glob("*/spec.json")), 60, "the first add writing folders")
    plan.write_text(plan.read_text().replace(lrs(1), lrs(2)))  # the plan edited while it is added
    procs.append(
        subprocess.Popen(
            [str(CONSOLE), "queue", "add", str(plan)],
            env={**os.environ, "STILTS_NO_DAEMON": "1", "STILTS_RUNS_DIR": str(runs_dir)},
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    rows = Ledger(runs_dir).runs()
    assert len(rows) > 3000
    lost = [r["id"] for r in rows if not (runs_dir / r["id"] / "spec.json").is_file()]
    assert lost == []


def test_a_recorded_run_whose_spec_is_gone_gets_it_back_from_a_re_add(runs_dir, small_plan):
    """Item 3: the daemon's error says a re-add writes a missing spec.json again: it does."""
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    rid = Ledger(runs_dir).runs()[0]["id"]
    spec = (runs_dir / rid / "spec.json").read_bytes()
    (runs_dir / rid / "spec.json").unlink()
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    assert (runs_dir / rid / "spec.json").read_bytes() == spec


def test_retrying_a_run_twice_keeps_both_earlier_results(runs_dir, small_plan):
    """Item 4: the second retry overwrote result.attempt1.json (here: attempt0, attempts reset by retry)."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    rid = Ledger(runs_dir).runs()[0]["id"]
    for n in (1, 2):
        Ledger(runs_dir).update(rid, status="failed", error=f"attempt {n}")
        (runs_dir / rid / "result.json").write_text(json.dumps({"status": "failed", "error": f"attempt {n}"}))
        assert cli("queue", "retry", rid, runs_dir=runs_dir).returncode == 0
    kept = sorted(json.loads(p.read_text())["error"] for p in (runs_dir / rid).glob("result.attempt*.json"))
    assert kept == ["attempt 1", "attempt 2"] and not (runs_dir / rid / "result.json").exists()


def test_queue_add_removes_only_folders_it_wrote_and_no_run_claims(runs_dir, small_plan):
    """Item 6: any folder holding only a spec.json of the plan was deleted (a saved spec, exports/)."""
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    rid = Ledger(runs_dir).runs()[0]["id"]
    spec = (runs_dir / rid / "spec.json").read_text()
    users = [runs_dir / "my-saved-spec", runs_dir / "exports", runs_dir / "0123456789ab"]  # no mark: not ours
    for d in users:
        d.mkdir()
        (d / "spec.json").write_text(spec.replace(rid, d.name) if d.name == "0123456789ab" else spec)
    ours = runs_dir / "ba9876543210"  # what an interrupted add of this plan leaves: its mark and a spec
    ours.mkdir()
    (ours / "spec.json").write_text(spec.replace(rid, ours.name))
    (ours / ".queued-by-stilts").write_text(ours.name + "\n")
    before = run_ids(runs_dir)
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    assert all((d / "spec.json").read_text() for d in users) and not ours.exists()
    assert run_ids(runs_dir) == before and all((runs_dir / i / "spec.json").is_file() for i in before)


@pytest.mark.slow
def test_on_finish_is_the_one_recorded_at_add_never_a_later_edit(tmp_path, runs_dir, queue_env, tiny_model):
    """Item 7: on_finish was read from the plan file when the plan finished: an edit after the add ran."""
    writer = "import sys; open(sys.argv[1], 'w').write('ran')"
    hook = lambda tag: json.dumps([sys.executable, "-c", writer, str(tmp_path / tag)])  # noqa: E731
    plan = make_plan(tmp_path, tiny_model, PAIR, baseline=True, header=f"on_finish = {hook('added')}")
    shown = cli("plan", "show", str(plan), runs_dir=runs_dir)
    assert shown.returncode == 0 and "on_finish: " in shown.stdout and str(tmp_path / "added") in shown.stdout
    as_json = json.loads(cli("plan", "show", str(plan), "--json", runs_dir=runs_dir).stdout)
    recorded = as_json["on_finish"]  # the program resolved as the daemon runs it
    assert Path(recorded[0]) == Path(sys.executable).resolve() and recorded[1:] == json.loads(hook("added"))[1:]
    assert "on_finish: " in cli("plan", "validate", str(plan), runs_dir=runs_dir).stdout
    add(plan, runs_dir, queue_env)
    plan.write_text(plan.read_text().replace(hook("added"), hook("edited")))
    start(runs_dir, queue_env)
    wait(lambda: (tmp_path / "added").exists(), 180, "the recorded command")
    wait(
        lambda: "started" in (runs_dir / "daemon.log").read_text().split("on-finish: plan_finished")[-1],
        30,
        "the daemon to start every command of the event",
    )
    assert not (tmp_path / "edited").exists()


@pytest.mark.slow
def test_ledger_fields_never_become_paths_outside_the_runs_dir(tmp_path, runs_dir, queue_env, tiny_model):
    """Item 8: a row with id ../evil_run was trained outside the runs-dir; a worker ../../outside made the
    daemon read outside.log into a run's error."""
    (good,) = add(make_plan(tmp_path, tiny_model, PAIR, baseline=True), runs_dir, queue_env)
    evil = tmp_path / "evil_run"
    evil.mkdir()
    (evil / "spec.json").write_text((runs_dir / good["id"] / "spec.json").read_text())
    (tmp_path / "outside.log").write_text("SECRET outside the runs-dir\n")
    edit_rows(
        runs_dir,
        **{
            "../evil_run": {**good, "id": "../evil_run", "order": 9},
            "aaaaaaaaaaaa": {
                **good,
                "id": "aaaaaaaaaaaa",
                "status": "running",
                "attempts": 99,
                "worker": "../../outside",
                "started": 0,
                "pid": None,
            },
        },
    )
    outside = tree(tmp_path, runs_dir)
    start(runs_dir, queue_env, "--worker-runs", "1")
    wait(lambda: Ledger(runs_dir).get(good["id"])["status"] == "done", 180, "the good run")
    wait(
        lambda: all(Ledger(runs_dir).get(k)["status"] == "failed" for k in ("../evil_run", "aaaaaaaaaaaa")),
        30,
        "the damaged rows failed",
    )
    errors = {k: Ledger(runs_dir).get(k)["error"] for k in ("../evil_run", "aaaaaaaaaaaa")}
    assert "id = '../evil_run'" in errors["../evil_run"] and "worker = '../../outside'" in errors["aaaaaaaaaaaa"]
    assert "SECRET" not in json.dumps(errors)
    assert sorted(os.listdir(evil)) == ["spec.json"] and tree(tmp_path, runs_dir) == outside


ESC = "\x1b]0;pwned\x07\x1b[2J\x9b31m"  # sets the title, clears the screen, a one-byte CSI


def test_escape_sequences_from_files_and_the_ledger_never_reach_the_terminal(runs_dir, small_plan):
    """Item 9: escape sequences in train.log lines and in names reached the terminal (logs, queue ls,
    errors)."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    row = Ledger(runs_dir).runs()[0]
    (runs_dir / row["id"] / "train.log").write_text(f"step 1 {ESC}\nstep 2\n")
    edit_rows(runs_dir, **{row["id"]: {**row, "plan": f"small{ESC}", "task": f"rte{ESC}"}})
    logs = cli("logs", row["id"], runs_dir=runs_dir)
    listing = cli("queue", "ls", runs_dir=runs_dir, env={"COLUMNS": "300"})
    err = cli("queue", "ls", "--plan", f"x{ESC}", runs_dir=runs_dir)
    for out in (logs, listing):
        assert out.returncode == 0, out.stderr
        assert not set(out.stdout) & {"\x1b", "\x07", "\x9b"}, out.stdout
    assert logs.stdout.splitlines() == ["step 1 \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m", "step 2"]
    assert "\\x1b[2J" in listing.stdout
    line = one_line(err)
    assert not set(line) & {"\x1b", "\x07", "\x9b"} and "\\x1b" in line


@pytest.mark.parametrize(
    "plan_text, needle",
    [
        (
            'name = "p"\nmodel = "m"\nbaseline = true\n[intermediate.none]\ntask = "rte"\n[target.rte]\ntask = "rte"\n',
            "intermediate.none",
        ),
        ('name = "p\\n"\nmodel = "m"\n[target.rte]\ntask = "rte"\n', "key 'name'"),
        ('name = "p"\nmodel = "m"\n[target."rte\\n"]\ntask = "rte"\n', "target.rte"),
    ],
)
def test_names_that_would_pool_or_split_a_plan_are_refused(tmp_path, runs_dir, plan_text, needle):
    """Item 10: a stage 'none' pooled with the baseline; a name with a trailing newline was a second plan."""
    plan = tmp_path / "p.toml"
    plan.write_text(plan_text)
    for args in (("plan", "validate", str(plan)), ("queue", "add", str(plan))):
        assert needle in one_line(cli(*args, runs_dir=runs_dir))
    assert not (runs_dir / "ledger.json").exists()


def test_two_plan_files_with_one_name_are_not_merged(tmp_path, runs_dir, small_plan):
    """Item 10: a second file with the same plan name was merged silently."""
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    before = (runs_dir / "ledger.json").read_bytes()
    other = tmp_path / "other.toml"
    other.write_text(plan.read_text().replace("[1e-5]", "[7e-5]"))
    assert "already queued from" in one_line(cli("queue", "add", str(other), runs_dir=runs_dir))
    assert (runs_dir / "ledger.json").read_bytes() == before


def test_a_priority_beyond_64_bits_is_refused_and_changes_nothing(runs_dir, small_plan):
    """Item 10: `queue priority 100000000000000000000` exited 0, then the daemon failed the run."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    before = (runs_dir / "ledger.json").read_bytes()
    rid = Ledger(runs_dir).runs()[0]["id"]
    for args in (
        ("queue", "priority", "100000000000000000000", rid),
        ("queue", "add", str(small_plan()), "--priority", "-100000000000000000000"),
    ):
        assert "priority" in one_line(cli(*args, runs_dir=runs_dir))
    assert (runs_dir / "ledger.json").read_bytes() == before


def _finish_targets(runs: Path, score: object, result: object = None) -> None:
    """Every target run done, with this score in its result.json (or ``result`` as the whole file)."""
    with Ledger(runs).transaction() as tx:
        for r in list(tx.runs.all()):
            if r["stage"] == "target":
                tx.update_run(r["id"], status="done", score=None)
    for r in Ledger(runs).runs():
        if r["stage"] == "target":
            body = (
                result
                if result is not None
                else {"status": "done", "score": score, "metrics": {"acc": score}, "primary_metric": "acc"}
            )
            (runs / r["id"] / "result.json").write_text(body if isinstance(body, str) else json.dumps(body))


def test_scores_as_json_are_json_even_for_a_score_of_1e308(runs_dir, small_plan):
    """Item 10: a mean that overflows was written as Infinity, which is not JSON."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    _finish_targets(runs_dir, 1e308)
    out = cli("scores", "small", "--format", "json", runs_dir=runs_dir)
    assert out.returncode == 0, out.stderr

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    doc = json.loads(out.stdout, parse_constant=refuse)
    assert doc["cells"]


def test_a_result_nested_100000_deep_is_one_run_left_out_not_a_traceback(runs_dir, small_plan):
    """Item 11: `scores` on a result.json nested 100,000 deep: RecursionError."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    _finish_targets(runs_dir, None, "[" * 100000 + "]" * 100000)
    assert "no finished target runs" in one_line(cli("scores", "small", runs_dir=runs_dir))


@pytest.mark.parametrize("field, value", [("grid", [1, 2]), ("intermediate", ["x"]), ("grid", "lr=1"), ("task", None)])
def test_a_row_of_the_wrong_types_is_listed_not_a_traceback(runs_dir, small_plan, field, value):
    """Item 11: `queue ls` on a row whose grid or intermediate has the wrong type: 44 lines of traceback."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    row = Ledger(runs_dir).runs()[0]
    damaged = {**row, field: value}
    if value is None:
        damaged.pop(field)
    edit_rows(runs_dir, **{row["id"]: damaged})
    out = cli("queue", "ls", runs_dir=runs_dir, env={"COLUMNS": "300"})
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert row["id"] in out.stdout and len(json.loads(cli("queue", "ls", "--json", runs_dir=runs_dir).stdout)) == 13


LATIN1 = "index\tsentence1\tsentence2\tlabel\n0\tCaf\xe9 au lait.\tA drink.\tentailment\n".encode("latin-1")


@pytest.mark.parametrize("content", [LATIN1, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"])
def test_data_files_that_are_not_utf8_are_one_line(tmp_path, runs_dir, content):
    """Item 11: `tasks show`, `plan rehearse` and `synth` on Latin-1 or binary data files: tracebacks."""
    data = tmp_path / "rte"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_bytes(content)
    (tmp_path / "corpus.txt").write_bytes(content)
    plan = tmp_path / "p.toml"
    plan.write_text(f'name = "p"\nmodel = "roberta-large"\n[target.rte]\ntask = "rte"\ndata_dir = "{data}"\n')
    env = {"HF_HUB_OFFLINE": "1"}
    for args in (
        ("tasks", "show", "rte", "--data-dir", str(data)),
        ("synth", "--corpus-file", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out")),
    ):
        line = one_line(cli(*args, runs_dir=runs_dir, env=env))
        assert "UTF-8" in line, (args, line)
    # a rehearsal reports each stage that cannot read its data, then stops (exit 1), never a traceback
    rehearsal = cli("plan", "rehearse", str(plan), "--out", str(tmp_path / "rehearsal"), runs_dir=runs_dir, env=env)
    assert rehearsal.returncode == 1 and "Traceback" not in rehearsal.stdout + rehearsal.stderr
    assert "not UTF-8 text" in rehearsal.stdout and "cannot read their data" in rehearsal.stdout


@pytest.mark.parametrize("keymap", ['"queue.cancel" = "x\xe9"'.encode("latin-1"), b"keys = 5\n"])
def test_a_keymap_in_latin1_or_of_the_wrong_shape_is_one_line(tmp_path, runs_dir, keymap):
    """Item 11: a keymap file in Latin-1 or with `keys = 5`: a traceback from the app."""
    path = tmp_path / "keymap.toml"
    path.write_bytes(keymap)
    line = one_line(cli(runs_dir=runs_dir, env={"STILTS_KEYMAP": str(path), "STILTS_NO_DAEMON": "1"}))
    assert str(path) in line


def test_a_plan_file_whose_name_holds_a_newline_is_named_on_one_line(tmp_path, runs_dir):
    """Item 11: a plan file whose name holds a newline cut the error line in two."""
    plan = tmp_path / "bad\nname.toml"
    plan.write_text("name = \n")
    line = one_line(cli("plan", "validate", str(plan), runs_dir=runs_dir))
    assert "bad\\nname.toml" in line


async def test_the_app_shows_lines_after_a_huge_one_and_escapes_what_files_and_rows_hold(runs_dir, small_plan):
    """Items 9 and 12, in the real app: a train.log line over 4 MiB hid every later line in the log pane;
    escape sequences in log lines and in a row's names reached the terminal through the pane and the table."""
    from textual.widgets import DataTable, Log

    from stilts_tui.tui.app import StiltsApp
    from stilts_tui.tui.widgets.log_pane import LogPane

    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    row = Ledger(runs_dir).runs()[0]
    edit_rows(runs_dir, **{row["id"]: {**row, "status": "running", "plan": f"small{ESC}", "grid": [1, 2]}})
    (runs_dir / row["id"] / "train.log").write_text(f"first {ESC}\n" + "x" * (5 << 20) + "\nafter the long line\n")

    async with StiltsApp(runs_dir, keymap={}).run_test(size=(170, 40)) as pilot:
        table = pilot.app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count, "the table filled")
        cells = [str(c) for c in table.get_row(row["id"])]
        assert "\x1b" not in "".join(cells) and "small\\x1b" in cells[1]
        table.move_cursor(
            row=[table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)].index(row["id"])
        )
        await pilot.press("l")
        await until(pilot, lambda: list(pilot.app.screen.query(LogPane)), "the log pane")
        log = pilot.app.screen.query_one(LogPane).query_one(Log)
        await until(pilot, lambda: log.lines and log.lines[-1] == "after the long line", "the line after the long one")
        assert not any("\x1b" in x or "\x07" in x for x in log.lines) and log.lines[0].startswith("first \\x1b")


def test_logs_follow_ends_when_the_run_folder_is_removed(runs_dir, small_plan):
    """Item 12: `logs -f` on a run folder that is deleted followed forever."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    rid = Ledger(runs_dir).runs()[0]["id"]
    Ledger(runs_dir).update(rid, status="running")
    (runs_dir / rid / "train.log").write_text("step 1\n")
    proc = subprocess.Popen(
        [str(CONSOLE), "logs", rid, "-f"],
        env={**os.environ, "STILTS_RUNS_DIR": str(runs_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "step 1\n"
    import shutil

    shutil.rmtree(runs_dir / rid)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1 and "removed" in err, err


def test_a_daemon_whose_lock_file_was_deleted_is_still_the_only_one_and_stops(runs_dir):
    """Item 12: daemon.lock deleted under a running daemon let a second start; `daemon stop` then could not
    reach the first."""
    first = start(runs_dir, {})
    (runs_dir / "daemon.lock").unlink()
    assert "already running" in one_line(cli("daemon", "start", runs_dir=runs_dir))
    wait(lambda: (runs_dir / "daemon.lock").exists(), 30, "the daemon to lock a new daemon.lock")
    assert "already running" in one_line(cli("daemon", "start", runs_dir=runs_dir))
    assert cli("daemon", "stop", runs_dir=runs_dir).returncode == 0
    wait(
        lambda: not psutil.pid_exists(first["pid"]) or psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE,
        30,
        "the first daemon to stop",
    )
    assert "no daemon is running" in cli("daemon", "status", runs_dir=runs_dir).stdout


def test_a_runs_dir_where_no_lock_can_be_made_is_one_line_at_once(tmp_path):
    """Item 12: a runs-dir of /proc/1 blocked `queue pause` for 120 s (filelock retried as if locked)."""
    out = cli("queue", "pause", runs_dir=Path("/proc/1"), timeout=30)
    answers_in_one_line(out, (1, 2))
    assert "ledger" in out.stderr


def test_a_symlinked_ledger_stays_a_symlink(tmp_path, runs_dir, small_plan):
    """Item 12: a symlinked ledger.json was replaced by a regular file."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    real = tmp_path / "elsewhere" / "ledger.json"
    real.parent.mkdir()
    (runs_dir / "ledger.json").rename(real)
    (runs_dir / "ledger.json").symlink_to(real)
    assert cli("queue", "pause", runs_dir=runs_dir).returncode == 0
    assert (runs_dir / "ledger.json").is_symlink() and json.loads(real.read_text())["meta"]["paused"]["value"]
    assert len(json.loads(real.read_text())["runs"]) == 13


def test_a_backup_that_is_a_directory_is_said_not_silently_dropped(runs_dir, small_plan):
    """Item 12: a ledger.json.bak that is a directory silently disabled the backup."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    before = (runs_dir / "ledger.json").read_bytes()
    (runs_dir / "ledger.json.bak").unlink()
    (runs_dir / "ledger.json.bak").mkdir()
    assert "ledger.json.bak is a directory" in one_line(cli("queue", "pause", runs_dir=runs_dir))
    assert (runs_dir / "ledger.json").read_bytes() == before


# ---- issue 38: one reader and one writer for every file from outside ----------------------------------


def _fifo(path: Path) -> Path:
    """A FIFO in a file's place (a reader that opens it without O_NONBLOCK waits for a writer for good)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_fifos_in_place_of_run_files_never_block_the_daemon(runs_dir, small_plan, queue_env):
    """Item 2: a FIFO as a queued run's spec.json, and as a done run's result.json (the daemon restarted):
    the daemon blocked on the open, for good, and no run launched again. Now the real daemon fails each
    queued run with one line naming the FIFO and goes on ticking; the done run stays done."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    runs = Ledger(runs_dir).runs()
    done = runs[-1]
    edit_rows(runs_dir, **{done["id"]: {**done, "status": "done", "finished": 1.0}})
    _fifo(runs_dir / done["id"] / "result.json")
    for r in runs[:-1]:
        _fifo(runs_dir / r["id"] / "spec.json")
    pid = start(runs_dir, queue_env)["pid"]
    try:
        wait(lambda: "queued" not in statuses(runs_dir).values(), 60, "every queued run handled despite the FIFOs")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)  # a daemon blocked on a FIFO answers no stop
        raise
    after = {r["id"]: r for r in Ledger(runs_dir).runs()}
    assert after[done["id"]]["status"] == "done"
    failed = [r for r in after.values() if r["status"] == "failed"]
    assert failed and all("FIFO" in r["error"] and "\n" not in r["error"] for r in failed), failed
    since = ticks(runs_dir)
    wait(lambda: ticks(runs_dir) >= since + 2, 30, "the daemon ticking on")


def test_scores_and_rank_answer_at_once_on_a_fifo_as_a_saved_ranking_or_a_cache_record(
    tmp_path, runs_dir, small_plan, tiny_model
):
    """Item 4: `scores` on a FIFO as the plan's saved ranking (.cache/rank-plans/) and `rank` on FIFOs at
    the cache keys it reads (.cache/rank/) hung. Now the FIFO is a damaged file, read as none: `scores`
    answers, `rank` scores afresh and writes each record whole in the FIFO's place."""
    from stilts_tui import plan as plans
    from stilts_tui.estimate import predicted
    from stilts_tui.rank import ranking

    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    _finish_targets(runs_dir, 0.7)
    _fifo(predicted._saved_path(runs_dir, "small"))
    out = cli("scores", "small", runs_dir=runs_dir, timeout=60)
    assert out.returncode == 0 and "rte" in out.stdout, out.stderr
    tiny = make_plan(tmp_path, tiny_model, PAIR, baseline=True)
    jobs = ranking.jobs_for(plans.load(tiny), runs_dir, None, 2)
    for job in jobs:
        _fifo(Path(job["cache"]))
    out = cli("rank", str(tiny), "--examples", "2", runs_dir=runs_dir, env={"OMP_NUM_THREADS": "1"}, timeout=180)
    assert out.returncode == 0, out.stderr
    assert all(json.loads(Path(j["cache"]).read_text())["key"] == j["key"] for j in jobs)


def test_on_finish_nested_30000_deep_is_one_line(runs_dir):
    """Item 8: `daemon start --on-finish` of a JSON array 30,000 deep was a RecursionError traceback."""
    line = one_line(cli("daemon", "start", "--on-finish", _deep(30000), runs_dir=runs_dir))
    assert "--on-finish" in line and len(line) < 400


@pytest.mark.parametrize("make", ["deep", "fifo", "dir"])
def test_a_keymap_nested_100000_deep_or_not_a_file_is_one_line(tmp_path, runs_dir, make):
    """Item 8: a keymap nested 100,000 deep killed the app at start (RecursionError); a FIFO blocked it."""
    path = tmp_path / "keymap.toml"
    if make == "deep":
        path.write_text(f'"queue.cancel" = {_deep(100000)}\n')
    elif make == "fifo":
        _fifo(path)
    else:
        path.mkdir()
    line = one_line(cli(runs_dir=runs_dir, env={"STILTS_KEYMAP": str(path), "STILTS_NO_DAEMON": "1"}, timeout=60))
    assert str(path) in line


async def test_columns_json_nested_100000_deep_starts_the_app_with_a_one_line_warning(
    tmp_path, runs_dir, small_plan, monkeypatch
):
    """Item 8: a columns.json nested 100,000 deep killed the app at start (RecursionError)."""
    from textual.widgets import DataTable

    from stilts_tui.tui.app import StiltsApp

    columns = tmp_path / "columns.json"
    columns.write_text(_deep(100000))
    monkeypatch.setenv("STILTS_COLUMNS", str(columns))
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    async with StiltsApp(runs_dir, keymap={}).run_test(size=(170, 40)) as pilot:
        table = pilot.app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 13, "the table filled")
        warnings = [n.message for n in pilot.app._notifications if str(columns) in n.message]
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert len(table.columns) > 5  # every column, as the first time


def test_columns_json_as_a_fifo_or_a_folder_is_read_as_none_at_once(tmp_path):
    """Item 8 (and 2's rule): the app's columns reader on a FIFO blocked for good (the app never started);
    in its own process here, so that a regression fails rather than hangs the suite."""
    (tmp_path / "fifo.json").parent.mkdir(exist_ok=True)
    _fifo(tmp_path / "fifo.json")
    (tmp_path / "dir.json").mkdir()
    code = (
        "import os, sys\nfrom stilts_tui.tui import keymap\n"
        "os.environ['STILTS_COLUMNS'] = sys.argv[1]\nprint(keymap.load_columns(warn=print))"
    )
    for name in ("fifo.json", "dir.json"):
        path = tmp_path / name
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, env=os.environ
        )
        assert out.returncode == 0, out.stderr
        warning, answer = out.stdout.splitlines()
        assert answer == "None" and str(path) in warning and "not a regular file" in warning


ISA = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from torch._inductor import config
    from stilts_tui.train import isa
    for cache, plant in zip(sys.argv[1::2], sys.argv[2::2]):  # one process a case would pay torch's import
        config.cpp.vec_isa_ok = None  # as a new process has it
        if plant:  # what a hostile user of the shared cache plants: a link at the name this process would use
            os.symlink(plant, Path(cache) / f".{isa.RECORD}.{os.getpid()}")
        print(isa.settle(Path(cache))[1], flush=True)
""")
ISA_CASES = ["symlink-at-temp-name", "symlink-as-record", "dir", "fifo", "deep"]


def test_the_cpu_isa_record_is_read_and_written_only_as_a_regular_file(tmp_path):
    """Items 17 and 18: the record's temporary name was predictable (`.stilts-vec-isa.json.<pid>`): a link
    planted there made a compiled run write the record outside (escaped); the record as a directory failed
    every compiled CPU run, as a FIFO hung it, nested 100,000 deep raised RecursionError. Now each is a
    record absent or damaged: the check runs (real inductor, in a real process), the run goes on, and the
    record is written whole in its place, never through a link."""
    from stilts_tui.train import isa

    outside, args = tmp_path / "outside.json", []
    outside.write_text("mine\n")
    for make in ISA_CASES:
        cache = tmp_path / make
        cache.mkdir()
        record = cache / isa.RECORD
        if make == "symlink-as-record":
            record.symlink_to(outside)
        elif make == "dir":
            record.mkdir()
        elif make == "fifo":
            _fifo(record)
        elif make == "deep":
            record.write_text('{"isa": ' + _deep(100000) + "}")
        args += [str(cache), str(outside) if make == "symlink-at-temp-name" else ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_VEC_ISA_OK", None)
    out = subprocess.run([sys.executable, "-c", ISA, *args], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["checked"] * len(ISA_CASES), out.stdout
    assert outside.read_text() == "mine\n"  # nothing written through a link
    for make in ISA_CASES:
        record = tmp_path / make / isa.RECORD
        assert not record.is_symlink() and json.loads(record.read_text())["isa"], make
        left = [p for p in (tmp_path / make).iterdir() if p.name.startswith(".") and not p.is_symlink()]
        assert not left, left  # no temporary file left


@pytest.mark.slow
def test_a_link_planted_at_the_checkpoints_temporary_name_is_never_written_through(runs_dir, tiny_workload):
    """One writer, for folders too: a checkpoint was built in `checkpoint.tmp` (a name anyone can guess)
    and renamed into place; a link planted there made the trainer write the weights outside the runs-dir
    and leave `checkpoint` a link to them. Now the folder is built under an unguessable name."""
    d = write_tiny_run(runs_dir, "a1b2c3d4e5f6", tiny_workload, epochs=1)
    spec = json.loads((d / "spec.json").read_text())
    (d / "spec.json").write_text(json.dumps({**spec, "keep_checkpoint": True}))
    outside = runs_dir.parent / "outside"
    outside.mkdir()
    (d / "checkpoint.tmp").symlink_to(outside)
    out = train([d], timeout=300)
    assert out.returncode == 0 and result_of(d)["status"] == "done", out.stderr[-2000:]
    assert list(outside.iterdir()) == []  # nothing written through the link
    ckpt = d / "checkpoint"
    assert not ckpt.is_symlink() and (ckpt / "model.safetensors").is_file()
    assert not [p for p in d.iterdir() if p.name.startswith(".checkpoint.")]  # no temporary folder left


@pytest.mark.parametrize("name", ["ledger.json", "ledger.json.bak"])
def test_a_fifo_as_the_ledger_or_its_backup_is_one_line_never_a_hang(runs_dir, small_plan, name):
    """The one reader for the ledger too: a FIFO as ledger.json blocked every command on its open (and one
    as the backup blocked the recovery line a damaged ledger prints)."""
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    _fifo(runs_dir / name)
    if name == "ledger.json.bak":
        (runs_dir / "ledger.json").write_text("{damaged")
    out = cli("queue", "ls", runs_dir=runs_dir, timeout=60)
    answers_in_one_line(out, (1, 2))
    assert out.returncode and "ledger.json" in out.stderr


def test_a_fifo_as_a_spec_fails_that_run_in_the_trainer_and_the_next_trains(runs_dir, tiny_workload):
    """Item 2's rule in the trainer: a FIFO as a run's spec.json blocked the trainer's first read (it looks
    for a hub model before any run starts), so no run of the process trained; now that run fails with one
    line and the next one trains."""
    bad = write_tiny_run(runs_dir, "0a0b0c0d0e0f", tiny_workload, epochs=1)
    ok = write_tiny_run(runs_dir, "1a1b1c1d1e1f", tiny_workload, epochs=1)
    _fifo(bad / "spec.json")
    out = train([bad, ok], timeout=120)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert result_of(ok)["status"] == "done"
    assert result_of(bad)["status"] == "failed" and "FIFO" in result_of(bad)["error"]
