"""The terminal app's speed: launch to first frame, and key-to-repaint latency while 16 runs each
write 200 log lines a second (memory watched over a minute). Measured on the real app in tmux:
a key goes in with send-keys, and the repaint is seen in the bytes the app writes to its terminal
(tmux pipe-pane into a file, read by a poll loop that spawns no process: polling with capture-pane
would take a core of this 2-core machine and slow what it measures). Two keys: the queue table's
cursor (down; the totals bar shows the row) and focus moving between four live log panes (tab; the
key bar shows which pane has it).

Curves visible (issue 37): each log pane draws its run's loss, dev metric and learning rate, and the
queue shows the loss-trend column ("trend", chosen through STILTS_COLUMNS); the writers put a step
event every :data:`STEP_EVERY` log lines (10 a second a run at 200 lines/s) and an eval every
:data:`EVAL_EVERY`, so every pane's curves change each time they may be drawn again.

Work in flight, in a second app on its own 1,000-run ledger: the same cursor key pressed while a
cancel waits out its 10 s grace period (the run's process ignores SIGTERM, so the cancel waits it
all and then kills it) and while the reference plan (1,008 target runs; every spec.json written) is
added from the app's prompt. Both must repaint within 50 ms: the app does that work in workers.

Reference, in the same invocation: a minimal Textual app launched the same way (the floor for
start-up), and minimal Textual apps pressed with the same keys, idle and under the same load (16
writers' worth of log lines a second on the machine): the floor Textual itself has here.

    python bench/tui.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from stilts_tui.store.ledger import Ledger

HELLO = (
    "from textual.app import App\nfrom textual.widgets import Footer, Static\n"
    "class A(App):\n    def compose(self):\n        yield Static('hello')\n        yield Footer()\nA().run()\n"
)


def first_frame(cmd: list[str], marker: str, env: dict, folder: Path, repeat: int = 5) -> float:
    """Median seconds from launching ``cmd`` in a tmux pane to ``marker`` in what it writes.

    The pane starts a shell that waits on a fifo; the clock starts when the fifo is written (the
    shell then execs ``cmd``), and stops when the app's output, streamed by pipe-pane, holds the
    marker: no polling process competes with the app for this 2-core machine while it starts."""
    times = []
    for i in range(repeat):
        session = f"bench-tui-{os.getpid()}-{i}"
        fifo = folder / f"go-{i}"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "160",
                "-y",
                "40",
                "sh",
                "-c",
                'read x < "$0"; exec "$@"',
                str(fifo),
                "env",
                *[f"{k}={v}" for k, v in env.items()],
                *cmd,
            ],
            check=True,
        )
        try:
            out = PaneOutput(session, folder)
            t = time.perf_counter()
            with open(fifo, "w") as f:
                f.write("go\n")
            out.wait(marker, timeout=30)
            times.append(time.perf_counter() - t)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return statistics.median(times)


# minimal Textual apps doing the same two things: the floor a Textual app has on this machine
REF_TABLE = """from textual.app import App
from textual.widgets import DataTable, Static
class A(App):
    CSS = "#s { height: 1; } DataTable { height: 1fr; }"
    def compose(self):
        yield Static("", id="s")
        yield DataTable(cursor_type="row")
    def on_mount(self):
        t = self.query_one(DataTable)
        t.add_columns(*[f"c{i}" for i in range(13)])
        for r in range(1000):
            t.add_row(*[f"{r}-{i}" for i in range(13)])
        t.focus()
    def on_data_table_row_highlighted(self, e):
        self.query_one("#s").update(f"ref · row {e.cursor_row + 1}/1000", layout=False)
A().run()
"""
REF_LOGS = """from textual.app import App
from textual.containers import Horizontal
from textual.widgets import Log, Static
class A(App):
    CSS = "Log { border: round $primary; height: 1fr; } #hints { height: 1; }"
    def compose(self):
        with Horizontal():
            for i in range(4):
                yield Log(id=f"p{i}")
        yield Static("", id="hints")
    def on_mount(self):
        self.query_one("#p0").focus()
    def on_descendant_focus(self, e):
        self.query_one("#hints").update(f"focus: {self.focused.id}", layout=False)
