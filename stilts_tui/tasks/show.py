"""``stilts-tui tasks show``: the first examples of a task as the model receives them.

The examples are built here (no torch, no transformers); their tokenization runs in a process
(``python -m stilts_tui.train.modeltools encode``) with the trainer's own tokenization code, so what is
shown is what a run trains on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stilts_tui.errors import PREFIX, TaskDataError, UserError
from stilts_tui.tasks import data, registry


def spec_for(task: str, data_dir: Path | None) -> dict:
    """The task entry a plan stage ``task = TASK`` (with ``data_dir``) resolves to."""
    t = registry.get(task)
    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir: {data_dir} is not a folder")
    return {
        "name": t.name,
        "kind": t.kind,
        "labels": list(t.labels) if t.labels else None,
        "num_choices": t.num_choices,
        "metric": t.metric,
        "metrics": list(t.metrics),
        "hub": list(t.hub) if t.hub else None,
        "hub_splits": list(t.hub_splits),
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "train_file": None,
        "dev_file": None,
        "custom": None,
        "from_run": None,
    }


def _hub_advice(spec: dict) -> str:
    if spec.get("custom"):
        return "its files are the plan's train_file and dev_file"
    t = registry.get(spec["name"])
    files = ", ".join(t.files) if t.files else "its files"
    return f"download the task's files ({files}) and pass --data-dir DIR"


def examples(spec: dict, split: str, n: int) -> list[dict]:
    """The first ``n`` examples of ``split``, built as the trainer builds them."""
    if data.file_for(spec, split) is not None:  # local files: --data-dir, or a plan's own task
        missing = data.missing_files(spec)
        if missing:
            where = "the plan's train_file / dev_file" if spec.get("custom") else "the official layout in the data_dir"
            raise TaskDataError(f"data file not found: {missing[0]} (expected {where})")
    elif not spec.get("hub"):
        raise TaskDataError(f"task '{spec['name']}' has no Hugging Face Hub copy: {_hub_advice(spec)}")
    else:
        if not data.hub_reachable():
            raise TaskDataError(
                f"the Hugging Face Hub is unreachable, so task '{spec['name']}' cannot be read "
                f"from it; {_hub_advice(spec)}"
            )
    return data.load_examples(spec, split, limit=n)


def encode(model: str, kind: str, max_len: int, exs: list[dict]) -> list[dict]:
    """Tokens and ids for each example, from ``model``'s tokenizer (in a process: transformers)."""
    proc = subprocess.run(
        [sys.executable, "-m", "stilts_tui.train.modeltools", "encode", model, kind, str(max_len)],
        input=json.dumps(exs),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        line = lines[-1].removeprefix(PREFIX)
        raise UserError(line) if proc.returncode == 2 else RuntimeError(line)
    return json.loads(proc.stdout)


def records(spec: dict, exs: list[dict], encoded: list[dict]) -> list[dict]:
    """One object per example: text (a pair, or a pair per choice), label, label_name, input_ids, tokens."""
    labels = spec.get("labels")
    out = []
    for e, enc in zip(exs, encoded, strict=True):
        label = e["label"]
        name = labels[label] if labels and isinstance(label, int) and 0 <= label < len(labels) else None
        out.append(
            {
                "text": enc["text"],
                "label": label,
                "label_name": name,
                "input_ids": enc["input_ids"],
                "tokens": enc["tokens"],
            }
        )
    return out


def render(spec: dict, recs: list[dict]) -> str:
    """A plain, readable listing: each segment quoted (spaces show), then tokens and ids."""
    lines = []
    mc = spec["kind"] == "multiple_choice"
    for i, r in enumerate(recs, 1):
        label = r["label"] if r["label_name"] is None else f"{r['label']} ({r['label_name']})"
        lines.append(f"example {i}  label {label}")
        choices = r["text"] if mc else [r["text"]]
        ids = r["input_ids"] if mc else [r["input_ids"]]
        tokens = r["tokens"] if mc else [r["tokens"]]
        for j, (pair, cid, ctok) in enumerate(zip(choices, ids, tokens, strict=True)):
            head = f"  choice {j}: " if mc else "  "
            a, b = pair
            lines.append(
                head
                + json.dumps(a, ensure_ascii=False)
                + ("" if b is None else " | " + json.dumps(b, ensure_ascii=False))
            )
            lines.append("    tokens " + " ".join(ctok))
            lines.append("    ids    " + " ".join(map(str, cid)))
    return "\n".join(lines)
