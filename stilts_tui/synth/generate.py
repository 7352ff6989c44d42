"""Sampling the fake endings: many prompts per ``generate`` call (left padding, attention mask,
prompts grouped by length inside a window of consecutive pairs), each fake at most as many
generator tokens as its real ending; rows written in the pairs' shuffled order (as the reference).

Batches are formed deterministically and each batch's sampling is seeded by (seed, its position),
so a killed synthesis resumed from its output gives the same result as an unbroken run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from stilts_tui.errors import UserError, first_line
from stilts_tui.synth import procedure


def load_generator(name: str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
    except OSError as e:
        raise UserError(
            f"unknown or unreachable generator '{name}' ({first_line(e)}); pass a local model folder"
        ) from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model


WINDOW_BATCHES = 16  # batches sampled before their rows are written, in the shuffled order


def clean(tok, ids: list[int]) -> str:
    """Decoded as the reference did under transformers 4.3: spaces before punctuation cleaned up."""
    return procedure.clean_up_spaces(tok.decode(ids, clean_up_tokenization_spaces=False))


def plan_batches(items: list[dict], batch_size: int) -> list[list[int]]:
    """Indices grouped by (prompt length, ending length) so a batch pads little; a fixed order."""
    order = sorted(range(len(items)), key=lambda i: (items[i]["prompt_len"], items[i]["limit"], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def sample_batch(
    tok, model, items: list[dict], fakes: int, top_p: float, top_k: int, temperature: float, seed: int
) -> list[list[str]]:
    """``fakes`` continuations for each item, cut at end-of-text and at the item's token limit.

    As the reference: the prompt and its continuation are decoded together (with clean-up), and the
    fake is what follows the decoded context, stripped."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    enc = tok([it["prompt"] for it in items], return_tensors="pt", padding=True).to(device)
    limit = max(it["limit"] for it in items)
    out = model.generate(
        **enc,
        do_sample=True,
        top_p=top_p,
        top_k=top_k or None,
        temperature=temperature,
        max_new_tokens=max(1, limit),
        num_return_sequences=fakes,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    results = []
    for i, it in enumerate(items):
        fakes_of = []
        for j in range(fakes):
            ids = new[i * fakes + j].tolist()[: it["limit"]]
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            text = clean(tok, it["prompt_ids"] + ids)
            fakes_of.append(text[len(it["ctx"]) :].strip())
        results.append(fakes_of)
    return results


def items_of(pairs: list[tuple[str, str]], tok) -> list[dict]:
    """Each (context, real ending) as the reference wrote it: both round-tripped through the
    generator's tokenizer with clean-up (the real ending is not stripped, as the reference)."""
    items = []
    for prompt, real in pairs:
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        real_ids = tok(real, add_special_tokens=False)["input_ids"]
        items.append(
            {
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "ctx": clean(tok, prompt_ids),
                "real": clean(tok, real_ids),
                "limit": len(real_ids),
                "prompt_len": len(prompt_ids),
            }
        )
    return items


def _resume(out: Path, window: int, total: int) -> int:
    """Rows already written in whole windows (a half-written window is dropped); 0 for a new file."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        return 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    complete = [x for x in lines if x.endswith("\n")]
    kept = len(complete) if len(complete) >= total else len(complete) // window * window
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(complete[:kept])
    return kept


def synthesize(
    pairs: list[tuple[str, str]],
    out: Path,
    tok,
    model,
    fakes: int,
    top_p: float,
    top_k: int,
    temperature: float,
    seed: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write ``out`` (jsonl) with one row per pair in the pairs' (shuffled) order, resuming after the
    last whole window already there. Returns lines written.

    Windows of ``WINDOW_BATCHES`` batches of consecutive pairs are sampled in length-grouped
    batches, then written in the pairs' order, so the file's first N rows are the first N pairs."""
    items = items_of(pairs, tok)
    window = batch_size * WINDOW_BATCHES
    done = _resume(out, window, len(items))
    with open(out, "a", encoding="utf-8") as f:
        for w0 in range(done, len(items), window):
            part = items[w0 : w0 + window]
            fakes_of: dict[int, list[str]] = {}
            for k, batch in enumerate(plan_batches(part, batch_size)):
                batch_seed = seed * 1_000_003 + w0 // batch_size + k  # fixed by position: resumable
                sampled = sample_batch(
                    tok, model, [part[i] for i in batch], fakes, top_p, top_k, temperature, batch_seed
                )
                fakes_of.update(zip(batch, sampled, strict=True))
            f.writelines(
                json.dumps({"ctx": it["ctx"], "endings": [it["real"], *fakes_of[i]], "label": 0}) + "\n"
                for i, it in enumerate(part)
            )
            f.flush()
            os.fsync(f.fileno())
            done += len(part)
            if progress:
                progress(done, len(items))
    return done
