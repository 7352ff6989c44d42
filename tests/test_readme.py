"""The README says what the code does: its test command is the one CI runs, its main command names
real files, and its command table and the CLI agree (every command in both, every flag real)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(?:bash)?\n(.*?)\n```", README, re.S)


def test_ci_runs_exactly_the_readme_test_command():
    bash = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(bash) >= 2
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert bash[1].strip() in ci_lines


def test_readme_main_command_names_files_that_exist():
    main = re.findall(r"```bash\n(.*?)\n```", README, re.S)[0]
    for path in re.findall(r"plans/\S+\.toml", main):
        assert (ROOT / path).is_file()


def test_the_committed_demo_plan_is_the_one_the_demo_writes():
    from stilts_tui.demo import DEMO_PLAN

    assert (ROOT / "plans" / "demo.toml").read_text() == DEMO_PLAN


def _cli_commands() -> dict[tuple[str, ...], set[str]]:
    """Every leaf command of the real CLI (by its words) with its long options."""
    from stilts_tui.cli import app

    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd, words: tuple[str, ...]) -> None:  # typer's own click: duck-typed
        opts = {o for p in cmd.params for o in getattr(p, "opts", []) if o.startswith("--")}
        if hasattr(cmd, "commands"):
            if cmd.invoke_without_command or not cmd.commands:
                out[words] = opts
            for name, sub in cmd.commands.items():
                walk(sub, (*words, name))
        else:
            out[words] = opts

    walk(typer.main.get_command(app), ())
    return out


def _readme_commands() -> list[tuple[list[tuple[str, ...]], set[str]]]:
    """The command table, a line at a time: (the commands a ``stilts-tui WORDS [flags]`` line names, with
    ``a|b`` alternatives, and the flags on it and its indented continuation lines)."""
    table = next(b for b in BLOCKS if b.lstrip().startswith("stilts-tui"))
    out: list[tuple[list[tuple[str, ...]], set[str]]] = []
    for line in table.splitlines():
        if line.startswith("stilts-tui"):
            words: list[list[str]] = []
            head = re.split(r"\s{2,}", line.rstrip())[0].replace(" | ", "|")  # the description follows 2 spaces
            for tok in head.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z|]*", tok):
                    break
                words.append(tok.split("|"))
            names: list[tuple[str, ...]] = [()]
            for alternatives in words:
                names = [(*c, a) for c in names for a in alternatives]
            out.append((names, set()))
        elif not line.startswith(" ") or not out:
            continue
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        out[-1][1].update(flags)
    return out


def test_the_readme_command_table_and_the_cli_agree():
    cli, lines = _cli_commands(), _readme_commands()
    readme = {name for names, _ in lines for name in names}
    assert readme - set(cli) == set(), "the README lists commands the CLI does not have"
    assert set(cli) - readme == set(), "the CLI has commands the README does not list"
    for names, flags in lines:  # "daemon start|stop|status [--gpus ...]": each flag of one of them
        known = set().union(*(cli[n] for n in names)) | cli[()]
        assert flags <= known, f"{names}: the README names flags the CLI lacks: {flags - known}"
