"""The CLI, plan, ledger and task layers import neither torch nor textual; the layers hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHT = [
    "stilts_tui.contract",
    "stilts_tui.cli",
    "stilts_tui.plan",
    "stilts_tui.store.ledger",
    "stilts_tui.tasks",
    "stilts_tui.queue.ops",
]


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_without_torch_or_textual(module):
    code = (
        f"import sys, {module}\n"
        "bad = [m for m in ('torch', 'transformers', 'textual', 'datasets') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_loading_a_task_from_local_files_needs_no_torch(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    code = (
        "import sys; from stilts_tui import tasks\n"
        f"spec = {{'name': 'rte', 'kind': 'classification', 'data_dir': {str(tmp_path)!r}}}\n"
        "assert tasks.load_examples(spec, 'train')[0]['label'] == 0\n"
        "print('torch' in sys.modules, 'datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is part of the test extra"
    out = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
