"""The hub path, end to end through `datasets`' real client, against a local server in the hub's HTTP
layout (tests/hubserver.py, 127.0.0.1 only): every built-in task that has both a hub copy and local files
builds the same examples from both; the Parquet conversion (refs/convert/parquet) loads; a dataset that is
only a loading script fails with one line naming the task and what to set; `tasks.check` says per stage
whether the data will load, and that the hub is unreachable when it is.

The loads run in a subprocess (as a trainer would): `datasets` and `huggingface_hub` read HF_ENDPOINT
when they are imported."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stilts_tui.tasks import registry
from tests.hubserver import PARQUET, FakeHub

# ---- the same records, as the hub keeps them and as the task's local files hold them ----------

PAIRS = [("A man is eating.", "Someone eats."), ('He said "no".', "He refused.\tTab"), ("Ünïcode ok", "fine")]


def _tsv(header: list[str] | None, rows: list[list]) -> str:
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(x) for x in r) for r in rows]
    return "\n".join(lines) + "\n"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _glue_case(name: str) -> tuple[list[dict], dict]:
    """Hub rows (ClassLabel ints) and GLUE's tsv files for one GLUE task."""
    t = registry.get(name)
    labels = t.labels
    hub, local = [], []
    for i, (a, b) in enumerate(PAIRS):
        a, b = a.replace("\t", " "), b.replace("\t", " ")
        y = 2.5 + i / 4 if labels is None else i % len(labels)
        hub_row = {"label": y, "idx": i}
        if name in ("cola", "sst2"):
            hub_row["sentence"] = a
        elif name == "qnli":
            hub_row.update(question=a, sentence=b)
        elif name == "mnli":
            hub_row.update(premise=a, hypothesis=b)
        else:
            hub_row.update(sentence1=a, sentence2=b)
        hub.append(hub_row)
        local.append((i, a, b, y))
    if name == "rte" or name == "qnli":
        head = (
            ["index", "question", "sentence", "label"]
            if name == "qnli"
            else ["index", "sentence1", "sentence2", "label"]
        )
        text = _tsv(head, [[i, a, b, labels[y]] for i, a, b, y in local])
    elif name == "mrpc":
        text = _tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [[y, 1, 2, a, b] for i, a, b, y in local])
    elif name == "cola":
        text = _tsv(None, [["src", y, "", a] for i, a, b, y in local])
    elif name == "sst2":
        text = _tsv(["sentence", "label"], [[a, y] for i, a, b, y in local])
    elif name == "stsb":
        head = [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ]
        text = _tsv(head, [[i, "g", "f", "y", i, "s", "s", a, b, y] for i, a, b, y in local])
    else:  # mnli
        head = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "gold_label"]
        text = _tsv(head, [[i, i, i, "g", a, b, labels[y]] for i, a, b, y in local])
    return hub, {f: text for f in t.files}


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def _mc_case(name: str) -> tuple[list[dict], dict]:
    """Hub rows and the task's official local files for the multiple-choice and SuperGLUE tasks."""
    t = registry.get(name)
    train, dev = t.files
    if name in ("hellaswag", "hellaswag-p"):
        rows = [
            {"ctx_a": f"A man {i}.", "ctx_b": "then he", "endings": ["a", "b b", "c", "d."], "label": i % 4}
            for i in range(3)
        ]
        hub = [{**r, "label": str(r["label"]), "ctx": r["ctx_a"] + " " + r["ctx_b"]} for r in rows]
        return hub, {train: _jsonl(rows), dev: _jsonl(rows)}
    if name == "siqa":
        rows = [
            {"context": f"Tracy {i}.", "question": "Why?", "answerA": "x", "answerB": "y", "answerC": "z"}
            for i in range(3)
        ]
        labels = ["1", "3", "2"]
        hub = [{**r, "label": lab} for r, lab in zip(rows, labels, strict=True)]
        lab = "".join(x + "\n" for x in labels)
        return hub, {train: _jsonl(rows), dev: _jsonl(rows), "train-labels.lst": lab, "dev-labels.lst": lab}
    if name.startswith("winogrande"):
        rows = [
            {
                "sentence": f"The cup {i} didn't fit in the box because _ was too big.",
                "option1": "cup",
                "option2": "box",
                "answer": str(1 + i % 2),
            }
            for i in range(3)
        ]
        return rows, {train: _jsonl(rows), dev: _jsonl(rows)}
    if name == "cosmosqa":
        rows = [
            {
                "id": f"q{i}",
                "context": f"Ctx, {i}",
                "question": "What?",
                "answer0": "a",
                "answer1": "b, c",
                "answer2": '"d"',
                "answer3": "e",
                "label": i % 4,
            }
            for i in range(3)
        ]
        return rows, {train: _csv(rows), dev: _csv(rows)}
    if name == "boolq":
        rows = [{"question": f"is it {i}", "passage": "It is.", "idx": i, "label": i % 2} for i in range(3)]
        local = [
            {"question": r["question"], "title": "t", "answer": bool(r["label"]), "passage": r["passage"]} for r in rows
        ]
        return rows, {train: _jsonl(local), dev: _jsonl(local)}
    if name == "copa":
        rows = [
            {
                "premise": f"It rained {i}.",
                "choice1": "we stayed in",
                "choice2": "we swam",
                "question": ("cause", "effect")[i % 2],
                "idx": i,
                "label": i % 2,
            }
            for i in range(3)
        ]
        return rows, {train: _jsonl(rows), dev: _jsonl(rows)}
    if name == "commonsenseqa":
        keys = ["A", "B", "C", "D", "E"]
        hub = [
            {
                "id": f"c{i}",
                "question": f"Where {i}?",
                "question_concept": "x",
                "choices": {"label": keys, "text": [f"t{k}" for k in keys]},
                "answerKey": keys[i],
            }
            for i in range(3)
        ]
        local = [
            {
                "answerKey": r["answerKey"],
                "id": r["id"],
                "question": {
                    "question_concept": "x",
                    "stem": r["question"],
                    "choices": [{"label": k, "text": f"t{k}"} for k in keys],
                },
            }
            for r in hub
        ]
        return hub, {train: _jsonl(local), dev: _jsonl(local)}
    if name == "wic":
        rows = [
            {
                "word": "bank",
                "sentence1": f"The bank {i}.",
                "sentence2": "A river bank.",
                "label": i % 2,
                "start1": 4,
                "start2": 8,
                "end1": 8,
                "end2": 12,
                "idx": i,
            }
            for i in range(3)
        ]
        data = "".join(f"{r['word']}\tN\t1-2\t{r['sentence1']}\t{r['sentence2']}\n" for r in rows)
        gold = "".join(("F", "T")[r["label"]] + "\n" for r in rows)
        return rows, {
            "train/train.data.txt": data,
            "train/train.gold.txt": gold,
            "dev/dev.data.txt": data,
            "dev/dev.gold.txt": gold,
        }
    raise AssertionError(name)


