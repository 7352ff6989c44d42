"""SynGPT2 synthesis with a tiny GPT-2 and tokenizer built in the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, wait, write_text

from stilts_tui.errors import UserError
from stilts_tui.synth import procedure

W = [f"w{i}" for i in range(40)]


def words(n: int, start: int = 0) -> str:
    return " ".join(W[(start + i) % 40] for i in range(n))


def test_a_sentence_becomes_context_and_ending_by_the_reference_rules():
    assert procedure.pair_of(words(19)) is None  # fewer than 20 words: dropped
    ctx, end = procedure.pair_of(words(20))  # half of 20 is 10; the last word is dropped
    assert ctx == words(10) and end == words(9, 10)
    ctx, end = procedure.pair_of(words(25))  # integer half of 25 is 12
    assert ctx == words(12) and end == words(12, 12)
    ctx, end = procedure.pair_of(words(35))  # only the first 30 words count
    assert ctx == words(15) and end == words(14, 15)
    assert procedure.pair_of("  " + words(20).replace(" ", "   ") + "\n") == (words(10), words(9, 10))


def test_paragraphs_split_on_the_literal_period_space():
    para = f"{words(22)}. {words(5)}. {words(21, 3)}.{words(20, 7)}"
    pairs = procedure.pairs_of([para])
    # three pieces: 22 words; 5 words (dropped); "21 words.20 words" is one piece with no ". " inside
    assert len(pairs) == 2
    assert pairs[0] == (words(11), words(10, 11))
    joined = (words(21, 3) + "." + words(20, 7)).split()[:30]
    assert pairs[1] == (" ".join(joined[:15]), " ".join(joined[15:29]))


def test_selection_is_seeded_and_checks_the_corpus_is_long_enough():
    pairs = [(f"c{i}", f"e{i}") for i in range(10)]
    a = procedure.select(pairs, 6, 2, seed=1)
    assert a == procedure.select(pairs, 6, 2, seed=1) and a != procedure.select(pairs, 6, 2, seed=2)
    assert len(a[0]) == 6 and len(a[1]) == 2 and not set(a[0]) & set(a[1])
    with pytest.raises(UserError, match="gives 10 sentences"):
        procedure.select(pairs, 10, 2, seed=1)
    train, dev = procedure.select(pairs, 8, 5, seed=1)  # dev takes what is left beyond the first n
    assert train[:6] == a[0] and len(train) == 8 and len(dev) == 2 and not set(train) & set(dev)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A tiny GPT-2 whose word-level tokenizer knows the corpus words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("gpt2") / "gen"
    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(W)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    import torch

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
        )
    )
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture
def corpus(tmp_path) -> Path:
    paras = [". ".join(words(20 + (i * 7 + j) % 11, i * 3 + j) for j in range(4)) for i in range(40)]
    return write_text(tmp_path / "corpus.txt", "\n".join(paras) + "\n")


def synth(gpt2: Path, corpus: Path, out: Path, *extra: str, env: dict | None = None):
    args = ["synth", "--corpus-file", str(corpus), "--generator", str(gpt2), "--out", str(out), *extra]
    return cli(*args, env=env)


def slow_synth(gpt2: Path, corpus: Path, out: Path, seconds: float, **params) -> subprocess.Popen:
    """The synthesis process `stilts-tui synth` would start for ``params``, slowed by ``seconds`` a
    window of rows (tests/fakes/slow_synth.py: the delay is the test's, not the product's)."""
    from stilts_tui.contract import SYNTH_COMMAND_DEFAULTS as COMMAND_DEFAULTS

    full = {**COMMAND_DEFAULTS, "corpus_file": str(corpus), "generator": str(gpt2), **params}
    runner = Path(__file__).parent / "fakes" / "slow_synth.py"
    return subprocess.Popen(
        [sys.executable, str(runner), str(seconds), "--cli", json.dumps(full), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_output_format_counts_and_fake_lengths(gpt2, corpus, tmp_path):
    from transformers import AutoTokenizer

    out = synth(gpt2, corpus, tmp_path / "out", "--n", "12", "--fakes", "3", "--dev", "4", "--batch-size", "5")
    assert out.returncode == 0, out.stderr
    assert "wrote 12 train, 4 dev examples" in out.stdout
    train, dev = rows(tmp_path / "out/SynGPT2_train.jsonl"), rows(tmp_path / "out/SynGPT2_dev.jsonl")
    assert len(train) == 12 and len(dev) == 4
    tok = AutoTokenizer.from_pretrained(str(gpt2))
    all_pairs = procedure.pairs_of(procedure.read_corpus(None, str(corpus)))
    chosen, held = procedure.select(all_pairs, 12, 4, 42)
    assert sorted(r["ctx"] for r in train) == sorted(c for c, _ in chosen)
    assert sorted(r["ctx"] for r in dev) == sorted(c for c, _ in held)
    real_of = dict(chosen)
    for r in train:
        assert set(r) == {"ctx", "endings", "label"} and r["label"] == 0 and len(r["endings"]) == 4
        assert r["endings"][0] == real_of[r["ctx"]]  # the real ending, round-tripped, is choice 0
        limit = len(tok(r["endings"][0], add_special_tokens=False)["input_ids"])
        for fake in r["endings"][1:]:
            assert len(tok(fake, add_special_tokens=False)["input_ids"]) <= limit


@pytest.mark.slow
def test_the_same_seed_gives_the_same_task_and_another_seed_another(gpt2, corpus, tmp_path):
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert synth(gpt2, corpus, tmp_path / name, "--n", "8", "--seed", seed).returncode == 0
    a, b, c = ((tmp_path / n / "SynGPT2_train.jsonl").read_text() for n in "abc")
    assert a == b and a != c


@pytest.mark.slow
def test_a_killed_synthesis_resumes_to_the_same_result(gpt2, corpus, tmp_path):
    args = ("--n", "60", "--fakes", "2", "--batch-size", "1")  # rows are written a window (16 batches) at a time
    assert synth(gpt2, corpus, tmp_path / "whole", *args).returncode == 0
    out = tmp_path / "killed" / "SynGPT2_train.jsonl"
    proc = slow_synth(gpt2, corpus, tmp_path / "killed", 0.2, n=60, fakes=2, batch_size=1)
    wait(lambda: out.exists() and len(out.read_text().splitlines()) >= 16, 60, "a window of rows written")
    for p in _children(proc.pid) + [proc.pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    partial = len(out.read_text().splitlines())
    assert 16 <= partial < 60
    with open(out, "a") as f:  # a torn last line, as a kill mid-write would leave
        f.write('{"ctx": "w1 w2')
    assert synth(gpt2, corpus, tmp_path / "killed", *args).returncode == 0
    assert out.read_text() == (tmp_path / "whole" / "SynGPT2_train.jsonl").read_text()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize(
    "setup, message",
    [
        ("empty", "the corpus is empty"),
        ("short", "gives 0 sentences of 20+ words"),
        ("generator", "unknown or unreachable generator"),
        ("both", "name one corpus"),
        ("hub", "could not load SQuAD v1.1 from the Hugging Face Hub"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(gpt2, tmp_path, setup, message):
    corpus = write_text(
        tmp_path / "c.txt", {"empty": "\n", "short": "too short. sentences here.\n"}.get(setup, words(25) + "\n")
    )
    source = ["--corpus", "squad"] if setup == "hub" else ["--corpus-file", str(corpus)]
    args = [
        "synth",
        *source,
        "--generator",
        str(tmp_path / "nope") if setup == "generator" else str(gpt2),
        "--out",
        str(tmp_path / "o"),
        "--n",
        "1",
    ]
    if setup == "both":
        args += ["--corpus", "squad"]
    out = cli(*args, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


@pytest.mark.slow
def test_a_synth_stage_at_its_defaults_feeds_an_intermediate_run_through_the_queue(gpt2, corpus, tmp_path, runs_dir):
    from stilts_tui.store.ledger import Ledger
    from stilts_tui.train import workload

    model = workload.build_model(tmp_path / "enc", "tiny")
    plan = write_text(
        tmp_path / "p.toml",
        f"""name = "syn"
