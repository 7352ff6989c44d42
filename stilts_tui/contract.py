"""The run contract: what a run folder holds, which statuses a run passes through, and the training
defaults a plan resolves. Every layer reads it from here; it imports nothing of the project (data
only: no torch, no textual), so the queue, the trainer, the app and the tests agree by construction.

Changing a name here changes it everywhere. Changing a training default changes the run ids of the
plans that rely on it (a run id hashes its resolved params), so old runs stay under their old ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

# ---- run-folder file names (<runs-dir>/<run_id>/...) -------------------------------------------

SPEC_FILE = "spec.json"  # everything the trainer needs; written by `queue add` before the ledger records the run
RESULT_FILE = "result.json"  # written last, atomically, by the trainer: the attempt's outcome
TRAIN_LOG = "train.log"  # for people, appended live (the app tails it)
EVENTS_FILE = "events.jsonl"  # one JSON object a line: start, begin, step, eval, end
PRUNED_FILE = "pruned.json"  # written by the daemon into a run its target's rank run left out: the ranking
CANCEL_FILE = "cancel.request"  # the daemon writes it into a run that waits in a worker; the worker skips it
CHECKPOINT_DIR = "checkpoint"  # weights for the run's children (safetensors, config, tokenizer)
SYNTH_DATA_DIR = "data"  # a synth run's output task files
TENSORBOARD_DIR = "tensorboard"  # report_to = ["tensorboard"]: the run's TensorBoard event files
WANDB_DIR = "wandb"  # report_to = ["wandb"]: the run's offline W&B files
# the runs-dir's own files and folders
MLFLOW_DIR = ".mlflow"  # report_to = ["mlflow"]: MLflow's file store of every run of the runs-dir
LEDGER_FILE = "ledger.json"
WORKERS_DIR = ".workers"  # one log per worker process that trains several runs
DAEMON_FILE = "daemon.json"  # the running daemon: pid, start time, settings
DAEMON_LOCK = "daemon.lock"  # held by the daemon while it serves the runs-dir
DAEMON_LOG = "daemon.log"  # the daemon's own log (and what a detached start printed)
DAEMON_TICKS_FILE = "daemon.ticks"  # the number of ticks the running daemon has finished (waiters poll it)
PAUSED_FILE = "queue.paused"  # kept by the queue's owner while it is paused: a worker begins no further run

_ATTEMPT_RE = re.compile(r"result\.attempt(\d+)\.json")


def attempt_result_name(attempt: int) -> str:
    """The name a finished attempt's ``result.json`` is kept under when the run is tried again."""
    return f"result.attempt{int(attempt)}.json"


def attempt_of(name: str) -> int | None:
    """The attempt number of a kept result's file name (``result.attempt2.json`` -> 2), or None."""
    m = _ATTEMPT_RE.fullmatch(name)
    return int(m.group(1)) if m else None


# ---- statuses --------------------------------------------------------------------------------


class Status(str, Enum):
    """A run's status in the ledger. Members equal their strings (``Status.DONE == "done"``), so rows
    read from JSON compare with them directly."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # a parent failed or was cancelled; unblocked when the parent is retried and succeeds
    DEGENERATE = "degenerate"  # stopped early: its dev score stayed at or below the majority class (stop_degenerate)
    PRUNED = "pruned"  # its target's rank run left its starting point out of the top K (rank = { top = K })

    def __str__(self) -> str:  # f-strings and joins show "done", not "Status.DONE"
        return self.value


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)  # every status, in the ledger's order
# never changes again unless retried
FINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED, Status.DEGENERATE, Status.PRUNED})
SETTLED = FINAL | {Status.BLOCKED}  # nothing can change without a retry: a plan (or rehearsal) is over
ACTIVE = frozenset({Status.QUEUED, Status.RUNNING})  # the queue still has work for it
# a parent in one blocks its queued children (a degenerate intermediate keeps no checkpoint)
BLOCKING = frozenset({Status.FAILED, Status.CANCELLED, Status.BLOCKED, Status.DEGENERATE})
UNBLOCKING = ACTIVE | {Status.DONE}  # a parent in one (retried, running, done) unblocks its blocked children
CANCELLABLE = ACTIVE | {Status.BLOCKED}  # what `queue cancel` stops
# what `queue retry` queues again (a degenerate run too: trained to its end, as the plan without the stop would;
# a pruned run only when named by id or with --pruned: --failed never brings one back)
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED, Status.BLOCKED, Status.DEGENERATE, Status.PRUNED})


class ResultStatus(str, Enum):
    """``result.json``'s status: how one attempt ended (``oom`` is requeued to run alone)."""

    DONE = "done"
    FAILED = "failed"
    OOM = "oom"
    DEGENERATE = "degenerate"  # stopped early by stop_degenerate (score, epoch and rule in result.json)

    def __str__(self) -> str:
        return self.value


