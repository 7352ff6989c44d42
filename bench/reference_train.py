"""A reference-style run, as the study's scripts did it: fp32, eager attention, every input padded
to max_len, one run per process. Reads a stilts run folder's spec.json so both train the same run.

    python bench/reference_train.py RUN_DIR     -> RUN_DIR/reference.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

t_start = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from stilts_tui.tasks import load_examples  # noqa: E402


def main(run_dir: Path) -> None:
    # one straight function on purpose (64 lines): it stands for the reference's run.py loop, read top to
    # bottom, and splitting it would hide what the reference did in what order
    spec = json.loads((run_dir / "spec.json").read_text())
    p, seed = spec["params"], spec["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(spec["model"]["path"])
    labels = spec["task"]["labels"]

    def encode(split):
        ex = load_examples(spec["task"], split)
        enc = tok(
            [e["a"] for e in ex],
            [e["b"] for e in ex],
            padding="max_length",
            truncation=True,
            max_length=p["max_len"],
            return_tensors="pt",
        )
        y = torch.tensor([labels.index(str(e["label"])) if isinstance(e["label"], str) else e["label"] for e in ex])
        return enc["input_ids"], enc["attention_mask"], y

    tr_ids, tr_mask, tr_y = encode("train")
    dv_ids, dv_mask, dv_y = encode("dev")
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"]["path"], num_labels=len(labels), attn_implementation="eager"
    ).to(device)
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {
            "params": [q for n, q in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": p["weight_decay"],
        },
        {"params": [q for n, q in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=p["lr"], betas=(0.9, 0.999), eps=1e-8)
    bs, epochs = p["batch_size"], p["epochs"]
    total = math.ceil(len(tr_y) / bs) * epochs
    warm = int(p["warmup"] * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    model.train()
    step, times, losses = 0, [], []
    t_train = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(tr_y))
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            t = time.time()
            out = model(
                input_ids=tr_ids[idx].to(device), attention_mask=tr_mask[idx].to(device), labels=tr_y[idx].to(device)
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(out.loss.item())  # the reference logged every step
            times.append((time.time() - t, len(idx)))
            step += 1
    train_seconds = time.time() - t_train
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dv_y), 64):
            ids, mask = dv_ids[i : i + 64].to(device), dv_mask[i : i + 64].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            correct += (logits.argmax(-1).cpu() == dv_y[i : i + 64]).sum().item()
    steady = times[len(times) // 5 :]  # skip warm-up steps
    result = {
        "samples_per_s": sum(n for _, n in steady) / sum(t for t, _ in steady),
        "final_loss": float(np.mean(losses[-20:])),
        "dev_acc": correct / len(dv_y),
        "train_seconds": train_seconds,
        "process_seconds": time.time() - t_start,
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    (run_dir / "reference.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
