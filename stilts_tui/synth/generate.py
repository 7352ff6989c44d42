"""Sampling the fake endings: many prompts per ``generate`` call (left padding, attention mask,
prompts grouped by length), each fake at most as many generator tokens as its real ending.

Batches are formed deterministically and each batch's sampling is seeded by (seed, batch index),
so a killed synthesis resumed from its output gives the same result as an unbroken run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stilts_tui.errors import UserError, first_line

DELAY = float(os.environ.get("STILTS_TEST_SYNTH_DELAY", "0") or 0)


def load_generator(name: str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
    except OSError as e:
        raise UserError(f"unknown or unreachable generator '{name}' ({first_line(e)}); "
                        "pass a local model folder") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model


def plan_batches(items: list[dict], batch_size: int) -> list[list[int]]:
    """Indices grouped by (prompt length, ending length) so a batch pads little; a fixed order."""
    order = sorted(range(len(items)), key=lambda i: (items[i]["prompt_len"], items[i]["limit"], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def sample_batch(tok, model, items: list[dict], fakes: int, top_p: float, top_k: int, temperature: float,
                 seed: int) -> list[list[str]]:
    """``fakes`` continuations for each item, cut at end-of-text and at the item's token limit."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    enc = tok([it["ctx"] for it in items], return_tensors="pt", padding=True).to(device)
    limit = max(it["limit"] for it in items)
    out = model.generate(**enc, do_sample=True, top_p=top_p, top_k=top_k or None, temperature=temperature,
                         max_new_tokens=max(1, limit), num_return_sequences=fakes,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[:, enc["input_ids"].shape[1] :]
    results = []
    for i, it in enumerate(items):
        fakes_of = []
        for j in range(fakes):
            ids = new[i * fakes + j].tolist()[: it["limit"]]
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            fakes_of.append(tok.decode(ids, skip_special_tokens=True).strip())
        results.append(fakes_of)
    return results


def synthesize(pairs: list[tuple[str, str]], out: Path, tok, model, fakes: int, top_p: float, top_k: int,
               temperature: float, seed: int, batch_size: int,
               progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``out`` (jsonl), resuming after the last whole batch already there. Returns lines written."""
    items = []
    for ctx, real in pairs:
        real_ids = tok(real, add_special_tokens=False)["input_ids"]
        items.append({"ctx": ctx, "real": tok.decode(real_ids).strip(),  # round-tripped, as the reference
                      "limit": len(real_ids), "prompt_len": len(tok(ctx)["input_ids"])})
    batches = plan_batches(items, batch_size)
    done_lines = 0
    if out.exists():
        lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
        complete = [x for x in lines if x.endswith("\n")]
        k, total = 0, 0
        while k < len(batches) and total + len(batches[k]) <= len(complete):
            total += len(batches[k])
            k += 1
        with open(out, "w", encoding="utf-8") as f:  # drop a half-written batch
            f.writelines(complete[:total])
        start, done_lines = k, total
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        start = 0
    with open(out, "a", encoding="utf-8") as f:
        for k in range(start, len(batches)):
            batch = [items[i] for i in batches[k]]
            fake_lists = sample_batch(tok, model, batch, fakes, top_p, top_k, temperature, seed * 1_000_003 + k)
            lines = [json.dumps({"ctx": it["ctx"], "endings": [it["real"], *fk], "label": 0}) + "\n"
                     for it, fk in zip(batch, fake_lists, strict=True)]
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
            done_lines += len(lines)
            if DELAY:  # a test hook: slow enough to be killed mid-way
                time.sleep(DELAY)
            if progress:
                progress(done_lines, len(items))
    return done_lines
