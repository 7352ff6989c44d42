"""The queue's GPU branches taken on the CPU: MPS with a fake ``nvidia-cuda-mps-control`` first on PATH
(failing, hanging, left running by a crash), NVML with a fake ``pynvml`` first on PYTHONPATH (an
NVMLError on one device), and placement decisions of ``Daemon.tick()`` in-process with fake GPUs: a
real ledger file, real spec.json files, real (sleeping) processes standing in for the trainer."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, cli, wait, write_jsonl, write_text

from stilts_tui.cli.demo import pair_rows
from stilts_tui.queue import daemon as qd
from stilts_tui.queue import gpus, mps, ops
from stilts_tui.queue.executor import Context
from stilts_tui.queue.executors.local import LocalExecutor
from stilts_tui.store.ledger import Ledger

FAKES = Path(__file__).parent / "fakes"


# -- MPS ------------------------------------------------------------------------------------------------


class FakeMPS:
    """The fake control program first on PATH, and what it was asked."""

    def __init__(self, tmp: Path, root: Path):
        self.bin = tmp / "fakebin"
        self.bin.mkdir()
        shutil.copy(FAKES / "nvidia-cuda-mps-control", self.bin / mps.EXE)
        (self.bin / mps.EXE).chmod(0o755)
        self.calls_file = tmp / "mps-calls.jsonl"
        self.root = root
        self.base = mps.base_dir(root)
        self.env = {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "FAKE_MPS_CALLS": str(self.calls_file)}

    def calls(self) -> list[dict]:
        if not self.calls_file.exists():
            return []
        return [json.loads(x) for x in self.calls_file.read_text().splitlines()]

    def leave_control_daemon(self, hung: bool = False) -> psutil.Process:
        """A control daemon for our pipe folder, as a crashed queue daemon leaves it."""
        mps.prepare(self.base)
        env = {**os.environ, **self.env, **mps.environment(self.base)}
        out = subprocess.run(
            [str(self.bin / mps.EXE), "-d"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        (left,) = wait(lambda: mps.control_daemons(self.base), what="the fake control daemon")
        if hung:
            (self.base / "pipe" / "hung").write_text("")
        return left

    def cleanup(self) -> None:
        for p in mps.control_daemons(self.base):
            p.kill()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def fake_mps(tmp_path, runs_dir, monkeypatch):
    fake = FakeMPS(tmp_path, runs_dir)
    for k, v in fake.env.items():
        monkeypatch.setenv(k, v)
    yield fake
    fake.cleanup()


def in_process_daemon(root: Path, **settings) -> qd.Daemon:
    return qd.Daemon(root, qd.Settings(**settings))


def test_mps_starts_under_a_short_private_path_and_quits_with_the_daemon(fake_mps, runs_dir):
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    assert d.mps_dir == fake_mps.base and str(fake_mps.base).startswith("/tmp/stilts-mps-")
    assert [c["args"] for c in fake_mps.calls()] == [["-d"], []]  # start, then a check that it answers
    assert fake_mps.calls()[0]["pipe"] == str(fake_mps.base / "pipe")
    for sub in ("", "pipe", "log"):  # private: another user cannot reach the sockets
        assert stat.S_IMODE((fake_mps.base / sub).stat().st_mode) == 0o700
    (left,) = mps.control_daemons(fake_mps.base)
    env, _, _ = d.executor.run_env(qd.placement.Device(0, 24, 24, 4), 0)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(fake_mps.base / "pipe")
    assert mps.describe(runs_dir, os.getpid()).startswith("MPS on (started")
    d.stop_mps()
    assert fake_mps.calls()[-1]["stdin"] == "quit"
    wait(lambda: not left.is_running() or left.status() == psutil.STATUS_ZOMBIE, what="the control daemon to quit")
    assert d.mps_dir is None and "the daemon stopped it (stopped)" in mps.describe(runs_dir, os.getpid())


def test_a_missing_mps_control_leaves_the_daemon_without_mps_and_says_why(runs_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    assert d.mps_dir is None
    assert (
        "MPS off, runs go on without it: nvidia-cuda-mps-control not found on PATH"
        in (runs_dir / "daemon.log").read_text()
    )
    env, _, _ = d.executor.run_env(qd.placement.Device(0, 24, 24, 4), 0)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in env
    d.stop_mps()  # nothing to stop: no call, no error


def test_a_hanging_mps_control_times_out_and_the_daemon_goes_on(fake_mps, runs_dir, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_MODE", "hang")
    monkeypatch.setattr(mps, "CALL_TIMEOUT", 1.0)
    d = in_process_daemon(runs_dir, mps=True)
    t = time.time()
    d.start_mps()
    assert time.time() - t < 5 and d.mps_dir is None
    assert "did not answer within 1 s" in mps.describe(runs_dir, os.getpid())


def test_a_live_control_daemon_left_by_a_crash_is_reused_and_quit_at_the_end(fake_mps, runs_dir):
    left = fake_mps.leave_control_daemon()
    assert (
        f"an MPS control daemon is left running for this runs-dir (pid {left.pid})"
        in cli("doctor", runs_dir=runs_dir).stdout
    )
    before = len(fake_mps.calls())
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    assert d.mps_dir == fake_mps.base
    assert [c["args"] for c in fake_mps.calls()[before:]] == [[]]  # asked whether it answers; no second -d
    assert f"reused the MPS control daemon left running (pid {left.pid})" in (runs_dir / "daemon.log").read_text()
    d.stop_mps()
    wait(lambda: not left.is_running() or left.status() == psutil.STATUS_ZOMBIE, what="the old daemon to quit")


def test_a_control_daemon_that_stopped_answering_is_ended_and_replaced(fake_mps, runs_dir, monkeypatch):
    monkeypatch.setattr(mps, "CALL_TIMEOUT", 1.0)
    left = fake_mps.leave_control_daemon(hung=True)
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    assert not left.is_running() or left.status() == psutil.STATUS_ZOMBIE
    assert d.mps_dir == fake_mps.base
    (new,) = mps.control_daemons(fake_mps.base)
    assert new.pid != left.pid
    log = (runs_dir / "daemon.log").read_text()
    assert "does not answer" in log and "MPS on: started" in log
    d.stop_mps()


def test_sockets_left_by_a_dead_control_daemon_are_cleared_before_starting(fake_mps, runs_dir):
    mps.prepare(fake_mps.base)
    (fake_mps.base / "pipe" / "control").write_text("")  # the fake, like the real one, refuses to start over it
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    assert d.mps_dir == fake_mps.base and mps.control_daemons(fake_mps.base)
    assert "removing what a dead control daemon left" in (runs_dir / "daemon.log").read_text()
    d.stop_mps()


def test_a_pipe_folder_owned_by_someone_else_is_refused(fake_mps, runs_dir):
    fake_mps.base.mkdir(mode=0o700)
    os.chmod(fake_mps.base, 0o755)
    link = fake_mps.base / "pipe"
    link.symlink_to("/tmp")  # a planted symlink must not become our socket folder
    state, _ = mps.start(runs_dir)
    assert not state.on and "is not a folder" in state.reason
    assert stat.S_IMODE(fake_mps.base.stat().st_mode) == 0o700


def test_stop_mps_never_raises_when_quit_fails(fake_mps, runs_dir, monkeypatch):
    d = in_process_daemon(runs_dir, mps=True)
    d.start_mps()
    monkeypatch.setenv("FAKE_MPS_MODE", "fail")
    d.stop_mps()
    assert "quit failed (nvidia-cuda-mps-control: injected failure)" in (runs_dir / "daemon.log").read_text()
    monkeypatch.delenv("FAKE_MPS_MODE")


# -- the daemon as a process: MPS failing, NVML failing on one device --------------------------------------

PLAN = """name = "g"
model = "{model}"
baseline = true
target_seeds = [1]
[defaults]
epochs = 1
batch_size = 16
max_len = {max_len}
[tasks.pair]
format = "jsonl"
train = "data/tr.jsonl"
dev = "data/dv.jsonl"
kind = "classification"
text_fields = ["s1", "s2"]
[target.t]
task = "pair"
grid = {{ lr = {lrs} }}
"""


def make_plan(folder: Path, model: str, lrs: list[float], name: str = "g", max_len: int = 24) -> Path:
    write_jsonl(folder / "data/tr.jsonl", pair_rows(32, 1))
    write_jsonl(folder / "data/dv.jsonl", pair_rows(16, 2))
    text = PLAN.format(model=model, lrs=json.dumps(lrs), max_len=max_len).replace('name = "g"', f'name = "{name}"')
    return write_text(folder / f"{name}.toml", text)


@pytest.fixture
def stop_daemon(runs_dir):
    envs: list[dict] = []
    yield envs
    for env in envs or [{}]:
        cli("daemon", "stop", runs_dir=runs_dir, env=env)
    for r in Ledger(runs_dir).runs():
        if r.get("pid"):
            try:
                os.killpg(r["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_a_failing_mps_control_first_on_path_does_not_end_the_daemon(
    tmp_path, runs_dir, tiny_model, fake_mps, stop_daemon
):
    env = {**fake_mps.env, "FAKE_MPS_MODE": "fail", "STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "1"}
    stop_daemon.append(env)
    assert (
        cli(
            "queue", "add", str(make_plan(tmp_path, str(tiny_model), [1e-4])), "--no-daemon", runs_dir=runs_dir, env=env
        ).returncode
        == 0
    )
    out = cli("daemon", "start", "--mps", "--interval", "0.2", runs_dir=runs_dir, env=env)
    assert out.returncode == 0, out.stderr
    wait(lambda: {r["status"] for r in Ledger(runs_dir).runs()} == {"done"}, timeout=120, what="the run")
    line = "MPS off: nvidia-cuda-mps-control -d failed (exit 1): nvidia-cuda-mps-control: injected failure"
    assert line in cli("daemon", "status", runs_dir=runs_dir, env=env).stdout
    assert json.loads(cli("daemon", "status", "--json", runs_dir=runs_dir, env=env).stdout)["mps"] == line
    assert f"warn  the daemon's {line}" in cli("doctor", runs_dir=runs_dir, env=env).stdout
    assert "MPS off, runs go on without it" in (runs_dir / "daemon.log").read_text()
    (run,) = Ledger(runs_dir).runs()
    assert "under MPS" not in (runs_dir / run["id"] / "train.log").read_text()


def test_mps_under_a_runs_dir_too_deep_for_a_socket_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # <deep>/.mps/pipe/control would be over 108 bytes
    deep.mkdir(parents=True)
    fake = FakeMPS(tmp_path, deep)
    env = {**fake.env, "STILTS_FAKE_GPUS": "1x24"}
    try:
        out = cli("daemon", "start", "--mps", "--interval", "0.2", runs_dir=deep, env=env)
        assert out.returncode == 0, out.stderr
        status = cli("daemon", "status", runs_dir=deep, env=env).stdout
        assert f"MPS on (started; pipe {fake.base / 'pipe'})" in status
        assert len(str(fake.base / "pipe" / "control_privileged")) < 108 < len(str(deep / ".mps/pipe/control"))
        assert not str(fake.base).startswith(str(deep))  # never under the runs-dir (NFS cannot hold sockets)
        assert cli("daemon", "stop", runs_dir=deep, env=env).returncode == 0
        wait(lambda: fake.calls() and fake.calls()[-1]["stdin"] == "quit", what="quit at the daemon's end")
        wait(lambda: not mps.control_daemons(fake.base), what="the control daemon to end")
    finally:
        cli("daemon", "stop", runs_dir=deep, env=env)
        fake.cleanup()


def test_an_nvml_error_on_one_gpu_leaves_it_out_and_runs_go_to_the_other(tmp_path, runs_dir, tiny_model, stop_daemon):
    # no STILTS_FAKE_GPUS: the daemon asks (fake) NVML, so a placement is a real GPU placement and the
    # trainer gets --device cuda, which this CPU-only torch cannot give: the runs fail, never train on the CPU
    env = {"PYTHONPATH": f"{FAKES / 'nvml'}{os.pathsep}{ROOT}", "FAKE_NVML_BAD": "1", "OMP_NUM_THREADS": "1"}
    stop_daemon.append(env)
    assert (
        cli(
            "queue",
            "add",
            str(make_plan(tmp_path, str(tiny_model), [1e-4, 2e-4])),
            "--no-daemon",
            runs_dir=runs_dir,
            env=env,
        ).returncode
        == 0
    )
    out = cli(
        "daemon",
        "start",
        "--interval",
        "0.2",
        "--per-gpu",
        "1",
        "--worker-runs",
        "1",
        "--max-retries",
        "0",
        runs_dir=runs_dir,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads((runs_dir / "daemon.json").read_text())
    wait(lambda: {r["status"] for r in Ledger(runs_dir).runs()} == {"failed"}, timeout=120, what="the runs to end")
    runs = Ledger(runs_dir).runs()
    assert [r["gpu"] for r in runs] == [0, 0]  # GPU 1 was never used; GPU 0 took both in turn
    for r in runs:
        log = (runs_dir / r["id"] / "train.log").read_text()
        assert "queue: placed on GPU 0 (CUDA_VISIBLE_DEVICES=0, --device cuda)" in log
        # the child was asked for CUDA and failed, instead of training on the CPU
        assert "CUDA is not available" in r["error"] and "eval epoch" not in log
        assert "cpu" not in log.split("queue: placed", 1)[1].lower()
    assert psutil.pid_exists(info["pid"]) and cli("daemon", "status", runs_dir=runs_dir, env=env).stdout.startswith(
        "daemon running"
    )
    assert "GPU 1 unusable, left out: NVMLError_GpuIsLost: GPU is lost" in (runs_dir / "daemon.log").read_text()
    doctor = cli("doctor", runs_dir=runs_dir, env=env).stdout
    assert "ok    GPU 0: Fake GPU" in doctor and "fail  GPU 1: NVML fails on it (NVMLError_GpuIsLost" in doctor


# -- NVML in-process ------------------------------------------------------------------------------------


@pytest.fixture
def fake_nvml(monkeypatch):
    spec = importlib.util.spec_from_file_location("pynvml", FAKES / "nvml" / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("STILTS_FAKE_GPUS", raising=False)
    for name, value in (("_NO_NVML", False), ("_SEEN_GPUS", False), ("_INIT_ERROR", None), ("_INIT_FAILED_AT", 0.0)):
        monkeypatch.setattr(gpus, name, value)
    return module


def test_probe_reports_the_failing_device_and_keeps_the_others(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_BAD", "1")
    monkeypatch.setenv("FAKE_NVML_COUNT", "3")
    probe = gpus.probe()
    assert [g.index for g in probe.usable] == [0, 2] and probe.error is None
    assert probe.gpus[1].error == "NVMLError_GpuIsLost: GPU is lost"
    assert [g.index for g in gpus.list_gpus()] == [0, 2]


def test_nvml_init_failing_after_gpus_were_seen_places_nothing_rather_than_the_cpu(fake_nvml, runs_dir, monkeypatch):
    d = in_process_daemon(runs_dir)
    assert [x.index for x in d.executor.devices([])] == [0, 1]
    monkeypatch.setenv("FAKE_NVML_INIT", "fail")
    monkeypatch.setattr(gpus, "_INIT_ERROR", None)
    assert d.executor.devices([]) == []  # not the CPU: RoBERTa-large must not train there because NVML hiccupped
    assert (
        "NVML init failed: NVMLError_Unknown: Unknown Error; no run is placed until NVML answers"
        in (runs_dir / "daemon.log").read_text()
    )


# -- Daemon.tick() in-process: placement decisions ----------------------------------------------------


class StandIn(LocalExecutor):
    """The real local executor; its processes are ``sleep`` standing in for the trainer (what a launch
    gets is kept)."""

    def __init__(self, context: Context):
        super().__init__(context)
        self.launched: list[dict] = []
        self.procs: list[subprocess.Popen] = []
        self.cmd = ["sleep", "300"]

    def spawn(self, dirs, env, log, module, args):
        proc = subprocess.Popen(self.cmd, start_new_session=True)
        self.procs.append(proc)
        self.launched.append({"runs": [d.name for d in dirs], "env": env, "args": args, "module": module})
        return proc.pid, psutil.Process(proc.pid).create_time()


def stand_in_daemon(root: Path, settings: qd.Settings) -> qd.Daemon:
    """The real daemon with the stand-in executor; ``d.launches`` and ``d.procs`` are the executor's."""
    d = qd.Daemon(root, settings)
    d.executor = StandIn(d.context)
    d.launches, d.procs = d.executor.launched, d.executor.procs
    return d


