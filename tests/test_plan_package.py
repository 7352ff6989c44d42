"""The plan package's shape and its one module of Slurm rules: modules import only those before them
(no cycle), none is long, and `daemon start`, plan validation and the executor share plan/slurm.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import cli, write_text
from test_bad_plan_values import GOOD

from stilts_tui.plan import slurm
from stilts_tui.queue.executors import slurm as slurm_exec

PACKAGE = Path(__file__).resolve().parents[1] / "stilts_tui" / "plan"
# each module may import only those before it (the order plan/__init__.py's docstring gives)
ORDER = ["values", "slurm", "schema", "model", "lines", "load", "expand", "describe", "spec", "__init__"]


def _plan_imports(module: str) -> set[str]:
    """The modules of the package that ``module`` imports (plan/NAME.py -> NAME)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {
        node.module.rsplit(".", 1)[1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stilts_tui.plan.")
    }


def test_every_module_of_the_package_is_in_the_order():
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(ORDER)


@pytest.mark.parametrize("module", ORDER)
def test_a_plan_module_imports_only_those_before_it(module):
    later = set(ORDER[ORDER.index(module) :])
    assert not _plan_imports(module) & later, f"plan/{module}.py imports {sorted(_plan_imports(module) & later)}"


@pytest.mark.parametrize("module", ORDER)
def test_no_plan_module_is_over_500_lines(module):
    assert len((PACKAGE / f"{module}.py").read_text().splitlines()) <= 500


def test_the_executor_uses_the_one_rule():
    assert slurm_exec.option_problem is slurm.option_problem and slurm_exec.MANAGED is slurm.MANAGED
    assert slurm_exec.settings_problem is slurm.settings_problem and slurm_exec.resolved is slurm.resolved


@pytest.mark.parametrize(
    "settings",
    [{"sbatch_args": ["--exclude=node7"]}, {"sbatch_args": ["--arr=1-3"]}, {"sbatch_args": "--x"}, {}],
)
def test_settings_problem_says_what_the_executors_check_says(settings):
    assert slurm.settings_problem(settings) == slurm_exec.settings_problem(settings)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"gpus": 0, "cpus": 16},
        {"gpus": 2, "partition": "gpu", "account": "lab", "qos": "hi", "time": "4:00:00", "mem": "32G"},
    ],
)
def test_resource_args_are_the_executors_sbatch_options(tmp_path, settings):
    """resource_args, at the defaults where a setting is missing, is what the executor gives sbatch."""
    full = slurm_exec.sbatch_args("abc", tmp_path / "abc", slurm.resolved(settings), None)
    assert slurm.resource_args(settings) == [a for a in full if a.split("=")[0] not in MANAGED_BY_RUN]
    assert slurm.resource_args(settings) == slurm.resource_args(slurm.resolved(settings))


MANAGED_BY_RUN = {"sbatch", "--parsable", "--job-name", "--output", "--open-mode", "--chdir"}


def test_resolved_puts_the_plan_over_the_daemon_over_the_defaults():
    assert slurm.resolved() == slurm.SLURM_DEFAULTS
    got = slurm.resolved({"gpus": 2, "time": "1:00"}, None, {"time": "2:00"})
    assert got == {**slurm.SLURM_DEFAULTS, "gpus": 2, "time": "2:00"}


@pytest.mark.parametrize(
    ("key", "value", "option"),
    [("gpus", 99, "--gpus-per-run"), ("time", "soon", "--time"), ("mem", "lots", "--mem"), ("qos", "a b", "--qos")],
)
def test_options_problem_is_the_line_daemon_start_refuses_with(tmp_path, key, value, option):
    """The CLI's flag for each setting and its message, as `daemon start` prints them today."""
    line = slurm.options_problem({"partition": None, key: value})
    assert line == f"{option}: {slurm.slurm_problem(key, value)}"
    out = cli("daemon", "start", "--executor", "slurm", option, str(value), runs_dir=tmp_path / "runs")
    assert out.returncode == 2 and line in out.stderr


def test_a_plans_slurm_table_is_checked_by_the_same_rule(tmp_path):
    plan = write_text(tmp_path / "p.toml", GOOD + '\n[slurm]\nsbatch_args = ["--dep=afterok:1"]\n')
    out = cli("plan", "validate", str(plan))
    assert out.returncode == 2 and "key 'slurm.sbatch_args'" in out.stderr
    assert slurm.slurm_problem("sbatch_args", ["--dep=afterok:1"])[:80] in out.stderr  # the line is cut after
