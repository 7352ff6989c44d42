"""The first key after the add prompt closes: Enter on the prompt (a plan path typed), then, once
"queueing …" is painted (a toast, or the totals bar), the queue cursor key (down); the time from
that key to the frame that shows its row, and from Enter to that frame. bench/tui.py measures the
same key in tmux (its p95 during adds is set by this one key); this runs the app under Pilot,
headless, on a ledger of 1,000 runs, each repeat in an app of its own on a fresh copy of the ledger,
the add's child process killed once the key is painted. A headless app renders no frame to a
terminal: here each frame is rendered to its escape codes as a terminal app would
(``render_segments``), so its cost counts.

    python bench/prompt_close.py [--repeats 7] [--profile] [--after MS]   (a timeline of the first
    repeat; with --profile, cProfile's top entries for the UI thread from Enter to the key's frame;
    with --after, the key waits until MS after Enter, for code that says "queueing" at other times)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tui import prepare, reference_plan  # noqa: E402 - bench/tui.py's ledger and plan, not its tmux runs

SIZE = (160, 45)  # bench/tui.py's tmux window


class Frames:
    """Every frame the app displays: (time, seconds it took to build and render), and a watch that
    records the time of the first frame for which ``cond()`` holds."""

    def __init__(self, app):
        self.app, self.log, self.marks = app, [], {}
        self.watch: tuple[str, object] | None = None
        display = app._display

        def timed(screen, renderable) -> None:
            t = time.perf_counter()
            display(screen, renderable)
            if renderable is not None and hasattr(renderable, "render_segments"):
                renderable.render_segments(app.console)  # what a terminal app writes
            self.log.append((t, time.perf_counter() - t))
            if self.watch is not None and self.watch[1]():
                self.marks[self.watch[0]] = time.perf_counter()
                self.watch = None

        app._display = timed

    async def until(self, name: str, cond, timeout: float = 30.0) -> float:
        self.watch = (name, cond)
        deadline = time.perf_counter() + timeout
        while name not in self.marks:
            if time.perf_counter() > deadline:
                app = self.app
                raise RuntimeError(
                    f"no frame showed {name}: {len(self.log)} frames, screens {app.screen_stack},"
                    f" focused {app.focused!r}, notifications {list(app._notifications)}"
                )
            await asyncio.sleep(0.002)
        return self.marks[name]


def queueing_shown(app) -> bool:
    """Whether the screen says "queueing …": in a toast, or in the queue's totals bar."""
    from textual.widgets import Static

    shown = [str(w.render()) for w in app.screen.query("Toast")] + [
        str(app.screen.query_one("#totals", Static).render())
    ]
    return any("queueing" in text for text in shown)


def send(app, key: str) -> None:
    """A key as the terminal sends it (not Pilot's press, which waits for the app to go idle)."""
    from textual import events

    event = events.Key(key, None)
    event.set_sender(app)
    app._driver.send_message(event)


def steps(app) -> tuple[list[tuple[float, str]], object]:
    """Times of the steps between Enter and the key (pop, notify, worker, Popen, each frame's layout and
    compositor update), from patched calls; and a function that undoes the patches."""
    import subprocess

    from textual._compositor import Compositor
    from textual.screen import Screen
    from textual.widgets._toast import ToastRack

    from stilts_tui.tui.screens.queue import QueueScreen

    events: list[tuple[float, str]] = []
    undo: list[tuple[object, str, object]] = []

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)
        undo.append((owner, name, inner))

        def timed(*a, **kw):
            t, c = time.perf_counter(), time.thread_time()
            out = inner(*a, **kw)
            took, cpu = time.perf_counter() - t, time.thread_time() - c
            events.append((t, f"{label} ({1000 * took:.1f} ms, {1000 * cpu:.1f} ms CPU)"))
            return out

        setattr(owner, name, timed)

    wrap(app, "pop_screen", "app.pop_screen")
    wrap(app, "notify", "app.notify")
    wrap(app, "add_plan", "app.add_plan (the worker made)")
    wrap(subprocess.Popen, "__init__", "Popen (worker thread)")
    wrap(QueueScreen, "show", "QueueScreen.show")
    wrap(Screen, "_compositor_refresh", "  Screen._compositor_refresh")
    wrap(Compositor, "update_widgets", "  Compositor.update_widgets")
    wrap(Screen, "_refresh_layout", "  Screen._refresh_layout")
    wrap(ToastRack, "show", "ToastRack.show")

    def restore() -> None:
        for owner, name, inner in undo:
            if isinstance(owner, type):
                setattr(owner, name, inner)

    return events, restore