RESULT_STATUSES: tuple[str, ...] = tuple(s.value for s in ResultStatus)


def ledger_status(result_status: str) -> Status:
    """The ledger's status for a reaped attempt's result status (``oom`` not requeued: failed)."""
    if result_status == ResultStatus.DONE:
        return Status.DONE
    if result_status == ResultStatus.DEGENERATE:
        return Status.DEGENERATE
    return Status.FAILED


# ---- training defaults -------------------------------------------------------------------------

# The reference's settings (fp32, uniformly random batches, one clip a step); anything faster is an
# opt-in named in the plan (docs/plans.md). A plan's expansion resolves these into every run's params
# (and so into its id): the trainer, the queue and the cost estimate read params, never a fallback.
TRAINING_DEFAULTS: dict[str, object] = {
    "lr": 1e-5,
    "batch_size": 8,
    "warmup": 0.1,
    "epochs": 3,
    "max_len": 128,
    "weight_decay": 0.0,
    "grad_accum": 1,
    "precision": "fp32",
    "batching": "random",
    "pad": "auto",
    "clip": "step",
    "fuse": False,
    "transfer": "all",
}

# ---- what result.json holds --------------------------------------------------------------------


@dataclass
class Setup:
    """How a run trained: the numerics and batching that decide its scores, and the speed settings that
    should not (compile, padding). Written to result.json as ``setup``."""

    precision: str  # fp32 | bf16 | fp16 (resolved)
    tf32: bool  # TF32 matmuls (CUDA, fp32): what torch 1.7 on Ampere did for the reference
    batching: str  # random | grouped
    pad: str  # max | buckets | longest
    clip: str  # step | micro_batch
    compile: str  # off | inductor | cudagraphs (what was asked; the result says what ran)
    cuda_graphs: bool = False
    # compiled: regional (each encoder layer, one graph every layer reuses; embeddings, head and loss eager)
    # | whole (the loss); what a result older than the field compiled: whole
    compile_scope: str = "whole"
    fused: int = 0  # runs in the array; 0 alone
    dropout_streams: str = "own"  # own (a run alone) | member (each member of an array its run's own) | one
    method: str = "full"  # full | lora
    lora: dict | None = None  # a LoRA run's r, alpha, dropout, targets
    transfer: str | None = None  # a LoRA run's transfer (merge/all, encoder, adapter)

    def record(self) -> dict:
        out = asdict(self)
        if self.method == "full":  # a full fine-tune's record is what it was before LoRA runs existed, plus method
            del out["lora"], out["transfer"]
        return out

    def line(self) -> str:
        lora = (
            (
                f", LoRA r {self.lora['r']} alpha {self.lora['alpha']:g} on {'/'.join(self.lora['targets'])} "
                f"(transfer {self.transfer})"
            )
            if self.method == "lora" and self.lora
            else ""
        )
        return (
            f"{self.precision}{' (tf32 matmuls)' if self.tf32 else ''}, {self.batching} batches, pad {self.pad}, "
            f"clip per {self.clip.replace('_', '-')}, compile {self.compile}"
            + (f" ({self.compile_scope})" if self.compile != "off" else "")
            + lora
        )


