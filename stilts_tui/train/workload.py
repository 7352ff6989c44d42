"""Synthetic workloads for the benchmarks and tests: a randomly initialised RoBERTa model
folder (config, weights, a word-level tokenizer built with `tokenizers`) and sentence-pair data
whose lengths are log-normal around 60 tokens, written as a custom jsonl task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from stilts_tui.contract import SPEC_FILE, TRAINING_DEFAULTS

SIZES = {  # name: (hidden, layers, heads, intermediate)
    "large": (1024, 24, 16, 4096),  # RoBERTa-large
    "base": (768, 12, 12, 3072),
    "tiny": (64, 2, 2, 128),  # for a CPU smoke run of the benchmark itself
}
VOCAB = 5000


def build_model(folder: Path, size: str = "large", seed: int = 0, dropout: float | None = None) -> Path:
    """A random-init RoBERTa of the given size with a word-level tokenizer, saved as a HF folder
    (``dropout``: hidden and attention dropout, RoBERTa's 0.1 when None)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    if (folder / "config.json").exists():
        return folder
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": len(specials) + i for i in range(VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    fast.model_input_names = ["input_ids", "attention_mask"]
    hidden, layers, heads, inter = SIZES[size]
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    if dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    fast.save_pretrained(str(folder))
    return folder


MARKERS = 20  # w0..w19: the words whose presence in s2 makes a pair positive


def build_data(folder: Path, n_train: int, n_dev: int, seed: int = 0, median: int = 60, max_len: int = 128):
    """Pairs whose tokenized length is log-normal around ``median``; label: does s2 hold one of a few
    marker words? A random-init encoder learns it within a few hundred steps (from the token
    embeddings alone), so a run's dev accuracy says whether it trained, and how well.
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)

    def rows(n: int) -> list[dict]:
        out = []
        lengths = np.clip(nrng.lognormal(np.log(median), 0.45, n).astype(int), 12, max_len) - 4
        for i, total in enumerate(lengths):
            n1 = max(3, int(total) // 2)
            n2 = max(3, int(total) - n1)
            s1 = [f"w{rng.randrange(MARKERS, VOCAB)}" for _ in range(n1)]
            s2 = [f"w{rng.randrange(MARKERS, VOCAB)}" for _ in range(n2)]
            label = i % 2
            if label:
                s2[rng.randrange(n2)] = f"w{rng.randrange(MARKERS)}"
            out.append({"s1": " ".join(s1), "s2": " ".join(s2), "label": str(label)})
        return out

    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", n_train), ("dev.jsonl", n_dev)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    return folder / "train.jsonl", folder / "dev.jsonl"


def task_spec(train: Path, dev: Path) -> dict:
    return {
        "name": "pairs",
        "kind": "classification",
        "labels": ["0", "1"],
        "num_choices": None,
        "metric": "acc",
        "metrics": ["acc"],
        "hub": None,
        "hub_splits": None,
        "data_dir": None,
        "train_file": str(train),
        "dev_file": str(dev),
        "from_run": None,
        "custom": {
            "format": "jsonl",
            "kind": "classification",
            "text_fields": ["s1", "s2"],
            "label_field": "label",
            "labels": ["0", "1"],
        },
    }


def write_run(runs: Path, run_id: str, model_folder: Path, task: dict, params: dict, seed: int) -> Path:
    d = runs / run_id
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "run_id": run_id,
        "plan": "bench",
        "stage": "target",
        "name": "pairs",
        "intermediate": "none",
        "task": task,
        "model": {"source": "path", "name": str(model_folder), "path": str(model_folder)},
        "params": {**TRAINING_DEFAULTS, **params},
        "seed": seed,
        "parent": None,
        "keep_checkpoint": False,
    }
    (d / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return d
