"""A spec's debug keys (docs/training.md, "Debug keys"): the only way a test injects a failure or a
delay into the trainer; the product holds no other test hook. Real trainer processes, a tiny model."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import result_of, train, write_tiny_run

from stilts_tui.train import debug

PACKAGE = Path(__file__).resolve().parent.parent / "stilts_tui"


def test_a_misspelt_debug_key_fails_the_run_with_one_line_naming_it(tmp_path, tiny_workload):
    run = write_tiny_run(tmp_path, "e0000000000e", tiny_workload, debug={"oom_at_stpe": 1})
    out = train([run])
    assert out.returncode == 1
    result = result_of(run)
    assert result["status"] == "failed"
    assert "oom_at_stpe" in result["error"] and "Debug keys" in result["error"]
    assert "\n" not in result["error"]


def test_every_documented_debug_key_is_one_the_trainer_knows():
    doc = (PACKAGE.parent / "docs" / "training.md").read_text()
    table = doc[doc.index("## Debug keys") :]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))
    assert documented == set(debug.KEYS)
    assert debug.problem({"debug": {k: None for k in debug.KEYS}}) is None
    assert "not list" in debug.problem({"debug": []})


def test_no_test_hook_reads_the_environment_or_spawns_a_sleeper_outside_the_debug_module():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "STILTS_TEST_" not in text, path
        if path.name != "debug.py":
            assert '"sleep", "600"' not in text, path
