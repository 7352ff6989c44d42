"""What crosses a process is named once, in the run contract (stilts_tui/contract.py): no module spells a
status, an events.jsonl event name or a STILTS_* variable as a bare string; they use `Status`,
`ResultStatus`, `Event` and `Env`. Read from the source (ast), so a new bare string fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from stilts_tui import contract

PACKAGE = Path(contract.__file__).parent
STATUS_WORDS = set(contract.STATUSES) | set(contract.RESULT_STATUSES) | {"oom"}
EVENT_WORDS = {e.value for e in contract.Event}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "contract.py")


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (or other bare expression statements)."""
    return {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}


def _about_status(node: ast.AST) -> bool:
    return "status" in ast.unparse(node).lower()


def _status_words(node: ast.AST) -> list[ast.Constant]:
    """The status words in a constant or a literal collection of constants."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [n for n in items if isinstance(n, ast.Constant) and n.value in STATUS_WORDS]


def bare_strings(path: Path) -> list[tuple[int, str]]:
    """Status words used as statuses (compared with, assigned to or passed as a status, or listed in a
    collection named for statuses) and STILTS_* names, spelt as bare strings. A status word that is
    something else (a counter's or a CSV column's name) is not a status."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = docstrings(tree)
    found: list[ast.Constant] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if re.fullmatch(r"STILTS_[A-Z0-9_]+", node.value):
                found.append(node)
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(_about_status(p) for p in parts):
                found += [c for p in parts for c in _status_words(p)]
        elif isinstance(node, ast.keyword) and node.arg and "status" in node.arg:
            found += _status_words(node.value)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value in ("status", "shown"):
                    found += _status_words(v)
        elif isinstance(node, ast.Assign) and any("STATUS" in ast.unparse(t).upper() for t in node.targets):
            found += _status_words(node.value)
    return sorted({(n.lineno, n.value) for n in found})


def event_names(path: Path) -> list[tuple[int, str]]:
    """Event names written (``log.event("step", ...)``) or compared with an ``event`` field."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "event":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and first.value in EVENT_WORDS:
                found.append((node.lineno, first.value))
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any("event" in ast.unparse(p) for p in parts):
                for p in parts:
                    if isinstance(p, ast.Constant) and p.value in EVENT_WORDS:
                        found.append((node.lineno, p.value))
    return sorted(found)


def test_no_module_spells_a_status_or_a_stilts_variable_as_a_bare_string():
    offenders = {str(p.relative_to(PACKAGE.parent)): hits for p in modules() if (hits := bare_strings(p))}
    assert offenders == {}


def test_no_module_spells_an_event_name_as_a_bare_string():
    offenders = {str(p.relative_to(PACKAGE.parent)): hits for p in modules() if (hits := event_names(p))}
    assert offenders == {}


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The scans above are not vacuous: a module written the old way is caught."""
    old = tmp_path / "old.py"
    old.write_text(
        'import os\n"""doc: done"""\nhelp = "or $STILTS_MAX_RUNS"\n'
        'if row["status"] == "running" and os.environ.get("STILTS_FUSE"):\n'
        '    log.event("step", loss=1)\n'
        'stats["cancelled"] += 1\n'
        'tx.update_run(i, status="failed")\n'
        'if e.get("event") == "eval":\n    pass\n'
    )
    assert [v for _, v in bare_strings(old)] == ["STILTS_FUSE", "running", "failed"]  # not the counter
    assert [v for _, v in event_names(old)] == ["step", "eval"]
