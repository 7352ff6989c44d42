"""SynGPT2: the real-vs-fake intermediate task synthesised with GPT-2 (Chang & Lu 2021).

``procedure`` holds the reference's text rules (no torch); ``generate`` samples the fake endings
(torch, transformers); ``python -m stilts_tui.synth RUN_DIR`` runs a plan's synth stage."""
