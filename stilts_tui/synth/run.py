"""One synthesis: corpus -> pairs -> SynGPT2_train.jsonl (and SynGPT2_dev.jsonl), resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stilts_tui.contract import SYNTH_DEFAULTS as DEFAULTS
from stilts_tui.contract import Env
from stilts_tui.synth import generate, procedure


def device() -> torch.device:
    want = os.environ.get(Env.DEVICE, "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def synthesize(params: dict, out_dir: Path, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the whole procedure into ``out_dir``; returns counts and timing."""
    p = {**DEFAULTS, **params}
    t0 = time.time()
    paragraphs = procedure.read_corpus(p.get("corpus"), p.get("corpus_file"))
    train, dev = procedure.select(procedure.pairs_of(paragraphs), int(p["n"]), int(p["dev"]), int(p["seed"]))
    tok, model = generate.load_generator(p["generator"], device())
    counts = {}
    for split, pairs, seed in (("train", train, int(p["seed"])), ("dev", dev, int(p["seed"]) + 1)):
        if not pairs:
            continue
        out = out_dir / f"SynGPT2_{split}.jsonl"
        counts[split] = generate.synthesize(
            pairs,
            out,
            tok,
            model,
            int(p["fakes"]),
            float(p["top_p"]),
            int(p["top_k"]),
            float(p["temperature"]),
            seed,
            int(p["batch_size"]),
            progress=(lambda done, total, s=split: progress(s, done, total)) if progress else None,
        )
    seconds = time.time() - t0
    return {"counts": counts, "seconds": seconds, "prompts_per_s": sum(counts.values()) / max(seconds, 1e-9)}
