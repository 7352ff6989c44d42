"""bench/gpu_check.sh --smoke: the GPU check, run on the CPU with tiny sizes, so that it cannot rot.

Every CUDA branch the CPU can take (inductor, buckets, length grouping, grad_accum under compile,
a fused array with ragged last batches, an injected OOM then a next run) must PASS; NVML and MPS are
INFO lines here; and every figure is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait

ROOT = Path(__file__).resolve().parent.parent
# each PASS/FAIL/INFO/FIGURE line ends with the seconds since the check began: "  [12 s]"
LINE = re.compile(r"^((PASS [\w.+-]+|FAIL [\w.+-]+: .+|INFO [\w.+-]+: .+|FIGURE [\w.+-]+: .+)  \[\d+ s\]|# .+)$")
BRANCHES = [
    "trainer_inductor_buckets_grouped_bf16",
    "grad_accum2_inductor",
    "fused3_ragged_buckets",
    "reference_pad_max_graphs",
    "oom_then_next_run",
]
FIGURES = [
    "peak_memory",
    "mode_rates",
    "single_run_vs_reference",
    "single_run_vs_hf_trainer",
    "grid",
    "synth",
    "lora_grid",
]


@pytest.mark.slow
def test_gpu_check_smoke_passes_every_branch_and_prints_the_figures(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke"], capture_output=True, text=True, env=env, timeout=3000
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    bare = [re.sub(r"  \[\d+ s\]$", "", ln) for ln in lines]  # without the seconds
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert not [ln for ln in lines if ln.startswith("FAIL")], out.stdout
    assert [ln for ln in lines if not LINE.match(ln)] == [], "every line is PASS/FAIL/INFO/FIGURE or a # header"
    for name in BRANCHES:
        assert f"PASS {name}" in bare, f"{name} did not pass:\n{out.stdout}"
    for name in ("nvml_doctor", "mps_start_stop"):
        assert f"INFO {name}: skipped on CPU: no GPU" in bare
    for name in FIGURES:
        assert any(ln.startswith(f"FIGURE {name}: ") for ln in lines), f"no {name} figure:\n{out.stdout}"
    grid = "\n".join(ln for ln in lines if ln.startswith("FIGURE grid: "))
    for mode in ("reference", "queue", "queue+mps", "fused"):
        assert f"FIGURE grid: {mode}" in grid, grid
    assert "queue+mps: n/a (no MPS:" in grid
    modes = "\n".join(ln for ln in bare if ln.startswith("FIGURE mode_rates: "))
    for what in ("reference: steady", "eager: steady", "graphs: steady", "packed x2: steady", "fused x2: steady"):
        assert f"FIGURE mode_rates: {what}" in modes, modes
    assert "reference plan, the RTE targets (144 runs), on one device: reference" in modes, modes
    assert re.search(r"real grid: 8 runs of \d+ steps packed x2: predicted [\d.]+ s, measured [\d.]+ s", modes), modes
    log = tmp_path / "gpu_check.log"  # the output also goes there (through tee: poll until it has flushed)
    wait(lambda: lines[-1] in log.read_text(), 10, "the log's last line")
