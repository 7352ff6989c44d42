"""Loading a task's examples from the run spec's task entry: local files or the Hugging Face Hub.

A task spec (written into each run's ``spec.json`` by the plan) looks like::

    {"name": "rte", "kind": "classification", "labels": [...], "num_choices": null,
     "metric": "acc", "metrics": ["acc"], "hub": ["nyu-mll/glue", "rte", "main"], "hub_splits": [...],
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
    rows, source = load_rows_from(spec, split)
    return rows, describe(source)


def load_rows_from(spec: dict, split: str) -> tuple[list[dict], dict]:
    """Raw rows of one split and their source record (see `source_of`; a hub source with the commit its
    revision resolved to)."""
    path = file_for(spec, split)
    source = source_of(spec, split)
    if path is not None:
        if spec.get("custom"):
            return formats.read_custom(path, spec["custom"]["format"]), source
        return registry.get(spec["name"]).read(path), source
    rows, commit = hub_rows(spec, split)
    return rows, {**source, "commit": commit}


def hub_of(spec: dict) -> tuple[str, str | None, str | None] | None:
    """(dataset id, config, revision) of a task spec's hub copy; specs written before revisions were
    pinned hold (id, config): their revision is the task table's today, or the hub's default."""
    hub = spec.get("hub")
    if not hub:
        return None
    dataset_id, config = hub[0], hub[1] if len(hub) > 1 else None
    revision = hub[2] if len(hub) > 2 else None
    if revision is None and not spec.get("custom") and registry.is_builtin(str(spec.get("name", ""))):
        known = registry.get(spec["name"]).hub
        if known and known[0] == dataset_id and known[1] == config:
            revision = known[2]
    return str(dataset_id), (str(config) if config else None), revision


def hub_label(hub: list | tuple | None) -> str | None:
    """A hub source as one line: ``id/config @ revision`` (None for a task without one)."""
    if not hub:
        return None
    dataset_id, config = hub[0], hub[1] if len(hub) > 1 else None
    revision = hub[2] if len(hub) > 2 else None
    return str(dataset_id) + (f"/{config}" if config else "") + (f" @ {revision}" if revision else "")


def hub_split(spec: dict, split: str) -> str:
    return (spec.get("hub_splits") or ["train", "validation"])[SPLITS.index(split)]


def source_of(spec: dict, split: str) -> dict:
    """Where a split's rows come from: ``{"kind": "files", "path": ...}`` or ``{"kind": "hub", "id",
    "config", "revision", "split"}`` (a loaded hub split adds ``commit``)."""
    path = file_for(spec, split)
    if path is not None:
        return {"kind": "files", "path": str(path)}
    hub = hub_of(spec)
    if hub is None:
        return {"kind": "none"}
    dataset_id, config, revision = hub
    return {"kind": "hub", "id": dataset_id, "config": config, "revision": revision, "split": hub_split(spec, split)}


def describe(source: dict) -> str:
    """One line for a source record: a path, or ``id (config) @ revision, split S``."""
    if source.get("kind") == "files":
        return str(source.get("path"))
    if source.get("kind") != "hub":
        return "no data source"
    text = str(source.get("id"))
    if source.get("config"):
        text += f" ({source['config']})"
    if source.get("revision"):
        text += f" @ {source['revision']}"
    if source.get("commit") and source.get("commit") != source.get("revision"):
        text += f" = {str(source['commit'])[:12]}"
    return text + f", split {source.get('split')}"


def hub_endpoint() -> str:
    import os

    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check of $HF_ENDPOINT (default huggingface.co): transformers and datasets retry for
    about a minute before they give up on a dead network. A malformed endpoint is unreachable."""
    import socket
    from urllib.parse import urlsplit

    try:
        url = urlsplit(hub_endpoint())
        port = url.port or (80 if url.scheme == "http" else 443)
        host = url.hostname or "huggingface.co"
    except ValueError:
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except (OSError, ValueError, OverflowError):
        return False


