"""Input construction for every built-in task, from small files in its official layout."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import cli, write_jsonl, write_text

from stilts_tui import plan as plans
from stilts_tui import tasks
from stilts_tui.errors import TaskDataError
from stilts_tui.tasks.inputs import SEP


def spec_for(tmp_path, task: str, **stage) -> dict:
    """The task spec a plan stage with local files resolves to (through the real plan code)."""
    lines = [f'{k} = "{v}"' for k, v in {"task": task, "data_dir": str(tmp_path), **stage}.items()]
    text = 'name = "t"\nmodel = "m"\n[target.x]\n' + "\n".join(lines) + "\n"
    path = write_text(tmp_path / "plan.toml", text)
    return plans.load_and_expand(path)[1][0].task_spec


def both(tmp_path, task, **stage):
    spec = spec_for(tmp_path, task, **stage)
    return tasks.load_examples(spec, "train"), tasks.load_examples(spec, "dev"), spec


GLUE = {
    "rte": (
        "index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tA person rests.\tnot_entailment\n",
        {"a": "A man sleeps.", "b": "A person rests.", "label": 1},
    ),
    "mrpc": (
        'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "hi".\tHe greeted.\n',
        {"a": 'He said "hi".', "b": "He greeted.", "label": 1},
    ),
    "cola": (
        "gj04\t0\t*\tThe more you eat , the most you want .\n",
        {"a": "The more you eat , the most you want .", "b": None, "label": 0},
    ),
    "sst2": (
        "sentence\tlabel\nit 's a charming journey . \t1\n",
        {"a": "it 's a charming journey . ", "b": None, "label": 1},
    ),
    "stsb": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain\tx\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t4.750\n",
        {"a": "A plane.", "b": "An air plane.", "label": 4.75},
    ),
    "qnli": ("index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n", {"a": "Who?", "b": "Him.", "label": 0}),
}


@pytest.mark.parametrize("task", sorted(GLUE))
def test_glue_tsv(tmp_path, task):
    text, expected = GLUE[task]
    write_text(tmp_path / "train.tsv", text)
    write_text(tmp_path / "dev.tsv", text)
    train, dev, spec = both(tmp_path, task)
    assert train == [expected] and dev == [expected]
    assert spec["metric"] == {"mrpc": "f1", "cola": "mcc", "stsb": "pearson"}.get(task, "acc")


def test_mnli_reads_dev_matched(tmp_path):
    head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"
    write_text(tmp_path / "train.tsv", head + "0\t1\t1\tx\tA.\tB.\tneutral\n")
    write_text(tmp_path / "dev_matched.tsv", head + "0\t1\t1\tx\tC.\tD.\tcontradiction\n")
    train, dev, _ = both(tmp_path, "mnli")
    assert train[0]["label"] == 1 and dev[0] == {"a": "C.", "b": "D.", "label": 2}


def test_wic(tmp_path):
    for split in ("train", "dev"):
        write_text(
            tmp_path / f"{split}/{split}.data.txt",
            "carry\tV\t2-1\tYou must carry your camping gear .\tSound carries well over water .\n",
        )
        write_text(tmp_path / f"{split}/{split}.gold.txt", "F\n")
    train, _, _ = both(tmp_path, "wic")
    assert train == [
        {"a": f"carry{SEP}You must carry your camping gear .", "b": "Sound carries well over water .", "label": 0}
    ]


def test_mednli(tmp_path):
    row = {"sentence1": "Labs were normal.", "sentence2": "The patient is sick.", "gold_label": "contradiction"}
    write_jsonl(tmp_path / "mli_train_v1.jsonl", [row])
    write_jsonl(tmp_path / "mli_dev_v1.jsonl", [row])
    train, _, spec = both(tmp_path, "mednli")
    # the reference's order (utils.py): entailment 0, contradiction 1, neutral 2
    assert train == [{"a": "Labs were normal.", "b": "The patient is sick.", "label": 1}]
    assert spec["labels"] == ["entailment", "contradiction", "neutral"]
    assert spec["hub"] is None


HS = {
    "ctx_a": "A man is sitting on a roof.",
    "ctx_b": "he",
    "endings": ["starts.", "is.", "eats.", "runs."],
    "label": 3,
}


def test_hellaswag_pairs_ctx_a_with_ctx_b_and_each_ending(tmp_path):
    write_jsonl(tmp_path / "hellaswag_train.jsonl", [HS])
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HS])
    train, _, spec = both(tmp_path, "hellaswag")
    assert train == [{"a": [HS["ctx_a"]] * 4, "b": ["he starts.", "he is.", "he eats.", "he runs."], "label": 3}]
    assert spec["kind"] == "multiple_choice" and spec["num_choices"] == 4


def test_hellaswag_p_uses_the_ending_alone_and_its_alias(tmp_path):
    write_jsonl(tmp_path / "hellaswag_train.jsonl", [HS])
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HS])
    train, _, spec = both(tmp_path, "hella-p")
    assert spec["name"] == "hellaswag-p"
    assert train == [{"a": HS["endings"], "b": [None] * 4, "label": 3}]


def test_syngpt2_real_ending_is_choice_0_and_alias_cont(tmp_path):
    row = {"ctx": "The quick brown fox", "endings": ["jumps over", "ran off", "sat down", "is red"], "label": 0}
    write_jsonl(tmp_path / "SynGPT2_train.jsonl", [row])
    write_jsonl(tmp_path / "SynGPT2_dev.jsonl", [row])
    train, _, spec = both(tmp_path, "cont")
    assert spec["name"] == "syngpt2"
    assert train == [{"a": ["The quick brown fox"] * 4, "b": row["endings"], "label": 0}]


def test_siqa_reads_the_labels_file_and_alias_iqa(tmp_path):
    row = {
        "context": "Tracy went to the store.",
        "question": "Why?",
        "answerA": "buy",
        "answerB": "sell",
        "answerC": "sleep",
    }
    for split in ("train", "dev"):
        write_jsonl(tmp_path / f"{split}.jsonl", [row, row])
        write_text(tmp_path / f"{split}-labels.lst", "1\n3\n")
    train, _, spec = both(tmp_path, "iqa")
    a = f"Tracy went to the store.{SEP}Why?"
    assert train == [
        {"a": [a] * 3, "b": ["buy", "sell", "sleep"], "label": 0},
        {"a": [a] * 3, "b": ["buy", "sell", "sleep"], "label": 2},
    ]


def test_winogrande_fills_every_blank_with_the_option(tmp_path):
    row = {
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "2",
    }
    write_jsonl(tmp_path / "train_xs.jsonl", [row])
    write_jsonl(tmp_path / "dev.jsonl", [row])
    train, _, _ = both(tmp_path, "winogrande-xs")
    assert train == [
        {
            "a": ["Sarah was a much better surgeon than Maria so "] * 2,  # trailing space kept
            "b": ["Sarah always got the harder cases.", "Maria always got the harder cases."],
            "label": 1,
        }
    ]


def test_winogrande_renamed_files_as_the_reference_used(tmp_path):
    row = {"sentence": "The cup is on _ .", "option1": "it", "option2": "that", "answer": "1"}
    write_jsonl(tmp_path / "wino_train_xs.jsonl", [row])
    write_jsonl(tmp_path / "wino_dev.jsonl", [row])
    train, dev, spec = both(tmp_path, "winogrande-xs", train_file="wino_train_xs.jsonl", dev_file="wino_dev.jsonl")
    assert spec["train_file"] == str(tmp_path / "wino_train_xs.jsonl")
    assert train[0]["b"] == ["it .", "that ."] and train[0]["label"] == 0


def test_cosmosqa_csv(tmp_path):
    text = (
        "id,context,question,answer0,answer1,answer2,answer3,label\n"
        'q1,"It rained, a lot.",What happened?,rain,sun,snow,"none, really",2\n'
    )
    write_text(tmp_path / "train.csv", text)
    write_text(tmp_path / "valid.csv", text)
    train, _, _ = both(tmp_path, "cosmosqa")
    assert train == [
        {"a": [f"It rained, a lot.{SEP}What happened?"] * 4, "b": ["rain", "sun", "snow", "none, really"], "label": 2}
    ]


def test_boolq_copa_commonsenseqa(tmp_path):
    write_jsonl(tmp_path / "b/train.jsonl", [{"question": "is it?", "passage": "It is.", "label": True}])
    write_jsonl(tmp_path / "b/val.jsonl", [{"question": "is it?", "passage": "It is.", "answer": False}])
    train, dev, _ = both(tmp_path / "b", "boolq")
    assert train == [{"a": "is it?", "b": "It is.", "label": 1}] and dev[0]["label"] == 0
    copa = {
        "premise": "The man broke his toe.",
        "choice1": "He dropped a hammer.",
        "choice2": "He sang.",
        "question": "cause",
        "label": 0,
    }
    write_jsonl(tmp_path / "c/train.jsonl", [copa])
    write_jsonl(tmp_path / "c/val.jsonl", [copa])
    train, _, _ = both(tmp_path / "c", "copa")
    assert train == [
        {"a": [copa["premise"]] * 2, "b": ["because He dropped a hammer.", "because He sang."], "label": 0}
    ]
    csqa = {
        "question": {"stem": "Where?", "choices": [{"label": k, "text": k.lower()} for k in "ABCDE"]},
        "answerKey": "D",
    }
    write_jsonl(tmp_path / "q/train_rand_split.jsonl", [csqa])
    write_jsonl(tmp_path / "q/dev_rand_split.jsonl", [csqa])
    train, _, _ = both(tmp_path / "q", "commonsenseqa")
    assert train == [{"a": ["Where?"] * 5, "b": list("abcde"), "label": 3}]


def test_custom_tasks_declared_in_a_plan(tmp_path):
    write_jsonl(tmp_path / "d/train.jsonl", [{"q": "x?", "p": "y.", "y": "yes"}, {"q": "z?", "p": "w.", "y": "no"}])
    write_jsonl(tmp_path / "d/dev.jsonl", [{"q": "x?", "p": "y.", "y": "no"}])
    write_text(tmp_path / "d/mc.csv", "ctx,o1,o2,label\nHi,there,now,1\n")
    text = """name = "c"
