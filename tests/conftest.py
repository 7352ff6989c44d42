"""Shared fixtures: the real console script, plan files and task data written by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stilts_tui import contract

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PLAN = ROOT / "plans" / "chang_lu_2021.toml"
CONSOLE = Path(sys.executable).parent / "stilts-tui"

# One inductor cache for the whole suite (every xdist worker and every trainer process it starts): the
# trainer keeps its compiled kernels in the runs-dir, which is new in every test, so each of the suite's
# CPU compiles of the same tiny graphs was cold (a minute each on 2 cores). Inductor's cache is keyed on
# the graph, its inputs and torch's version and is safe for processes sharing it; what it changes is only
# how long a compile takes. STILTS_TEST_INDUCTOR_CACHE names another folder (e.g. an empty one).
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.environ.get("STILTS_TEST_INDUCTOR_CACHE")
    or str(Path(tempfile.gettempdir()) / f"stilts-tests-inductor-{os.getuid()}"),
)


# The home the test process was started with: the user's, which no test reads or writes (own_home).
REAL_HOME = os.environ.get("HOME", "")
# What the code and the libraries it uses keep under a home: each test gets its own (own_home).
HOME_DIRS = {"HOME": ".", "XDG_CONFIG_HOME": ".config", "XDG_CACHE_HOME": ".cache", "XDG_DATA_HOME": ".local/share"}
HOME_DIRS |= {"XDG_STATE_HOME": ".local/state", "HF_HOME": ".cache/huggingface", "TORCH_HOME": ".cache/torch"}
# Set by a user to point somewhere of their own: unset, so each follows the test's home.
HOME_OVERRIDES = (
    contract.Env.KEYMAP,
    contract.Env.COLUMNS,
    "HF_DATASETS_CACHE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
)


@pytest.fixture(scope="session")
def _matplotlib_dir(tmp_path_factory) -> Path:
    """One matplotlib folder for the session: its font list is built once, not once a test."""
    return tmp_path_factory.mktemp("matplotlib")


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _matplotlib_dir: Path) -> Path:
    """Every test its own home under its ``tmp_path`` (``home/``): HOME, the XDG folders and the Hugging Face
    and torch caches, in the environment of the test and of every process it starts, so no test reads the
    user's keymap or columns nor writes into their home."""
    home = tmp_path / "home"
    for var, sub in HOME_DIRS.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str((home / sub).resolve()))
    for var in HOME_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", str(_matplotlib_dir))
    return home


