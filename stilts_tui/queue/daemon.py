"""The queue daemon: one per runs-dir, and the only process that signals runs. Each tick it carries
out clients' requests (cancels), reaps ended runs, blocks and unblocks children, and launches ready
runs, through an executor (local processes or Slurm jobs: queue/executor.py). It owns no state of its
own: everything is in the ledger and the run folders, so a restarted daemon adopts the processes still
alive and carries out the requests written while none ran.

    python -m stilts_tui.queue.daemon --runs-dir DIR [--gpus 0,1] [--per-gpu N] [--mps] ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from stilts_tui.contract import DAEMON_FILE, DAEMON_LOCK, DAEMON_LOG, DAEMON_TICKS_FILE
from stilts_tui.errors import Failure, UserError, first_line, report
from stilts_tui.queue import checks, mps, notify, placement
from stilts_tui.queue.executor import Context, Executor
from stilts_tui.queue.runfiles import BadRun, RunFiles
from stilts_tui.queue.settings import Settings
from stilts_tui.queue.tick import Tick, make_executor
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger, LedgerError

__all__ = [
    "BadRun", "Daemon", "Settings", "find_daemon", "info_problem", "is_daemon", "lock_path", "main", "read_info",
    "running_daemon", "stop",
]  # fmt: skip

CLIENT_HOLD_S = 5.0  # the longest a client's request phase may keep a starting daemon waiting
MAX_BACKOFF_S = 60.0  # a tick that keeps failing is retried at most this far apart


def lock_path(root: Path) -> Path:
    return root / DAEMON_LOCK


def info_path(root: Path) -> Path:
    return root / DAEMON_FILE


def running_daemon(root: Path) -> dict | None:
    """The daemon serving ``root`` (its daemon.json), or None when none runs. A daemon is a process, known
    by its pid *and* start time and its command line for this runs-dir: daemon.json alone is never believed
    (a stale one names a pid anyone may have now). Where the lock is held yet daemon.json names no such
    process (damaged, stale, a daemon starting), the process table is asked; where the lock cannot be
    taken at all (a read-only runs-dir), daemon.json is believed only if its process checks out."""
    lock = FileLock(str(lock_path(root)), timeout=0)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        info = read_info(root)
        return info if info is not None and is_daemon(info, root) else find_daemon(root)
    except OSError:
        info = read_info(root)
        return info if info is not None and is_daemon(info, root) else None
    lock.release()
    # daemon.lock deleted under a live daemon: the lock was free, yet daemon.json's process checks out
    info = read_info(root)
    return info if info is not None and is_daemon(info, root) else None


def find_daemon(root: Path) -> dict | None:
    """A live daemon process of ``root`` found by its command line (its daemon.json is missing, damaged or
    not written yet): what daemon.json would say of its process, with ``note`` saying where it came from."""
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        info = {"pid": p.info["pid"], "pid_started": p.info["create_time"], "cmdline": p.info.get("cmdline")}
        if "stilts_tui.queue.daemon" in (info["cmdline"] or []) and is_daemon(info, root):
            return {**info, "note": f"found in the process table ({DAEMON_FILE} is missing or damaged)"}
    return None


def info_problem(root: Path) -> str | None:
    """What is wrong with a daemon.json that names no running daemon of ``root`` (None when there is no
    such file, or it names the running daemon): for `daemon status` and `daemon stop` to say."""
    path = info_path(root)
    try:
        if not path.exists() and not path.is_symlink():
            return None
    except OSError:
        return None
    info = read_info(root)
    if info is None:
        return f"{path} is damaged (not a JSON object)"
    pid = info.get("pid")
    if not checks.is_int(pid) or not 0 < pid < 2**22:
        return f"{path} is damaged (pid {str(pid)[:40]}, which no process can have)"
    if is_daemon(info, root):
        return None
    return f"{path} is stale (pid {pid} is not this runs-dir's daemon: it has exited)"


def stop(root: Path, wait: float = 15.0, force: bool = False) -> int | None:
    """SIGTERM (``force``: SIGKILL) the daemon serving ``root`` and wait until its process is gone; its pid,
    or None when none ran. A daemon still there after ``wait`` seconds (stopped with SIGSTOP, or blocked in a
    system call) is a :class:`Failure` saying what was sent and what to do. Runs go on either way (each is
    in its own session): a new daemon adopts them."""
    info = running_daemon(root)
    if info is None:
        return None
    pid, started = info["pid"], info.get("pid_started")
    sig = signal.SIGKILL if force else signal.SIGTERM
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return pid
    deadline = time.time() + wait
    while time.time() < deadline:
        if not _process_alive(pid, started):
            if force and (read_info(root) or {}).get("pid") == pid:
                info_path(root).unlink(missing_ok=True)  # it had no time to remove its own
            return pid
        time.sleep(0.05)
    state = _process_state(pid)
    if force:
        raise Failure(
            f"sent SIGKILL to the daemon (pid {pid}); it is still there after {wait:g} s ({state}): it is stuck "
            f"in the kernel (a hung disk or network mount); see `ps -o stat,wchan -p {pid}`"
        )
    raise Failure(
        f"sent SIGTERM to the daemon (pid {pid}); it is still there after {wait:g} s ({state}): it is stopped "
        "(SIGSTOP, ctrl-z) or blocked; `stilts-tui daemon stop --force` sends SIGKILL (its runs go on)"
    )


def _process_alive(pid: int, started: float | None) -> bool:
    """Is this exact process (pid and start time) still there (a zombie is gone)?"""
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def _process_state(pid: int) -> str:
    """The process's state in words, for a stop that did not take."""
    try:
        st = psutil.Process(pid).status()
    except (psutil.Error, OSError):
        return "state unknown"
    return {psutil.STATUS_STOPPED: "stopped", psutil.STATUS_DISK_SLEEP: "in uninterruptible sleep"}.get(
        st, f"state: {st}"
    )


