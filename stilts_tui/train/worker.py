"""What the runs of one training process share: the trainer's flags (:class:`Settings`), one task
model per architecture with its compiled loss (:class:`Model`), and the :class:`Worker` that holds
tokenizers, starting weights and models, so a new run copies its weights into a model in place and its
compiled code and CUDA graphs stay valid."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stilts_tui.train import data, transfer
from stilts_tui.train.step import Setup, compiled, live_tensor_mb

_VOLATILE = {
    "_name_or_path",
    "architectures",
    "id2label",
    "label2id",
    "problem_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "num_labels",
    "_attn_implementation_autoset",
}


@dataclass
class Settings:
    """The trainer's flags. Anything but ``auto`` overrides the run's spec (recorded in result.json)."""

    device: torch.device
    compile: str = "auto"  # auto | off | cudagraphs | inductor
    compile_scope: str = "regional"  # regional (each encoder layer, one graph for all) | whole (the loss)
    pad: str = "auto"  # auto | max | buckets | longest
    attn: str = "sdpa"  # sdpa | eager
    group: str = "auto"  # auto (the spec's batching) | on (grouped) | off (random)
    dropout_streams: str = "member"  # fused arrays, eager: member (each its run's own) | one (the array's)
    echo: bool | None = None


def compile_options(setup: Setup, backend=None) -> dict:
    """``torch.compile``'s arguments for ``setup``: CUDA graphs of the eager kernels (the cudagraphs
    backend, fixed shapes), or inductor with dynamic sizes (one compilation for every length bucket) and
    CUDA graphs per shape where ``setup.cuda_graphs``; ``backend``: a test's failing compiler."""
    if backend is not None:
        return {"backend": backend, "dynamic": True}
    if setup.compile == "cudagraphs" and setup.cuda_graphs:
        return {"backend": "cudagraphs", "dynamic": False}
    return {"mode": "reduce-overhead" if setup.cuda_graphs else None, "dynamic": True}


