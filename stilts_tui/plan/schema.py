"""What a plan file may say: every table's keys, each with its check and what is expected, the settings
that have defaults, and the limits on a plan's size. Data only (the checks are plan/values.py's)."""

from __future__ import annotations

from stilts_tui import contract, tasks
from stilts_tui.plan.values import Check, boolean, bounded, int_list, one_of, str_list, table, text

STAGES = contract.STAGES
BASELINE_NAME = "none"  # the starting point of baseline runs: no intermediate stage may take it
MAX_DEPTH = 16  # tables and lists inside each other; a plan needs 3
MAX_PLAN_BYTES = 4 * 2**20
MAX_RUNS = 100_000  # a plan expanding to more is refused unless the user raises the limit (--max-runs)
MAX_RUNS_ENV = contract.Env.MAX_RUNS

HYPER: dict[str, Check] = {
    "lr": bounded("lr"),
    "batch_size": bounded("batch_size"),
    "warmup": bounded("warmup"),
    "epochs": bounded("epochs"),
    "max_len": bounded("max_len"),
    "weight_decay": bounded("weight_decay"),
    "grad_accum": bounded("grad_accum"),
    "precision": one_of("auto", "fp32", "bf16", "fp16"),
    "batching": one_of("random", "grouped"),
    "pad": one_of("auto", "max", "buckets", "longest"),
    "clip": one_of("step", "micro_batch"),
    "compile": one_of("auto", "off", "inductor", "cudagraphs"),
    "fuse": boolean(),
    "transfer": one_of("all", "encoder", "merge", "adapter"),
    "method": one_of("full", "lora"),
    "lora": table("a table of LoRA settings (r, alpha, dropout, targets)"),
    "eval_batch_size": bounded("eval_batch_size"),
    "max_train_samples": bounded("max_train_samples"),
    "max_dev_samples": bounded("max_dev_samples"),
    "stop_degenerate": table("a table { after_epochs = 1, patience = 1 } (stop runs stuck at the majority class)"),
}
# stop_degenerate's keys; the run contract holds what a table leaves out
STOP_KEYS: dict[str, Check] = {k: bounded(f"stop_degenerate.{k}") for k in ("after_epochs", "patience")}
DEFAULTS = contract.TRAINING_DEFAULTS  # the reference's settings; the run contract holds them
# LoRA (method = "lora"): the LoRA paper's RoBERTa GLUE setting; kept out of a run's params (and id) unless
# the run is a LoRA run, so plans without the keys keep their run ids
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
LORA_KEYS: dict[str, Check] = {
    "r": bounded("lora.r"),
    "alpha": bounded("lora.alpha"),
    "dropout": bounded("lora.dropout"),
    "targets": (
        (lambda v: isinstance(v, list) and bool(v) and all(t in LORA_TARGETS for t in v) and len(set(v)) == len(v)),
        "a non-empty list of distinct layers out of " + ", ".join(LORA_TARGETS),
    ),
}
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["query", "value"]}
DATA_KEYS: dict[str, Check] = {"task": text(), "data_dir": text(), "train_file": text(), "dev_file": text()}
STAGE_KEYS: dict[str, dict[str, Check]] = {
    "intermediate": {**DATA_KEYS, **HYPER, "seeds": int_list(), "seed": bounded("seed"), "keep_checkpoint": boolean()},
    "target": {
        **DATA_KEYS,
        **HYPER,
        "seeds": int_list(),
        "grid": table("a table"),
        "keep_checkpoint": boolean(),
        "rank": table("a table { top = K, examples = N } (rank the starting points, train the top K and none)"),
    },
}
# where a run's curves go (Hugging Face's report_to): [defaults] or any trained stage; not a hyperparameter,
# never in a run's params or id (plan/expand.py carries it into spec.json only)
TRACKING_KEYS: dict[str, Check] = {
    contract.REPORT_TO_KEY: (
        lambda v: isinstance(v, list) and all(t in contract.REPORT_TO for t in v) and len(set(v)) == len(v),
        "a list of distinct trackers out of " + ", ".join(f'"{t}"' for t in contract.REPORT_TO) + " (or [])",
    )
}
for _keys in STAGE_KEYS.values():
    _keys.update(TRACKING_KEYS)
# [target.X] rank = { top, examples }: top is required; the run contract holds what the table leaves out
RANK_KEYS: dict[str, Check] = {k: bounded(f"rank.{k}") for k in ("top", "examples")}
SYNTH_KEYS: dict[str, Check] = {
    "corpus": one_of("squad"),
    "corpus_file": text(),
    "generator": text(),
    "n": bounded("synth.n"),
    "fakes": bounded("synth.fakes"),
    "top_p": bounded("synth.top_p"),
    "top_k": bounded("synth.top_k"),
    "temperature": bounded("synth.temperature"),
    "seed": bounded("synth.seed"),
    "dev": bounded("synth.dev"),
    "batch_size": bounded("synth.batch_size"),
}
CUSTOM_KEYS: dict[str, Check] = {
    "format": one_of("jsonl", "csv", "tsv"),
    "train": text(),
    "dev": text(),
    "kind": one_of(*tasks.KINDS),
    "text_fields": str_list(),
    "label_field": text(),
    "choices_field": text(),
    "choice_fields": str_list(),
    "labels": str_list(),
    "metric": one_of(*tasks.METRICS),
}
TOP_KEYS: dict[str, Check] = {
    "name": text(),
    "model": text(),
    "description": (lambda v: isinstance(v, str), "a string"),
    "baseline": boolean(),
    "target_seeds": int_list(),
    "defaults": table("a table"),
    "synth": table("a table of [synth.NAME] stages"),
    "intermediate": table("a table of [intermediate.NAME] stages"),
    "target": table("a table of [target.NAME] stages"),
    "tasks": table("a table of [tasks.NAME] custom tasks"),
    "slurm": table("a table of Slurm settings"),  # its keys: plan/slurm.py's SLURM_KEYS
    "on_finish": str_list(),  # a command run when the plan finishes or a run fails (queue/notify.py)
}