A().run()
"""

WRITER = r"""
import json, sys, time
from pathlib import Path
root, ids, rate, seconds = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4])
step_every, eval_every = int(sys.argv[5]), int(sys.argv[6])
logs = [open(root / i / "train.log", "a", buffering=1) for i in ids]
events = [open(root / i / "events.jsonl", "a", buffering=1) for i in ids]
t0, n = time.time(), 0
while time.time() - t0 < seconds:
    n += 1
    for f in logs:
        f.write(f"[bench] epoch 1/3 step {n}/100000 loss {1 / n:.4f} lr 1e-05 123.4 samples/s ETA 0:10:00\n")
    if n % step_every == 0:
        for e in events:
            e.write(json.dumps({"t": time.time(), "event": "step", "step": n, "total_steps": 100000, "epoch": 1,
                                "loss": 1 / n, "lr": 1e-5 * (1 - n / 100000), "samples_per_s": 123.4,
                                "eta_s": 600}) + "\n")
    if n % eval_every == 0:
        for e in events:
            e.write(json.dumps({"t": time.time(), "event": "eval", "epoch": n // eval_every,
                                "metrics": {"acc": 0.5 + 0.4 * (1 - 1 / (1 + n / 5000))}}) + "\n")
    time.sleep(max(0.0, t0 + n / rate - time.time()))
"""


def curves_visible(folder: Path) -> dict[str, str]:
    """The queue's columns with the loss-trend one shown (STILTS_COLUMNS names the file the app reads); the
    log panes show their curves unless hidden (v). An app that has no trend column shows the others."""
    from stilts_tui.contract import Env

    path = folder / "columns.json"
    from stilts_tui.tui.screens.queue.cells import COLUMNS

    # the trend column within a 160-column terminal: without the reason column and the plan's and stage's
    # (the same in every row here); an app before the trend column shows the others
    path.write_text(json.dumps([*(c for c in COLUMNS if c not in ("reason", "plan", "stage")), "trend"]))
    return {Env.COLUMNS: str(path)}


def prepare(root: Path, n_runs: int) -> list[str]:
    recs = [
        {
            "id": f"{i:012x}",
            "plan": "bench",
            "stage": "target",
            "name": "t",
            "task": "rte",
            "intermediate": "none",
            "seed": 1,
            "params": {},
            "grid": {"lr": 1e-5 * (i + 1)},
            "parent": None,
            "order": i,
        }
        for i in range(1000)
    ]
    Ledger(root).add_runs(recs)
    with Ledger(root).transaction() as tx:
        for r in recs[:n_runs]:
            tx.update_run(r["id"], status="running", gpu=0, started=time.time())
    for r in recs[:n_runs]:
        (root / r["id"]).mkdir(parents=True, exist_ok=True)
    return [r["id"] for r in recs[:n_runs]]


# a run's process that ignores SIGTERM: a cancel waits out its grace period, then kills it
SLOW_TO_STOP = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n"
)
REFERENCE_PLAN = Path(__file__).resolve().parent.parent / "plans" / "chang_lu_2021.toml"
STEP_EVERY = 20  # log lines a step event (10 step events a second a run at 200 lines/s)
EVAL_EVERY = 1000  # log lines an eval event (one each 5 s a run)
IDLE_KEYS = 152  # keys on the idle app, 0.1 s apart (a p95 over 152 is the 8th slowest; a multiple of the 4 panes)
ADDS = 6  # plan adds measured (each under another plan name, so 1,012 new runs each): 50+ keys for a p95


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def wait_screen(session: str, cond, timeout: float = 10.0) -> float:
    t = time.perf_counter()
    screen = ""
    while time.perf_counter() - t < timeout:
        screen = tmux("capture-pane", "-p", "-t", session)
        if cond(screen):
            return time.perf_counter() - t
        time.sleep(0.002)
    tail = " | ".join(ln.strip() for ln in screen.splitlines() if ln.strip())[-600:]
    raise RuntimeError(f"the screen never showed the change; it shows: {tail}")


class PaneOutput:
    """What the app in a tmux pane writes to its terminal, streamed to a file by pipe-pane."""

    def __init__(self, session: str, folder: Path):
        self.path = folder / f"{session}.out"
        self.path.write_bytes(b"")
        tmux("pipe-pane", "-o", "-t", session, f"cat >> {self.path}")
        self.f = open(self.path, "rb")  # noqa: SIM115
        time.sleep(0.2)

    def wait(self, marker: str, timeout: float = 10.0) -> None:
        """Until ``marker`` shows up in what the app writes from now on."""
        needle, buf, t = marker.encode(), b"", time.perf_counter()
        while time.perf_counter() - t < timeout:
            chunk = self.f.read()
            if chunk:
                buf = buf[-len(needle) :] + chunk
                if needle in buf:
                    return
            else:
                time.sleep(0.0005)
        raise RuntimeError(f"the app never wrote {marker!r}")

    def wait_row(self, before: int, timeout: float = 60.0) -> int:
        """Until the totals bar shows a cursor row other than ``before``; that row."""
        buf, t = b"", time.perf_counter()
        while time.perf_counter() - t < timeout:
            chunk = self.f.read()
            if chunk:
                buf = buf[-40:] + chunk
                rows = [int(m) for m in re.findall(rb" \xc2\xb7 row (\d+)/", buf)]
                if any(r != before for r in rows):
                    return next(r for r in rows if r != before)
            else:
                time.sleep(0.0005)
        raise RuntimeError(f"the app never showed a row other than {before}")

    def skip(self) -> None:
        self.f.read()


def latency(
    session: str, seconds: float, presses: int, ids: list[str], out: PaneOutput
) -> tuple[list[float], list[float]]:
    """Move focus between the four log panes (tab) and time each key until the key bar shows it."""
    lat, rss = [], []
    proc = psutil.Process(int(tmux("display", "-p", "-t", session, "#{pane_pid}").strip()))
    t_end = time.time() + seconds
    k = 0
    while len(lat) < presses or time.time() < t_end:
        k = (k + 1) % 4
        out.skip()
        t = time.perf_counter()
        tmux("send-keys", "-t", session, "Tab")
        out.wait(f"focus: {ids[k]}")
        lat.append(time.perf_counter() - t)
        if len(lat) % 4 == 0:
            rss.append(proc.memory_info().rss / 2**20)
        time.sleep(0.1)
    return lat, rss


def cursor_latency(session: str, seconds: float, presses: int, out: PaneOutput) -> list[float]:
    """Move the queue table's cursor (down) and time each key until the totals bar shows the new row."""
    lat = []
    row = int(tmux("capture-pane", "-p", "-t", session).split(" · row ")[1].split("/")[0])
    t_end = time.time() + seconds
    while len(lat) < presses or time.time() < t_end:
        row += 1
        out.skip()
        t = time.perf_counter()
        tmux("send-keys", "-t", session, "Down")
        out.wait(f" · row {row}/")
        lat.append(time.perf_counter() - t)
        time.sleep(0.1)
    return lat


