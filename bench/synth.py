"""SynGPT2 synthesis speed: prompts per second batched (many prompts per `generate` call, grouped by
length) against one prompt at a time as the reference script did, same generator, one invocation.

A randomly initialised GPT-2 (medium-sized by default: 24 layers, 1024 wide) with a word-level
tokenizer, on sentences made of its words; 3 fakes a prompt, top-p 0.9, top-k off.

    python bench/synth.py [--size medium] [--prompts 512] [--single 32] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from stilts_tui.synth import generate, procedure

SIZES = {"medium": (1024, 24, 16), "small": (768, 12, 12), "tiny": (64, 2, 2)}
VOCAB = [f"w{i}" for i in range(5000)]


def build(folder: Path, size: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    n_embd, n_layer, n_head = SIZES[size]
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(vocab), n_embd=n_embd, n_layer=n_layer, n_head=n_head, bos_token_id=0, eos_token_id=0)
    )
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=sorted(SIZES))
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--single", type=int, default=32, help="prompts for the one-at-a-time reference")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    rng = random.Random(0)
    paragraphs = [
        ". ".join(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(18, 34))) for _ in range(5))
        for _ in range(args.prompts)
    ]
    pairs, _ = procedure.select(procedure.pairs_of(paragraphs), args.prompts, 0, seed=42)
    with tempfile.TemporaryDirectory() as d:
        build(Path(d) / "gen", args.size)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tok, model = generate.load_generator(str(Path(d) / "gen"), device)
        print(f"GPT-2 {args.size} (random init) on {device}; {args.prompts} prompts, 3 fakes each", flush=True)
        generate.synthesize(pairs[:8], Path(d) / "warm.jsonl", tok, model, 3, 0.9, 0, 1.0, 1, 8)  # warm-up
        t = time.perf_counter()
        generate.synthesize(pairs[: args.single], Path(d) / "one.jsonl", tok, model, 3, 0.9, 0, 1.0, 1, 1)
        one = args.single / (time.perf_counter() - t)
        t = time.perf_counter()
        generate.synthesize(pairs, Path(d) / "batched.jsonl", tok, model, 3, 0.9, 0, 1.0, 1, args.batch_size)
        batched = args.prompts / (time.perf_counter() - t)
    print(
        f"one prompt a call: {one:.1f} prompts/s; batched ({args.batch_size} a call): {batched:.1f} prompts/s; "
        f"ratio {batched / one:.1f}x"
    )


if __name__ == "__main__":
    main()
