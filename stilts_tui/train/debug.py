"""A spec's ``debug`` table: failures and delays asked for by a test or a person debugging a run, never
by a plan (a plan has no ``debug`` key; docs/training.md, "Debug keys"). Read once per run or array,
never inside the step; a spec without the table gets :class:`Debug` with everything off.

Keys: ``sleep_per_step`` (seconds after each optimizer step), ``oom_at_step`` (an out-of-memory error
after that step), ``oom_once`` (only the first time: a marker file in the run folder), ``oom_kind``
(``torch`` or ``runtime``: a cuBLAS allocation failure), ``compile_fail`` (``forward`` or ``backward``:
the compiler fails there), ``spawn_sleeper`` (a child process in the run's process group, which a cancel
must stop too), ``dump_initial_weights`` (the starting weights to ``initial_weights.safetensors``)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stilts_tui.store import rundir

DEBUG_KEY = "debug"  # spec.json's table
KEYS = (
    "sleep_per_step",
    "oom_at_step",
    "oom_once",
    "oom_kind",
    "compile_fail",
    "spawn_sleeper",
    "dump_initial_weights",
)
OOM_MARKER = "oom_hook.done"  # in the run folder, with oom_once: the error was raised once
SLEEPER_PID = "sleeper.pid"  # in the run folder, with spawn_sleeper: the child's pid
INITIAL_WEIGHTS = "initial_weights.safetensors"  # in the run folder, with dump_initial_weights


def problem(spec: dict) -> str | None:
    """What is wrong with a spec's debug table (not an object, or a key the trainer does not know: a
    misspelt key would test nothing), or None."""
    table = spec.get(DEBUG_KEY)
    if table is None:
        return None
    if not isinstance(table, dict):
        return f"'{DEBUG_KEY}' must be a JSON object, not {type(table).__name__}"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        return f"'{DEBUG_KEY}' has unknown keys {', '.join(unknown)} (known: {', '.join(KEYS)})"
    return None


@dataclass
class Debug:
    """The ``debug`` tables of a run's (or an array's) specs, merged. Everything off for a real run."""

    oom_at_step: int | None = None  # raise an out-of-memory error after this optimizer step
    oom_once: bool = False  # ... only the first time (a marker file in the run folder)
    oom_kind: str = "torch"  # torch (OutOfMemoryError) | runtime (a cuBLAS allocation failure)
    sleep_per_step: float = 0.0
    compile_fail: str | None = None  # forward | backward: the compiler fails there
    spawn_sleeper: bool = False
    dump_initial_weights: bool = False

    @classmethod
    def of(cls, specs: list[dict]) -> Debug:
        """The merged tables: the earliest OOM step, the longest sleep, any flag set by one member."""
        debugs = [s.get(DEBUG_KEY) or {} for s in specs]
        ooms = [int(d["oom_at_step"]) for d in debugs if d.get("oom_at_step") is not None]
        kinds = [d.get("compile_fail") for d in debugs if d.get("compile_fail")]
        return cls(
            oom_at_step=min(ooms, default=None),
            oom_once=any(d.get("oom_once") for d in debugs),
            oom_kind=next((d["oom_kind"] for d in debugs if d.get("oom_kind")), "torch"),
            sleep_per_step=max((float(d.get("sleep_per_step") or 0) for d in debugs), default=0.0),
            compile_fail=kinds[0] if kinds else None,
            spawn_sleeper=any(d.get("spawn_sleeper") for d in debugs),
            dump_initial_weights=any(d.get("dump_initial_weights") for d in debugs),
        )

    def begin(self, run_dir: Path) -> None:
        """Before the first step: a sleeping child in the run's process group (a cancel must stop it too)."""
        if self.spawn_sleeper:
            child = subprocess.Popen(["sleep", "600"])  # noqa: S607 - a test's stand-in for a data loader
            rundir.write_text_atomic(run_dir / SLEEPER_PID, str(child.pid))

    def after_step(self, step: int, run_dir: Path) -> None:
        """After each optimizer step: the asked-for delay, then the asked-for out-of-memory error."""
        if self.sleep_per_step:
            time.sleep(self.sleep_per_step)
        if self.oom_at_step is None or step < self.oom_at_step:
            return
        marker = run_dir / OOM_MARKER
        if self.oom_once and marker.exists():
            return
        marker.touch()
        if self.oom_kind == "runtime":
            raise RuntimeError(
                "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)` "
                "(debug: spec debug.oom_at_step)"
            )
        raise torch.OutOfMemoryError("debug: CUDA out of memory (spec debug.oom_at_step)")

    def backend(self):
        """A compiler backend that fails where asked (None: the real one)."""
        if not self.compile_fail:
            return None

        def fail(gm, example_inputs):
            raise RuntimeError(f"debug: the compiler fails in {self.compile_fail} (spec debug.compile_fail)")

        if self.compile_fail == "forward":
            return fail
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=fail)
