"""Tokenized task data, cached under the runs-dir, and the batches a run trains and evaluates on.

A grid of 1008 runs reads each (tokenizer, task files, split, max_len) once: the first run
tokenizes with ``datasets.map`` and saves the result under ``<runs-dir>/.cache/tokenized/<key>``
(built under a file lock, so parallel workers do it once); every later run, in any process,
loads it from there. Inside one process the arrays are also kept in memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from stilts_tui import tasks
from stilts_tui.store.files import folder_built_beside
from stilts_tui.store.rundir import read_json, write_json_atomic
from stilts_tui.tasks.inputs import fill_sep, truncate_pair


@dataclass
class Split:
    """One split as fixed-width arrays: ``ids`` [N, (C,) max_len] (pad id beyond ``lengths``);
    ``types`` the token type ids where the tokenizer makes them (BERT pairs), else None."""

    ids: np.ndarray
    types: np.ndarray | None
    lengths: np.ndarray  # [N] longest sequence of the example (over its choices)
    labels: np.ndarray
    pad_id: int
    # what the split is (tasks.data.load_split): its source (hub id, config, revision and the commit it
    # resolved to, or the local file), how many examples and their fingerprint; recorded in result.json
    source: dict | None = None

    def __len__(self) -> int:
        return len(self.labels)


def tokenizer_fingerprint(tok) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _files_fingerprint(spec: dict) -> list:
    out = []
    for p in tasks.required_files(spec):
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(spec: dict, split: str, tok_fp: str, max_len: int, limit: int | None) -> str:
    task = {k: spec.get(k) for k in ("name", "hub", "hub_splits", "custom", "labels", "kind")}
    # 4: pairs cut one token at a time (inputs.truncate_pair)
    blob = json.dumps([task, _files_fingerprint(spec), split, tok_fp, max_len, limit, 4], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _fill_sep(text: str | None, sep: str) -> str | None:
    return fill_sep(text, sep)  # one rule for the trainer and `tasks show` (tasks/inputs.py)


def encode_pairs(tok, firsts: list[str], seconds: list[str], max_len: int) -> dict[str, list]:
    """Text pairs as the reference encoded them: each segment tokenized alone, the two cut together to
    the room the special tokens leave, one token at a time (:func:`truncate_pair`, transformers 4.3's
    ``longest_first``), then joined with the tokenizer's own special tokens (its post-processor)."""
    budget = max_len - tok.num_special_tokens_to_add(pair=True)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and (backend.padding or backend.truncation):
        # a tokenizer.json that pads or truncates (the MiniLM's: to 128) would pad each segment and the
        # joined pair past max_len: encode with a copy that does neither
        backend = copy.deepcopy(backend)
        backend.no_padding()
        backend.no_truncation()
    out: dict[str, list] = {"input_ids": [], "token_type_ids": []}
    if backend is None:  # a slow tokenizer: its own python joins
        for x, y in zip(
            tok(firsts, add_special_tokens=False)["input_ids"],
            tok(seconds, add_special_tokens=False)["input_ids"],
            strict=True,
        ):
            x, y = truncate_pair(x, y, budget)
            out["input_ids"].append(tok.build_inputs_with_special_tokens(x, y))
            out["token_type_ids"].append(tok.create_token_type_ids_from_sequences(x, y))
        return out
    for x, y in zip(
        backend.encode_batch(firsts, add_special_tokens=False),
        backend.encode_batch(seconds, add_special_tokens=False),
        strict=True,
    ):
        n1, n2 = (len(t) for t in truncate_pair(x.ids, y.ids, budget))
        x.truncate(n1)
        y.truncate(n2)
        both = backend.post_process(x, y, add_special_tokens=True)
        out["input_ids"].append(both.ids)
        out["token_type_ids"].append(both.type_ids)
    return out


def tokenize_fn(tok, kind: str, max_len: int):
    sep = tok.sep_token or ""
    keys = ["input_ids"] + (["token_type_ids"] if "token_type_ids" in tok.model_input_names else [])

    def encode(a: list, b: list) -> dict[str, list]:
        a = [_fill_sep(x, sep) for x in a]
        if all(x is None for x in b):
            enc = tok(a, truncation=True, max_length=max_len)
            return {k: enc[k] for k in keys}
        if any(x is None for x in b):  # mixed: encode one by one
            out: dict[str, list] = {k: [] for k in keys}
            for x, y in zip(a, b, strict=True):
                e = (
                    tok(x, truncation=True, max_length=max_len)
                    if y is None
                    else {k: v[0] for k, v in encode_pairs(tok, [x], [_fill_sep(y, sep)], max_len).items()}
                )
                for k in keys:
                    out[k].append(e[k])
            return out
        return {k: v for k, v in encode_pairs(tok, a, [_fill_sep(x, sep) for x in b], max_len).items() if k in keys}

    def fn(batch: dict) -> dict:
        if kind != "multiple_choice":
            return encode(batch["a"], batch["b"])
        flat = encode([x for row in batch["a"] for x in row], [x for row in batch["b"] for x in row])
        out: dict[str, list] = {k: [] for k in keys}
        i = 0
        for row in batch["a"]:
            for k in keys:
                out[k].append(flat[k][i : i + len(row)])
            i += len(row)
        return out

    return fn


