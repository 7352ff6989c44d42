"""The model receives exactly the reference's input text (terarachang/Rethinking_STILT utils.py and
run_gpt2_synth_dataset.py), checked on token ids from a RoBERTa-style byte-level BPE tokenizer built
here: with it, a space beside the separator is a token of its own and changes the next word's token,
so a spaced join cannot pass. Expected strings are written by hand from the reference's rules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import cli, write_jsonl, write_text

from stilts_tui import plan as plans
from stilts_tui.train import data

MAX_LEN = 64
CORPUS = [
    "carry You must carry your camping gear . Sound carries well over water .",
    "Tracy went to the store. Why did Tracy do this? buy milk sell eggs sleep",
    "It rained, a lot. What happened? rain sun snow none, really",
    "Sarah was a much better surgeon than Maria so always got the harder cases.",
    "The river , which runs north , floods every spring and the farmers along its banks plant late",
    "Most towns in the valley were built before 1900 and many of them still have old stone bridges , mills",
]


def build_roberta_bpe(folder: Path):
    """A RoBERTa-style tokenizer: byte-level BPE, <s> A </s></s> B </s>, sep_token </s>."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS * 3,
        vocab_size=500,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe") / "tok"
    return build_roberta_bpe(folder), folder


def task_spec(tmp_path: Path, task: str) -> dict:
    text = f'name = "t"\nmodel = "m"\n[target.x]\ntask = "{task}"\ndata_dir = "{tmp_path}"\n'
    return plans.load_and_expand(write_text(tmp_path / "plan.toml", text))[1][0].task_spec


def trainer_ids(tmp_path: Path, task: str, tok) -> list:
    """The ids of the first training example, through the trainer's own tokenization and cache."""
    spec = task_spec(tmp_path, task)
    split = data.load_split(spec, "train", tok, data.tokenizer_fingerprint(tok), MAX_LEN, tmp_path / "cache")
    ids = split.ids[0]
    if ids.ndim == 1:
        return ids[ids != tok.pad_token_id].tolist()
    return [row[row != tok.pad_token_id].tolist() for row in ids]


def expect(tok, a: str, b: str | None) -> list[int]:
    return tok(a, b, truncation="longest_first", max_length=MAX_LEN)["input_ids"]


def test_the_tokenizer_tells_a_spaced_separator_apart(bpe):
    tok, _ = bpe
    assert expect(tok, "carry</s>You must", None) != expect(tok, "carry </s> You must", None)


def write_wic(d: Path) -> None:
    for split in ("train", "dev"):
        write_text(
            d / f"{split}/{split}.data.txt",
            "carry\tV\t2-1\tYou must carry your camping gear .\tSound carries well over water .\n",
        )
        write_text(d / f"{split}/{split}.gold.txt", "T\n")


def test_wic_is_word_sep_sentence1_paired_with_sentence2(tmp_path, bpe):
    tok, _ = bpe
    write_wic(tmp_path)
    ids = trainer_ids(tmp_path, "wic", tok)
    assert ids == expect(tok, "carry</s>You must carry your camping gear .", "Sound carries well over water .")
    assert ids != expect(tok, "carry </s> You must carry your camping gear .", "Sound carries well over water .")


def test_siqa_is_context_sep_question_paired_with_each_answer(tmp_path, bpe):
    tok, _ = bpe
    row = {
        "context": "Tracy went to the store.",
        "question": "Why did Tracy do this?",
        "answerA": "buy milk",
        "answerB": "sell eggs",
        "answerC": "sleep",
    }
    for split in ("train", "dev"):
        write_jsonl(tmp_path / f"{split}.jsonl", [row])
        write_text(tmp_path / f"{split}-labels.lst", "2\n")
    ids = trainer_ids(tmp_path, "siqa", tok)
    a = "Tracy went to the store.</s>Why did Tracy do this?"
    assert ids == [expect(tok, a, "buy milk"), expect(tok, a, "sell eggs"), expect(tok, a, "sleep")]
    assert ids[0] != expect(tok, "Tracy went to the store. </s> Why did Tracy do this?", "buy milk")


def test_cosmosqa_is_context_sep_question_paired_with_each_answer(tmp_path, bpe):
    tok, _ = bpe
    text = (
        "id,context,question,answer0,answer1,answer2,answer3,label\n"
        'q1,"It rained, a lot.",What happened?,rain,sun,snow,"none, really",2\n'
    )
    write_text(tmp_path / "train.csv", text)
    write_text(tmp_path / "valid.csv", text)
    ids = trainer_ids(tmp_path, "cosmosqa", tok)
    a = "It rained, a lot.</s>What happened?"
    assert ids == [expect(tok, a, x) for x in ("rain", "sun", "snow", "none, really")]


