"""The reference procedure's text rules: contexts -> sentences -> (context, real ending) pairs.

- paragraphs: SQuAD v1.1 train contexts de-duplicated in order (hub or ``train-v1.1.json``), or a
  text file with one paragraph a line;
- split each paragraph on the literal ". ";
- keep a sentence's first 30 whitespace-separated words; drop sentences of fewer than 20 words;
- context = the first half of the words (integer half); real ending = the rest without its last word;
- shuffle all pairs with the seed and keep the first n, in that order (then up to ``dev`` further pairs
  for the dev split, which the reference did not have).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from stilts_tui.errors import UserError, first_line

MAX_WORDS = 30
MIN_WORDS = 20


def clean_up_spaces(text: str) -> str:
    """transformers 4.3's ``clean_up_tokenization`` (``decode``'s default then, as the reference
    decoded with): the space before punctuation and English contractions removed. Written out here
    because transformers 5 skips it for BPE tokenizers such as GPT-2's."""
    for old, new in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(old, new)
    return text


def pair_of(sentence: str) -> tuple[str, str] | None:
    """(context, real ending) of one sentence, or None when it has fewer than 20 words."""
    words = sentence.split()[:MAX_WORDS]
    if len(words) < MIN_WORDS:
        return None
    half = len(words) // 2
    return " ".join(words[:half]), " ".join(words[half:-1])


def pairs_of(paragraphs: list[str]) -> list[tuple[str, str]]:
    out = []
    for p in paragraphs:
        for sentence in p.split(". "):
            pair = pair_of(sentence)
            if pair is not None:
                out.append(pair)
    return out


def select(pairs: list[tuple[str, str]], n: int, dev: int, seed: int) -> tuple[list, list]:
    """Shuffle with the seed (``random.Random(seed).shuffle``, as the reference's ``random.seed``
    then ``random.shuffle``); the first n are train, in that order, and dev takes up to ``dev`` of the
    pairs after them (fewer when the corpus has fewer; at least one when ``dev`` asks for any)."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    need = n + (1 if dev else 0)
    if len(pairs) < need:
        raise UserError(
            f"the corpus gives {len(pairs)} sentences of {MIN_WORDS}+ words; n={n}"
            + (f" and a dev split (dev={dev})" if dev else "")
            + f" need at least {need}"
        )
    return pairs[:n], pairs[n : n + dev]


def read_corpus(corpus: str | None, corpus_file: str | None) -> list[str]:
    """Paragraphs from SQuAD v1.1 train (hub), a ``train-v1.1.json`` file, or a text file."""
    if corpus_file:
        path = Path(corpus_file)
        if not path.is_file():
            raise UserError(f"--corpus-file: {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"--corpus-file: {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                f"{e.start}; save the file as UTF-8)"
            ) from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)["data"]
                paras = [p["context"] for article in data for p in article["paragraphs"]]
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}: not a SQuAD v1.1 file (data -> paragraphs -> context)") from None
        else:
            paras = [line.strip() for line in text.splitlines() if line.strip()]
    elif corpus == "squad":
        try:
            import datasets

            ds = datasets.load_dataset("rajpurkar/squad", split="train")
        except Exception as e:  # noqa: BLE001 - any hub failure ends in the same advice
            raise UserError(
                f"could not load SQuAD v1.1 from the Hugging Face Hub ({first_line(e)}); download "
                "train-v1.1.json and pass --corpus-file (or corpus_file in the plan)"
            ) from None
        paras = list(ds["context"])
    else:
        raise UserError("name a corpus: --corpus squad or --corpus-file PATH")
    paras = list(dict.fromkeys(paras))  # de-duplicated, in order
    if not paras:
        raise UserError("the corpus is empty")
    return paras
