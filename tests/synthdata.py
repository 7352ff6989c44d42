"""Small learnable tasks built in the tests: sentences drawn from topics a pretrained encoder knows."""

from __future__ import annotations

import random

TOPICS = {
    "fruit": "apple banana cherry mango pear grape peach plum lemon orange melon kiwi".split(),
    "vehicles": "car truck bus train bicycle motorcycle airplane boat tractor van scooter subway".split(),
    "weather": "rain snow storm wind sunshine cloud thunder fog hail drizzle frost heat".split(),
    "music": "guitar piano violin drum song melody concert singer trumpet flute orchestra chorus".split(),
    "animals": "dog cat horse cow sheep lion tiger rabbit mouse wolf bear eagle".split(),
}
FRAMES = ["the {} and the {} were there", "we talked about {} and {}", "a {} next to a {}",
          "i like the {} more than the {}", "she saw a {} near the {}"]


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