def _file_id(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_info(root: Path) -> dict | None:
    """daemon.json, if it holds an object."""
    return rundir.read_json(info_path(root))  # a FIFO or a folder there is no daemon.json, never a hang


def is_daemon(info: dict, root: Path) -> bool:
    """Is the process daemon.json names this runs-dir's daemon: same pid, same process start time, and
    a command line that is the daemon's for this runs-dir? (A stale file's pid may now be anyone's.)"""
    pid = info.get("pid")
    if not checks.is_int(pid) or not 0 < pid < 2**22:
        return False
    try:
        p = psutil.Process(pid)
        started, cmd = p.create_time(), p.cmdline()
    except (psutil.Error, OSError):
        return False
    if "pid_started" in info and not (checks.is_num(info["pid_started"]) and abs(started - info["pid_started"]) <= 1.0):
        return False  # (a daemon.json from before pid_started was recorded is judged by its command line)
    if "stilts_tui.queue.daemon" not in cmd or "--runs-dir" not in cmd[:-1]:
        return False
    try:
        where = Path(p.cwd()) / cmd[cmd.index("--runs-dir") + 1]
        return where.resolve() == Path(root).resolve()
    except (psutil.Error, OSError):
        return False


def _acquire(lock: FileLock, root: Path, patience: float = CLIENT_HOLD_S) -> None:
    """Take daemon.lock; Timeout when a daemon holds it. A client carrying out its request with no daemon
    (`queue/requests.py`) holds it for a moment: that is waited out, a daemon is not."""
    deadline = time.time() + patience
    while True:
        try:
            lock.acquire()
            return
        except Timeout:
            other = read_info(root)
            if time.time() > deadline or (other is not None and is_daemon(other, root)):
                raise
            time.sleep(0.05)


class Daemon:
    """The queue's serve loop over one runs-dir: it holds the runs-dir's lock, runs MPS, logs, and calls
    the tick (`queue/tick.py`: requests -> reap -> block -> prune -> place -> launch) every interval,
    through an executor (`LocalExecutor` or `SlurmExecutor`, see queue/executor.py)."""

    def __init__(self, root: Path, settings: Settings, executor: Executor | None = None):
        self.root, self.s = Path(root), settings
        self.ledger = Ledger(self.root)
        self._lock: FileLock | None = None  # daemon.lock, held while serving
        self._lock_id: tuple | None = None  # (device, inode) of the lock file held
        self._root_id: tuple | None = None  # (device, inode) of the runs-dir served: a replaced one is not it
        self._stop = False
        self._current: str | None = None  # the run the tick is handling: an error there is that run's
        self.log_file = open(self.root / DAEMON_LOG, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        files = RunFiles(self.root, self.log)
        grouper = placement.Grouper(files.spec, self.s.fuse, self.s.worker_runs, self.log)
        self.context = Context(self.root, self.s, files, self.log, self.mark, grouper)
        self.ticker = Tick(self.context, self.ledger, executor or make_executor(self.context))

    @property
    def executor(self) -> Executor:
        return self.ticker.executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self.ticker.executor = executor

    @property
    def mps_dir(self) -> Path | None:
        """MPS's folder while the daemon runs it (the executor gives its pipe to the runs)."""
        return self.context.mps_dir

    def log(self, text: str) -> None:
        try:
            self.log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
        except (OSError, ValueError):  # a full disk must not stop the queue through its log
            pass

    def mark(self, run_id: str | None) -> None:
        """The run the tick handles now: an error that is not the machine's is blamed on it."""
        self._current = run_id

    def tick(self) -> dict:
        """One tick (`queue/tick.py`); counts of what it did."""
        return self.ticker()

    def fail_run(self, run_id: str, reason: str, clear: list[str] | None = None) -> bool:
        """Fail one run the daemon cannot handle (see `Tick.fail_run`)."""
        return self.ticker.fail_run(run_id, reason, clear)

    # -- lifetime ---------------------------------------------------------------------------------

    def start_mps(self) -> None:
        """Run MPS for the daemon's lifetime where it can start; never raises. On failure the daemon goes
        on without MPS and says why (daemon.log, ``daemon status``, ``doctor``)."""
        try:
            state, notes = mps.start(self.root)
        except Exception as e:  # noqa: BLE001 - MPS is an optimisation: nothing in it may end the daemon
            state, notes = mps.State(False, f"{type(e).__name__}: {e}"), []
        for line in notes:
            self.log(line)
        self.context.mps_dir = mps.base_dir(self.root) if state.on else None
        mps.write_status(self.root, mps.stamp(state))
        self.log(
            f"MPS on: {state.reason} (pipe {state.pipe_dir})"
            if state.on
            else f"MPS off, runs go on without it: {state.reason}"
        )

    def stop_mps(self) -> None:
        """Ask the MPS control daemon to quit; never raises."""
        if self.mps_dir is None:
            return
        try:
            how = mps.stop(self.mps_dir)
            mps.write_status(self.root, mps.stamp(mps.State(False, f"the daemon stopped it ({how})")))
            self.log(f"MPS control daemon: {how}")
        except Exception as e:  # noqa: BLE001 - a daemon on its way out must get there
            self.log(f"MPS stop failed: {type(e).__name__}: {e}")
        self.context.mps_dir = None

    def serve(self) -> int:
        """Hold the runs-dir's lock and tick until SIGTERM. Nothing a tick meets ends the daemon; its
        clean-up (MPS, daemon.json) runs whatever ends it."""
        lock = self._lock = FileLock(str(lock_path(self.root)), timeout=0)
        try:
            _acquire(lock, self.root)
            self._lock_id, self._root_id = _file_id(lock_path(self.root)), _file_id(self.root)
        except Timeout:
            other = running_daemon(self.root)
            if other is None:  # the lock's holder is no daemon of this runs-dir: say so, not "pid None"
                return report(
                    UserError(
                        f"{lock_path(self.root)} is held by a process that is not a daemon of this runs-dir "
                        "(a client carrying out a request holds it for a moment): try again"
                    )
                )
            return report(UserError(f"a daemon is already running on {self.root} (pid {other.get('pid')})"))
        except OSError as e:
            return report(e)
        try:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
            signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
            if self.s.mps:
                self.start_mps()
            me = psutil.Process()
            info = {
                "pid": me.pid,
                "pid_started": me.create_time(),
                "cmdline": me.cmdline(),
                "started": time.time(),
                "settings": asdict(self.s),
            }
            rundir.write_json_atomic(info_path(self.root), info)
            (self.root / DAEMON_TICKS_FILE).unlink(missing_ok=True)  # this daemon counts from 0
            self.log(f"daemon started (pid {os.getpid()}, settings {asdict(self.s)})")
            self.loop(notify.Notifier(self.root, self.log))  # --on-finish and plans' on_finish
            self.log("daemon stopping (running runs go on; a new daemon adopts them)")
            return 0
        except (UserError, OSError) as e:  # could not start: one line
            self.log(f"daemon could not start: {first_line(e)}")
            return report(e)
        finally:
            try:
                self.stop_mps()
            except Exception as e:  # noqa: BLE001 - clean-up goes on
                self.log(f"stopping MPS failed: {first_line(e)}")
            if (read_info(self.root) or {}).get("pid") == os.getpid():
                info_path(self.root).unlink(missing_ok=True)
            self._lock.release()

    def loop(self, notifier: notify.Notifier | None = None) -> None:
        """Tick every interval. A damaged run is failed and the tick goes on; any other error is logged
        with its traceback (once while it repeats) and the tick retried with back-off. After each tick the
        notifier (never raising) runs the commands of plans that finished."""
        failures, last, ticks = 0, "", 0
        while not self._stop:
            t = time.time()
            delay = self.s.interval
            self.hold_lock()
            if self._stop:
                break
            try:
                stats = self.tick()
                if notifier is not None:
                    notifier.check(self.ledger)
                if any(stats.values()):
                    self.log(f"tick {1000 * (time.time() - t):.0f} ms: {stats}")
                if failures:
                    self.log(f"tick works again after {failures} failures")
                failures, last = 0, ""
            except BadRun as e:
                self._current = None
                if self._blame(e.run_id, e.reason):
                    delay = 0.05  # that run is out of the way: go on at once
                else:  # a final run's record (nothing to fail) or an unwritable ledger: back off
                    failures += 1
                    line = f"{e.run_id}: {e.reason}"
                    if line != last:
                        self.log(f"tick failed: {line}")
                    last = line
            except Exception as e:  # noqa: BLE001 - nothing a tick meets may end the daemon
                run_id, self._current = self._current, None
                failures += 1
                line = f"{type(e).__name__}: {first_line(e)}"
                if line != last:
                    self.log(f"tick failed: {line}\n{traceback.format_exc().rstrip()}")
                else:
                    self.log(f"tick failed again ({failures} in a row): {line}")
                last = line
                if run_id and not isinstance(e, (OSError, LedgerError)):  # the run's data, not the machine
                    self._blame(run_id, f"the daemon could not handle this run: {line}")
            if failures:
                delay = min(MAX_BACKOFF_S, self.s.interval * 2 ** min(failures, 10))
            ticks = self._count_tick(ticks)
            deadline = t + delay
            while not self._stop and time.time() < deadline:
                time.sleep(min(0.1, max(0.01, deadline - time.time())))

    def _count_tick(self, ticks: int) -> int:
        """Record that one more tick is over (``daemon.ticks``): what a client waits on to know the daemon
        has looked at the queue since a moment (a test's "nothing happens", the app's refresh)."""
        try:
            rundir.write_text_atomic(self.root / DAEMON_TICKS_FILE, str(ticks + 1))
        except (OSError, rundir.DamagedFile):
            pass  # a full disk: the tick itself says so
        return ticks + 1

    def hold_lock(self) -> None:
        """Keep holding daemon.lock as a file others can see: one deleted (or replaced) under the daemon
        would let a second daemon start. The daemon locks the new file; if another daemon already holds
        it, this one stops (its runs go on, and that daemon adopts them)."""
        if self._lock is None:
            return
        if _file_id(self.root) != self._root_id:
            self._left_replaced_root()
            return
        path = lock_path(self.root)
        now = _file_id(path)
        if now is not None and now == self._lock_id:
            return
        fresh = FileLock(str(path), timeout=0)
        try:
            fresh.acquire()
        except Timeout:
            other = read_info(self.root) or {}
            if other.get("pid") not in (None, os.getpid()) and is_daemon(other, self.root):
                self.log(f"{path} was removed and daemon {other.get('pid')} holds the new one: stopping")
                self._stop = True
            return  # a client checking the lock: try again next tick
        except OSError as e:
            self.log(f"{path} was removed and cannot be made again ({first_line(e)})")
            return
        self._lock.release()
        self._lock, self._lock_id = fresh, _file_id(path)
        self.log(f"{path} was removed under the daemon: locked it again")

    def _left_replaced_root(self) -> None:
        """The runs-dir was removed, or removed and made again: the folder at its path is not the one this
        daemon serves (its ledger, its lock). Serving it would run a queue no client sees as served; the
        daemon stops, saying so in its log and (where the path is a folder again) in the new folder's."""
        what = "removed" if _file_id(self.root) is None else "replaced by another folder"
        line = (
            f"the runs-dir {self.root} was {what} under the daemon: stopping (its runs go on; "
            "`stilts-tui daemon start` serves the folder there now)"
        )
        self.log(line)
        try:
            if self.root.is_dir():
                with open(self.root / DAEMON_LOG, "a", encoding="utf-8") as f:
                    f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] daemon {os.getpid()}: {line}\n")
        except OSError:
            pass  # the old folder's log has the line
        self._stop = True

    def _blame(self, run_id: str, reason: str) -> bool:
        """Fail one run; False if it is final or even that failed (the ledger cannot be written): the tick
        backs off."""
        try:
            return self.fail_run(run_id, reason)
        except Exception as e:  # noqa: BLE001
            self.log(f"{run_id}: could not mark it failed ({first_line(e)}); reason was: {reason}")
            return False


def arg_parser() -> argparse.ArgumentParser:
    """The daemon's command line: one flag a setting, each made from queue/settings.py's table of flags."""
    from stilts_tui.queue import settings as flags

    ap = argparse.ArgumentParser(prog="python -m stilts_tui.queue.daemon")
    ap.add_argument("--runs-dir", type=Path, default=None)
    flags.add_arguments(ap)
    return ap


def parse_settings(argv: list[str] | None) -> tuple[Path, Settings]:
    """The runs-dir and settings a command line gives (bad ones: UserError or ValueError)."""
    from stilts_tui.queue import settings as flags

    a = vars(arg_parser().parse_args(argv))
    return rundir.runs_dir(a["runs_dir"]), flags.from_arguments(a)


def main(argv: list[str] | None = None) -> int:
    try:
        return Daemon(*parse_settings(argv)).serve()
    except (UserError, OSError, ValueError) as e:  # bad settings, an unwritable runs-dir: one line
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