def kill_children() -> None:
    for child in psutil.Process().children(recursive=True):
        if "stilts_tui.tui.apart" in " ".join(child.cmdline()):
            child.send_signal(signal.SIGKILL)


def _no_raise(wait):
    async def waited(*a, **kw):
        from textual.worker import WorkerFailed

        try:
            await wait(*a, **kw)
        except WorkerFailed:  # the add, killed once the key was painted
            pass

    return waited


async def one(template: Path, folder: Path, k: int, profile: bool, timeline: bool, after: float) -> dict[str, float]:
    from textual.widgets import DataTable, Input

    from stilts_tui.tui.app import StiltsApp

    root = folder / f"runs-{k}"
    shutil.copytree(template, root)
    plan = reference_plan(folder, k)
    app = StiltsApp(root, keymap={}, confirm=False, settle_gc=True)  # as in a terminal
    app.workers.wait_for_complete = _no_raise(app.workers.wait_for_complete)
    async with app.run_test(size=SIZE, notifications=True) as pilot:  # toasts, as in a terminal
        frames = Frames(app)
        queue = app.queue_screen
        while not (app.screen is queue and queue.query_one(DataTable).row_count == 1000 and queue._settled):
            await pilot.pause(0.05)
        await app.workers.wait_for_complete()
        await pilot.pause(0.3)
        await pilot.press("a")
        while not isinstance(app.focused, Input):
            await pilot.pause(0.02)
        app.focused.value = str(plan)
        await pilot.pause(0.3)
        table = queue.query_one(DataTable)
        row = table.cursor_row
        log, undo = steps(app) if timeline else ([], lambda: None)
        prof = cProfile.Profile() if profile else None
        n_frames = len(frames.log)
        t_enter = time.perf_counter()
        if prof:
            prof.enable()
        send(app, "enter")
        t_toast = await frames.until("toast", lambda: queueing_shown(app))
        while time.perf_counter() < t_enter + after:  # --after: the key at a fixed time, the same for any code
            await asyncio.sleep(0.0005)
        t_key = time.perf_counter()
        send(app, "down")
        t_row = await frames.until("row", lambda: table.cursor_row != row)
        if prof:
            prof.disable()
        kill_children()
        undo()
        out = {"enter_to_toast": t_toast - t_enter, "key_to_row": t_row - t_key, "enter_to_row": t_row - t_enter}
        if timeline:
            print(f"timeline of repeat {k} (ms from Enter):")
            marks = [(t, f"frame written ({d * 1000:.1f} ms to render it)") for t, d in frames.log[n_frames:]]
            marks += log + [(t_key, "down key sent"), (t_toast, "toast frame"), (t_row, "row frame")]
            for t, what in sorted(marks):
                print(f"  {1000 * (t - t_enter):7.1f}  {what}")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
            print(s.getvalue())
        await app.workers.wait_for_complete()  # the killed add's error: shown, not raised
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--after", type=float, default=0.0, help="send the key no sooner than this many ms after Enter")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        template = Path(d) / "template"
        prepare(template, 16)
        found = []
        for k in range(args.repeats):
            found.append(asyncio.run(one(template, Path(d), k, args.profile and k == 0, k == 0, args.after / 1000)))
            print(" ".join(f"{name} {1000 * v:.1f} ms" for name, v in found[-1].items()), flush=True)
    for name in found[0]:
        vals = [1000 * f[name] for f in found]
        print(f"{name}: median {statistics.median(vals):.1f} ms, max {max(vals):.1f} ms over {len(vals)} repeats")


if __name__ == "__main__":
    main()
