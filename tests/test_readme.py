"""The README's test command is the one CI runs, and its main command names a real plan."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    test_command = blocks[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_names_files_that_exist():
    main = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]
    for path in re.findall(r"plans/\S+\.toml", main):
        assert (ROOT / path).is_file()


def test_the_committed_demo_plan_is_the_one_the_demo_writes():
    from stilts_tui.demo import DEMO_PLAN

    assert (ROOT / "plans" / "demo.toml").read_text() == DEMO_PLAN
