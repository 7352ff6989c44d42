"""NVIDIA MPS for the queue daemon's lifetime: start it where the driver offers it, never let a failure
end the daemon, and say why it is off.

The pipe and log directories live under a short per-user path in /tmp (``/tmp/stilts-mps-<uid>-<hash
of the runs-dir>``, mode 0700), never under the runs-dir: a runs-dir on NFS cannot hold the control
daemon's Unix sockets, and a deep runs-dir would push the socket path past the 108 bytes a Unix
socket address holds. What happened is written to ``<runs-dir>/mps.json`` for ``daemon status`` and
``doctor``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from stilts_tui.store import rundir

EXE = "nvidia-cuda-mps-control"
CALL_TIMEOUT = 3.0  # seconds a call of the control program may take (a healthy one answers at once; the
# CLI waits 15 s for a starting daemon, and a start may take four calls)
SOCKET_MAX = 107  # sun_path holds 108 bytes, the last one a NUL
SOCKET_NAMES = ("control", "control_privileged")  # the longest names the control daemon puts in its pipe dir
STATUS_FILE = "mps.json"


@dataclass
class State:
    """MPS as the daemon has it: on (with its directories) or off (with the reason)."""

    on: bool
    reason: str
    pipe_dir: str | None = None
    log_dir: str | None = None
    daemon_pid: int | None = None  # the queue daemon that holds it
    t: float = 0.0


def base_dir(root: Path) -> Path:
    """The per-user, per-runs-dir folder holding MPS's pipe and log directories."""
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"stilts-mps-{os.getuid()}-{digest}"


def environment(base: Path) -> dict[str, str]:
    """The variables that point a CUDA process (and the control program) at this MPS; the one place
    they are built."""
    return {"CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log")}


