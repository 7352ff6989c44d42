"""The GPU view and `doctor --json`: GPUs with memory, a short history and each process named by its run
(a run's own child included) or by its user and command; a clean word where NVML is absent. Fake GPUs
(STILTS_FAKE_GPUS, STILTS_FAKE_GPU_PROCS) with real processes; a fake NVML module that cannot start."""

from __future__ import annotations

import getpass
import io
import json
import subprocess
import sys
import time
import types

import pytest
from conftest import cli, plan_text, until, write_text

from stilts_tui.queue import gpu_procs
from stilts_tui.store.ledger import Ledger
from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.screens.gpus import GpuScreen, spark

PLAN = plan_text(name="g", stages='[intermediate.hs]\ntask = "hellaswag"\n[target.rte]\ntask = "rte"\n')


@pytest.fixture
def busy(tmp_path, runs_dir, monkeypatch):
    """Two fake GPUs: GPU 1 runs a run (a worker process and its child), GPU 0 a process not ours."""
    assert cli("queue", "add", str(write_text(tmp_path / "g.toml", PLAN)), runs_dir=runs_dir).returncode == 0
    target = next(r for r in Ledger(runs_dir).runs() if r["stage"] == "target")
    worker = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"])
    foreign = subprocess.Popen(["sleep", "61"])
    import psutil

    for _ in range(100):  # the worker's child is up
        kids = psutil.Process(worker.pid).children()
        if kids:
            break
        time.sleep(0.05)
    child = kids[0].pid
    with Ledger(runs_dir).transaction() as tx:
        tx.update_run(target["id"], status="running", gpu=1, pid=worker.pid, est_gb=1.5)
    env = {"STILTS_FAKE_GPUS": "2x24", gpu_procs.FAKE_PROCS_VAR: f"0:{foreign.pid}:3.0,1:{child}:0.5"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield {"root": runs_dir, "run": target, "worker": worker.pid, "child": child, "foreign": foreign.pid, "env": env}
    for p in (worker, foreign):
        p.kill()
        p.wait()
    psutil.Process(child).kill() if psutil.pid_exists(child) else None


def test_every_process_is_named_by_its_run_or_its_user_and_command(busy):
    report = gpu_procs.snapshot(busy["root"])
    g0, g1 = report.gpus
    (foreign,) = g0.procs
    assert (foreign.pid, foreign.ours, foreign.user, foreign.command) == (
        busy["foreign"],
        False,
        getpass.getuser(),
        "sleep 61",
    )
    assert g0.used_gb == 3.0 and g1.used_gb == 2.0  # fake GPUs: the sum of their processes
    procs = {p.pid: p for p in g1.procs}
    assert set(procs) == {busy["worker"], busy["child"]}
    for p in procs.values():  # the worker by its pid, its child through its parent
        assert p.ours and p.run_ids == [busy["run"]["id"]] and p.plan == "g" and p.stage == "target rte (from none)"


def test_doctor_json_shows_the_same(busy):
    out = cli("doctor", "--json", runs_dir=busy["root"], env=busy["env"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    g1 = data["gpus"][1]
    assert {p["pid"] for p in g1["procs"] if p["ours"]} == {busy["worker"], busy["child"]}
    assert data["gpus"][0]["procs"][0]["command"] == "sleep 61" and data["driver"] == "fake"
    text = cli("doctor", runs_dir=busy["root"], env=busy["env"]).stdout
    assert f"pid {busy['foreign']} on GPU 0: not ours: user {getpass.getuser()}, sleep 61" in text
    assert f"pid {busy['worker']} on GPU 1: run {busy['run']['id']} (g, target rte (from none))" in text


async def test_the_gpu_screen_lists_processes_and_keeps_a_history(busy):
    async with StiltsApp(busy["root"], keymap={}).run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        screen = pilot.app.screen
        assert isinstance(screen, GpuScreen)
        await until(pilot, lambda: len(screen.history.get(1, [])) >= 2, "two samples, INTERVAL apart", 20)
        assert [m for m, _ in screen.history[1]][-2:] == [2.0, 2.0]
        text = plain(screen.shown)
        assert "GPU 1" in text and busy["run"]["id"] in text and "target rte (from none)" in text
        assert "sleep 61" in text and getpass.getuser() in text and "2.0 / 24.0 GiB" in text


def plain(renderable) -> str:
    """What the screen shows, as text."""
    from rich.console import Console

    con = Console(width=160, record=True, file=io.StringIO())
    con.print(renderable)
    return con.export_text()


class _NVMLError(Exception):
    pass


def _no_driver() -> None:
    raise _NVMLError("NVML Shared Library Not Found")


async def test_without_nvml_the_view_and_doctor_say_so(runs_dir, monkeypatch):
    monkeypatch.delenv("STILTS_FAKE_GPUS", raising=False)
    fake = types.SimpleNamespace(NVMLError=_NVMLError, nvmlInit=_no_driver)  # a machine with no driver
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    report = gpu_procs.snapshot(runs_dir)
    assert report.gpus == [] and "NVML cannot start (NVML Shared Library Not Found)" in report.reason
    async with StiltsApp(runs_dir, keymap={}).run_test(size=(160, 30)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await until(pilot, lambda: getattr(pilot.app.screen, "report", None) is not None, "the first sample", 20)
        text = plain(pilot.app.screen.shown)
        assert "No GPU to show: NVML cannot start" in text and "STILTS_FAKE_GPUS=2x24" in text


def test_spark_scales_to_the_top():
    assert spark([0, 12, 24, None], 24) == "▁▅█ "


async def test_without_a_gpu_the_view_shows_the_cpus_and_each_worker_by_its_run(tmp_path, runs_dir, monkeypatch):
    # a machine with no GPU driver, where a run trains on the CPU: the view shows the cores, memory and
    # load, and the run's worker (a real process spinning a core, with a child) by its run, CPU share
    # and memory, measured between two samples
    monkeypatch.delenv("STILTS_FAKE_GPUS", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(NVMLError=_NVMLError, nvmlInit=_no_driver))
    assert cli("queue", "add", str(write_text(tmp_path / "g.toml", PLAN)), runs_dir=runs_dir).returncode == 0
    target = next(r for r in Ledger(runs_dir).runs() if r["stage"] == "target")
    spin = "import subprocess, time\nc = subprocess.Popen(['sleep', '60'])\nt = time.time()\n"
    spin += "while time.time() - t < 60: pass"
    worker = subprocess.Popen([sys.executable, "-c", spin])
    try:
        with Ledger(runs_dir).transaction() as tx:
            tx.update_run(target["id"], status="running", pid=worker.pid)
        async with StiltsApp(runs_dir, keymap={}).run_test(size=(200, 30)) as pilot:
            await pilot.pause()
            await pilot.press("g")
            screen = pilot.app.screen

            def measured():
                procs = screen.cpu.procs if screen.cpu is not None else []
                return procs and procs[0].cpu_percent > 20 and len(screen.cpu_history) >= 2

            await until(pilot, measured, "the worker's CPU share measured over two samples", 20)
            (proc,) = screen.cpu.procs
            assert proc.pid == worker.pid and proc.run_ids == [target["id"]] and proc.stage == "target rte (from none)"
            assert 0.005 < proc.rss_gb < 2 and proc.threads >= 1
            text = plain(screen.shown)
            assert "No GPU to show: NVML cannot start" in text and "Runs train on the CPU" in text
            assert f"CPU  {len(screen.cpu.cores)} cores" in text and "GiB" in text and "load " in text
            assert str(worker.pid) in text and target["id"] in text and "target rte (from none)" in text
            # the run ends: its worker leaves the view
            with Ledger(runs_dir).transaction() as tx:
                tx.update_run(target["id"], status="done")
            await until(pilot, lambda: screen.cpu is not None and not screen.cpu.procs, "the worker left the view", 20)
            assert "no run training" in plain(screen.shown)
    finally:
        import psutil

        for p in [*psutil.Process(worker.pid).children(recursive=True), psutil.Process(worker.pid)]:
            p.kill()
        worker.wait()
