"""How each task's rows become model inputs: a text pair, or one pair per choice.

An example is a dict:
- classification / regression: ``{"a": str, "b": str | None, "label": int | float}``
- multiple choice: ``{"a": [str, ...], "b": [str | None, ...], "label": int}`` (one entry per choice)

``SEP`` marks where the reference inserted the tokenizer's separator token inside one segment
(WiC's "word + sep + sentence1", SocialIQA's and CosmosQA's "context + sep + question"), with no
spaces around it, as the reference's ``a + tokenizer.sep_token + b``; the trainer replaces it with
the tokenizer's own ``sep_token`` (a byte-level BPE would turn a space beside it into a token of its
own and change the first word's token after it).
"""

from __future__ import annotations

from stilts_tui.errors import TaskDataError

SEP = "\u2063[SEP]\u2063"


def field(row: dict, name: str, where: str = "") -> object:
    try:
        return row[name]
    except KeyError:
        have = ", ".join(sorted(map(str, row))) or "none"
        raise TaskDataError(f"{where}row has no field '{name}' (fields: {have})") from None


def pair(a: str, b: str | None, label: int | float) -> dict:
    return {"a": a, "b": b, "label": label}


def choices(a: list[str], b: list[str | None], label: int) -> dict:
    return {"a": a, "b": b, "label": label}


def joined(*parts: str) -> str:
    """Segments joined with the separator token and no spaces, as the reference built them."""
    return SEP.join(parts)


def fill_sep(text: str | None, sep_token: str | None) -> str | None:
    """The text the tokenizer receives: each ``SEP`` becomes ``sep_token`` exactly (no spaces added);
    a tokenizer without a separator token gets a space, so that the two parts stay two words."""
    return None if text is None else text.replace(SEP, sep_token or " ")


def truncate_pair(first: list, second: list, budget: int) -> tuple[list, list]:
    """Cut two token lists to ``budget`` tokens together as transformers 4.3's ``longest_first`` did (the
    reference's tokenizers): one token at a time from the end of the longer list, from the second on a
    tie. So when both are cut and the budget is odd, the first keeps the extra token. (Later
    transformers split the cut in one step and give that token to the list that was longer at first.)"""
    excess = len(first) + len(second) - max(0, budget)
    if excess <= 0:
        return first, second
    gap = min(abs(len(first) - len(second)), excess)  # the longer one alone, down to the other's length
    n1, n2 = (len(first) - gap, len(second)) if len(first) > len(second) else (len(first), len(second) - gap)
    rest = excess - gap  # then alternately, the second first (it is cut on the tie)
    n1, n2 = max(0, n1 - rest // 2), max(0, n2 - (rest - rest // 2))
    return first[:n1], second[:n2]


def label_index(value: object, labels: tuple[str, ...], where: str = "") -> int:
    """Map a label as written in a file (name or number) to its index in ``labels``."""
    text = str(value).strip()
    if text in labels:
        return labels.index(text)
    try:
        i = int(float(text))
    except ValueError:
        i = -1
    if 0 <= i < len(labels):
        return i
    raise TaskDataError(f"{where}label {value!r} is not one of {list(labels)}")


# ---- builders: one row in the hub's schema -> one example -------------------------------------


def sentence_pair(a_field: str, b_field: str | None, labels: tuple[str, ...] | None):
    def build(row: dict) -> dict:
        a = str(field(row, a_field))
        b = str(field(row, b_field)) if b_field else None
        raw = field(row, "label")
        label = float(raw) if labels is None else label_index(raw, labels)
        return pair(a, b, label)

    return build


def wic(row: dict) -> dict:
    a = joined(str(field(row, "word")), str(field(row, "sentence1")))
    return pair(a, str(field(row, "sentence2")), label_index(field(row, "label"), ("F", "T")))


def hellaswag(row: dict) -> dict:
    ctx_b = str(field(row, "ctx_b"))
    endings = list(field(row, "endings"))
    return choices(
        [str(field(row, "ctx_a"))] * len(endings),
        [f"{ctx_b} {e}" for e in endings],
        int(field(row, "label")),
    )


def hellaswag_p(row: dict) -> dict:
    endings = [str(e) for e in field(row, "endings")]
    return choices(endings, [None] * len(endings), int(field(row, "label")))


def syngpt2(row: dict) -> dict:
    endings = [str(e) for e in field(row, "endings")]
    return choices([str(field(row, "ctx"))] * len(endings), endings, int(row.get("label", 0)))


def siqa(row: dict) -> dict:
    a = joined(str(field(row, "context")), str(field(row, "question")))
    answers = [str(field(row, k)) for k in ("answerA", "answerB", "answerC")]
    return choices([a] * 3, answers, int(str(field(row, "label")).strip()) - 1)


def winogrande(row: dict) -> dict:
    sentence = str(field(row, "sentence"))
    cut = sentence.find("_")
    if cut < 0:
        raise TaskDataError(f"winogrande sentence has no '_': {sentence[:60]!r}")
    # the reference: context = sentence[:idx] (its trailing space kept), option = "_ " + the rest stripped
    before, rest = sentence[:cut], sentence[cut + 1 :].strip()
    options = [str(field(row, "option1")), str(field(row, "option2"))]
    seconds = [("_ " + rest).replace("_", opt) for opt in options]
    return choices([before] * 2, seconds, int(str(field(row, "answer")).strip()) - 1)


def cosmosqa(row: dict) -> dict:
    a = joined(str(field(row, "context")), str(field(row, "question")))
    answers = [str(field(row, f"answer{i}")) for i in range(4)]
    return choices([a] * 4, answers, int(field(row, "label")))


def boolq(row: dict) -> dict:
    raw = row["label"] if "label" in row else field(row, "answer")
    label = int(raw) if not isinstance(raw, str) else int(raw.strip().lower() in ("true", "1"))
    return pair(str(field(row, "question")), str(field(row, "passage")), label)


def copa(row: dict) -> dict:
    link = "because" if str(field(row, "question")) == "cause" else "so"
    premise = str(field(row, "premise"))
    options = [f"{link} {field(row, 'choice1')}", f"{link} {field(row, 'choice2')}"]
    return choices([premise] * 2, options, int(field(row, "label")))


def commonsenseqa(row: dict) -> dict:
    q = field(row, "question")
    if isinstance(q, dict):  # the official jsonl: {"question": {"stem", "choices": [{label, text}]}}
        stem, opts = q["stem"], q["choices"]
        keys, texts = [c["label"] for c in opts], [c["text"] for c in opts]
    else:  # the hub: question, choices: {"label": [...], "text": [...]}
        stem, keys, texts = q, list(row["choices"]["label"]), list(row["choices"]["text"])
    answer = str(field(row, "answerKey"))
    if answer not in keys:
        raise TaskDataError(f"commonsenseqa answerKey {answer!r} is not one of {keys}")
    return choices([str(stem)] * len(texts), [str(t) for t in texts], keys.index(answer))