def reference_plan(folder: Path, k: int) -> Path:
    """The reference plan under a name of its own (all 1,012 runs new to the ledger: two plan files of one
    name are refused), and empty stand-ins for the local MedNLI files it names (an add checks they exist,
    reads nothing)."""
    text = REFERENCE_PLAN.read_text().replace('name = "chang-lu-2021"', f'name = "chang-lu-2021-{k}"', 1)
    path = folder / "plans" / f"reference-{k}.toml"
    (path.parent / "data" / "mednli").mkdir(parents=True, exist_ok=True)
    for name in ("mli_train_v1.jsonl", "mli_dev_v1.jsonl"):
        (path.parent / "data" / "mednli" / name).touch()
    path.write_text(text)
    return path


def keys_while(session: str, out: PaneOutput, busy, gap: float) -> list[float]:
    """Cursor-key latencies (as ``cursor_latency``) for as long as ``busy()`` holds. The runs a plan
    adds may sort before the cursor's run (the table keeps the cursor on its run), so the key's
    repaint is the totals bar showing any other row."""
    lat = []
    row = int(tmux("capture-pane", "-p", "-t", session).split(" · row ")[1].split("/")[0])
    while busy():
        out.skip()
        t = time.perf_counter()
        tmux("send-keys", "-t", session, "Down")
        row = out.wait_row(row)
        lat.append(time.perf_counter() - t)
        time.sleep(gap)
    return lat


def type_into_prompt(session: str, text: str) -> None:
    """Replace the prompt's text with ``text`` (again if keys sent before its input took focus were lost)."""
    for _ in range(5):
        tmux("send-keys", "-t", session, "C-u")
        tmux("send-keys", "-t", session, "-l", text)
        try:
            wait_screen(session, lambda s: text[-30:] in s, 2)
            return
        except RuntimeError:
            continue
    screen = " | ".join(ln.strip() for ln in tmux("capture-pane", "-p", "-t", session).splitlines() if ln.strip())
    raise RuntimeError(f"the prompt never showed the typed text; the screen shows: {screen[-600:]}")