def encoder_layers(module: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The encoder's layers of a Hugging Face BERT-style model (``<prefix>.encoder.layer``), or None."""
    base = getattr(module, getattr(module, "base_model_prefix", ""), None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


@contextmanager
def compiled_layers(layers: torch.nn.ModuleList, fns: list) -> Iterator[None]:
    """Run ``layers`` through their compiled ``fns`` inside the block, eagerly after it (evaluation and
    an eager run of the same model object). ``_compiled_call_impl`` is the slot ``nn.Module.compile``
    fills and ``nn.Module.__call__`` reads; filling it for a block leaves the module's names as they are."""
    for layer, fn in zip(layers, fns, strict=True):
        layer._compiled_call_impl = fn
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


class Model:
    """One task model on the device, with its training loss (compiled per setup, cached)."""

    def __init__(self, module: torch.nn.Module, kind: str):
        self.module, self.kind = module, kind
        self._compiled: dict[tuple, object] = {}

    def scope(self, setup: Setup) -> str:
        """The compile scope ``setup`` gets on this model: regional only where it has encoder layers."""
        return "regional" if setup.compile_scope == "regional" and encoder_layers(self.module) else "whole"

    def loss_fn(self, setup: Setup, backend=None):
        """The loss for ``setup``: eager, or compiled; regionally, each encoder layer is compiled (every
        layer reuses the first one's graph: the layers share their code and their shapes) and the
        embeddings, head and loss run eagerly; else the whole loss is compiled."""
        if setup.compile == "off":
            return self._loss
        if backend is not None:  # a test's failing compiler: never cached
            return self._compile(setup, backend)
        key = (setup.compile, setup.cuda_graphs, self.scope(setup))
        if key not in self._compiled:
            self._compiled[key] = self._compile(setup, None)
        return self._compiled[key]

    def _compile(self, setup: Setup, backend):
        options = compile_options(setup, backend)
        if self.scope(setup) == "whole":
            return compiled(self._loss, **options)
        layers = encoder_layers(self.module)
        fns = [compiled(layer._call_impl, **options) for layer in layers]  # what nn.Module.compile does

        def regional_loss(*args):
            with compiled_layers(layers, fns):
                return self._loss(*args)

        return regional_loss

    def _forward(self, ids, types, mask, amp_dtype):
        with torch.autocast(ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            kwargs = {"input_ids": ids, "attention_mask": mask}
            if types is not None:
                kwargs["token_type_ids"] = types
            return self.module(**kwargs).logits.float()

    def _loss(self, ids, types, mask, labels, weights, amp_dtype: torch.dtype | None):
        logits = self._forward(ids, types, mask, amp_dtype)
        if self.kind == "regression":
            per = (logits.squeeze(-1) - labels) ** 2
        else:
            per = F.cross_entropy(logits, labels, reduction="none")
        return (per * weights).sum() / weights.sum()

    @torch.no_grad()
    def logits(self, ids, types, mask, amp_dtype):
        return self._forward(ids, types, mask, amp_dtype)


class Worker:
    """What the runs of one training process share."""

    def __init__(self, settings: Settings, startup_s: float = 0.0, threads: dict | None = None):
        self.s = settings
        self.threads = threads  # the process's thread pools and why (recorded in every result.json)
        self.vec_isa: tuple | None = None  # (inductor's CPU vector sets, how they are known), once settled
        self._startup_s = startup_s  # the process's start and imports, counted to its first run (or array)
        self._tok: dict[str, tuple] = {}
        self._source: dict[str, dict] = {}
        self._models: dict[str, Model] = {}

    def take_startup(self) -> float:
        """The process's start-up seconds, given to the runs of its first group (each member of a first
        array gets the array's figure); 0 for every later group: the process was up."""
        out, self._startup_s = self._startup_s, 0.0
        return round(out, 3)

    def tokenizer(self, location: str):
        if location not in self._tok:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(location)
            except OSError as e:
                raise transfer.hub_error(location, e) from None
            self._tok[location] = (tok, data.tokenizer_fingerprint(tok))
        return self._tok[location]

    def source(self, model: dict) -> dict:
        key = model.get("path") or model["name"]
        if key not in self._source:
            if model.get("source") == "parent":  # keep at most one parent checkpoint in memory
                for k in [k for k in self._source if k.endswith("/checkpoint")]:
                    del self._source[k]
            self._source[key] = transfer.source_state(model)
        return self._source[key]

    def model(self, location: str, kind: str, n_out: int) -> Model:
        from transformers import AutoConfig, AutoModelForMultipleChoice, AutoModelForSequenceClassification

        try:
            config = AutoConfig.from_pretrained(location)
        except OSError as e:
            raise transfer.hub_error(location, e) from None
        if kind != "multiple_choice":
            config.num_labels = n_out
            config.problem_type = "regression" if kind == "regression" else "single_label_classification"
        signature = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
        key = repr((sorted(signature.items(), key=lambda kv: kv[0]), kind, n_out, self.s.attn))
        if key not in self._models:
            cls = AutoModelForMultipleChoice if kind == "multiple_choice" else AutoModelForSequenceClassification
            with torch.device(self.s.device):
                module = cls.from_config(config, attn_implementation=self.s.attn)
            self._models[key] = Model(module.float(), kind)
        return self._models[key]

    def release(self, model: Model) -> None:
        """Forget a model this worker made (a LoRA run changes its module in place): the next run of
        the architecture gets a new one."""
        self._models = {k: m for k, m in self._models.items() if m is not model}

    def free_memory(self) -> float:
        """After an out-of-memory error (called outside the ``except`` block, so no traceback keeps the
        tensors alive): drop models, starting weights, compiled code and CUDA-graph pools. Returns the
        MB of tensors still alive on the device."""
        self._models.clear()
        self._source.clear()
        torch._dynamo.reset()  # compiled graphs and their CUDA-graph memory pools
        gc.collect()
        if self.s.device.type == "cuda":
            torch.cuda.empty_cache()
        return live_tensor_mb(self.s.device)