def _pack(rows: list, kind: str, max_len: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token lists -> a padded array and each example's longest length."""
    n = len(rows)
    if kind == "multiple_choice":
        c = max(len(r) for r in rows)
        out = np.full((n, c, max_len), fill, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for i, choices in enumerate(rows):
            if len(choices) != c:
                raise ValueError(f"example {i + 1} has {len(choices)} choices, others have {c}")
            for j, seq in enumerate(choices):
                out[i, j, : len(seq)] = seq
                lengths[i] = max(lengths[i], len(seq))
        return out, lengths
    out = np.full((n, max_len), fill, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for i, seq in enumerate(rows):
        out[i, : len(seq)] = seq
        lengths[i] = len(seq)
    return out, lengths


def _to_arrays(ds, kind: str, max_len: int, pad_id: int) -> Split:
    labels = np.asarray(ds["label"], dtype=np.float32 if kind == "regression" else np.int64)
    ids, lengths = _pack(ds["input_ids"], kind, max_len, pad_id)
    types = _pack(ds["token_type_ids"], kind, max_len, 0)[0] if "token_type_ids" in ds.column_names else None
    return Split(ids, types, lengths, labels, pad_id)


_MEMORY: dict[str, Split] = {}
SOURCE_FILE = "stilts-source.json"  # beside a cached split: its source, example count and fingerprint


def load_split(
    spec: dict,
    split: str,
    tok,
    tok_fp: str,
    max_len: int,
    cache_root: Path,
    limit: int | None = None,
    labels: list[str] | None = None,
) -> Split:
    """The tokenized split, from memory, the on-disk cache, or tokenized now (and cached)."""
    key = cache_key(spec, split, tok_fp, max_len, limit)
    if key in _MEMORY:
        return _MEMORY[key]
    import datasets

    datasets.disable_progress_bars()
    folder = cache_root / key
    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "dataset_info.json").exists():
            examples, source = tasks.load_split(spec, split, limit=limit)
            ds = datasets.Dataset.from_list(examples)
            # the cache key names the result: no fingerprint of the function and tokenizer (dill-hashing
            # them took seconds a split for a file datasets never writes here)
            ds = ds.map(
                tokenize_fn(tok, spec["kind"], max_len),
                batched=True,
                batch_size=1000,
                remove_columns=["a", "b"],
                load_from_cache_file=False,
                desc=None,
                new_fingerprint=key,
            )
            with folder_built_beside(folder) as tmp:  # an unguessable name: never a planted link written through
                ds.save_to_disk(str(tmp))
                write_json_atomic(tmp / SOURCE_FILE, source)  # what the cached split was built from
        ds = datasets.load_from_disk(str(folder))
        source = read_json(folder / SOURCE_FILE)  # None for a cache written before sources were kept
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = _to_arrays(ds, spec["kind"], max_len, pad_id)
    out.source = source
    _MEMORY[key] = out
    return out


# ---- batches -----------------------------------------------------------------------------------


def buckets_for(max_len: int, n: int = 4, multiple: int = 8) -> list[int]:
    """A few fixed padded lengths (few shapes: few compiled graphs)."""
    out = sorted({min(max_len, -(-(max_len * k // n) // multiple) * multiple) for k in range(1, n + 1)})
    return [b for b in out if b > 0]


def train_order(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, batching: str, buckets: list[int]
) -> list[np.ndarray]:
    """One epoch's batches of example indices, seeded by (seed, epoch).

    ``random``: uniformly random batches (the reference's RandomSampler), the last one short.
    ``grouped``: every batch holds examples of one length bucket (so it pads to that bucket): each
    bucket's examples in the seeded order, cut into batches (each bucket's last one short); the order
    in which the buckets come is drawn from the epoch and the bucket sizes alone, not the seed, so runs
    of one data set step through the same buckets at the same steps: a fused array pads every member
    to one bucket, and a run trains on the same batches alone as in an array.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if batching == "random":
        return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if batching != "grouped":
        raise ValueError(f"batching must be random or grouped, not {batching!r}")
    which = np.searchsorted(np.asarray(buckets), lengths[perm])  # bucket of each example, in seeded order
    per_bucket = [perm[which == j] for j in range(len(buckets))]
    batches = [[part[i : i + batch_size] for i in range(0, len(part), batch_size)] for part in per_bucket]
    sequence = np.concatenate([np.full(len(b), j) for j, b in enumerate(batches)] or [np.zeros(0, int)])
    shared = np.random.default_rng([epoch, len(lengths), batch_size, 0x57117])  # not the run's seed
    sequence = sequence[shared.permutation(len(sequence))]
    taken = [0] * len(batches)
    out = []
    for j in sequence:
        out.append(batches[j][taken[j]])
        taken[j] += 1
    return out


def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    idx = np.argsort(-lengths, kind="stable")
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def pad_length(longest: int, pad: str, max_len: int, buckets: list[int]) -> int:
    if pad == "max":
        return max_len
    if pad == "buckets":
        return next(b for b in buckets if b >= longest)
    return int(longest)