def test_winogrande_context_keeps_its_trailing_space(tmp_path, bpe):
    tok, _ = bpe
    row = {
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "2",
    }
    write_jsonl(tmp_path / "train_xs.jsonl", [row])
    write_jsonl(tmp_path / "dev.jsonl", [row])
    ids = trainer_ids(tmp_path, "winogrande-xs", tok)
    a = "Sarah was a much better surgeon than Maria so "  # sentence[:idx], its space kept
    assert ids == [
        expect(tok, a, "Sarah always got the harder cases."),
        expect(tok, a, "Maria always got the harder cases."),
    ]
    assert ids[0] != expect(tok, a.rstrip(), "Sarah always got the harder cases.")


def test_tasks_show_prints_the_ids_the_trainer_uses(tmp_path, bpe):
    tok, folder = bpe
    write_wic(tmp_path / "wic")
    out = cli("tasks", "show", "wic", "--data-dir", str(tmp_path / "wic"), "--model", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[0])
    assert rec["text"] == ["carry</s>You must carry your camping gear .", "Sound carries well over water ."]
    assert rec["label"] == 1 and rec["label_name"] == "T"
    assert rec["input_ids"] == trainer_ids(tmp_path / "wic", "wic", tok)
    shown = cli("tasks", "show", "wic", "--data-dir", str(tmp_path / "wic"), "--model", str(folder), "-n", "1")
    assert shown.returncode == 0 and '"carry</s>You must carry your camping gear ."' in shown.stdout
    assert " ".join(map(str, rec["input_ids"])) in shown.stdout


