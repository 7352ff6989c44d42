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
import textwrap
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import add, cli, make_plan, set_debug, start, statuses, wait

from stilts_tui.ledger import Ledger

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
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, timeout=30).returncode == 0
    env = {}
    if not mounted:
        hook = tmp_path / "inject"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(INJECT)
        env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
               "STILTS_TEST_DISK": str(path), "STILTS_TEST_DISK_FLAG": str(flag), "STILTS_TEST_ERRNO": str(err)}
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


def test_a_full_disk_is_one_line_for_every_writer_loses_nothing_and_leaves_no_temp_file(tmp_path, small_disk,
                                                                                      small_plan):
    runs = small_disk.path / "runs"
    env = small_disk.env
    plan = small_plan()
    assert cli("queue", "add", str(plan), runs_dir=runs, env=env).returncode == 0
    before_ids, outside = run_ids(runs), tree(tmp_path, small_disk.path)
    ledger_bytes = (runs / "ledger.json").read_bytes()
    some = sorted(before_ids)[0]
    small_disk.fill()
    bigger = small_plan("[1e-5, 3e-5, 5e-5]")  # new runs: their specs and ledger entries need space
    for args in (("queue", "pause"), ("queue", "add", str(bigger)), ("queue", "cancel", some),
                 ("queue", "priority", "5", some), ("daemon", "start"), ("queue", "ls"), ("daemon", "status")):
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


def test_the_daemon_rides_out_a_full_disk_and_the_queue_goes_on(tmp_path, small_disk, tiny_model):
    runs = small_disk.path / "runs"
    env = {**small_disk.env, "STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "1"}
    ids = [r["id"] for r in add(make_plan(tmp_path, tiny_model, "[target.t]\ntask = \"pair\"\n"
                                          "grid = { lr = [1e-4, 2e-4] }\n", baseline=True), runs, env)]
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
        if r["status"] == "running" and pid and (not psutil.pid_exists(pid) or
                                                 psutil.Process(pid).status() == psutil.STATUS_ZOMBIE):
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


@pytest.mark.parametrize("name, content", [
    ("daemon.json", "[]"), ("daemon.json", '{"pid": "12"}'), ("daemon.json", '{"pid": 1180591620717411303424}'),
    ("daemon.json", '{"pid": 1, "pid_started": 0}'), ("daemon.json", ""), ("ledger.json.lock", "garbage"),
    ("ledger.json.bak", "[]"),
])
def test_damaged_side_files_never_stop_a_command(runs_dir, small_plan, name, content):
    assert cli("queue", "add", str(small_plan()), runs_dir=runs_dir).returncode == 0
    ids = run_ids(runs_dir)
    (runs_dir / name).write_text(content)
    for args in (("daemon", "status"), ("daemon", "stop"), ("queue", "pause"), ("queue", "ls"), ("doctor",)):
        out = cli(*args, runs_dir=runs_dir)
        answers_in_one_line(out, (0,))
    assert run_ids(runs_dir) == ids
    assert psutil.pid_exists(1)  # `daemon stop` signalled nobody
