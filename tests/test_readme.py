"""The README says what the code does: its test command is the one CI runs, its main command names
real files, and its command table and the CLI agree (every command in both, every flag real)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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
    from stilts_tui.cli.demo import DEMO_PLAN

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


def _readme_commands(blocks: list[str] = BLOCKS) -> list[tuple[list[tuple[str, ...]], set[str]]]:
    """The command table, a line at a time: (the commands a ``stilts-tui WORDS [flags]`` line names, with
    ``a|b`` alternatives, and the flags on it and its indented continuation lines)."""
    table = next(b for b in blocks if b.lstrip().startswith("stilts-tui"))
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


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_the_command_table_and_the_cli_agree_command_by_command(doc):
    text = (ROOT / doc).read_text()
    cli, lines = _cli_commands(), _readme_commands(re.findall(r"```(?:bash)?\n(.*?)\n```", text, re.S))
    listed = {name for names, _ in lines for name in names}
    assert listed - set(cli) == set(), f"{doc} lists commands the CLI does not have"
    assert set(cli) - listed == set(), f"{doc}: the CLI has commands it does not list"
    for names, flags in lines:  # "daemon start|stop|status [--gpus ...]": each flag of one of them
        known = set().union(*(cli[n] for n in names))  # the root's flags go before a command, not after it
        assert flags <= known, f"{doc}: {names} names flags the CLI lacks: {flags - known}"


def _written_commands(text: str) -> list[str]:
    """Every ``stilts-tui ...`` command a page writes: in inline code, and on lines of code blocks."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)\n```", text, re.S)
    lines = [x.strip() for b in blocks for x in b.splitlines() if x.strip().startswith("stilts-tui ")]
    return re.findall(r"`(stilts-tui [^`]+)`", text) + lines


DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_a_page_writes_exists_with_the_flags_it_gives(doc):
    cli = _cli_commands()
    prefixes = {k[:n] for k in cli for n in range(len(k) + 1)}
    for written in _written_commands((ROOT / doc).read_text()):
        if "|" in written.split("  ")[0] and "[" in written:
            continue  # a table line of alternatives ("start|stop|status"): the table test reads those
        toks, words, i = written.split()[1:], (), 0
        while i < len(toks) and toks[i] in ("--runs-dir", "--no-daemon"):  # root options go first
            i += 2 if toks[i] == "--runs-dir" else 1
        while i < len(toks) and (*words, toks[i]) in prefixes:
            words, i = (*words, toks[i]), i + 1
        assert words in cli, f"{doc}: `{written}` names no command of the CLI"
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(toks[i:])))
        assert flags <= cli[words], f"{doc}: `{written}`: {sorted(flags - cli[words])} are not flags of it"


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+\s+(.*)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_of_a_page_leads_somewhere(doc):
    page = ROOT / doc
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{doc}: the link ({target}) leads nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text()), f"{doc}: ({target}) names no heading of {dest.name}"
    for named in re.findall(r"(?<![\w/.])((?:docs|bench|tests|plans|stilts_tui|ci)/[\w./-]+\.(?:md|py|sh|toml))", text):
        assert (ROOT / named).exists() or "NAME" in named, f"{doc} names {named}, which does not exist"


def test_the_tours_quick_checks_run_offline_as_written(tmp_path):
    """Issue 35, item 16: the tour's "check a plan" commands failed offline as written (no data/RTE, a
    tokenizer from the hub). Each quick one runs here from a fresh folder with the hub unreachable; the
    rehearsal, as written, is tests/test_rehearse.py's (slow tier)."""
    import re
    import shlex

    from conftest import cli

    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## A five-minute tour") : text.index("## Command line")]
    commands = [c.replace("\n   ", " ") for c in re.findall(r"`(stilts-tui [^`]+)`", tour, re.S)]
    quick = [c for c in commands if c.split()[1:3] in (["plan", "validate"], ["plan", "show"], ["tasks", "show"])]
    assert len(quick) == 3, commands
    rehearse = next(c for c in commands if c.split()[1:3] == ["plan", "rehearse"])
    assert "--data-dir tests/fixtures/chang_lu_2021" in rehearse
    for command in quick:
        out = cli(*shlex.split(command)[1:], cwd=ROOT, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
        assert out.returncode == 0, (command, out.stderr)