@dataclass
class Result:
    """A run attempt's ``result.json``: written last, atomically, by the trainer (or the synthesis).
    Fields not set stay null; :meth:`read` takes any older or newer file (unknown keys kept in ``extra``)."""

    status: str = ResultStatus.FAILED.value  # failed until it is done
    metrics: dict = field(default_factory=dict)  # the last epoch's dev metrics
    primary_metric: str | None = None
    score: float | None = None  # the last epoch's primary metric (the reference reports the last epoch)
    best_epoch: int | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    peak_gpu_mem_gb: float | None = None
    error: str | None = None  # one line
    extra: dict = field(default_factory=dict)  # best_score, epoch_metrics, samples_per_s, steps, setup, ...

    def record(self) -> dict:
        """The JSON object: the fields, then ``extra``'s keys beside them."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    @classmethod
    def read(cls, data: dict) -> Result:
        """A parsed result.json (checked elsewhere: see queue/checks.py) as a Result."""
        named = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in named}, extra={k: v for k, v in data.items() if k not in named}
        )

    @property
    def setup(self) -> dict:
        """``setup`` as recorded (an empty dict for results older than it)."""
        value = self.extra.get("setup")
        return value if isinstance(value, dict) else {}


# ---- synthesis defaults ------------------------------------------------------------------------

# The synthesis settings: the one table of their defaults. A plan's ``[synth.NAME]`` stage, ``stilts-tui
# synth`` and the synthesis itself (synth/run.py) read them from here; tests/test_defaults.py fails when one
# says otherwise. A stage's resolved settings are hashed into its run id: changing a default here changes
# the id of every synth run that relied on it (re-adding an old plan would then queue it again).
# dev: pairs taken from beyond the first n of the seeded shuffle (the reference never evaluated SynGPT2, but
# the trainer evaluates every epoch; the first n stay exactly the reference's).
SYNTH_DEFAULTS: dict[str, object] = {
    "corpus": "squad",
    "generator": "gpt2-medium",
    "n": 30000,
    "fakes": 3,
    "top_p": 0.9,
    "top_k": 0,
    "temperature": 1.0,
    "seed": 42,
    "dev": 1000,
    "batch_size": 64,
}
# `stilts-tui synth` reproduces the reference file (no dev split unless --dev asks for one) and makes the
# user name a corpus (--corpus or --corpus-file); the rest are the stage's defaults.
SYNTH_COMMAND_DEFAULTS: dict[str, object] = {**SYNTH_DEFAULTS, "dev": 0, "corpus": None}


# ---- events.jsonl: what a run writes, one JSON object a line -----------------------------------


class Event(str, Enum):
    """The ``event`` names of ``events.jsonl`` (every line also holds ``t``, unix time). Fields:
    start (``run_id``, ``pid``, ``device``), begin (the first step is next: ``total_steps``...), step (``step``,
    ``total_steps``, ``epoch``, ``loss``, ``lr``, ``samples_per_s``), eval (``epoch``, ``metrics``), transfer
    (``source``, ``loaded``, ``new``), stopped (why a run ended early), end (``status``, ``score``, ``error``),
    cancelled (written by the queue when it carries out a cancel: ``attempt``, null before any began;
    ``step`` and ``total_steps``, where the attempt got to, or null; ``by``, who asked)."""

    START = "start"
    BEGIN = "begin"
    STEP = "step"
    EVAL = "eval"
    TRANSFER = "transfer"
    STOPPED = "stopped"
    END = "end"
    CANCELLED = "cancelled"  # written by the daemon when it carries out a cancel (by whom, at which step)

    def __str__(self) -> str:
        return self.value


# ---- environment variables: every STILTS_* name, in one place -----------------------------------


class Env:
    """Every ``STILTS_*`` environment variable the project reads or sets (docs/cli.md lists them)."""

    RUNS_DIR = "STILTS_RUNS_DIR"  # the runs-dir (else ./runs)
    NO_DAEMON = "STILTS_NO_DAEMON"  # the app starts no daemon
    MAX_RUNS = "STILTS_MAX_RUNS"  # the largest plan accepted
    CONFIRM = "STILTS_CONFIRM"  # 0: the app asks no questions before destructive keys
    KEYMAP = "STILTS_KEYMAP"  # the app's keymap file
    COLUMNS = "STILTS_COLUMNS"  # the app's column settings file
    LEDGER_FSYNC = "STILTS_LEDGER_FSYNC"  # 0: the ledger's commits are not fsynced
    FAKE_GPUS = "STILTS_FAKE_GPUS"  # NxGiB: the queue sees N GPUs that train on the CPU (tests, demo)
    FAKE_GPU_PROCS = "STILTS_FAKE_GPU_PROCS"  # GPU:PID:GiB,...: processes shown on fake GPUs
    DEVICE = "STILTS_DEVICE"  # the trainer's device: auto | cpu | cuda
    COMPILE = "STILTS_COMPILE"  # the trainer's compile mode
    COMPILE_SCOPE = "STILTS_COMPILE_SCOPE"  # regional | whole
    PAD = "STILTS_PAD"  # the trainer's padding
    GROUP = "STILTS_GROUP"  # the trainer's batching groups
    FUSE = "STILTS_FUSE"  # the trainer's fused array size
    THREADS = "STILTS_THREADS"  # intra-op and inter-op threads of the process
    THREADS_WHY = "STILTS_THREADS_WHY"  # one line: how the share was worked out
    ON_FINISH = "STILTS_ON_FINISH"  # the daemon's --on-finish command, a JSON list
    # what an --on-finish command is given
    EVENT = "STILTS_EVENT"
    PLAN = "STILTS_PLAN"
    COUNTS = "STILTS_COUNTS"
    FAILED_RUNS = "STILTS_FAILED_RUNS"
    SCORES = "STILTS_SCORES"
    SCORES_MD = "STILTS_SCORES_MD"
    TOTAL = "STILTS_TOTAL"

    @staticmethod
    def count(status: str) -> str:
        """The variable an --on-finish command reads a status's count from (STILTS_DONE, ...)."""
        return f"STILTS_{str(status).upper()}"