@pytest.fixture
def tick_daemon(runs_dir, monkeypatch):
    monkeypatch.setenv("STILTS_FAKE_GPUS", "2x24")
    made: list[qd.Daemon] = []

    def make(**settings) -> qd.Daemon:
        d = stand_in_daemon(runs_dir, qd.Settings(interval=0, **{"worker_runs": 1, **settings}))
        made.append(d)
        return d

    yield make
    for d in made:
        for p in d.procs:
            p.kill()
            p.wait()


def add_runs(
    tmp_path: Path, root: Path, n: int, name: str = "g", lr0: float = 1e-4, fuse: bool | None = None
) -> list[str]:
    """n runs of one shape (roberta-large, batch 16, max_len 24: a formula estimate of 6.41 GB)."""
    plan = make_plan(tmp_path, "roberta-large", [round(lr0 * (i + 1), 8) for i in range(n)], name=name)
    _, _, ids = ops.add_plan(plan, root)
    if fuse is not None:
        for rid in ids:
            path = root / rid / "spec.json"
            spec = json.loads(path.read_text())
            spec["params"]["fuse"] = fuse
            path.write_text(json.dumps(spec))
    return ids


def placements(root: Path) -> list[dict]:
    data = json.loads((root / "ledger.json").read_text())
    return sorted(data.get("placements", {}).values(), key=lambda p: p["t"])