def in_flight(exe: str, env: dict, folder: Path) -> dict[str, tuple[list[float], float]]:
    """Cursor keys while a cancel waits out its 10 s grace, and while the reference plan is added:
    {what: (latencies, seconds the work took)}, measured in an app of its own."""
    root = folder / "in-flight"
    ids = prepare(root, 16)
    slow = subprocess.Popen(
        [sys.executable, "-c", SLOW_TO_STOP], stdout=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as the daemon starts runs
    slow.stdout.readline()
    # the first row; a worker of its own, so that the cancel sends no other running run back to the queue
    Ledger(root).update(ids[0], pid=slow.pid, pid_started=psutil.Process(slow.pid).create_time(), worker="slow")
    # its process has begun it (a start event from that pid): it trains, it does not wait in its worker
    (root / ids[0] / "events.jsonl").write_text(
        json.dumps({"t": time.time(), "event": "start", "pid": slow.pid}) + "\n"
    )
    session = f"bench-tui-flight-{os.getpid()}"
    tmux(
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "160",
        "-y",
        "45",
        "env",
        *[f"{k}={v}" for k, v in {**env, "STILTS_RUNS_DIR": str(root)}.items()],
        exe,
    )
    found: dict[str, tuple[list[float], float]] = {}
    try:
        wait_screen(session, lambda out: "16 running" in out and " · row 1/" in out, 30)
        # only the daemon signals runs: a paused one adopts the slow process and carries out the cancel
        for args in (["queue", "pause"], ["daemon", "start", "--interval", "0.2"]):
            subprocess.run(
                [sys.executable, "-m", "stilts_tui.cli", "--runs-dir", str(root), *args],
                check=True,
                env={k: v for k, v in env.items() if k != "STILTS_NO_DAEMON"},
                capture_output=True,
            )
        out = PaneOutput(session, folder)
        t = time.perf_counter()
        tmux("send-keys", "-t", session, "c")
        out.wait("cancelling")
        lat = keys_while(session, out, lambda: slow.poll() is None, 0.1)
        found["cancel"] = (lat, time.perf_counter() - t)
        ledger = root / "ledger.json"
        adds: list[float] = []
        took = 0.0
        for k in range(ADDS):
            plan = reference_plan(folder, k)
            tmux("send-keys", "-t", session, "a")
            wait_screen(session, lambda s: "Queue a plan file" in s)
            time.sleep(0.5)  # the prompt's input takes focus after its first frame: keys before it go to the queue
            type_into_prompt(session, str(plan))
            stamp = ledger.stat().st_mtime_ns
            t = time.perf_counter()
            tmux("send-keys", "-t", session, "Enter")
            out.wait("queueing")
            adds += keys_while(session, out, lambda s=stamp: ledger.stat().st_mtime_ns == s, 0.02)
            took += time.perf_counter() - t
            wait_screen(session, lambda s, n=k: f"/{1000 + 1012 * (n + 1)}" in s, 120)  # the new runs shown
        found["add"] = (adds, took / ADDS)
    finally:
        tmux("kill-session", "-t", session)
        subprocess.run(
            [sys.executable, "-m", "stilts_tui.cli", "--runs-dir", str(root), "daemon", "stop"], capture_output=True
        )
        slow.kill()
        slow.wait()
    return found


def summary(lat: list[float]) -> tuple[float, float]:
    lat = sorted(lat)
    return 1000 * statistics.median(lat), 1000 * lat[int(0.95 * (len(lat) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--rate", type=int, default=200)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "stilts-tui")
    # the package's bytecode, as any install but an editable one under PYTHONDONTWRITEBYTECODE has it
    # (this machine sets that variable: each launch would otherwise compile the app's modules again)
    import compileall

    import stilts_tui

    compileall.compile_dir(str(Path(stilts_tui.__file__).parent), quiet=1)
    # one session kept for the whole bench, so the tmux server never exits between the sessions below
    # (a new session started while the server is exiting fails with "server exited unexpectedly")
    anchor = f"bench-anchor-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", anchor, "sleep", "3600"], check=True)
    try:
        run(args, exe)
    finally:
        tmux("kill-session", "-t", anchor)


def run(args: argparse.Namespace, exe: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "runs"
        ids = prepare(root, args.runs)
        # STILTS_CONFIRM=0: the cancel measured starts at its key, not after a question
        env = {"STILTS_NO_DAEMON": "1", "STILTS_RUNS_DIR": str(root), "TERM": "xterm-256color", "STILTS_CONFIRM": "0"}
        env |= curves_visible(Path(d))
        if os.environ.get("PYTHONPATH"):  # the tree measured, whatever environment the tmux server started with
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        launch = launch_figures(exe, env, ids, Path(d))
        ours = our_keys(args, exe, env, root, ids, Path(d))
        flight = in_flight(exe, env, Path(d))
        refs = reference_keys(args, root, ids, Path(d))
    report(args, launch, ours, flight, refs)


def launch_figures(exe: str, env: dict, ids: list[str], folder: Path) -> dict[str, float]:
    """Seconds to the first frame and to the runs shown, and a minimal Textual app's first frame."""
    ours = first_frame([exe], "Filter", env, folder)
    rows = first_frame([exe], ids[0], env, folder)  # the first run's row on screen: the ledger read and shown
    hello = folder / "hello.py"
    hello.write_text(HELLO)
    ref = first_frame([sys.executable, str(hello)], "hello", env, folder)
    print(
        f"launch to first frame: stilts-tui {1000 * ours:.0f} ms, minimal Textual app {1000 * ref:.0f} ms "
        f"(ratio {ours / ref:.2f}); to the runs shown (1,000 in the ledger): {1000 * rows:.0f} ms",
        flush=True,
    )
    return {"first_frame_s": ours, "rows_shown_s": rows, "reference_first_frame_s": ref}


def writers(args: argparse.Namespace, root: Path, ids: list[str], seconds: float) -> subprocess.Popen:
    """The load: ``args.runs`` runs each writing ``args.rate`` log lines a second (started 2 s ago)."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), ",".join(ids), str(args.rate), str(seconds)]
        + [str(STEP_EVERY), str(EVAL_EVERY)]
    )
    time.sleep(2)
    return writer


def stop(writer: subprocess.Popen) -> None:
    writer.terminate()
    writer.wait()


def our_keys(args: argparse.Namespace, exe: str, env: dict, root: Path, ids: list[str], folder: Path) -> dict:
    """The app's queue cursor and log-pane keys, idle and under load; its memory under load."""
    session = f"bench-tui-{os.getpid()}"
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "45", "env", *[f"{k}={v}" for k, v in env.items()], exe)
    try:
        wait_screen(session, lambda out: "16 running" in out, 30)
        time.sleep(1)
        shown = "trend" in tmux("capture-pane", "-p", "-t", session)
        print(f"the queue's loss-trend column shown: {'yes' if shown else 'no (an app without it)'}", flush=True)
        for _ in range(4):  # mark four running runs (their logs open later); space moves down
            tmux("send-keys", "-t", session, "Space")
        wait_screen(session, lambda out: " · row 5/" in out)
        out = PaneOutput(session, folder)
        q_idle = cursor_latency(session, 0, IDLE_KEYS, out)
        writer = writers(args, root, ids, args.seconds + 60)
        q_busy = cursor_latency(session, args.seconds / 2, 40, out)
        stop(writer)
        tmux("send-keys", "-t", session, "l")
        wait_screen(session, lambda out: ids[3] in out)
        wait_screen(session, lambda out: f"focus: {ids[0]}" in out)
        try:
            drawn = wait_screen(session, lambda out: "at step" in out, 5) >= 0  # a loss plot's title
        except RuntimeError:
            drawn = False
        print(f"the log panes' curves drawn: {'yes' if drawn else 'no (an app without them)'}", flush=True)
        idle, _ = latency(session, 0, IDLE_KEYS, ids, out)
        writer = writers(args, root, ids, args.seconds + 30)
        busy, rss = latency(session, args.seconds, 40, ids, out)
        stop(writer)
    finally:
        tmux("kill-session", "-t", session)
    return {"q_idle": q_idle, "q_busy": q_busy, "idle": idle, "busy": busy, "rss": rss}


def reference_keys(args: argparse.Namespace, root: Path, ids: list[str], folder: Path) -> dict:
    """Minimal Textual apps pressed with the same keys, idle and under the same load."""
    refs = {}
    for name, code, marker in (("table", REF_TABLE, "ref · row"), ("logs", REF_LOGS, "focus: p0")):
        path = folder / f"{name}.py"
        path.write_text(code)
        session = f"bench-ref-{name}-{os.getpid()}"
        tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "45", sys.executable, str(path))
        try:
            if name == "table":
                wait_screen(session, lambda out: "999-0" in out or "row 1/1000" in out, 30)
                tmux("send-keys", "-t", session, "Down")
            else:
                wait_screen(session, lambda out, m=marker: m in out, 30)
            wait_screen(session, lambda out, m=marker: m in out)
            time.sleep(0.5)
            out = PaneOutput(session, folder)
            for load in ("idle", "busy"):
                # the same writers, into the same run folders: the same load
                writer = writers(args, root, ids, args.seconds + 30) if load == "busy" else None
                if name == "table":
                    lat = cursor_latency(session, args.seconds / 4 if writer else 0, 40, out)
                else:
                    lat = latency(session, args.seconds / 4 if writer else 0, 40, ["p0", "p1", "p2", "p3"], out)[0]
                refs[(name, load)] = summary(lat)
                if writer:
                    stop(writer)
        finally:
            tmux("kill-session", "-t", session)
    return refs


def report(args: argparse.Namespace, launch: dict, ours: dict, flight: dict, refs: dict) -> None:
    qm, qp = summary(ours["q_idle"])
    qbm, qbp = summary(ours["q_busy"])
    print(
        f"key-to-repaint, queue cursor (down), idle: median {qm:.1f} ms, p95 {qp:.1f} ms; while {args.runs} runs "
        f"x {args.rate} lines/s: median {qbm:.1f} ms, p95 {qbp:.1f} ms (ratio {qbm / qm:.2f})"
    )
    print(
        f"  minimal Textual app, a 1,000-row table's cursor: idle median {refs['table', 'idle'][0]:.1f} ms, "
        f"under the same load {refs['table', 'busy'][0]:.1f} ms (stilts / minimal: idle "
        f"{qm / refs['table', 'idle'][0]:.2f}, loaded {qbm / refs['table', 'busy'][0]:.2f})"
    )
    im, ip = summary(ours["idle"])
    bm, bp = summary(ours["busy"])
    rss = ours["rss"]
    print(
        f"  minimal Textual app, four Log widgets, tab: idle median {refs['logs', 'idle'][0]:.1f} ms, under the "
        f"same load {refs['logs', 'busy'][0]:.1f} ms (stilts / minimal: idle {im / refs['logs', 'idle'][0]:.2f}, "
        f"loaded {bm / refs['logs', 'busy'][0]:.2f})"
    )
    print(f"key-to-repaint, log panes (tab moves focus), idle: median {im:.1f} ms, p95 {ip:.1f} ms")
    print(
        f"key-to-repaint, {args.runs} runs x {args.rate} lines/s, 4 panes shown: median {bm:.1f} ms, "
        f"p95 {bp:.1f} ms over {len(ours['busy'])} keys (ratio to idle {bm / im:.2f})"
    )
    print(f"memory of the app over {args.seconds:.0f} s: {rss[0]:.0f} MB -> {rss[-1]:.0f} MB (max {max(rss):.0f} MB)")
    for what, label in (
        ("cancel", "a cancel waiting out its 10 s grace (the process ignores SIGTERM)"),
        ("add", f"adding the 1,008-target-run reference plan ({ADDS} adds)"),
    ):
        lat, took = flight[what]
        m, p95 = summary(lat)
        print(
            f"key-to-repaint, queue cursor, while {label}: median {m:.1f} ms, p95 {p95:.1f} ms over {len(lat)} keys "
            f"({'within' if p95 <= 50 else 'OVER'} 50 ms; the work took {took:.1f} s)"
        )
    print(
        json.dumps(
            {
                **launch,
                "queue_idle_ms": [qm, qp],
                "queue_busy_ms": [qbm, qbp],
                "idle_ms": [im, ip],
                "busy_ms": [bm, bp],
                "rss_mb": [rss[0], rss[-1], max(rss)],
                "during_cancel_ms": list(summary(flight["cancel"][0])),
                "during_add_ms": list(summary(flight["add"][0])),
                "reference_ms": {f"{k[0]}_{k[1]}": v for k, v in refs.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
