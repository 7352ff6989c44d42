"""The task table: each built-in task's hub id, local file layout, kind, labels and metric.

Importing this module imports neither torch nor `datasets`; the hub is only touched by
:func:`load_examples` when a task has no local files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stilts_tui.errors import TaskDataError, UserError
from stilts_tui.tasks import formats, inputs

NLI3 = ("entailment", "neutral", "contradiction")  # GLUE's MNLI order
# the reference's MedNLI order (its utils.py numbers them 0, 1, 2 so): the rows of the classifier head
MEDNLI_LABELS = ("entailment", "contradiction", "neutral")
KINDS = ("classification", "regression", "multiple_choice")
METRICS = ("acc", "f1", "mcc", "pearson", "spearman")


@dataclass(frozen=True)
class TaskDef:
    """One task as the reference study used it."""

    name: str
    kind: str
    build: Callable[[dict], dict]  # a row in the hub's schema -> an example (see inputs.py)
    read: Callable[[Path], list[dict]] | None  # a local file -> rows in the hub's schema
    files: tuple[str, str] | None  # default (train, dev) file names under data_dir
    labels: tuple[str, ...] | None = None  # class names (classification)
    num_choices: int | None = None  # fixed number of choices (multiple choice), None if per-file
    metric: str = "acc"
    metrics: tuple[str, ...] = ("acc",)
    # (dataset id, config, revision): a dataset stored as data files (Parquet or JSON) on the hub, pinned by
    # revision; the run records the commit the revision resolved to (docs/tasks.md, "Where each task's data
    # comes from")
    hub: tuple[str, str | None, str] | None = None
    hub_fields: tuple[str, ...] = ()  # the fields the task's builder reads from a hub row
    hub_splits: tuple[str, str] = ("train", "validation")
    aliases: tuple[str, ...] = ()
    companions: tuple[tuple[str, str], ...] = ()  # (suffix, replacement): label files beside data
    description: str = ""


# ---- local readers: file -> rows in the hub's schema -------------------------------------------


def _glue(header: bool, rename: dict[str | int, str]) -> Callable[[Path], list[dict]]:
    def read(path: Path) -> list[dict]:
        rows = formats.read_glue_tsv(path, header=header)
        out = []
        for n, row in enumerate(rows, 2 if header else 1):
            try:
                out.append({new: row[old] for old, new in rename.items()})
            except (KeyError, IndexError):
                have = list(row) if isinstance(row, dict) else f"{len(row)} columns"
                raise TaskDataError(f"{path}:{n}: expected columns {list(rename)} (found {have})") from None
        return out

    return read


def _wic(path: Path) -> list[dict]:
    gold = formats.read_lines(formats.companion(path, ".data.txt", ".gold.txt"))
    rows = []
    for n, line in enumerate(formats.read_lines(path)):
        parts = line.split("\t")
        if len(parts) < 5:
            raise TaskDataError(f"{path}:{n + 1}: expected 5 tab-separated fields, found {len(parts)}")
        rows.append({"word": parts[0], "sentence1": parts[3], "sentence2": parts[4], "label": gold[n].strip()})
    if len(gold) != len(rows):
        raise TaskDataError(f"{path}: {len(rows)} examples but {len(gold)} gold labels")
    return rows


def _siqa(path: Path) -> list[dict]:
    rows = formats.read_jsonl(path)
    labels = formats.read_lines(formats.companion(path, ".jsonl", "-labels.lst"))
    if len(labels) != len(rows):
        raise TaskDataError(f"{path}: {len(rows)} examples but {len(labels)} labels")
    return [dict(r, label=lab.strip()) for r, lab in zip(rows, labels, strict=True)]


def _nli_jsonl(path: Path) -> list[dict]:
    return [dict(r, label=inputs.field(r, "gold_label", f"{path}: ")) for r in formats.read_jsonl(path)]


def _csv(path: Path) -> list[dict]:
    return formats.read_table(path, ",")


_GLUE = "nyu-mll/glue"  # Parquet files on main since the hub's canonical datasets moved to data files
_SG = "aps/super_glue"
# the hub's own Parquet conversion of a dataset (a branch the hub writes for every dataset it can show):
# the only data-file copy of a dataset whose main branch is a loading script, which datasets >= 4 refuses
PARQUET = "refs/convert/parquet"
MAIN = "main"
_PAIR = inputs.sentence_pair

BUILTIN: list[TaskDef] = [
    TaskDef(
        "rte",
        "classification",
        _PAIR("sentence1", "sentence2", ("entailment", "not_entailment")),
        _glue(True, {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
        ("train.tsv", "dev.tsv"),
        labels=("entailment", "not_entailment"),
        hub=(_GLUE, "rte", MAIN),
        hub_fields=("sentence1", "sentence2", "label"),
        description="GLUE RTE: textual entailment",
    ),
    TaskDef(
        "mrpc",
        "classification",
        _PAIR("sentence1", "sentence2", ("not_equivalent", "equivalent")),
        _glue(True, {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
        ("train.tsv", "dev.tsv"),
        labels=("not_equivalent", "equivalent"),
        metric="f1",
        metrics=("f1", "acc"),
        hub=(_GLUE, "mrpc", MAIN),
        hub_fields=("sentence1", "sentence2", "label"),
        description="GLUE MRPC: paraphrase",
    ),
    TaskDef(
        "cola",
        "classification",
        _PAIR("sentence", None, ("unacceptable", "acceptable")),
        _glue(False, {3: "sentence", 1: "label"}),
        ("train.tsv", "dev.tsv"),
        labels=("unacceptable", "acceptable"),
        metric="mcc",
        metrics=("mcc", "acc"),
        hub=(_GLUE, "cola", MAIN),
        hub_fields=("sentence", "label"),
        description="GLUE CoLA: acceptability (tsv without header)",
    ),
    TaskDef(
        "sst2",
        "classification",
        _PAIR("sentence", None, ("negative", "positive")),
        _glue(True, {"sentence": "sentence", "label": "label"}),
        ("train.tsv", "dev.tsv"),
        labels=("negative", "positive"),
        hub=(_GLUE, "sst2", MAIN),
        hub_fields=("sentence", "label"),
        aliases=("sst-2",),
        description="GLUE SST-2: sentiment",
    ),
    TaskDef(
        "stsb",
        "regression",
        _PAIR("sentence1", "sentence2", None),
        _glue(True, {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"}),
        ("train.tsv", "dev.tsv"),
        metric="pearson",
        metrics=("pearson", "spearman"),
        hub=(_GLUE, "stsb", MAIN),
        hub_fields=("sentence1", "sentence2", "label"),
        aliases=("sts-b",),
        description="GLUE STS-B: similarity (regression)",
    ),
    TaskDef(
        "qnli",
        "classification",
        _PAIR("question", "sentence", ("entailment", "not_entailment")),
        _glue(True, {"question": "question", "sentence": "sentence", "label": "label"}),
        ("train.tsv", "dev.tsv"),
        labels=("entailment", "not_entailment"),
        hub=(_GLUE, "qnli", MAIN),
        hub_fields=("question", "sentence", "label"),
        description="GLUE QNLI: question entailment",
    ),
    TaskDef(
        "mnli",
        "classification",
        _PAIR("premise", "hypothesis", NLI3),  # the hub's names (GLUE's files say sentence1/sentence2)
        _glue(True, {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"}),
        ("train.tsv", "dev_matched.tsv"),
        labels=NLI3,
        hub=(_GLUE, "mnli", MAIN),
        hub_fields=("premise", "hypothesis", "label"),
        hub_splits=("train", "validation_matched"),
        description="GLUE MNLI: NLI (matched dev)",
    ),
    TaskDef(
        "wic",
        "classification",
        inputs.wic,
        _wic,
        ("train/train.data.txt", "dev/dev.data.txt"),
        labels=("F", "T"),
        hub=(_SG, "wic", PARQUET),
        hub_fields=("word", "sentence1", "sentence2", "label"),
        companions=((".data.txt", ".gold.txt"),),
        description="WiC: word in context",
    ),
    TaskDef(
        "mednli",
        "classification",
        _PAIR("sentence1", "sentence2", MEDNLI_LABELS),
        _nli_jsonl,
        ("mli_train_v1.jsonl", "mli_dev_v1.jsonl"),
        labels=MEDNLI_LABELS,
        description="MedNLI: clinical NLI (local files only: PhysioNet credentialed access)",
    ),
    TaskDef(
        "hellaswag",
        "multiple_choice",
        inputs.hellaswag,
        formats.read_jsonl,
        ("hellaswag_train.jsonl", "hellaswag_val.jsonl"),
        num_choices=4,
        hub=("Rowan/hellaswag", None, MAIN),
        hub_fields=("ctx_a", "ctx_b", "endings", "label"),
        description="HellaSwag: ctx_a paired with ctx_b + ending",
    ),
    TaskDef(
        "hellaswag-p",
        "multiple_choice",
        inputs.hellaswag_p,
        formats.read_jsonl,
        ("hellaswag_train.jsonl", "hellaswag_val.jsonl"),
        num_choices=4,
        hub=("Rowan/hellaswag", None, MAIN),
        hub_fields=("endings", "label"),
        aliases=("hella-p",),
        description="HellaSwag-p: the ending alone (no context)",
    ),
    TaskDef(
        "syngpt2",
        "multiple_choice",
        inputs.syngpt2,
        formats.read_jsonl,
        ("SynGPT2_train.jsonl", "SynGPT2_dev.jsonl"),
        aliases=("cont",),
        description="SynGPT2: real vs GPT-2 continuations (real ending is choice 0)",
    ),
    TaskDef(
        "siqa",
        "multiple_choice",
        inputs.siqa,
        _siqa,
        ("train.jsonl", "dev.jsonl"),
        num_choices=3,
        hub=("allenai/social_i_qa", "default", PARQUET),
        hub_fields=("context", "question", "answerA", "answerB", "answerC", "label"),
        aliases=("iqa", "socialiqa"),
        companions=((".jsonl", "-labels.lst"),),
        description="SocialIQA: context + question, 3 answers",
    ),
    *[
        TaskDef(
            f"winogrande-{size}",
            "multiple_choice",
            inputs.winogrande,
            formats.read_jsonl_sig,
            (f"train_{size}.jsonl", "dev.jsonl"),
            num_choices=2,
            hub=("allenai/winogrande", f"winogrande_{size}", MAIN),
            hub_fields=("sentence", "option1", "option2", "answer"),
            description=f"WinoGrande ({size.upper()} training set)",
        )
        for size in ("xs", "s", "m", "l", "xl")
    ],
    TaskDef(
        "cosmosqa",
        "multiple_choice",
        inputs.cosmosqa,
        _csv,
        ("train.csv", "valid.csv"),
        num_choices=4,
        hub=("allenai/cosmos_qa", "default", PARQUET),
        hub_fields=("context", "question", "answer0", "answer1", "answer2", "answer3", "label"),
        description="CosmosQA: context + question, 4 answers",
    ),
    TaskDef(
        "boolq",
        "classification",
        inputs.boolq,
        formats.read_jsonl,
        ("train.jsonl", "val.jsonl"),
        labels=("False", "True"),
        hub=(_SG, "boolq", PARQUET),
        hub_fields=("question", "passage", "label"),
        description="BoolQ: yes/no questions",
    ),
    TaskDef(
        "copa",
        "multiple_choice",
        inputs.copa,
        formats.read_jsonl,
        ("train.jsonl", "val.jsonl"),
        num_choices=2,
        hub=(_SG, "copa", PARQUET),
        hub_fields=("premise", "choice1", "choice2", "question", "label"),
        description="COPA: choice of plausible alternatives",
    ),
    TaskDef(
        "commonsenseqa",
        "multiple_choice",
        inputs.commonsenseqa,
        formats.read_jsonl,
        ("train_rand_split.jsonl", "dev_rand_split.jsonl"),
        num_choices=5,
        hub=("tau/commonsense_qa", None, MAIN),
        hub_fields=("question", "choices", "answerKey"),
        aliases=("csqa",),
        description="CommonsenseQA: 5 answers",
    ),
]

_BY_NAME: dict[str, TaskDef] = {}
for _t in BUILTIN:
    for _n in (_t.name, *_t.aliases):
        _BY_NAME[_n] = _t


def names() -> list[str]:
    return [t.name for t in BUILTIN]


def get(name: str) -> TaskDef:
    """The built-in task called ``name`` (or one of its reference aliases)."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise UserError(f"unknown task '{name}' (known: {', '.join(names())})") from None


def is_builtin(name: str) -> bool:
    return name.lower() in _BY_NAME