def _no_hub_copy(name: str) -> TaskDataError:
    return TaskDataError(
        f"task '{name}' has no Hugging Face Hub copy: set data_dir (or train_file/dev_file) "
        "in the plan stage to its local files"
    )


def hub_failure(spec: dict, split: str, reason: str) -> TaskDataError:
    """The one line for a hub source that cannot be loaded, naming the task and what to set."""
    name = spec["name"]
    dataset_id, config, revision = hub_of(spec) or (name, None, None)
    where = dataset_id + (f" ({config})" if config else "") + (f" @ {revision}" if revision else "")
    files = ""
    if not spec.get("custom") and registry.is_builtin(name) and registry.get(name).files:
        files = " ({}, {})".format(*registry.get(name).files)
    if "scripts are no longer supported" in reason or reason.rstrip().endswith(".py"):
        why = (
            f"{where} is a loading script, which the installed datasets refuses; the hub's Parquet "
            "conversion is its revision refs/convert/parquet"
        )
    else:
        why = f"could not load {where} split '{hub_split(spec, split)}' from {hub_endpoint()} ({reason})"
    return TaskDataError(
        f"task '{name}': {why}; download the files{files} and set data_dir in the plan stage "
        "(or point HF_ENDPOINT at a reachable hub)"
    )


def hub_rows(spec: dict, split: str) -> tuple[list[dict], str | None]:
    """Rows from ``datasets.load_dataset`` at the task's pinned revision, and the commit that revision
    resolved to (None where the hub did not say); any hub failure becomes one clear line."""
    hub = hub_of(spec)
    if hub is None:
        raise _no_hub_copy(spec["name"])
    dataset_id, _, revision = hub
    try:
        import datasets  # heavy: imported only when the hub is really used

        ds = datasets.load_dataset(**hub_load_args(spec, [split]), split=hub_split(spec, split))
    except Exception as e:  # noqa: BLE001 - any hub failure ends in the same advice
        raise hub_failure(spec, split, first_line(e)) from None
    return [dict(r) for r in ds], resolved_commit(dataset_id, revision)


PARQUET_CONVERSION = "refs/convert/parquet"


def hub_load_args(spec: dict, splits: list[str]) -> dict:
    """``datasets.load_dataset`` arguments for a task spec's hub copy. The hub's Parquet conversion keeps
    each config's splits as ``CONFIG/SPLIT/*.parquet`` and no dataset card naming them, so its files are
    named explicitly (a config the converter called ``default`` where the script had none)."""
    dataset_id, config, revision = hub_of(spec)
    if revision == PARQUET_CONVERSION:
        folder = config or "default"
        files = {hub_split(spec, s): f"{folder}/{hub_split(spec, s)}/*.parquet" for s in splits}
        return {"path": dataset_id, "revision": revision, "data_files": files}
    return {"path": dataset_id, "name": config, "revision": revision}


def resolved_commit(dataset_id: str, revision: str | None) -> str | None:
    """The commit a dataset's revision names on the hub now (what a run trained on, for the record)."""
    try:
        from huggingface_hub import HfApi

        return HfApi(endpoint=hub_endpoint()).dataset_info(dataset_id, revision=revision).sha
    except Exception:  # noqa: BLE001 - the record is a courtesy: a run never fails for it
        return None


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
    return load_split(spec, split, limit)[0]


def load_split(spec: dict, split: str, limit: int | None = None) -> tuple[list[dict], dict]:
    """The examples of one split and what they are: the source record (`source_of`, with the hub commit),
    ``examples`` (how many) and ``fingerprint`` (a hash of the built examples), for result.json."""
    rows, record = load_rows_from(spec, split)
    source = describe(record)
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
    return out, {**record, "examples": len(out), "fingerprint": fingerprint(out)}


def fingerprint(examples: list[dict]) -> str:
    """A hash of the built examples (text, label order, choices): two runs with the same fingerprint
    trained or evaluated on the same data, whatever file or hub copy it came from."""
    import hashlib
    import json

    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True, ensure_ascii=True, default=str).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]