# ---- exit codes ------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILURE = 1  # something failed (one line says what)
EXIT_BAD_INPUT = 2  # bad input: one line naming the file, key and line; nothing stored is changed

# ---- threads: each process's share of the CPU ------------------------------------------------

# The daemon gives every process it starts its share of the cores it may use (their count over the most
# processes it runs at once) through these variables; the trainer sets torch's pools from them and records
# what it used in result.json (``threads``). A trainer started by hand without them keeps torch's defaults.
THREADS_ENV = Env.THREADS
THREADS_WHY_ENV = Env.THREADS_WHY

# ---- cancelling ------------------------------------------------------------------------------

CANCEL_GRACE_S = 10.0  # seconds between SIGTERM and SIGKILL when a cancel names no grace

# params a run may carry beyond the defaults, and what their absence means (they enter a run's params, and
# so its id, only when a plan sets them): compile "auto" (the trainer decides), evaluation batch None
# (max(batch_size, 32)), every train and dev example, no checkpoint kept (intermediates always keep one)
OPTIONAL_PARAMS: dict[str, object] = {
    "compile": "auto",
    "eval_batch_size": None,
    "max_train_samples": None,
    "max_dev_samples": None,
    "keep_checkpoint": False,
    "stop_degenerate": None,  # off: a run trains to its last epoch whatever its dev score
    "method": "full",  # full | lora; a plan that never says lora writes no method (its run ids unchanged)
    "lora": None,  # with method = "lora": {r, alpha, dropout, targets}, resolved by the plan
}

# stop_degenerate = { after_epochs, patience }: what a plan's table leaves out. A run whose dev score is at
# or below the majority-class score at ``patience`` evaluations in a row, from epoch ``after_epochs`` on,
# ends as degenerate.
STOP_DEGENERATE_DEFAULTS: dict[str, int] = {"after_epochs": 1, "patience": 1}


def optional(params: dict, key: str) -> object:
    """An optional param's value: the run's own, else what its absence means (:data:`OPTIONAL_PARAMS`)."""
    return params[key] if params.get(key) is not None else OPTIONAL_PARAMS[key]


def is_lora(params: object) -> bool:
    """Whether a run's params train LoRA adapters (``method = "lora"``) rather than every weight."""
    return isinstance(params, dict) and optional(params, "method") == "lora"


STAGES = ("synth", "intermediate", "rank", "target")  # a plan's stages, in expansion order
TRAINED_STAGES = ("intermediate", "target")  # the stages the trainer runs (synth runs have their own params)
# a plan's report_to (Hugging Face's names): the trackers a trained run logs to (train/trackers.py). Kept out of
# params and so out of run ids: where a run's curves are sent is not what it trains on
REPORT_TO = ("tensorboard", "mlflow", "wandb")
REPORT_TO_KEY = "report_to"  # in a plan's [defaults] or a stage, and in every trained run's spec.json


