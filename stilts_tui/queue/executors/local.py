"""The local executor: training processes on this machine, detached from the daemon and the
terminal (own session, output to the run folder), identified by pid *and* process start time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def launch(run_dirs: list[Path], env: dict[str, str], log_path: Path, module: str = "stilts_tui.train",
           args: list[str] | None = None) -> tuple[int, float]:
    """Start ``python -m MODULE [ARGS] RUN_DIR...`` (the trainer, or the synthesis) in its own session;
    (pid, start time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # an argument list, never a shell
            [sys.executable, "-m", module, *(args or []), *map(str, run_dirs)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env}, cwd=str(run_dirs[0].parent),
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid, process_start(proc.pid) or time.time()


_CHILDREN: dict[int, subprocess.Popen] = {}  # our own children, reaped so that none stays a zombie


def process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def alive(pid: int | None, started: float | None) -> bool:
    """Is this exact process (pid and start time) still running? A reused pid is not."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop(pid: int, started: float | None, grace: float = 10.0) -> bool:
    """SIGTERM the run's whole process group, SIGKILL after ``grace`` seconds. True if it was running."""
    if not alive(pid, started):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)  # the worker leads its own session and group
    except ProcessLookupError:
        return False
    deadline = time.time() + grace
    while time.time() < deadline:
        if not _group_alive(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)
    return True


def _group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False


def find_worker(run_dir: Path) -> tuple[int, float] | None:
    """A live training process already working on ``run_dir`` (after a crash between marking a run
    running and recording its pid)."""
    target = str(run_dir)
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = p.info.get("cmdline") or []
        if ("stilts_tui.train" in cmd or "stilts_tui.synth" in cmd) and target in cmd:
            return p.info["pid"], p.info["create_time"]
    return None