GLUE = ("rte", "mrpc", "cola", "sst2", "stsb", "qnli", "mnli")
BOTH = [t.name for t in registry.BUILTIN if t.hub and t.files]


def case(name: str) -> tuple[list[dict], dict]:
    return _glue_case(name) if name in GLUE else _mc_case(name)


def spec_of(name: str, data_dir: Path | None = None, hub: list | None = None) -> dict:
    t = registry.get(name)
    return {
        "name": t.name,
        "kind": t.kind,
        "labels": list(t.labels) if t.labels else None,
        "num_choices": t.num_choices,
        "hub": hub or list(t.hub),
        "hub_splits": list(t.hub_splits),
        "data_dir": str(data_dir) if data_dir else None,
        "train_file": None,
        "dev_file": None,
        "custom": None,
    }


# ---- the hub, served, and a process that loads from it ----------------------------------------


@pytest.fixture
def hub(tmp_path):
    h = FakeHub(tmp_path / "hub")
    yield h
    h.close()


LOADER = """
import json, sys
from stilts_tui.tasks import check, data
out = []
for job in json.loads(sys.stdin.read()):
    spec = job["spec"]
    try:
        if job.get("check"):
            c = check.check(spec)
            out.append({"state": c.state, "line": c.line})
            continue
        examples, source = data.load_split(spec, job["split"])
        out.append({"examples": examples, "source": source})
    except Exception as e:
        out.append({"error": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"""


def load(tmp_path: Path, endpoint: str, jobs: list[dict]) -> list[dict]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-c", LOADER], input=json.dumps(jobs), capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve_task(hub: FakeHub, name: str, hub_rows: list[dict], revision: str | None = None) -> None:
    t = registry.get(name)
    repo, config, rev = t.hub
    for split in t.hub_splits:
        hub.add_split(repo, revision or rev, config, split, hub_rows)


def test_every_task_with_local_files_and_a_hub_copy_builds_the_same_examples_from_both(hub, tmp_path):
    jobs, names = [], []
    for name in BOTH:
        hub_rows, files = case(name)
        serve_task(hub, name, hub_rows)
        local = tmp_path / "local" / name
        for rel, text in files.items():
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            (local / rel).write_text(text)
        for split in ("train", "dev"):
            jobs += [{"spec": spec_of(name, data_dir=local), "split": split}, {"spec": spec_of(name), "split": split}]
            names.append((name, split))
    out = load(tmp_path, hub.endpoint, jobs)
    for (name, split), (from_files, from_hub) in zip(names, zip(out[::2], out[1::2], strict=True), strict=True):
        assert "error" not in from_files, (name, from_files)
        assert "error" not in from_hub, (name, from_hub)
        assert from_hub["examples"] == from_files["examples"], (name, split)
        assert from_hub["source"]["fingerprint"] == from_files["source"]["fingerprint"]
        assert from_hub["source"]["examples"] == 3
        repo, config, revision = registry.get(name).hub
        src = from_hub["source"]
        assert (src["kind"], src["id"], src["config"], src["revision"]) == ("hub", repo, config, revision)
        assert src["commit"] == hub.sha(repo, revision)  # what the pinned revision resolved to, recorded
        assert from_files["source"]["kind"] == "files"
    # the script datasets of the reference study load from the hub's Parquet conversion
    assert registry.get("siqa").hub == ("allenai/social_i_qa", "default", PARQUET)
    assert registry.get("cosmosqa").hub[2] == PARQUET