def test_tasks_show_multiple_choice_gives_a_list_per_choice(tmp_path, bpe):
    _, folder = bpe
    row = {"context": "Tracy went to the store.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c"}
    for split in ("train", "dev"):
        write_jsonl(tmp_path / f"{split}.jsonl", [row, row])
        write_text(tmp_path / f"{split}-labels.lst", "3\n1\n")
    out = cli("tasks", "show", "iqa", "--data-dir", str(tmp_path), "--model", str(folder), "--json", "-n", "5")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert [r["label"] for r in recs] == [2, 0]
    assert len(recs[0]["input_ids"]) == 3 and all(isinstance(x, list) for x in recs[0]["input_ids"])
    assert recs[0]["text"][1] == ["Tracy went to the store.</s>Why?", "b"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["rte"], "Hugging Face Hub is unreachable"),
        (["rte", "--data-dir", "{tmp}/nope"], "--data-dir"),
        (["nosuchtask"], "unknown task 'nosuchtask'"),
        (["rte", "--data-dir", "{tmp}/rte", "--model", "{tmp}/no-model"], "cannot load the tokenizer"),
    ],
)
def test_tasks_show_bad_input_is_one_line(tmp_path, args, needle):
    write_text(tmp_path / "rte/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    write_text(tmp_path / "rte/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    out = cli(
        "tasks",
        "show",
        *[a.format(tmp=tmp_path) for a in args],
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr and "Traceback" not in out.stderr
    if "unreachable" in needle:
        assert "--data-dir" in out.stderr


# ---- synthesis: exact text and order -----------------------------------------------------------

PARAGRAPHS = [  # one sentence each (no ". " inside); 22 and 24 words
    "The river , which runs north , floods every spring and the farmers along its banks plant late in the season .",
    "Most towns in the valley were built before 1900 and many of them still have old stone bridges , mills "
    "and churches today .",
]
# by hand: context = the first half of the words, real ending = the rest less the last word, both
# decoded with clean-up of the space before punctuation
EXPECTED = [
    ("The river, which runs north, floods every spring and", "the farmers along its banks plant late in the season"),
    (
        "Most towns in the valley were built before 1900 and many of",
        "them still have old stone bridges, mills and churches today",
    ),
]


def build_gpt2(folder: Path) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        PARAGRAPHS * 3, vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    )
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_synthesis_text_and_order_are_the_references(tmp_path, bpe):
    tok, _ = bpe
    gen = build_gpt2(tmp_path / "gen")
    # six paragraphs: each of the two sentences three times, with a marker word so each pair is its own
    paras = [
        p.replace("spring", f"spring{k}") if i == 0 else p.replace("1900", f"190{k}")
        for k in range(3)
        for i, p in enumerate(PARAGRAPHS)
    ]
    corpus = write_text(tmp_path / "corpus.txt", "\n".join(paras) + "\n")
    out = cli(
        "synth",
        "--corpus-file",
        str(corpus),
        "--generator",
        str(gen),
        "--out",
        str(tmp_path / "o"),
        "--n",
        "4",
        "--dev",
        "2",
        "--fakes",
        "2",
        "--batch-size",
        "2",
        "--seed",
        "7",
    )
    assert out.returncode == 0, out.stderr
    expected = [
        (c.replace("spring", f"spring{k}"), e) if i == 0 else (c.replace("1900", f"190{k}"), e)
        for k in range(3)
        for i, (c, e) in enumerate(EXPECTED)
    ]
    random.Random(7).shuffle(expected)  # the reference: random.seed(seed); random.shuffle(data)
    rows = [json.loads(x) for x in (tmp_path / "o/SynGPT2_train.jsonl").read_text().splitlines()]
    dev = [json.loads(x) for x in (tmp_path / "o/SynGPT2_dev.jsonl").read_text().splitlines()]
    assert [(r["ctx"], r["endings"][0]) for r in rows] == expected[:4]  # the first n, in the shuffled order
    assert [(r["ctx"], r["endings"][0]) for r in dev] == expected[4:]  # dev: beyond the first n
    for r in rows + dev:
        assert len(r["endings"]) == 3 and r["label"] == 0
        for fake in r["endings"][1:]:
            assert fake == fake.strip() and " ," not in fake and " ." not in fake  # cleaned up, as the reference
    # and the trainer reads them as the reference did: ctx paired with each ending
    spec = {
        "name": "syngpt2",
        "kind": "multiple_choice",
        "labels": None,
        "hub": None,
        "hub_splits": ["train", "dev"],
        "data_dir": str(tmp_path / "o"),
        "train_file": None,
        "dev_file": None,
        "custom": None,
    }
    split = data.load_split(spec, "train", tok, data.tokenizer_fingerprint(tok), MAX_LEN, tmp_path / "cache")
    first = split.ids[0][0]
    assert first[first != tok.pad_token_id].tolist() == expect(tok, *expected[0])


# ---- truncation of pairs, MedNLI's labels, byte-order marks: as the reference -------------------


def build_wordpiece(folder: Path):
    """A BERT-style tokenizer: WordPiece, [CLS] A [SEP] B [SEP] (3 special tokens: an even max_len leaves
    an odd budget), token type ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in CORPUS for w in line.lower().split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"])}
    inner = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    inner.normalizer = normalizers.Lowercase()
    inner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    inner.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=inner,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tok.save_pretrained(str(folder))
    return tok


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece") / "tok"
    return build_wordpiece(folder), folder


def reference_pair(tok, a: str, b: str, max_len: int) -> tuple[list[int], list[int]]:
    """transformers 4.3's ``truncate_sequences(..., 'longest_first')``, line by line: one token at a time
    from the longer segment, from the second on a tie."""
    ids, pair = tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"]
    for _ in range(max(0, len(ids) + len(pair) + tok.num_special_tokens_to_add(pair=True) - max_len)):
        if len(ids) > len(pair):
            ids = ids[:-1]
        else:
            pair = pair[:-1]
    return ids, pair


def with_specials(tok, ids: list[int], pair: list[int]) -> list[int]:
    """The reference's special tokens, written out: BERT [CLS] A [SEP] B [SEP], RoBERTa <s> A </s></s> B </s>."""
    if tok.cls_token == "[CLS]":
        return [tok.cls_token_id, *ids, tok.sep_token_id, *pair, tok.sep_token_id]
    return [tok.cls_token_id, *ids, tok.sep_token_id, tok.sep_token_id, *pair, tok.sep_token_id]


PAIRS = [  # (first, second): the second longer (the case the budget's odd token decides), then the first
    (CORPUS[3], CORPUS[4]),
    (CORPUS[4], CORPUS[5]),
    (CORPUS[5], CORPUS[3]),
    (CORPUS[0], CORPUS[5]),
]


@pytest.mark.parametrize("which", ["wordpiece", "bpe"])
def test_pairs_are_cut_one_token_at_a_time_as_transformers_4_3_did(tmp_path, request, which):
    """Both budgets: an even one (nothing to tell the rules apart) and an odd one (the first segment keeps
    the extra token): max_len 20 and 21 are odd for one tokenizer and even for the other."""
    tok, folder = request.getfixturevalue(which)
    rows = "".join(f"{i}\t{a}\t{b}\tentailment\n" for i, (a, b) in enumerate(PAIRS))
    for split in ("train", "dev"):
        write_text(tmp_path / f"{split}.tsv", "index\tsentence1\tsentence2\tlabel\n" + rows)
    full = [
        (len(tok(a, add_special_tokens=False)["input_ids"]), len(tok(b, add_special_tokens=False)["input_ids"]))
        for a, b in PAIRS
    ]
    for max_len in (20, 21):
        out = cli(
            "tasks",
            "show",
            "rte",
            "--data-dir",
            str(tmp_path),
            "--model",
            str(folder),
            "--max-len",
            str(max_len),
            "--json",
            "-n",
            str(len(PAIRS)),
        )
        assert out.returncode == 0, out.stderr
        shown = [json.loads(x)["input_ids"] for x in out.stdout.strip().splitlines()]
        cut = [reference_pair(tok, a, b, max_len) for a, b in PAIRS]
        assert shown == [with_specials(tok, ids, pair) for ids, pair in cut], max_len
        budget = max_len - tok.num_special_tokens_to_add(pair=True)
        # the case that tells the rules apart is here: both cut, the second longer, and (odd budgets) the
        # first keeps the extra token
        both_cut = [
            (len(i), len(p))
            for (i, p), (la, lb) in zip(cut, full, strict=True)
            if len(i) < la and len(p) < lb and lb > la
        ]
        assert both_cut and all(n1 - n2 == budget % 2 for n1, n2 in both_cut)


def test_mednli_labels_are_numbered_as_the_reference_did(tmp_path, bpe):
    _, folder = bpe
    rows = [
        {"sentence1": "Labs were normal.", "sentence2": "x", "gold_label": g}
        for g in ("entailment", "contradiction", "neutral")
    ]
    write_jsonl(tmp_path / "mli_train_v1.jsonl", rows)
    write_jsonl(tmp_path / "mli_dev_v1.jsonl", rows)
    out = cli("tasks", "show", "mednli", "--data-dir", str(tmp_path), "--model", str(folder), "--json", "-n", "3")
    assert out.returncode == 0, out.stderr
    recs = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert [(r["label"], r["label_name"]) for r in recs] == [(0, "entailment"), (1, "contradiction"), (2, "neutral")]


def test_a_byte_order_mark_is_dropped_from_tsv_and_winogrande_files_as_the_reference_reads_them(tmp_path, bpe):
    _, folder = bpe
    # MRPC's first column is its label: with the mark kept, the header would name "\ufeffQuality"
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA man.\tA person.\n"
    for split in ("train", "dev"):
        (tmp_path / "mrpc").mkdir(exist_ok=True)
        (tmp_path / "mrpc" / f"{split}.tsv").write_text("\ufeff" + mrpc, encoding="utf-8")
    out = cli("tasks", "show", "mrpc", "--data-dir", str(tmp_path / "mrpc"), "--model", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["label"] == 1
    wino = {
        "sentence": "Sarah was a much better surgeon than _ so",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "2",
    }
    (tmp_path / "wg").mkdir()
    for name in ("train_xs.jsonl", "dev.jsonl"):
        (tmp_path / "wg" / name).write_text("\ufeff" + json.dumps(wino) + "\n", encoding="utf-8")
    out = cli("tasks", "show", "winogrande-xs", "--data-dir", str(tmp_path / "wg"), "--model", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.splitlines()[0])
    assert rec["label"] == 1 and rec["text"][0] == ["Sarah was a much better surgeon than ", "Sarah so"]


def test_tasks_show_a_plans_own_task_with_its_model(tmp_path, bpe):
    # a plan's custom task (its own jsonl files) shown as its runs train on it, with the plan's tokenizer
    tok, folder = bpe
    write_jsonl(tmp_path / "t_train.jsonl", [{"s1": "A cat sat.", "s2": "It slept.", "label": "yes"}])
    write_jsonl(tmp_path / "t_dev.jsonl", [{"s1": "A dog ran.", "s2": "It ate.", "label": "no"}])
    write_text(
        tmp_path / "p.toml",
        f'name = "own"\nmodel = "{folder}"\ntarget_seeds = [1]\n'
        '[tasks.mine]\nformat = "jsonl"\ntrain = "t_train.jsonl"\ndev = "t_dev.jsonl"\nkind = "classification"\n'
        'text_fields = ["s1", "s2"]\nlabels = ["no", "yes"]\n[target.mine]\n',
    )
    out = cli("tasks", "show", "mine", "--plan", str(tmp_path / "p.toml"), "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[0])
    assert rec["text"] == ["A cat sat.", "It slept."] and rec["label_name"] == "yes"
    assert rec["input_ids"] == tok("A cat sat.", "It slept.")["input_ids"]
    dev = cli("tasks", "show", "mine", "--plan", str(tmp_path / "p.toml"), "--split", "dev", "--json")
    assert json.loads(dev.stdout.strip().splitlines()[0])["label_name"] == "no"
    # a stage the plan lacks, and a plan whose own files are gone: one line each, exit 2
    bad = cli("tasks", "show", "rte", "--plan", str(tmp_path / "p.toml"))
    assert bad.returncode == 2 and "no intermediate or target stage 'rte'" in bad.stderr and "mine" in bad.stderr
    (tmp_path / "t_dev.jsonl").unlink()
    gone = cli("tasks", "show", "mine", "--plan", str(tmp_path / "p.toml"))
    assert gone.returncode == 2 and "t_dev.jsonl" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1