def cli(
    *args: str, runs_dir: Path | None = None, cwd: Path | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the installed ``stilts-tui`` console script in a subprocess."""
    cmd = [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-m", "stilts_tui.cli"]
    full_env = {**os.environ, "STILTS_NO_DAEMON": "1", **(env or {})}
    if runs_dir is not None:
        full_env["STILTS_RUNS_DIR"] = str(runs_dir)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


SMALL_PLAN = """
name = "small"
model = "roberta-large"
baseline = true
target_seeds = [1, 2]

[intermediate.inter]
task = "hellaswag"
data_dir = "data/hs"

[target.rte]
task = "rte"
data_dir = "data/rte"
grid = {{ lr = [1e-5, 2e-5], batch_size = [8] }}

[target.cola]
task = "cola"
data_dir = "data/cola"
grid = {{ lr = {cola_lrs} }}
"""


@pytest.fixture
def small_plan(tmp_path: Path):
    """A plan with local data for every stage; returns a writer taking the CoLA grid's lrs."""
    write_jsonl(
        tmp_path / "data/hs/hellaswag_train.jsonl",
        [{"ctx_a": "a", "ctx_b": "b", "endings": ["1", "2", "3", "4"], "label": 0}],
    )
    write_jsonl(
        tmp_path / "data/hs/hellaswag_val.jsonl",
        [{"ctx_a": "a", "ctx_b": "b", "endings": ["1", "2", "3", "4"], "label": 1}],
    )
    rte = "index\tsentence1\tsentence2\tlabel\n0\tA man.\tA person.\tentailment\n"
    write_text(tmp_path / "data/rte/train.tsv", rte)
    write_text(tmp_path / "data/rte/dev.tsv", rte)
    cola = "src\t1\t\tGood sentence .\n"
    write_text(tmp_path / "data/cola/train.tsv", cola)
    write_text(tmp_path / "data/cola/dev.tsv", cola)

    def write(cola_lrs: str = "[1e-5]") -> Path:
        return write_text(tmp_path / "small.toml", SMALL_PLAN.format(cola_lrs=cola_lrs))

    return write


def train(dirs: list[Path], *flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real trainer process on run folders (CPU, one thread: the suite runs in parallel)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STILTS_DEVICE": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "stilts_tui.train", *flags, *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def result_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "step"]


@pytest.fixture(scope="session")
def tiny_workload(tmp_path_factory):
    """A tiny random-init RoBERTa (dropout off, so runs compare number for number) and a learnable pair
    task of 37 train / 16 dev examples: 37 is no multiple of any batch size, so last batches are short."""
    from stilts_tui.train import workload

    work = tmp_path_factory.mktemp("tiny")
    model = workload.build_model(work / "model", "tiny", dropout=0.0)
    train_file, dev_file = workload.build_data(work / "data", 37, 16, max_len=40, median=20)
    return model, workload.task_spec(train_file, dev_file)


def write_tiny_run(
    runs_dir: Path, run_id: str, workload_: tuple, seed: int = 1, debug: dict | None = None, **params
) -> Path:
    """A run folder of the tiny workload; ``params`` override lr 1e-3, batch 8, 2 epochs, max_len 40, fp32."""
    from stilts_tui.train import workload

    model, task = workload_
    p = {
        "lr": 1e-3,
        "batch_size": 8,
        "warmup": 0.1,
        "epochs": 2,
        "max_len": 40,
        "weight_decay": 0.0,
        "grad_accum": 1,
        "precision": "fp32",
        "transfer": "all",
        **params,
    }
    d = workload.write_run(runs_dir, run_id, model, task, p, seed)
    if debug:
        spec = json.loads((d / "spec.json").read_text())
        spec["debug"] = debug
        (d / "spec.json").write_text(json.dumps(spec))
    return d


def wait(cond, timeout: float = 150, what: str = "condition", alive: subprocess.Popen | None = None):
    """Poll ``cond`` until it is truthy (its value) or fail after ``timeout`` seconds naming ``what``; at
    once where the process ``alive`` has exited first (it will not make ``cond`` true any more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"the process exited ({alive.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def until(pilot, cond, what: str, timeout: float = 60.0) -> None:
    """Let the app run until ``cond()`` holds (a condition, never a fixed pause)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await pilot.pause(0.02)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-init RoBERTa folder (model, config, word-level tokenizer), built once."""
    from stilts_tui.train import workload

    return workload.build_model(tmp_path_factory.mktemp("tiny") / "model", "tiny")


@pytest.fixture
def queue_env(runs_dir):
    """Fake GPUs; afterwards no daemon and no training process of the test is left."""
    from stilts_tui.store.ledger import Ledger

    env = {"STILTS_FAKE_GPUS": "2x24", "OMP_NUM_THREADS": "1"}
    yield env
    cli("daemon", "stop", runs_dir=runs_dir, env=env)
    for r in Ledger(runs_dir).runs() if (runs_dir / "ledger.json").is_file() else []:
        if isinstance(r.get("pid"), int):
            try:
                os.killpg(r["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ---- plan files written from keyword arguments; a queue with a tiny plan, for the daemon tests ------------


def _toml(value) -> str:
    """A TOML value: bools, numbers, strings and lists of them."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value)) if isinstance(value, (str, Path)) else repr(value)


def plan_text(
    name: str = "q",
    model: str | Path = "roberta-large",
    baseline: bool = True,
    seeds: tuple[int, ...] | list[int] = (1,),
    header: str = "",
    defaults: dict | None = None,
    pair: tuple[str, str] | None = None,
    fields: tuple[str, ...] = ("s1", "s2"),
    stages: str = "",
) -> str:
    """A plan's TOML: its top-level keys (``header``: more of them, as TOML), ``[defaults]``, a custom
    classification task ``pair`` reading the (train, dev) jsonl files ``pair`` with text ``fields``, then
    ``stages`` (TOML)."""
    lines = [f"name = {_toml(name)}", f"model = {_toml(str(model))}", f"baseline = {_toml(baseline)}"]
    lines += [f"target_seeds = {_toml(list(seeds))}", header]
    if defaults:
        lines += ["[defaults]", *(f"{k} = {_toml(v)}" for k, v in defaults.items())]
    if pair:
        lines += ["[tasks.pair]", 'format = "jsonl"', f"train = {_toml(pair[0])}", f"dev = {_toml(pair[1])}"]
        lines += ['kind = "classification"', f"text_fields = {_toml(list(fields))}"]
    return "\n".join(lines) + "\n" + stages


def write_plan(path: Path, **kw) -> Path:
    """A plan file at ``path`` from ``plan_text``'s keyword arguments."""
    return write_text(path, plan_text(**kw))


QUEUE_DEFAULTS = {"epochs": 1, "batch_size": 16, "max_len": 24}


def make_plan(tmp_path: Path, model: Path, stages: str, baseline: bool = False, header: str = "") -> Path:
    """A plan of custom pair-task stages (``stages``: TOML) on ``model``, with its data written
    (``header``: more top-level keys, e.g. ``on_finish``)."""
    from stilts_tui.cli.demo import pair_rows

    write_jsonl(tmp_path / "data/tr.jsonl", pair_rows(48, 1))
    write_jsonl(tmp_path / "data/dv.jsonl", pair_rows(16, 2))
    return write_plan(
        tmp_path / "q.toml",
        model=model,
        baseline=baseline,
        header=header,
        defaults=QUEUE_DEFAULTS,
        pair=("data/tr.jsonl", "data/dv.jsonl"),
        stages=stages,
    )


def add(plan: Path, runs_dir: Path, env: dict) -> list[dict]:
    from stilts_tui.store.ledger import Ledger

    out = cli("queue", "add", str(plan), "--no-daemon", runs_dir=runs_dir, env=env)
    assert out.returncode == 0, out.stderr
    return Ledger(runs_dir).runs()


def start(runs_dir: Path, env: dict, *args: str) -> dict:
    out = cli("daemon", "start", "--interval", "0.2", *args, runs_dir=runs_dir, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads((runs_dir / "daemon.json").read_text())


def statuses(runs_dir: Path) -> dict[str, str]:
    from stilts_tui.store.ledger import Ledger

    return {r["id"]: r["status"] for r in Ledger(runs_dir).runs()}


def all_final(runs_dir: Path) -> bool:
    return all(
        s in ("done", "failed", "cancelled", "blocked", "degenerate", "pruned") for s in statuses(runs_dir).values()
    )


def ticks(runs_dir: Path) -> int:
    """How many ticks the running daemon has finished (its ``daemon.ticks``; 0 before its first)."""
    try:
        return int((runs_dir / "daemon.ticks").read_text())
    except (OSError, ValueError):  # none yet, or read as it is rewritten
        return 0


def wait_ticks(runs_dir: Path, n: int = 2, timeout: float = 60) -> None:
    """Wait until the daemon has finished ``n`` more ticks: it has looked at the queue since now (for
    asserting that something did not happen, instead of sleeping)."""
    since = ticks(runs_dir)
    wait(lambda: ticks(runs_dir) >= since + n, timeout, f"{n} more daemon ticks")


def set_debug(runs_dir: Path, run_id: str, **debug) -> None:
    path = runs_dir / run_id / "spec.json"
    spec = json.loads(path.read_text())
    spec["debug"] = debug
    path.write_text(json.dumps(spec))


def placements(runs_dir: Path) -> list[dict]:
    data = json.loads((runs_dir / "ledger.json").read_text())
    return sorted(data.get("placements", {}).values(), key=lambda p: p["t"])


def fused_inputs(family: str, kind: str, k: int, b: int = 5, t: int = 12):
    """Different inputs for each of k models (ids, types, mask, labels), most sequences padded at the end."""
    import torch

    pad = 1 if family == "roberta" else 0
    gen = torch.Generator().manual_seed(7)
    shape = (k, b, 3, t) if kind == "multiple_choice" else (k, b, t)
    ids = torch.randint(4, 60, shape, generator=gen)
    lengths = torch.randint(4, t + 1, shape[:-1], generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    types = (torch.arange(t) >= (lengths // 2).unsqueeze(-1)).long() * mask if family == "bert" else None
    labels = torch.randint(0, 3, (k, b), generator=gen)
    return ids, types, mask, labels
