"""Every CUDA branch of the trainer and queue, once, with one line each; driven by bench/gpu_check.sh.

Lines: ``PASS name``, ``FAIL name: why``, ``INFO name: ...`` (a branch this machine cannot take, never a
failure), ``FIGURE name: ...`` (a measurement). ``--smoke``: the CPU with tiny sizes, where each
CUDA-only branch takes its CPU equivalent (inductor compiles with the C compiler; buckets and
length grouping are plain flags); NVML and MPS are INFO lines there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAILED: list[str] = []
START = time.time()
DEADLINE = [float("inf")]  # --deadline: seconds from START after which nothing new starts


def left() -> float:
    """Seconds left before the deadline."""
    return DEADLINE[0] - (time.time() - START)


@dataclass
class Sizes:
    """What each check trains; GPU sizes fit the whole script in about 5 minutes on one H100."""

    model: str
    n_train: int  # no multiple of the batch: last batches are short (ragged)
    n_dev: int
    batch: int
    max_len: int
    grid: list[str]
    single: list[str]
    hf: list[str]
    synth: list[str]
    lora: list[str]
    modes: list[str]


SMOKE = Sizes(
    "tiny",
    37,
    16,
    8,
    40,
    grid=[
        "--size",
        "tiny",
        "--runs",
        "4",
        "--samples",
        "64",
        "--dev",
        "16",
        "--max-len",
        "40",
        "--batch",
        "8",
        "--gpus",
        "",
        "--fuse",
        "4",
    ],
    single=[
        "--size",
        "tiny",
        "--runs",
        "1",
        "--samples",
        "64",
        "--dev",
        "16",
        "--max-len",
        "40",
        "--batch",
        "8",
        "--modes",
        "off",
    ],  # the CPU: inductor is checked above, once
    hf=[
        "--size",
        "tiny",
        "--runs",
        "1",
        "--samples",
        "64",
        "--dev",
        "16",
        "--epochs",
        "1",
        "--max-len",
        "40",
        "--batch",
        "8",
    ],
    synth=["--size", "tiny", "--prompts", "8", "--single", "4", "--batch-size", "8"],
    lora=["--model", "tiny", "--runs", "3", "--train", "32", "--threads", "1"],
    modes=["--smoke"],
)
# The branch checks use the tiny RoBERTa: on one H100 (2026-11-26) the four compiled runs of
# RoBERTa-base took 191 s and the fused array of 3 over 138 s, nearly all of it inductor compiling; the
# branches do not depend on the size. The grid is 8 runs of RoBERTa-base, the single-run figures
# RoBERTa-large, so that the whole script fits one 7-minute device call.
GPU = Sizes(
    "tiny",
    203,
    64,
    16,
    128,
    grid=[
        "--size",
        "base",
        "--runs",
        "8",
        "--samples",
        "320",
        "--dev",
        "64",
        "--max-len",
        "128",
        "--gpus",
        "0",
        "--fuse",
        "auto",
        "--modes",
        "reference,queue,fused",
    ],
    single=["--size", "large", "--runs", "1", "--samples", "800", "--dev", "64", "--modes", "off,inductor"],
    hf=["--size", "large", "--runs", "1", "--samples", "800", "--dev", "64", "--epochs", "1", "--max-len", "128"],
    synth=["--size", "medium", "--prompts", "128", "--single", "8", "--batch-size", "64"],
    lora=["--model", "base", "--device", "cuda", "--train", "512", "--threads", "4"],
    modes=["--size", "large", "--gpus", "0"],
)


def say(kind: str, name: str, text: str = "") -> None:
    if kind == "FAIL":
        FAILED.append(name)
    print(f"{kind} {name}" + (f": {text}" if text else "") + f"  [{time.time() - START:.0f} s]", flush=True)


def check(name: str, fn, *a) -> None:
    """Run one branch check: None from ``fn`` is a PASS, a string the reason it failed."""
    if left() < 20:
        say("INFO", name, "not run: past the --deadline")
        return
    try:
        why = fn(*a)
    except subprocess.TimeoutExpired as e:
        why = f"timed out after {e.timeout:.0f} s"
    except Exception as e:  # noqa: BLE001 - one branch's failure must not hide the others
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1:] or ['']}"
    say("PASS", name) if why is None else say("FAIL", name, why)


class Env:
    """The check's work folder, model, data and how to call the trainer and the CLI."""

    def __init__(self, sizes: Sizes, cuda: bool, work: Path):
        from stilts_tui.train import workload

        self.sizes, self.cuda, self.work = sizes, cuda, work
        self.model = workload.build_model(work / "model", sizes.model)
        train, dev = workload.build_data(
            work / "data", sizes.n_train, sizes.n_dev, max_len=sizes.max_len, median=max(8, sizes.max_len // 2)
        )
        self.task = workload.task_spec(train, dev)
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TORCHINDUCTOR_CACHE_DIR": str(work / ".inductor"),
            "TRITON_CACHE_DIR": str(work / ".triton"),
        }
        self.runs = work / "runs"

    def run_dir(self, run_id: str, seed: int = 1, debug: dict | None = None, **params) -> Path:
        from stilts_tui.train import workload

        p = {
            "lr": 5e-5 if self.cuda else 1e-3,
            "batch_size": self.sizes.batch,
            "warmup": 0.1,
            "epochs": 1,
            "max_len": self.sizes.max_len,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "precision": "bf16",
            **params,
        }
        d = workload.write_run(self.runs, run_id, self.model, self.task, p, seed)
        if debug:
            spec = json.loads((d / "spec.json").read_text())
            spec["debug"] = debug
            (d / "spec.json").write_text(json.dumps(spec))
        return d

    def train(self, dirs: list[Path], *flags: str, timeout: float = 600) -> list[dict]:
        device = "cuda" if self.cuda else "cpu"
        out = subprocess.run(
            [sys.executable, "-m", "stilts_tui.train", "--device", device, *flags, *map(str, dirs)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=min(timeout, max(left(), 30)),
        )
        last = (out.stderr.strip().splitlines() or ["no output"])[-1][:300]
        results = {d.name: json.loads((d / "result.json").read_text()) for d in dirs if (d / "result.json").exists()}
        for name, r in results.items():  # what each run took, to read compile costs off the log
            say(
                "INFO",
                f"run_{name}",
                f"{r.get('status')}, train {r.get('train_seconds')} s, wall "
                f"{r.get('wall_seconds')} s, {r.get('samples_per_s')} samples/s, compile {r.get('compile')}"
                f"{' (fallback ' + str(r['compile_fallback']) + ')' if r.get('compile_fallback') else ''}, "
                f"peak {r.get('peak_gpu_mem_gb')} GB, score {r.get('score')}",
            )
        unexpected = [d.name for d in dirs if (results.get(d.name) or {}).get("status") not in ("done", "oom")]
        if out.returncode not in (0, 1) or unexpected:  # the trainer's own words, for whoever reads the log
            say("INFO", "trainer", f"{' '.join(flags)}: exit {out.returncode}; not done: {unexpected}")
            for ln in [x for x in out.stderr.strip().splitlines() if x.strip()][-25:]:
                say("INFO", "trainer", ln[:400])
        return [
            results.get(d.name) or {"status": "no result.json", "error": f"trainer exit {out.returncode}: {last}"}
            for d in dirs
        ]

    def cli(self, *args: str, root: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stilts_tui.cli", "--runs-dir", str(root or self.runs), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


GPU_FLAGS = ["--compile", "inductor", "--pad", "buckets", "--group", "on"]


def setup_problem(r: dict, **want) -> str | None:
    """Why a result is not done with the setup asked for (None: it is)."""
    if r.get("status") != "done":
        return f"status {r.get('status')}: {r.get('error')}"
    setup = r.get("setup") or {}
    wrong = {k: setup.get(k) for k, v in want.items() if setup.get(k) != v}
    if wrong:
        return f"setup {wrong} where {want} was asked" + (
            f" (compile fallback: {r['compile_fallback']})" if r.get("compile_fallback") else ""
        )
    return None


def compiled_runs(e: Env) -> dict[str, dict]:
    """One trainer process for the compiled branches (one compile, as a worker pays it): a run alone
    with the GPU's flags, one with grad_accum 2, one that runs out of memory, and one after it."""
    if not hasattr(e, "compiled"):
        dirs = {
            "alone": e.run_dir("alone"),
            "accum": e.run_dir("accum-inductor", grad_accum=2),
            "oom-hit": e.run_dir("oom-hit", debug={"oom_at_step": 2}),
            "oom-next": e.run_dir("oom-next"),
        }
        e.compiled = dict(zip(dirs, e.train(list(dirs.values()), *GPU_FLAGS), strict=True))
    return e.compiled


def trainer_compiled(e: Env) -> str | None:
    return setup_problem(
        compiled_runs(e)["alone"], compile="inductor", pad="buckets", batching="grouped", precision="bf16"
    )


def grad_accum_compiled(e: Env, mode: str) -> str | None:
    if mode == "inductor":
        r = compiled_runs(e)["accum"]
    else:
        [r] = e.train(
            [e.run_dir(f"accum-{mode}", grad_accum=2)], "--compile", mode, "--pad", "buckets", "--group", "on"
        )
    return setup_problem(r, compile=mode, pad="buckets")


def reference_graphs(e: Env) -> str | None:
    """The reference's settings (fp32, pad and compile auto): on a GPU every batch padded to max_len and
    CUDA graphs of the eager kernels (the CPU takes the branch by its flags); with dropout off, every
    step's loss equal to an eager run's."""
    from stilts_tui.train import workload

    model = workload.build_model(e.work / "model-no-dropout", e.sizes.model, dropout=0.0)
    p = {"lr": 5e-5 if e.cuda else 1e-3, "batch_size": e.sizes.batch, "max_len": e.sizes.max_len, "epochs": 1}
    graphs, eager = (workload.write_run(e.runs, name, model, e.task, p, 1) for name in ("ref-graphs", "ref-eager"))
    [a] = e.train([graphs], *([] if e.cuda else ["--compile", "cudagraphs", "--pad", "max"]))
    [b] = e.train([eager], "--compile", "off", "--pad", "max")
    bad = setup_problem(a, pad="max", compile="cudagraphs", precision="fp32") or setup_problem(b, pad="max")
    if bad:
        return bad
    la, lb = (step_loss_list(d) for d in (graphs, eager))
    diff = max((abs(x - y) for x, y in zip(la, lb, strict=True)), default=float("inf"))
    say(
        "INFO",
        "reference_graphs",
        f"max |loss with graphs - eager| over {len(la)} steps {diff:.2e}; steady samples/s "
        f"{a['timings']['steady_samples_per_s']} with graphs, {b['timings']['steady_samples_per_s']} eager",
    )
    return None if diff <= 1e-4 else f"losses differ from the eager run's by up to {diff:.2e}"


def step_loss_list(run_dir: Path) -> list[float]:
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    return [ev["loss"] for ev in events if ev.get("event") == "step"]


def fused_ragged(e: Env) -> str | None:
    dirs = [e.run_dir(f"fused{s}", seed=s) for s in (1, 2, 3)]  # 203 / 37 examples: short last batches
    results = e.train(dirs, "--fuse", "3", *GPU_FLAGS)
    bad = [setup_problem(r, pad="buckets", batching="grouped") for r in results]
    if any(bad):
        return next(b for b in bad if b)
    sizes = [(r.get("setup") or {}).get("fused", r.get("fused")) for r in results]
    return None if sizes == [3, 3, 3] else f"trained as arrays of {sizes}, not one array of 3"


def oom_then_next(e: Env) -> str | None:
    """An OOM injected in one run; the next, in the same process, trains with its memory back."""
    runs = compiled_runs(e)
    a, b = runs["oom-hit"], runs["oom-next"]
    if a.get("status") != "oom":
        return f"the injected OOM ended the run as '{a.get('status')}' ({a.get('error')}), not oom"
    problem = setup_problem(b, compile="inductor")
    if problem or not e.cuda:
        return problem
    alone = runs["alone"]["peak_gpu_mem_gb"]
    if b["peak_gpu_mem_gb"] > 1.15 * alone:
        return f"the next run peaked at {b['peak_gpu_mem_gb']} GB against {alone} GB alone: memory not back"
    return None


def nvml(e: Env) -> str | None:
    out = e.cli("doctor")
    gpus = [ln for ln in out.stdout.splitlines() if re.match(r"ok\s+GPU \d+:", ln)]
    return None if gpus else f"doctor listed no GPU: {out.stdout.strip().splitlines()[:2]} {out.stderr.strip()[-200:]}"


def mps(e: Env) -> str | None:
    root = e.work / "mps"
    out = e.cli("daemon", "start", "--mps", "--gpus", "0", root=root)
    if out.returncode:
        return f"daemon start --mps: {out.stderr.strip()}"
    status = json.loads(e.cli("daemon", "status", "--json", root=root).stdout)
    stop = e.cli("daemon", "stop", root=root)
    log = (root / "daemon.log").read_text(errors="replace")
    if not status["running"] or not (status["daemon"] or {}).get("settings", {}).get("mps"):
        return f"daemon status after start --mps: {status}"
    if "MPS on:" not in log:
        return f"the daemon ran without MPS: {[ln for ln in log.splitlines() if 'MPS' in ln][:2]}"
    if stop.returncode or "MPS control daemon: stopped" not in log:  # the daemon's words (Daemon.stop_mps)
        return f"daemon stop: {stop.stderr.strip()} (log ends {log.strip().splitlines()[-1:]})"
    return None


def figure(name: str, cmd: list[str], env: Env, timeout: float, keep=lambda ln: True) -> None:
    """Run one bench script and print its figure lines (or FAIL with its last line)."""
    if left() < 30:
        say("INFO", name, "not run: past the --deadline")
        return
    timeout = min(timeout, left())
    try:
        out = subprocess.run([sys.executable, *cmd], env=env.env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        for ln in partial.splitlines():  # what it measured before the cut
            if ln.strip() and keep(ln):
                say("FIGURE", name, ln.strip())
        say("FAIL", name, f"timed out after {timeout:.0f} s")
        return
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip() and keep(ln)]
    if out.returncode or not lines:
        say("FAIL", name, (out.stderr.strip().splitlines() or ["no output"])[-1][:300])
        return
    for ln in lines:
        say("FIGURE", name, ln)


def peak_memory(e: Env) -> None:
    from stilts_tui.queue.placement import formula_gb

    if not (e.runs / "alone" / "result.json").exists():
        say("INFO", "peak_memory", "n/a: the branch checks did not run (--only figures)")
        return
    r = json.loads((e.runs / "alone" / "result.json").read_text())
    estimate = formula_gb(json.loads((e.runs / "alone" / "spec.json").read_text()))
    peak = r.get("peak_gpu_mem_gb")
    measured = f"{peak:.2f} GB measured ({peak / estimate:.2f}x the estimate)" if peak else "n/a on the CPU"
    say("FIGURE", "peak_memory", f"queue estimate (placement.formula_gb) {estimate:.2f} GB; peak {measured}")


def branches(e: Env) -> None:
    check("trainer_inductor_buckets_grouped_bf16", trainer_compiled, e)
    check("grad_accum2_inductor", grad_accum_compiled, e, "inductor")
    if e.cuda:
        check("grad_accum2_cudagraphs", grad_accum_compiled, e, "cudagraphs")
    else:
        say("INFO", "grad_accum2_cudagraphs", "skipped on CPU: no GPU (CUDA graphs need one)")
    check("fused3_ragged_buckets", fused_ragged, e)
    check("reference_pad_max_graphs", reference_graphs, e)
    check("oom_then_next_run", oom_then_next, e)
    for name, fn in (("nvml_doctor", nvml), ("mps_start_stop", mps)):
        if not e.cuda:
            say("INFO", name, "skipped on CPU: no GPU")
        elif name == "mps_start_stop" and shutil.which("nvidia-cuda-mps-control") is None:
            say("INFO", name, "n/a: nvidia-cuda-mps-control not on PATH (no MPS on this machine)")
        else:
            check(name, fn, e)


def figures(e: Env, s: Sizes) -> None:
    """The figures, most wanted first: a --deadline cuts the last (issue 27 item 4 sizes the call to 6
    minutes on one H100 or H200: the branches, the reference plan's modes and their real grid, LoRA)."""
    gpu = [] if not e.cuda else ["--gpu-flags"]
    peak_memory(e)
    # RoBERTa-large at the reference's shapes: each mode's rate and fixed cost, the reference plan's wall
    # time predicted per mode, one real 8-run grid against its prediction
    figure("mode_rates", [str(HERE / "mode_rates.py"), *s.modes, "--workdir", str(e.work / "modes")], e, 360)
    # 8 full fine-tunes alone, 8 LoRA runs alone, the 8 fused over one frozen encoder (issue 26)
    figure("lora_grid", [str(HERE / "lora_grid.py"), *s.lora], e, 300)
    figure("grid", [str(HERE / "grid_throughput.py"), *s.grid, "--workdir", str(e.work / "grid")], e, 600)
    figure(
        "single_run_vs_reference",
        [str(HERE / "trainer_throughput.py"), *s.single, "--workdir", str(e.work / "single")],
        e,
        300,
        keep=lambda ln: ln[:1] != " ",
    )
    figure(
        "single_run_vs_hf_trainer",
        [str(HERE / "vs_hf_trainer.py"), *s.hf, *gpu, "--workdir", str(e.work / "hf")],
        e,
        300,
        keep=lambda ln: not ln.startswith(" "),
    )
    figure("synth", [str(HERE / "synth.py"), *s.synth], e, 120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the CPU, tiny sizes (CI)")
    ap.add_argument("--only", choices=("branches", "figures"), default=None)
    ap.add_argument(
        "--deadline",
        type=float,
        default=float("inf"),
        help="seconds after which nothing new starts and running figures are cut (a device lease)",
    )
    args = ap.parse_args(argv)
    DEADLINE[0] = args.deadline
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    sizes = GPU if cuda else SMOKE
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU)"
    print(
        f"# gpu_check: {'GPU' if cuda else 'smoke (CPU)'}; GPU {gpu}; torch {torch.__version__}; "
        f"RoBERTa-{sizes.model} random init",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="stilts-gpu-check-") as d:
        e = Env(sizes, cuda, Path(d))
        if args.only != "figures":
            branches(e)
        if args.only != "branches":
            figures(e, sizes)
    print(f"# gpu_check: {len(FAILED)} failed {FAILED} in {time.time() - START:.0f} s", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
