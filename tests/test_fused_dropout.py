"""Dropout in fused arrays (docs/fused.md, "Dropout"): where the fused forward drops, with which p and
scale, from which random stream, and that evaluation does not drop — each against the Hugging Face model
alone in training mode, on tiny real models with dropout on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fused_inputs, result_of, step_losses, write_tiny_run

from stilts_tui.train.engines.array_model import FusedEncoder

# distinct probabilities, so a dropout with the wrong one draws other masks and the comparison fails
P_HIDDEN, P_ATTN, P_HEAD = 0.1, 0.2, 0.3
CPU = torch.device("cpu")
ATOL = 2e-5


def _models(family: str, kind: str, k: int, p_attn: float = P_ATTN, attn: str = "sdpa"):
    from transformers import (
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
        BertConfig,
        RobertaConfig,
    )

    common = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=P_HIDDEN,
        attention_probs_dropout_prob=p_attn,
        classifier_dropout=P_HEAD,
        max_position_embeddings=40,
        num_labels=3,
    )
    if family == "roberta":
        config = RobertaConfig(**common, pad_token_id=1, type_vocab_size=1)
    else:
        config = BertConfig(**common, pad_token_id=0, type_vocab_size=2)
    auto = AutoModelForMultipleChoice if kind == "multiple_choice" else AutoModelForSequenceClassification
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(auto.from_config(config, attn_implementation=attn).float().train())
    return config, out


def _alone_loss(model, ids, types, mask, labels) -> torch.Tensor:
    kw = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
    return F.cross_entropy(model(**kw).logits, labels)


def _fused(config, kind, models) -> FusedEncoder:
    return FusedEncoder(config, kind, models[0].base_model_prefix, [dict(m.named_parameters()) for m in models], CPU)


def _assert_same_gradients(fused: FusedEncoder, i: int, model) -> None:
    for name, p in model.named_parameters():
        assert torch.allclose(fused.p[name].grad[i], p.grad, atol=ATOL), name


CASES = [
    ("roberta", "classification"),
    ("roberta", "multiple_choice"),
    ("bert", "classification"),
    ("bert", "multiple_choice"),
]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "kind"), CASES)
def test_an_array_of_one_draws_the_masks_of_the_model_alone_so_equals_it_in_training(family, kind, attn):
    """Same seed, same draws in the same order and shapes: every dropout (embeddings, attention
    probabilities, attention output, FFN output, the head's) at the same place with the same p and the
    same 1/(1-p) scale gives the same loss and gradients. RoBERTa's multiple-choice head drops with
    hidden_dropout_prob, every other head with classifier_dropout (here 0.3, not 0.1)."""
    config, (model,) = _models(family, kind, 1, attn=attn)
    ids, types, mask, labels = fused_inputs(family, kind, 1)
    fused = _fused(config, kind, [model])
    torch.manual_seed(11)
    total, _ = fused.loss(ids, types, mask, labels, torch.ones(labels.shape), None)
    total.backward()
    torch.manual_seed(11)
    alone = _alone_loss(model, ids[0], None if types is None else types[0], mask[0], labels[0])
    alone.backward()
    assert torch.allclose(total, alone, atol=ATOL)
    _assert_same_gradients(fused, 0, model)
    torch.manual_seed(12)  # the masks matter: other draws, another loss
    assert abs(_alone_loss(model, ids[0], None if types is None else types[0], mask[0], labels[0]) - alone) > 10 * ATOL


class Masks:
    """torch.nn.functional.dropout drawing explicit inverted-dropout masks: recorded while ``member`` is
    None, then replayed as that member's slice: the seam that forces the same masks on both sides."""

    def __init__(self):
        self.drawn: list[tuple[float, torch.Tensor]] = []
        self.member: int | None = None
        self.at = 0

    def __call__(self, x, p=0.5, training=True, inplace=False):
        if not training or not p:
            return x
        if self.member is None:
            keep = torch.rand_like(x) >= p
            self.drawn.append((p, keep))
        else:
            p_drawn, keep = self.drawn[self.at]
            assert p == p_drawn, f"dropout {self.at}: p {p} alone, {p_drawn} fused"
            keep = keep[self.member].reshape(x.shape)
            self.at += 1
        return x * keep / (1 - p)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_each_member_equals_its_model_alone_under_its_slice_of_the_arrays_masks(family, kind, monkeypatch):
    """K=3: the hidden-state and head masks of the array, recorded, then member i's slice forced on the
    model alone: the same loss and gradients, and the same number of dropouts in the same order. (Attention
    dropout is SDPA's own draw, off here; the array-of-one test covers it.)"""
    k = 3
    config, models = _models(family, kind, k, p_attn=0.0)
    ids, types, mask, labels = fused_inputs(family, kind, k)
    fused = _fused(config, kind, models)
    masks = Masks()
    monkeypatch.setattr(torch.nn.functional, "dropout", masks)
    total, each = fused.loss(ids, types, mask, labels, torch.ones(labels.shape), None)
    total.backward()
    head = 2 if family == "roberta" and kind == "classification" else 1
    assert len(masks.drawn) == 1 + 2 * config.num_hidden_layers + head
    for i, model in enumerate(models):
        masks.member, masks.at = i, 0
        alone = _alone_loss(model, ids[i], None if types is None else types[i], mask[i], labels[i])
        alone.backward()
        assert masks.at == len(masks.drawn), f"member {i}: {masks.at} dropouts alone, {len(masks.drawn)} fused"
        assert torch.allclose(each[i], alone, atol=ATOL)
        _assert_same_gradients(fused, i, model)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_evaluation_runs_without_dropout_and_training_resumes_with_it(family, kind):
    config, models = _models(family, kind, 2)
    ids, types, mask, _ = fused_inputs(family, kind, 2)
    fused = _fused(config, kind, models)
    torch.manual_seed(1)
    first = fused.logits(ids, types, mask, None)
    torch.manual_seed(2)
    assert torch.equal(first, fused.logits(ids, types, mask, None))  # no masks drawn
    for i, model in enumerate(models):
        model.eval()
        kw = {
            "input_ids": ids[i],
            "attention_mask": mask[i],
            **({"token_type_ids": types[i]} if types is not None else {}),
        }
        with torch.no_grad():
            assert torch.allclose(first[i], model(**kw).logits, atol=ATOL)
    assert fused.training
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.allclose(fused.forward(ids, types, mask), first, atol=1e-3)  # training drops again


@pytest.fixture(scope="module")
def dropout_workload(tmp_path_factory):
    """The tiny RoBERTa and pair task of ``tiny_workload``, with RoBERTa's dropout 0.1."""
    from stilts_tui.train import workload

    work = tmp_path_factory.mktemp("tiny_dropout")
    model = workload.build_model(work / "model", "tiny", dropout=0.1)
    train_file, dev_file = workload.build_data(work / "data", 37, 16, max_len=40, median=20)
    return model, workload.task_spec(train_file, dev_file)


def _worker():
    from stilts_tui.train.worker import Settings, Worker

    return Worker(Settings(device=CPU, compile="off", echo=False))


def test_a_fused_array_of_one_trains_as_the_run_alone_with_dropout_on(tmp_path, dropout_workload):
    """Through the real loop: the array's stream is seeded with its first member's seed, as a run alone
    seeds its own, so an array of one draws the run's own masks: the same losses and score."""
    from stilts_tui.train.loop import train_group, train_run

    alone = write_tiny_run(tmp_path / "alone", "a0000000000a", dropout_workload, seed=3)
    fused = write_tiny_run(tmp_path / "fused", "a0000000000a", dropout_workload, seed=3)
    worker = _worker()
    assert train_run(worker, alone)["status"] == "done"
    result = train_group(worker, [fused], fuse=True)[0]
    assert result["status"] == "done" and result["setup"]["fused"] == 1
    a, f = step_losses(alone), step_losses(fused)
    assert [s for s, _ in a] == [s for s, _ in f]
    assert np.allclose([x for _, x in a], [x for _, x in f], atol=1e-4)


@pytest.mark.parametrize(
    ("pad", "batching"), [("longest", "random"), ("buckets", "random"), ("max", "random"), ("buckets", "grouped")]
)
@pytest.mark.slow
def test_each_member_of_a_fused_array_trains_as_its_run_alone_with_dropout_on(
    tmp_path, dropout_workload, pad, batching
):
    """Through the real loop, eager: each member draws its masks from its own run's stream (hidden,
    attention and head dropout), so an array of 3 (seeds and learning rates differ) gives every run
    the losses, metrics and score of the run trained alone, dropout and all, however its batches are
    padded: the array pads every member to the longest of them, and each member's masks cover only
    the positions its batch has alone."""
    from stilts_tui.train.loop import train_group, train_run

    runs = [(3, 1e-3), (4, 2e-3), (5, 5e-4)]
    alone = [
        write_tiny_run(
            tmp_path / "alone", f"a{i}000000000a", dropout_workload, seed=s, lr=lr, pad=pad, batching=batching
        )
        for i, (s, lr) in enumerate(runs)
    ]
    fused = [
        write_tiny_run(
            tmp_path / "fused", f"a{i}000000000a", dropout_workload, seed=s, lr=lr, pad=pad, batching=batching
        )
        for i, (s, lr) in enumerate(runs)
    ]
    worker = _worker()
    for d in alone:
        assert train_run(worker, d)["status"] == "done"
    results = train_group(worker, fused, fuse=True)
    assert [r["status"] for r in results] == ["done"] * 3 and results[0]["setup"]["fused"] == 3
    assert results[0]["setup"]["dropout_streams"] == "member"
    for a, f, r in zip(alone, fused, results, strict=True):
        la, lf = step_losses(a), step_losses(f)
        assert [s for s, _ in la] == [s for s, _ in lf]
        assert np.allclose([x for _, x in la], [x for _, x in lf], atol=1e-4), (la, lf)
        assert r["metrics"] == result_of(a)["metrics"]
    if pad == "buckets" and batching == "grouped":  # one stream for the array (what a compiled one draws)
        from stilts_tui.train.worker import Settings, Worker

        one = [
            write_tiny_run(
                tmp_path / "one", f"a{i}000000000a", dropout_workload, seed=s, lr=lr, pad=pad, batching=batching
            )
            for i, (s, lr) in enumerate(runs)
        ]
        worker = Worker(Settings(device=CPU, compile="off", echo=False, dropout_streams="one"))
        assert train_group(worker, one, fuse=True)[0]["setup"]["dropout_streams"] == "one"
        assert not np.allclose([x for _, x in step_losses(one[1])], [x for _, x in step_losses(alone[1])], atol=1e-4), (
            "one stream for the array should draw other masks than the run alone"
        )


SHIFT_MEMBERS = 256


def training_loss_samples(members: int = SHIFT_MEMBERS) -> tuple[np.ndarray, np.ndarray]:
    """Training-mode losses of one tiny RoBERTa (dropout 0.1) on one batch: ``members`` members of an
    array holding the same weights (one draw each from the array's stream) against the model alone on
    as many copies of the batch in one pass (each copy its own draw). Only the masks vary, so the two
    samples have one distribution unless the fused dropout is shifted. (The classifier's output layer is
    scaled up so that the masks move the loss more.)"""
    config, (model,) = _models("roberta", "classification", 1, p_attn=P_HIDDEN)
    config.classifier_dropout = None
    model.classifier.dropout.p = P_HIDDEN
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(30)
    ids, _, mask, labels = fused_inputs("roberta", "classification", 1, b=8)
    fused = _fused(config, "classification", [model] * members)
    with torch.no_grad():
        torch.manual_seed(5)
        _, each = fused.loss(
            ids.expand(members, -1, -1),
            None,
            mask.expand(members, -1, -1),
            labels.expand(members, -1),
            torch.ones(members, labels.shape[1]),
            None,
        )
        # the model alone on ``members`` copies of the batch in one pass: each copy its own masks
        logits = model(input_ids=ids[0].repeat(members, 1), attention_mask=mask[0].repeat(members, 1)).logits
        alone = F.cross_entropy(logits, labels[0].repeat(members), reduction="none").view(members, -1).mean(1)
    return each.numpy(), alone.numpy()


def test_fused_training_losses_are_distributed_as_those_of_the_model_alone():
    """A systematic shift (dropout with a wrong p or at a wrong place, or missing) moves the mean or
    the spread of the losses over masks. Measured here (docs/fused.md): as it is, Welch's t 0.3 and
    Brown-Forsythe p 0.76; with p doubled in ``FusedEncoder._drop``, t 2.2 and spread p 6e-10; with
    ``_drop`` off, t -1.8 and spread p < 1e-300. Bounds: |t| < 4 and spread p > 1e-3 (deterministic: the
    seeds are fixed, so the margin is against other torch builds' draws, not flakiness)."""
    from scipy import stats

    fused, alone = training_loss_samples()
    assert alone.std() > 1e-3, "the masks should move the loss (dropout on)"
    t = stats.ttest_ind(fused, alone, equal_var=False).statistic
    spread = stats.levene(fused, alone, center="median").pvalue
    assert abs(t) < 4, f"mean training loss fused {fused.mean():.4f}, alone {alone.mean():.4f} (Welch t {t:.1f})"
    assert spread > 1e-3, f"loss sd fused {fused.std():.4f}, alone {alone.std():.4f} (Brown-Forsythe p {spread:.2g})"