def missing_params(spec: dict) -> list[str]:
    """The training defaults a trained run's spec lacks (a spec written by hand, or damaged): a plan's
    expansion resolves every one of them, so none may be filled in downstream."""
    if spec.get("stage") not in TRAINED_STAGES:
        return []
    params = spec.get("params")
    if not isinstance(params, dict):
        return list(TRAINING_DEFAULTS)
    return [k for k in TRAINING_DEFAULTS if k not in params]


# ---- the rank stage ([target.X] rank = { top = K, examples = N }) ---------------------------------

RANK_STAGE = "rank"  # one run a target: scores the target's starting points (LogME), then the daemon prunes
RANK_DEFAULTS: dict[str, int] = {"examples": 2000}  # what a plan's rank table leaves out (top is required)
RANK_METHOD = "LogME"
RANK_BATCH = 32  # examples encoded at once by a rank run (its memory estimate reads it as batch_size)
# ledger fields: the runs a run waits for (settled, whatever their end: a rank run waits for the intermediates
# it scores, a target run from an intermediate for its target's rank run), and why a pruned run is pruned
AFTER_FIELD = "after"
PRUNED_WHY_FIELD = "pruned_why"


def waits(run: dict, status: dict[str, str]) -> bool:
    """Whether a run still waits for a run it is after (``after``): until each is settled, however it ended
    (a rank run scores the intermediates that are done; a failed rank run prunes nothing). A run the ledger
    does not hold (a damaged row left out) is waited for by nothing: no run waits forever."""
    after = run.get(AFTER_FIELD)
    return isinstance(after, list) and any(
        isinstance(a, str) and status.get(a, Status.DONE) not in SETTLED for a in after
    )


def pruned_why(rank: int, of: int, target: str, top: int) -> str:
    """The one line a pruned run shows: ``rank 3 of 4 on rte (logme, top 1)``."""
    return f"rank {rank} of {of} on {target} ({RANK_METHOD.lower()}, top {top})"


# ---- shapes: which runs are alike ---------------------------------------------------------------


def _sub(spec: dict, key: str) -> dict:
    value = spec.get(key)
    return value if isinstance(value, dict) else {}


def shape_key(spec: dict) -> str:
    """Runs of one shape take the same memory and train at the same speed a sample: model, micro-batch,
    length, task kind and choices, precision. The queue learns memory by it, the cost estimate speed,
    and fused arrays group within it (:func:`array_key`). The same string the ledger's ``shape`` keeps."""
    p, task = _sub(spec, "params"), _sub(spec, "task")
    key = [
        _sub(spec, "model").get("name"),
        p.get("batch_size"),
        p.get("max_len"),
        task.get("kind"),
        task.get("num_choices"),
        p.get("precision"),
    ]
    if is_lora(p):  # a LoRA run takes a fraction of a full fine-tune's memory
        lora = p.get("lora") if isinstance(p.get("lora"), dict) else {}
        key.append({"method": "lora", "r": lora.get("r"), "targets": lora.get("targets")})
    return json.dumps(key, default=str)


def array_key(spec: dict) -> str | None:
    """Runs with one key can train as one fused array: one shape (:func:`shape_key`), and the same task
    and data, steps, evaluation and batching. None for runs that always train alone (synth, fp16)."""
    p = _sub(spec, "params")
    if spec.get("stage") not in TRAINED_STAGES or p.get("precision") == "fp16":
        return None
    same = {
        k: p.get(k)
        for k in (
            "grad_accum",
            "epochs",
            "max_train_samples",
            "max_dev_samples",
            "eval_batch_size",
            "batching",
            "pad",
            "clip",
        )
    }
    if is_lora(p):  # one frozen encoder for the array: the same starting weights and adapters
        same.update(method="lora", lora=p.get("lora"), frozen=frozen_base(spec))
    return json.dumps({"shape": shape_key(spec), "task": _sub(spec, "task"), **same}, sort_keys=True, default=str)


def frozen_base(spec: dict) -> str | None:
    """The weights a LoRA run freezes: its parent's merged checkpoint, or (``transfer = "adapter"``, or no
    parent) the model itself."""
    model = _sub(spec, "model")
    if _sub(spec, "params").get("transfer") == "adapter" and isinstance(model.get("base"), dict):
        model = model["base"]
    return model.get("path") or model.get("name")
