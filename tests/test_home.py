"""No test reads or writes the user's home: conftest's ``own_home`` gives each test its own HOME, XDG folders
and caches, for the test and every process it starts. A keymap and a column choice in the home the test
process was started with change nothing in a test's app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import HOME_DIRS, ROOT, write_text

from stilts_tui.tui.app import StiltsApp
from stilts_tui.tui.keymap import load_columns, load_keymap
from stilts_tui.tui.screens.help import HelpScreen

INNER = "tests/test_home.py::test_an_app_in_a_test_has_the_default_keys_and_columns"


def test_every_home_folder_of_a_test_and_its_processes_is_under_its_tmp_path(tmp_path):
    code = f"import json, os; print(json.dumps({{v: os.environ.get(v) for v in {sorted(HOME_DIRS)!r}}}))"
    seen = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert seen == {v: os.environ[v] for v in HOME_DIRS}
    assert all(Path(p).is_relative_to(tmp_path.resolve()) for p in seen.values()), seen
    assert Path.home() == tmp_path.resolve() / "home"


async def test_an_app_in_a_test_has_the_default_keys_and_columns(runs_dir):
    """The app as a test opens it (no keymap given): F1 opens the key list, every queue column shows."""
    app = StiltsApp(runs_dir)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        assert {"plan", "stage", "status"} <= set(app.queue_screen.columns)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)


def test_a_keymap_and_columns_in_the_real_home_change_nothing_in_a_tests_app(tmp_path):
    """A "real" home (a throwaway folder) with a keymap moving F1's action away and a column choice of the
    id alone: read by the app's loaders there, ignored by a test run with that home as the user's."""
    real = tmp_path / "real-home"
    write_text(real / ".config/stilts-tui/keymap.toml", '"app.help" = "z"\n')
    write_text(real / ".config/stilts-tui/columns.json", '["id"]\n')
    env = {k: v for k, v in os.environ.items() if k not in HOME_DIRS and k != "MPLCONFIGDIR"}
    env |= {"HOME": str(real), "XDG_CONFIG_HOME": str(real / ".config"), "PYTHONPATH": str(ROOT)}
    # the files are where the app looks in that home: a process started there reads them
    code = "from stilts_tui.tui import keymap as k; import json; print(json.dumps([k.load_keymap(), k.load_columns()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert json.loads(out.stdout) == [{"app.help": "z"}, ["id"]], out.stderr
    # a test run from that home: the app in it has the default keys and columns
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", INNER]
    run = subprocess.run([*args, "-n", "0"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert load_keymap() == {} and load_columns() is None  # and this test's own home has none either