def finish(
    d: qd.Daemon,
    root: Path,
    run_ids: list[str],
    status: str = "done",
    peak: float | None = None,
    rate: float | None = None,
) -> None:
    """What the trainer leaves for each run: result.json (its process then ends)."""
    ledger = Ledger(root)
    for rid in run_ids:
        r = ledger.get(rid)
        k = r.get("fused") or 0
        (root / rid / "result.json").write_text(
            json.dumps(
                {
                    "status": status,
                    "score": 0.5 if status == "done" else None,
                    "peak_gpu_mem_gb": peak,
                    "samples_per_s": rate,
                    "fused": k,
                    "setup": {"fused": k},
                    "error": None if status == "done" else "oom",
                }
            )
        )
        try:
            os.killpg(r["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def running(root: Path) -> dict[str, dict]:
    return {r["id"]: r for r in Ledger(root).runs() if r["status"] == "running"}


@pytest.mark.parametrize("per_gpu, expected", [(4, 3), (2, 2)])
def test_tick_places_runs_by_memory_estimate_and_per_gpu(tmp_path, runs_dir, tick_daemon, per_gpu, expected):
    add_runs(tmp_path, runs_dir, 8)
    d = tick_daemon(per_gpu=per_gpu)
    assert d.tick()["launched"] == 2 * expected  # 3 x 6.41 GB fit in 95% of 24 GiB, a 4th does not
    on = running(runs_dir)
    assert sorted(r["gpu"] for r in on.values()) == [0] * expected + [1] * expected
    for p in placements(runs_dir):
        assert p["est_gb"] == 6.41 and p["procs_before"] < per_gpu
        assert p["reserved_before_gb"] + p["est_gb"] <= 0.95 * 24
    assert d.tick()["launched"] == 0
    for launch in d.launches:  # fake GPUs: the child is told to train on the CPU, and its log says so
        assert launch["args"] == ["--device", "cpu"] and launch["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert launch["env"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
        log = (runs_dir / launch["runs"][0] / "train.log").read_text()
        assert "placed on fake GPU" in log and "training on the CPU" in log


def test_tick_learns_the_estimate_from_a_finished_runs_peak(tmp_path, runs_dir, tick_daemon):
    add_runs(tmp_path, runs_dir, 10)
    d = tick_daemon(per_gpu=8)
    d.tick()
    first = next(iter(running(runs_dir)))
    finish(d, runs_dir, [first], peak=2.0)
    d.tick()
    later = [p for p in placements(runs_dir) if p["t"] > Ledger(runs_dir).get(first)["finished"] - 1][-1]
    assert later["est_gb"] == round(2.0 * 1.15 + 0.25, 2)  # measured, with the margin
    assert len(running(runs_dir)) == 9  # the measured 2.55 GB lets the rest in


def test_fuse_auto_sizes_arrays_from_measured_peak_memory(tmp_path, runs_dir, tick_daemon):
    add_runs(tmp_path, runs_dir, 12)
    d = tick_daemon(fuse="auto")
    d.tick()
    first = placements(runs_dir)
    # nothing measured: arrays of at most 4, and 4 x 6.41 GB does not fit 22.8, so 3 a GPU
    assert [len(p["runs"]) for p in first] == [3, 3] and {p["gpu"] for p in first} == {0, 1}
    assert "no run of this shape measured yet" in first[0]["fuse_why"]
    assert "operator's override" in first[0]["fuse_why"]
    finish(d, runs_dir, first[0]["runs"], peak=9.0, rate=40.0)  # an array of 3 peaked at 9 GB: 3 GB a run
    d.tick()
    new = placements(runs_dir)[2:]
    share = round(3.0 * 1.15 + 0.25, 2)
    assert [(p["gpu"], len(p["runs"]), p["est_gb"]) for p in new] == [(first[0]["gpu"], 6, round(share * 6, 2))]
    assert "6 runs: 3.00 GB a run measured by " in new[0]["fuse_why"] and "(9 GB, 3 runs)" in new[0]["fuse_why"]
    assert all(r["fused"] == 6 for r in running(runs_dir).values() if r["id"] in new[0]["runs"])
    assert [launch["env"]["STILTS_FUSE"] for launch in d.launches] == ["3", "3", "6"]


def test_an_array_out_of_memory_is_requeued_into_arrays_of_half_its_size(tmp_path, runs_dir, tick_daemon, monkeypatch):
    monkeypatch.setenv("STILTS_FAKE_GPUS", "2x80")
    add_runs(tmp_path, runs_dir, 8)
    d = tick_daemon(fuse="4")
    d.tick()
    a, b = placements(runs_dir)
    assert len(a["runs"]) == len(b["runs"]) == 4
    finish(d, runs_dir, a["runs"], status="oom")
    stats = d.tick()
    assert stats["requeued"] == 4
    halves = placements(runs_dir)[2:]
    assert sorted(len(p["runs"]) for p in halves) == [2, 2] and sorted(sum((p["runs"] for p in halves), [])) == sorted(
        a["runs"]
    )
    assert all("capped at 2 after an OOM" in p["fuse_why"] for p in halves)
    assert "requeued for arrays of at most 2" in (runs_dir / "daemon.log").read_text()
    finish(d, runs_dir, halves[0]["runs"], status="oom")  # an array of 2 out of memory: its runs go alone
    d.tick()
    alone = {rid: Ledger(runs_dir).get(rid) for rid in halves[0]["runs"]}
    assert all(r["alone"] and r["status"] == "queued" for r in alone.values())  # both GPUs are busy
    finish(d, runs_dir, halves[1]["runs"] + b["runs"])
    d.tick()
    last = placements(runs_dir)[-2:]
    assert sorted(rid for p in last for rid in p["runs"]) == sorted(alone)
    assert all(p["alone"] and p["others_on_gpu"] == [] and p["procs_before"] == 0 and p["fused"] == 0 for p in last)


def test_fuse_auto_packs_where_fused_runs_measured_slower(tmp_path, runs_dir, tick_daemon):
    asked = add_runs(tmp_path, runs_dir, 3, fuse=True)  # the plan asks; the daemon runs with --fuse off
    plain = add_runs(tmp_path / "b", runs_dir, 3, name="h", lr0=7e-4, fuse=False)
    d = tick_daemon(per_gpu=8)
    d.tick()
    ps = placements(runs_dir)
    (array,) = [p for p in ps if p["fused"]]
    assert sorted(array["runs"]) == sorted(asked) and array["fuse_why"].startswith(
        "the plan asks (fuse = true), --fuse auto sizing; 3 runs"
    )
    assert sorted(rid for p in ps if not p["fused"] for rid in p["runs"]) == sorted(plain)  # fuse = false: alone
    finish(d, runs_dir, asked, peak=6.0, rate=30.0)
    finish(d, runs_dir, plain, peak=2.0, rate=45.0)
    more = add_runs(tmp_path / "c", runs_dir, 3, name="k", lr0=3e-3, fuse=True)
    d.tick()
    new = [p for p in placements(runs_dir) if set(p["runs"]) & set(more)]
    assert [len(p["runs"]) for p in new] == [1, 1, 1] and all(p["fused"] == 0 for p in new)
    why = "packing, not fusing: fused runs measured 30.0 samples/s a run (3 runs) < 45.0 alone (3 runs)"
    assert all(p["fuse_why"] == why for p in new)
    assert all(Ledger(runs_dir).get(rid)["fuse_why"] == why for rid in more)


def test_a_real_gpu_placement_asks_the_trainer_for_cuda_and_skips_a_failing_gpu(
    tmp_path, runs_dir, fake_nvml, monkeypatch, fake_mps
):
    monkeypatch.setenv("FAKE_NVML_BAD", "0")
    add_runs(tmp_path, runs_dir, 2)
    d = stand_in_daemon(runs_dir, qd.Settings(per_gpu=4, worker_runs=1, mps=True))
    try:
        d.start_mps()
        assert d.tick()["launched"] == 2
        assert {r["gpu"] for r in running(runs_dir).values()} == {1}
        for launch in d.launches:
            assert launch["args"] == ["--device", "cuda"]
            env = launch["env"]
            assert (env["CUDA_VISIBLE_DEVICES"], env["STILTS_DEVICE"], env["CUDA_DEVICE_ORDER"]) == (
                "1",
                "cuda",
                "PCI_BUS_ID",
            )
            assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(fake_mps.base / "pipe")
            assert (
                "placed on GPU 1 (CUDA_VISIBLE_DEVICES=1, --device cuda, under MPS)"
                in (runs_dir / launch["runs"][0] / "train.log").read_text()
            )
    finally:
        d.stop_mps()
        for p in d.procs:
            p.kill()
            p.wait()


# -- the tick carries out clients' cancel requests -------------------------------------------------------


def test_tick_carries_out_a_cancel_request_sigterm_then_sigkill_once_the_grace_is_over(tmp_path, runs_dir, tick_daemon):
    (rid,) = add_runs(tmp_path, runs_dir, 1)
    d = tick_daemon()
    d.executor.cmd = ["sh", "-c", "trap '' TERM; sleep 300"]  # ignores SIGTERM (sleep inherits that)
    assert d.tick()["launched"] == 1
    (proc,) = d.procs
    wait(lambda: psutil.Process(proc.pid).children(), 10, "the stand-in's trap set")
    out = ops.cancel(runs_dir, [rid], grace=1.0)
    assert out.requested == [rid] and out.done == [] and not out.daemon  # asked, nothing signalled
    assert proc.poll() is None
    d.tick()
    signalled = Ledger(runs_dir).get(rid)["cancel_signalled"]
    assert signalled and proc.poll() is None and Ledger(runs_dir).get(rid)["status"] == "running"
    wait(lambda: d.tick()["cancelled"] == 1, 10, "the run cancelled once its process is gone")
    assert proc.wait(timeout=5) == -signal.SIGKILL and time.time() - signalled >= 1.0  # killed after the grace
    row = Ledger(runs_dir).get(rid)
    assert row["status"] == "cancelled" and row["cancel_requested"] is None and row["pid"] is None


def test_tick_cancel_of_one_run_of_a_worker_requeues_the_runs_waiting_in_it(tmp_path, runs_dir, tick_daemon):
    first, second = add_runs(tmp_path, runs_dir, 2)
    d = tick_daemon(worker_runs=2)
    assert d.tick()["launched"] == 2 and len(d.procs) == 1  # one process trains both, in sequence
    ops.set_paused(runs_dir, True)  # nothing relaunched: the requeue itself is what is checked
    _begins(runs_dir, first, d.procs[0].pid)  # the worker is training the first run
    # the daemon asks the worker's trainer first; the stand-in never answers, so after the grace (none) and
    # the trainer's 5 s to answer, the daemon signals the process
    ops.cancel(runs_dir, [first], grace=0.0)
    wait(lambda: d.tick() is not None and Ledger(runs_dir).get(first)["status"] == "cancelled", 60, "the cancel")
    assert d.procs[0].wait(timeout=5) == -signal.SIGTERM
    other = Ledger(runs_dir).get(second)
    assert other["status"] == "queued" and other["attempts"] == 0 and other["pid"] is None


def _begins(runs_dir, run_id: str, pid: int) -> None:
    """The trainer's start event for a run its process begins (what the daemon reads a worker's turn from)."""
    with open(runs_dir / run_id / "events.jsonl", "a") as f:
        f.write(json.dumps({"t": time.time(), "event": "start", "run_id": run_id, "pid": pid}) + "\n")


def test_tick_cancel_of_a_run_waiting_in_a_worker_spares_the_run_it_is_training(tmp_path, runs_dir, tick_daemon):
    first, second = add_runs(tmp_path, runs_dir, 2)
    d = tick_daemon(worker_runs=2)
    assert d.tick()["launched"] == 2 and len(d.procs) == 1
    # an earlier attempt's start event (another pid) does not count as this worker having begun it
    _begins(runs_dir, second, d.procs[0].pid + 100000)
    _begins(runs_dir, first, d.procs[0].pid)  # the worker is training the first; the second waits its turn
    ops.cancel(runs_dir, [second], grace=0.0)  # no grace: a signal, were one due, would be sent now
    assert d.tick()["cancelled"] == 1
    assert (runs_dir / second / "cancel.request").exists()  # the worker skips it when its turn comes
    d.tick()
    assert d.procs[0].poll() is None and Ledger(runs_dir).get(first)["status"] == "running"
    assert Ledger(runs_dir).get(second)["status"] == "cancelled"


def test_tick_cancel_of_one_run_of_a_fused_array_drops_it_and_the_array_goes_on(tmp_path, runs_dir, tick_daemon):
    ids = add_runs(tmp_path, runs_dir, 3)
    d = tick_daemon(fuse="3")
    assert d.tick()["launched"] == 3 and len(d.procs) == 1
    ops.cancel(runs_dir, [ids[1]])
    assert d.tick()["cancelled"] == 1
    assert (runs_dir / ids[1] / "cancel.request").exists()  # the trainer drops that run's slice
    assert d.procs[0].poll() is None  # the array's process goes on
    assert [Ledger(runs_dir).get(i)["status"] for i in ids] == ["running", "cancelled", "running"]


def test_tick_cancel_reaches_a_process_whose_pid_was_never_recorded(tmp_path, runs_dir, tick_daemon):
    (rid,) = add_runs(tmp_path, runs_dir, 1)
    d = tick_daemon()
    # a stand-in with the trainer's command line for this run folder (how a process is found by it)
    d.executor.cmd = [sys.executable, "-c", "import time; time.sleep(300)", "stilts_tui.train", str(runs_dir / rid)]
    assert d.tick()["launched"] == 1
    (proc,) = d.procs
    Ledger(runs_dir).update(rid, pid=None, pid_started=None)  # as if the daemon died before recording it
    ops.cancel(runs_dir, [rid])
    wait(lambda: d.tick()["cancelled"] == 1, 10, "the cancel carried out")
    assert proc.wait(timeout=5) == -signal.SIGTERM  # found by its command line and stopped, not left running
