"""The training process: ``python -m stilts_tui.train RUN_DIR [RUN_DIR...]``.

The only layer (with synth/) that imports torch and transformers. Several run folders given to
one process train one after another and share what is costly to set up: imports, CUDA start-up,
the base model's weights, tokenizers, the tokenized data and compiled model code.
"""
