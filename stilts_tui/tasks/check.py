"""Before the GPU time is spent: does every stage's data source open, with the fields its task reads?

`check(spec)` opens the source a run of the stage will use — the local files (read and built), or the
hub's builder and split list at the pinned revision, without downloading the data (the field names come
from the builder's features, else from the Parquet footer of the split's first file) — and answers in one
line. `stilts-tui tasks check PLAN` prints one such line a stage. Importing this module imports neither
`datasets` nor `huggingface_hub`.
"""

from __future__ import annotations

from dataclasses import dataclass

from stilts_tui.errors import TaskDataError, first_line
from stilts_tui.tasks import data, registry


@dataclass(frozen=True)
class Checked:
    """One stage's answer: ``state`` is ok | fail | offline; ``line`` says what was found or is missing."""

    state: str
    line: str

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def check(spec: dict) -> Checked:
    """Open the data source of a task spec (spec.json's ``task`` entry) as a run would, without training."""
    name = spec.get("name", "?")
    if spec.get("from_run"):
        return Checked("ok", f"{name}: made by its synth run (checked when that run ends)")
    try:
        if data.file_for(spec, "train") is not None or data.file_for(spec, "dev") is not None:
            return _check_files(spec)
        if data.hub_of(spec) is None:
            raise data._no_hub_copy(name)
        return _check_hub(spec)
    except TaskDataError as e:
        line = first_line(e)
        return Checked("fail", line if line.startswith(f"task '{name}'") else f"{name}: {line}")


def _check_files(spec: dict) -> Checked:
    missing = data.missing_files(spec)
    if missing:
        return Checked("fail", f"{spec['name']}: missing {', '.join(str(p) for p in missing)}")
    counts = []
    for split in data.SPLITS:
        examples, _ = data.load_split(spec, split)
        counts.append(f"{split} {len(examples)}")
    return Checked("ok", f"{spec['name']}: local files will load ({', '.join(counts)} examples)")


def _check_hub(spec: dict) -> Checked:
    name = spec["name"]
    dataset_id, config, revision = data.hub_of(spec)
    where = data.describe({"kind": "hub", "id": dataset_id, "config": config, "revision": revision, "split": "*"})
    where = where.rsplit(", split", 1)[0]
    if not data.hub_reachable():
        return Checked(
            "offline",
            f"{name}: the hub at {data.hub_endpoint()} cannot be reached to check {where}: run this on the box "
            "that will train, set HF_ENDPOINT to a reachable hub, or set data_dir in the plan stage",
        )
    try:
        import datasets

        builder = datasets.load_dataset_builder(**data.hub_load_args(spec, list(data.SPLITS)))
    except Exception as e:  # noqa: BLE001 - any failure is the same one line
        raise data.hub_failure(spec, "train", first_line(e)) from None
    splits = sorted((builder.config.data_files or {}).keys())
    wanted = [data.hub_split(spec, s) for s in data.SPLITS]
    absent = [s for s in wanted if s not in splits]
    if absent:
        return Checked("fail", f"{name}: {where} has no split {', '.join(absent)} (it has {', '.join(splits)})")
    fields = _fields(builder, wanted[0])
    expected = _expected(spec)
    if fields is None:
        return Checked("ok", f"{name}: {where} will load (splits {', '.join(wanted)}; fields not listed by the hub)")
    lacking = [f for f in expected if f not in fields]
    if lacking:
        return Checked("fail", f"{name}: {where} lacks the fields {', '.join(lacking)} (it has {', '.join(fields)})")
    return Checked("ok", f"{name}: {where} will load (splits {', '.join(wanted)}; fields {', '.join(expected)} found)")


def _expected(spec: dict) -> tuple[str, ...]:
    if spec.get("custom") or not registry.is_builtin(spec["name"]):
        return ()
    return registry.get(spec["name"]).hub_fields


def _fields(builder, split: str) -> list[str] | None:
    """The column names of a hub split: the builder's features, else the Parquet footer of its first file
    (a ranged read of a few KB, not the data)."""
    if builder.info.features is not None:
        return list(builder.info.features)
    files = list((builder.config.data_files or {}).get(split) or [])
    if not files or not str(files[0]).endswith(".parquet"):
        return None
    try:
        import pyarrow.parquet as pq
        from huggingface_hub import HfFileSystem

        with HfFileSystem(endpoint=data.hub_endpoint()).open(str(files[0]), "rb") as f:
            return list(pq.read_schema(f).names)
    except Exception:  # noqa: BLE001 - the fields are a courtesy: the split list already answered
        return None