def _private_dir(path: Path) -> str | None:
    """Create ``path`` as a 0700 folder of ours; a problem as one line, else None. A folder someone
    else made (or a symlink) in /tmp is refused: another user could read or hijack the sockets."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        return f"cannot create {path}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} exists and is not a folder"
    if st.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            return f"cannot make {path} private: {e.strerror or e}"
    return None


def prepare(base: Path) -> str | None:
    """The pipe and log folders, private and short enough for Unix sockets; a problem, else None."""
    for d in (base, base / "pipe", base / "log"):
        problem = _private_dir(d)
        if problem:
            return problem
    longest = max(len(str(base / "pipe" / name).encode()) for name in SOCKET_NAMES)
    if longest > SOCKET_MAX:
        return f"the socket path under {base / 'pipe'} is {longest} bytes (a Unix socket holds {SOCKET_MAX})"
    return None


def _call(exe: str, args: list[str], base: Path, stdin: str | None = None) -> tuple[int | None, str]:
    """Run the control program; (exit status, or None on a timeout; its output's first line). Output
    goes to a file, not a pipe: ``-d`` forks a daemon that may keep a pipe open for its whole life."""
    env = {**os.environ, **environment(base)}
    out_path = base / "log" / "control-call.out"
    try:
        with open(out_path, "w+", encoding="utf-8") as out:
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            code = subprocess.run(
                [exe, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                timeout=CALL_TIMEOUT,
                check=False,
                start_new_session=True,
                **feed,
            ).returncode
            out.seek(0)
            lines = [x.strip() for x in out.read().splitlines() if x.strip()]
    except subprocess.TimeoutExpired:
        what = " ".join(args) or (stdin or "").strip()
        return None, f"{EXE} ({what}) did not answer within {CALL_TIMEOUT:.0f} s"
    except OSError as e:
        return 1, f"cannot run {exe}: {e.strerror or e}"
    return code, lines[0][:200] if lines else ""


def control_daemons(base: Path) -> list[psutil.Process]:
    """Live MPS control daemons of this user serving our pipe folder (left by a crash, or ours)."""
    pipe = str(base / "pipe")
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != os.getuid():
                continue
            cmd = p.info.get("cmdline") or []
            named = (p.info.get("name") or "").startswith("nvidia-cuda-mps") or any(
                os.path.basename(c) == EXE for c in cmd[:2]
            )
            if (
                named
                and "-d" in cmd
                and p.environ().get("CUDA_MPS_PIPE_DIRECTORY") == pipe
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _end(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=2)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=2)


def _clear_pipe(base: Path) -> None:
    """Remove the sockets and pid file a dead control daemon left behind (a new one refuses to start
    over them)."""
    for entry in (base / "pipe").iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def start(root: Path) -> tuple[State, list[str]]:
    """Start (or reuse) MPS for ``root``; never raises. The state, and lines for the daemon's log."""
    notes: list[str] = []
    exe = shutil.which(EXE)
    if exe is None:
        return State(False, f"{EXE} not found on PATH (MPS needs the NVIDIA driver's MPS tools)"), notes
    base = base_dir(root)
    problem = prepare(base)
    if problem:
        return State(False, problem), notes
    left = control_daemons(base)
    if left:
        code, text = _call(exe, [], base, "get_server_list\n")
        pids = ", ".join(str(p.pid) for p in left)
        if code == 0:
            return _on(base, f"reused the MPS control daemon left running (pid {pids})"), notes
        notes.append(
            f"MPS: a control daemon left running (pid {pids}) does not answer ({text or f'exit {code}'}); stopping it"
        )
        _end(left)
    if any((base / "pipe").iterdir()):
        notes.append(f"MPS: removing what a dead control daemon left in {base / 'pipe'}")
        _clear_pipe(base)
    code, text = _call(exe, ["-d"], base)
    if code != 0:
        why = text if code is None else f"{EXE} -d failed (exit {code}){': ' + text if text else ''}"
        return State(False, why), notes
    code, text = _call(exe, [], base, "get_server_list\n")
    if code != 0:
        _end(control_daemons(base))
        return State(False, f"the MPS control daemon started but does not answer ({text or f'exit {code}'})"), notes
    return _on(base, "started"), notes


def _on(base: Path, how: str) -> State:
    env = environment(base)
    return State(True, how, env["CUDA_MPS_PIPE_DIRECTORY"], env["CUDA_MPS_LOG_DIRECTORY"])


def stop(base: Path) -> str:
    """Ask the control daemon to quit (it ends its servers once their clients are done); never
    raises. What happened, in a few words."""
    try:
        exe = shutil.which(EXE)
        if exe is None:
            left = control_daemons(base)
            _end(left)
            return (
                f"{EXE} no longer on PATH; ended {len(left)} control daemon(s)" if left else f"{EXE} no longer on PATH"
            )
        code, text = _call(exe, [], base, "quit\n")
        if code == 0:
            return "stopped"
        return f"quit failed ({text or f'exit {code}'})"
    except Exception as e:  # noqa: BLE001 - stopping MPS must never stop the daemon from exiting cleanly
        return f"quit failed ({type(e).__name__}: {e})"


def write_status(root: Path, state: State) -> None:
    try:
        rundir.write_json_atomic(Path(root) / STATUS_FILE, asdict(state))
    except OSError:
        pass  # a full disk must not end the daemon; daemon.log has the same words


def read_status(root: Path) -> State | None:
    data = rundir.read_json(Path(root) / STATUS_FILE)  # a FIFO or a folder there reads as none, never blocks
    if data is None:
        return None
    try:
        return State(**{k: data.get(k) for k in State.__dataclass_fields__})
    except TypeError:
        return None


def describe(root: Path, daemon_pid: int | None) -> str | None:
    """One line on MPS for the daemon with ``daemon_pid`` (None when that daemon never asked for MPS)."""
    st = read_status(root)
    if st is None or daemon_pid is None or st.daemon_pid != daemon_pid:
        return None
    if st.on:
        return f"MPS on ({st.reason}; pipe {st.pipe_dir})"
    return f"MPS off: {st.reason}"


def stamp(state: State) -> State:
    state.daemon_pid, state.t = os.getpid(), time.time()
    return state