def test_a_dataset_that_is_only_a_loading_script_fails_with_one_line_naming_the_task_and_what_to_set(hub, tmp_path):
    hub.add_file("allenai/social_i_qa", "main", "social_i_qa.py", "import datasets\n")
    spec = spec_of("siqa", hub=["allenai/social_i_qa", None, "main"])
    (out,) = load(tmp_path, hub.endpoint, [{"spec": spec, "split": "train"}])
    line = out["error"]
    assert "\n" not in line
    assert line.startswith("TaskDataError: task 'siqa': allenai/social_i_qa @ main is a loading script")
    assert "refs/convert/parquet" in line and "set data_dir in the plan stage" in line


def test_check_says_per_stage_whether_its_data_will_load(hub, tmp_path):
    siqa_rows, _ = case("siqa")
    serve_task(hub, "siqa", siqa_rows)  # only on the Parquet conversion
    rte_rows, _ = case("rte")
    hub.add_split("nyu-mll/glue", "main", "rte", "train", rte_rows)  # no validation split
    copa_rows = [{"premise": "p", "question": "cause", "label": 0}]  # no choices
    serve_task(hub, "copa", copa_rows)
    hub.add_file("allenai/cosmos_qa", "main", "cosmos_qa.py", "import datasets\n")
    jobs = [
        {"check": True, "spec": spec_of("siqa")},
        {"check": True, "spec": spec_of("rte")},
        {"check": True, "spec": spec_of("copa")},
        {"check": True, "spec": spec_of("cosmosqa", hub=["allenai/cosmos_qa", None, "main"])},
        {"check": True, "spec": spec_of("rte", data_dir=tmp_path / "nowhere")},
    ]
    siqa, rte, copa, cosmos, local = load(tmp_path, hub.endpoint, jobs)
    assert siqa["state"] == "ok", siqa
    assert "allenai/social_i_qa (default) @ refs/convert/parquet will load" in siqa["line"]
    assert "context, question, answerA, answerB, answerC, label found" in siqa["line"]
    assert rte["state"] == "fail" and "has no split validation" in rte["line"]
    assert copa["state"] == "fail" and "lacks the fields choice1, choice2" in copa["line"]
    assert cosmos["state"] == "fail" and "is a loading script" in cosmos["line"]
    assert local["state"] == "fail" and "missing" in local["line"] and "nowhere" in local["line"]
    # no data was downloaded: a Parquet file was only read in ranges (its footer, for the field names)
    whole = [r for r in hub.requests if r.startswith("GET") and ".parquet" in r and "Range:" not in r]
    assert whole == []
    assert any(r.startswith("GET") and ".parquet" in r and "Range:" in r for r in hub.requests)


def test_check_says_the_hub_is_unreachable_and_what_to_set(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (out,) = load(tmp_path, f"http://127.0.0.1:{port}", [{"check": True, "spec": spec_of("siqa")}])
    assert out["state"] == "offline"
    assert out["line"].startswith(f"siqa: the hub at http://127.0.0.1:{port} cannot be reached")
    assert "HF_ENDPOINT" in out["line"] and "data_dir" in out["line"]


def test_tasks_check_prints_one_line_a_stage_and_fails_unless_every_stage_will_load(hub, tmp_path):
    from tests.conftest import cli

    siqa_rows, _ = case("siqa")
    serve_task(hub, "siqa", siqa_rows)
    rows, files = case("rte")
    for rel, text in files.items():
        (tmp_path / "RTE" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "RTE" / rel).write_text(text)
    plan = tmp_path / "p.toml"
    base = 'name = "c"\nmodel = "roberta-large"\ntarget_seeds = [1]\n[target.siqa]\ntask = "siqa"\n'
    plan.write_text(base + '[target.rte]\ntask = "rte"\ndata_dir = "RTE"\n')
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    out = cli("tasks", "check", str(plan), env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(
        "[target.siqa] OK      siqa: allenai/social_i_qa (default) @ refs/convert/parquet will load"
    )
    assert lines[1] == "[target.rte] OK      rte: local files will load (train 3, dev 3 examples)"
    plan.write_text(base + '[target.rte]\ntask = "rte"\ndata_dir = "nowhere"\n')
    out = cli("tasks", "check", str(plan), env=env)
    assert out.returncode == 1
    assert out.stdout.splitlines()[1].startswith("[target.rte] FAIL    rte: missing ")
    assert out.stderr.strip() == f"{plan}: 1 stage(s) will not load their data as things stand"