model = "{model}"
baseline = false
[synth.s]
corpus_file = "{corpus}"
generator = "{gpt2}"
n = 24
fakes = 3
batch_size = 8
[intermediate.i]
task = "synth:s"
epochs = 1
batch_size = 8
max_len = 32
[target.t]
task = "rte"
""",
    )
    assert cli("queue", "add", str(plan), runs_dir=runs_dir).returncode == 0
    runs = {r["stage"]: r for r in Ledger(runs_dir).runs()}
    target = runs.pop("target")
    with Ledger(runs_dir).transaction() as tx:  # the target would need the hub: not part of this test
        tx.update_run(target["id"], status="cancelled")
    env = {"STILTS_FAKE_GPUS": "1x24", "OMP_NUM_THREADS": "1"}
    assert cli("daemon", "start", "--interval", "0.2", runs_dir=runs_dir, env=env).returncode == 0
    try:

        def ended() -> bool:
            st = {r["stage"]: r["status"] for r in Ledger(runs_dir).runs()}
            return st["intermediate"] in ("done", "failed", "blocked") and st["synth"] in ("done", "failed")

        wait(ended, 180, "the synth and intermediate runs to end")
    finally:
        cli("daemon", "stop", runs_dir=runs_dir, env=env)
    final = {r["stage"]: r for r in Ledger(runs_dir).runs()}
    assert final["synth"]["status"] == "done", (runs_dir / final["synth"]["id"] / "train.log").read_text()
    assert final["intermediate"]["status"] == "done", final["intermediate"].get("error")
    data = runs_dir / final["synth"]["id"] / "data"
    # dev left at its default: up to 1000 pairs from beyond the first n (here what the corpus has left)
    n_dev = min(1000, len(procedure.pairs_of(procedure.read_corpus(None, str(corpus)))) - 24)
    assert len(rows(data / "SynGPT2_train.jsonl")) == 24 and len(rows(data / "SynGPT2_dev.jsonl")) == n_dev
    assert final["intermediate"]["started"] >= final["synth"]["finished"] - 0.5
    log = (runs_dir / final["intermediate"]["id"] / "train.log").read_text()
    assert f"train 24 / dev {n_dev} examples" in log
    assert json.loads((runs_dir / final["synth"]["id"] / "result.json").read_text())["counts"] == {
        "train": 24,
        "dev": n_dev,
    }