model = "m"
[tasks.mine]
format = "jsonl"
train = "d/train.jsonl"
dev = "d/dev.jsonl"
kind = "classification"
text_fields = ["q", "p"]
label_field = "y"
[tasks.pick]
format = "csv"
train = "d/mc.csv"
dev = "d/mc.csv"
kind = "multiple_choice"
text_fields = ["ctx"]
choice_fields = ["o1", "o2"]
[target.mine]
[target.pick]
"""
    runs = plans.load_and_expand(write_text(tmp_path / "c.toml", text))[1]
    mine = next(r for r in runs if r.name == "mine").task_spec
    assert tasks.labels_for(mine) == ["no", "yes"]
    assert tasks.load_examples(mine, "train") == [
        {"a": "x?", "b": "y.", "label": 1},
        {"a": "z?", "b": "w.", "label": 0},
    ]
    pick = next(r for r in runs if r.name == "pick").task_spec
    assert tasks.load_examples(pick, "dev") == [{"a": ["Hi", "Hi"], "b": ["there", "now"], "label": 1}]


def test_a_missing_field_names_the_file_and_example(tmp_path):
    write_jsonl(tmp_path / "hellaswag_train.jsonl", [HS, {"ctx_a": "x", "endings": ["a"] * 4, "label": 0}])
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HS])
    spec = spec_for(tmp_path, "hellaswag")
    with pytest.raises(TaskDataError, match=r"hellaswag_train.jsonl: example 2: row has no field 'ctx_b'"):
        tasks.load_examples(spec, "train")


def test_a_local_only_task_without_files_says_how_to_fix_it():
    spec = {"name": "mednli", "kind": "classification", "hub": None, "data_dir": None}
    with pytest.raises(TaskDataError, match="has no Hugging Face Hub copy: set data_dir"):
        tasks.load_examples(spec, "train")


@pytest.mark.slow
def test_unreachable_hub_is_one_clear_message(tmp_path):
    """The real hub code path, pointed at a closed port on this machine: the hub cannot be reached."""
    code = (
        "from stilts_tui import tasks\n"
        "from stilts_tui.errors import TaskDataError\n"
        "spec = {'name': 'rte', 'kind': 'classification', 'hub': ['nyu-mll/glue', 'rte'],\n"
        "        'hub_splits': ['train', 'validation']}\n"
        "try:\n"
        "    tasks.load_examples(spec, 'train')\n"
        "except TaskDataError as e:\n"
        "    print(e)\n"
    )
    env = {
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    msg = out.stdout.strip()
    assert msg.startswith(
        "task 'rte': could not load nyu-mll/glue (rte) @ main split 'train' from http://127.0.0.1:9"
    ), out
    assert "download the files (train.tsv, dev.tsv) and set data_dir" in msg
    assert "\n" not in msg


def test_tasks_show_loads_a_plans_model_as_the_trainer_does(tmp_path):
    """Issue 35, item 17: `tasks show choice --plan plans/demo.toml` could not load the demo's tokenizer
    (sentence-transformers/all-MiniLM-L6-v2, which the trainer takes from the package that ships it)."""
    from stilts_tui.cli.demo import write_demo

    plan = write_demo(tmp_path)
    out = cli("tasks", "show", "choice", "--plan", str(plan), "-n", "1", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("example 1  label ") and "tokens [CLS] " in out.stdout
