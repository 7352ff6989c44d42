"""Loading a task's examples from the run spec's task entry: local files or the Hugging Face Hub.

A task spec (written into each run's ``spec.json`` by the plan) looks like::

    {"name": "rte", "kind": "classification", "labels": [...], "num_choices": null,
     "metric": "acc", "metrics": ["acc"], "hub": ["nyu-mll/glue", "rte"], "hub_splits": [...],
     "data_dir": "/abs/data/RTE" | null, "train_file": "/abs/..." | null, "dev_file": ... | null,
     "custom": null | {"format": ..., "text_fields": [...], ...}, "from_run": null | "<synth run id>"}
"""

from __future__ import annotations

from pathlib import Path

from stilts_tui.errors import TaskDataError, first_line
from stilts_tui.tasks import formats, inputs, registry

SPLITS = ("train", "dev")


def file_for(spec: dict, split: str) -> Path | None:
    """The local file holding ``split`` ("train" or "dev"), or None when the task reads the hub."""
    explicit = spec.get(f"{split}_file")
    if explicit:
        return Path(explicit)
    if spec.get("data_dir"):
        task = registry.get(spec["name"]) if not spec.get("custom") else None
        if task is None or task.files is None:
            return None
        return Path(spec["data_dir"]) / task.files[SPLITS.index(split)]
    return None


def required_files(spec: dict) -> list[Path]:
    """Every local file the task will read (label companions included)."""
    out: list[Path] = []
    companions = () if spec.get("custom") else registry.get(spec["name"]).companions
    for split in SPLITS:
        path = file_for(spec, split)
        if path is None:
            continue
        out.append(path)
        out.extend(formats.companion(path, s, r) for s, r in companions)
    return out


def missing_files(spec: dict) -> list[Path]:
    return [p for p in required_files(spec) if not p.is_file()]


def load_rows(spec: dict, split: str) -> tuple[list[dict], str]:
    """Raw rows of one split, in the hub's schema, and where they came from (for messages)."""
    path = file_for(spec, split)
    if path is not None:
        if spec.get("custom"):
            return formats.read_custom(path, spec["custom"]["format"]), str(path)
        return registry.get(spec["name"]).read(path), str(path)
    return hub_rows(spec, split), "the Hugging Face Hub"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check of $HF_ENDPOINT (default huggingface.co): transformers and datasets retry for
    about a minute before they give up on a dead network."""
    import os
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_rows(spec: dict, split: str) -> list[dict]:
    """Rows from ``datasets.load_dataset``; an unreachable hub becomes one clear message."""
    name, hub = spec["name"], spec.get("hub")
    if not hub:
        raise TaskDataError(
            f"task '{name}' has no Hugging Face Hub copy: set data_dir (or train_file/dev_file) "
            "in the plan stage to its local files"
        )
    dataset_id, config = hub
    hub_split = (spec.get("hub_splits") or ["train", "validation"])[SPLITS.index(split)]
    try:
        import datasets  # heavy: imported only when the hub is really used

        ds = datasets.load_dataset(dataset_id, config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - any hub failure ends in the same advice
        reason = first_line(e)
        task = registry.get(name)
        files = f" ({task.files[0]}, {task.files[1]})" if task.files else ""
        raise TaskDataError(
            f"could not load {dataset_id}" + (f"/{config}" if config else "") + f" split '{hub_split}' "
            f"from the Hugging Face Hub ({reason}); if the hub is unreachable, download the files{files} "
            "and set data_dir in the plan stage"
        ) from None
    return [dict(r) for r in ds]


def custom_builder(spec: dict, labels: list[str] | None):
    """The row -> example function of a task declared in a plan's [tasks.NAME] table."""
    c = spec["custom"]
    kind, fields = spec["kind"], c.get("text_fields") or []
    label_field = c.get("label_field", "label")

    def text(row: dict) -> str:
        return inputs.joined(*(str(inputs.field(row, f)) for f in fields))

    if kind == "multiple_choice":

        def build_mc(row: dict) -> dict:
            if c.get("choices_field"):
                opts = [str(o) for o in inputs.field(row, c["choices_field"])]
            else:
                opts = [str(inputs.field(row, f)) for f in c["choice_fields"]]
            context = text(row) if fields else None
            a = [context] * len(opts) if context is not None else opts
            b = opts if context is not None else [None] * len(opts)
            return inputs.choices(a, b, int(inputs.field(row, label_field)))

        return build_mc

    def build_pair(row: dict) -> dict:
        a = str(inputs.field(row, fields[0]))
        b = str(inputs.field(row, fields[1])) if len(fields) > 1 else None
        raw = inputs.field(row, label_field)
        label = float(raw) if kind == "regression" else inputs.label_index(raw, tuple(labels or ()))
        return inputs.pair(a, b, label)

    return build_pair


def labels_for(spec: dict) -> list[str] | None:
    """Class names: the task's own, the plan's, or (custom tasks) the sorted values in train."""
    if spec.get("labels"):
        return list(spec["labels"])
    if spec["kind"] != "classification" or not spec.get("custom"):
        return None
    rows, _ = load_rows(spec, "train")
    field_name = spec["custom"].get("label_field", "label")
    return sorted({str(inputs.field(r, field_name)) for r in rows})


def load_examples(spec: dict, split: str, limit: int | None = None) -> list[dict]:
    """The examples of one split, built as the task table says (see ``inputs``)."""
    rows, source = load_rows(spec, split)
    if limit:
        rows = rows[:limit]
    if spec.get("custom"):
        build = custom_builder(spec, labels_for(spec))
    else:
        build = registry.get(spec["name"]).build
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(build(row))
        except TaskDataError as e:
            raise TaskDataError(f"{source}: example {i + 1}: {e}") from None
        except (TypeError, ValueError) as e:
            raise TaskDataError(f"{source}: example {i + 1}: {e}") from None
    if not out:
        raise TaskDataError(f"{source}: no examples in the {split} split")
    return out
