"""The command line is a package of modules, one a command group: `python -m stilts_tui.cli` runs it, it
never imports the console script back (no cli <-> entry cycle), the package itself is light (the bare
command imports its root options before the app's first frame) and its commands import neither torch
nor textual."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stilts_tui.contract import Env

CLI_DIR = Path(__file__).resolve().parent.parent / "stilts_tui" / "cli"


def test_python_dash_m_stilts_tui_cli_runs_the_command_line(runs_dir):
    env = {**os.environ, Env.RUNS_DIR: str(runs_dir), Env.NO_DAEMON: "1"}
    out = subprocess.run(
        [sys.executable, "-m", "stilts_tui.cli", "daemon", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["running"] is False


def test_no_module_of_the_command_line_imports_the_console_script():
    for path in CLI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "stilts_tui.entry" or n.startswith("stilts_tui.entry.") for n in names), path


def test_the_console_script_and_the_cli_package_import_no_command_and_no_plan_layer():
    code = (
        "import sys, stilts_tui.entry, stilts_tui.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('stilts_tui.plan', 'stilts_tui.queue', "
        "'stilts_tui.cli.root', 'stilts_tui.store.ledger'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_command_module_registers_its_commands_without_torch_or_textual():
    code = (
        "import sys, typer, stilts_tui.cli as c; cmd = typer.main.get_command(c.load()); "
        "print(sorted(cmd.commands)); "
        "print([m for m in ('torch', 'transformers', 'textual', 'datasets') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    commands, heavy = out.stdout.strip().splitlines()
    assert commands == str(
        sorted(
            ["demo", "synth", "scores", "rank", "logs", "doctor", "plan", "queue", "daemon", "tasks", "export", "note"]
        )
    )
    assert heavy == "[]"


@pytest.mark.parametrize("module", sorted(p.stem for p in CLI_DIR.glob("*.py") if p.stem != "__main__"))
def test_no_cli_module_is_over_500_lines(module):
    assert len((CLI_DIR / f"{module}.py").read_text().splitlines()) <= 500
