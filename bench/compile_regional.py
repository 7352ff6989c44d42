"""Compile once (issue 27, item 1): how long inductor takes to compile a RoBERTa-base-shaped model's
training step, whole against regional, cold and warm, alone and as a fused array; and whether the
compiled losses equal the eager ones.

A random-init RoBERTa of the given shape (RobertaConfig, no download, dropout off so eager and compiled
losses compare number for number), trained for a few SGD steps on fixed random batches, eagerly and
then compiled, through the trainer's own code: ``Model.loss_fn`` for a run alone, ``engines.array.compile_array``
over a ``FusedEncoder`` of K members for an array. Each measurement is its own process: "cold" starts
with an empty inductor cache directory, "warm" is a second process on the same directory (what every
later run and worker of the same shapes gets: the trainer keeps the cache under the runs-dir).
``compile_s`` is the first compiled step's excess over a steady compiled step (as result.json's
``timings.compile_s``). Inductor's check of the CPU's vector instructions comes before it, as in the
trainer (stilts_tui/train/isa.py): paid once per cache directory whatever is compiled, it is printed
apart (``isa_check_s``, as result.json's ``timings.isa_check_s``) and counted in a second ratio.
Compilation has dynamic sizes (as the trainer's), so its cost does not depend on the batch and length
the steps run at; they only make the steps slow.

Printed: one line a measurement, then the ratios (regional cold / whole cold) and the warm seconds
against the goals (regional cold at most a third of whole cold; warm at most 5 s).

    python bench/compile_regional.py [--layers 12] [--batch 16] [--length 128] [--k 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO, GOAL_WARM_S = 1 / 3, 5.0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=50265)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="members of the fused array")
    ap.add_argument("--steps", type=int, default=3, help="SGD steps, eager and compiled (losses compared)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated subset: alone-whole,alone-regional,...")
    ap.add_argument("--out", type=Path, default=None, help="also write the printed lines here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "alone-whole" etc.: one measurement
    return ap.parse_args(argv)


def config(a: argparse.Namespace):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        intermediate_size=a.intermediate,
        max_position_embeddings=514,
        pad_token_id=1,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )


def batches(a: argparse.Namespace, k: int):
    """``steps`` fixed batches [K, B, T] (K = 1 alone), padded at the end of random lengths."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(a.steps):
        ids = torch.randint(3, a.vocab, (k, a.batch, a.length), generator=g)
        lengths = torch.randint(a.length // 4, a.length + 1, (k, a.batch, 1), generator=g)
        mask = (torch.arange(a.length) < lengths).long()
        ids = ids * mask + (1 - mask)  # pad id 1
        ids[..., 0] = 0
        labels = torch.randint(0, 2, (k, a.batch), generator=g)
        out.append((ids, None, mask, labels, torch.ones(k, a.batch)))
    return out


def steps(loss_fn, update, data: list) -> tuple[list[float], list[float]]:
    """Training steps: each step's loss and seconds (forward, backward and ``update``)."""
    losses, seconds = [], []
    for batch in data:
        t0 = time.perf_counter()
        loss = loss_fn(*batch, None)
        total = loss[0] if isinstance(loss, tuple) else loss
        total.backward()
        update()
        seconds.append(time.perf_counter() - t0)
        losses.append(float(total.detach()))
    return losses, seconds


LR = 1e-4


def alone(a: argparse.Namespace, scope: str) -> dict:
    import torch
    from transformers import RobertaForSequenceClassification

    from stilts_tui.train.step import Setup
    from stilts_tui.train.worker import Model

    torch.manual_seed(0)
    module = RobertaForSequenceClassification._from_config(config(a), attn_implementation="sdpa").float()
    start = {n: t.detach().clone() for n, t in module.state_dict().items()}
    model = Model(module, "classification")
    data = [tuple(None if x is None else x[0] for x in b) for b in batches(a, 1)]
    params = list(module.parameters())

    @torch.no_grad()
    def sgd() -> None:
        for p in params:
            p.sub_(LR * p.grad)
            p.grad = None

    eager, _ = steps(model._loss, sgd, data)
    module.load_state_dict(start)
    setup = Setup("fp32", False, "random", "max", "step", "inductor", False, compile_scope=scope)
    compiled, seconds = steps(model.loss_fn(setup), sgd, data)
    return {"eager": eager, "compiled": compiled, "seconds": seconds}


def array(a: argparse.Namespace, scope: str) -> dict:
    import torch
    from transformers import RobertaForSequenceClassification

    from stilts_tui.train.engines.array import compile_array
    from stilts_tui.train.engines.array_model import FusedEncoder

    cfg = config(a)
    states = []
    for seed in range(a.k):  # each member its own random init
        torch.manual_seed(seed)
        m = RobertaForSequenceClassification._from_config(cfg, attn_implementation="sdpa")
        states.append({n: t.detach().clone() for n, t in m.named_parameters()})
        del m
    fused = FusedEncoder(cfg, "classification", "roberta", states, torch.device("cpu"))
    states.clear()
    w0 = fused.W.clone()
    data = batches(a, a.k)

    @torch.no_grad()
    def sgd() -> None:  # the members' gradients are the rows of G
        fused.W.sub_(LR * fused.G)
        fused.G.zero_()

    eager, _ = steps(fused.loss, sgd, data)
    with torch.no_grad():
        fused.W.copy_(w0)
    compiled, seconds = steps(compile_array(fused, scope), sgd, data)
    return {"eager": eager, "compiled": compiled, "seconds": seconds}


def child(a: argparse.Namespace) -> None:
    import torch
    from torch._dynamo.utils import counters

    from stilts_tui.train import isa

    torch.set_num_threads(a.threads)
    what, scope = a.child.split("-")
    t0 = time.perf_counter()
    sets, how = isa.settle()  # as the trainer does before a process's first CPU compile
    isa_s = time.perf_counter() - t0
    out = array(a, scope) if what == "array" else alone(a, scope)
    s = out["seconds"]
    steady = min(s[1:]) if len(s) > 1 else 0.0
    print(
        json.dumps(
            {
                "compile_s": round(s[0] - steady, 2),
                "isa_check_s": round(isa_s, 2),
                "isa": f"{','.join(sets or [])} ({how})",
                "first_step_s": round(s[0], 2),
                "steady_step_s": round(steady, 3),
                "max_abs_diff": max(abs(x - y) for x, y in zip(out["eager"], out["compiled"], strict=True)),
                "losses": out["compiled"],
                "graphs": int(counters["stats"]["unique_graphs"]),
            }
        )
    )


def measure(a: argparse.Namespace, name: str, cache: Path) -> dict:
    """One measurement in a fresh process on the inductor cache ``cache``."""
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "OMP_NUM_THREADS": str(a.threads),
    }
    shape = ("layers", "hidden", "heads", "intermediate", "vocab", "batch", "length", "k", "steps", "threads")
    argv = [__file__, *[x for key in shape for x in (f"--{key}", str(getattr(a, key)))], "--child", name]
    t0 = time.time()
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name}: exit {out.returncode}\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.time() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.child:
        child(a)
        return
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(
        f"RoBERTa-shaped random init: {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}; batch {a.batch} x "
        f"length {a.length}, {a.steps} SGD steps, fp32, CPU {a.threads} threads, torch {torch_version()}"
    )
    names = [f"{w}-{s}" for w in ("alone", "array") for s in ("whole", "regional")]
    names = [n for n in names if not a.only or n in a.only.split(",")]
    got: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="compile-regional-") as tmp:
        for name in names:
            cache = Path(tmp) / name
            for temp in ("cold", "warm"):
                r = measure(a, name, cache)
                got[f"{name}-{temp}"] = r
                what = name.replace("array", f"array of {a.k}")
                say(
                    f"{what} {temp}: compile {r['compile_s']:.1f} s (first step {r['first_step_s']:.1f} s, steady "
                    f"{r['steady_step_s']:.2f} s; process {r['process_s']:.0f} s), {r['graphs']} graph(s) compiled, "
                    f"max |loss - eager| {r['max_abs_diff']:.2e}; inductor's CPU check before it "
                    f"{r['isa_check_s']:.1f} s ({r['isa'].split('(')[-1].rstrip(')')})"
                )
    for w in ("alone", "array"):
        cw, cr = got.get(f"{w}-whole-cold"), got.get(f"{w}-regional-cold")
        if cw and cr:
            ratio = cr["compile_s"] / max(cw["compile_s"], 1e-9)
            said = cr["compile_s"] + cr["isa_check_s"], cw["compile_s"] + cw["isa_check_s"]
            say(
                f"{w}: regional cold / whole cold = {cr['compile_s']:.1f} / {cw['compile_s']:.1f} s = {ratio:.2f} "
                f"(goal <= {GOAL_RATIO:.2f}: {'met' if ratio <= GOAL_RATIO else 'NOT met'}); with inductor's CPU "
                f"check of a fresh cache counted in: {said[0]:.1f} / {said[1]:.1f} s = {said[0] / said[1]:.2f}"
            )
        for s in ("regional", "whole"):
            r = got.get(f"{w}-{s}-warm")
            if r:
                total = r["compile_s"] + r["isa_check_s"]
                ok = "met" if total <= GOAL_WARM_S else "NOT met"
                say(
                    f"{w} {s} warm: {r['compile_s']:.1f} s + the CPU check's record {r['isa_check_s']:.1f} s = "
                    f"{total:.1f} s (goal <= {GOAL_WARM_S:.0f} s: {ok})"
                )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(lines) + "\n")


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
