"""The training process: ``python -m stilts_tui.train RUN_DIR [RUN_DIR...]``.

The only layer (with synth/) that imports torch and transformers. Several run folders given to
one process train one after another and share what is costly to set up: imports, CUDA start-up,
the base model's weights, tokenizers, the tokenized data and compiled model code.

The path of a run is :mod:`~stilts_tui.train.loop`; what differs between a run alone and an array
(full or LoRA) is an engine in :mod:`stilts_tui.train.engines`. docs/training.md draws the modules.
"""
