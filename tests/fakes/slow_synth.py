"""A test-only entry point: the synthesis process (``python -m stilts_tui.synth --cli PARAMS OUT``, what
`stilts-tui synth` runs), slowed by SECONDS per window of sampled rows so that a test can kill it
mid-way (tests/test_synth.py). The delay lives here, not in the product: each sampled batch sleeps
SECONDS / WINDOW_BATCHES before it is sampled.

Usage: python tests/fakes/slow_synth.py SECONDS --cli PARAMS_JSON OUT
"""

from __future__ import annotations

import sys
import time

from stilts_tui.synth import generate
from stilts_tui.synth.__main__ import main

if __name__ == "__main__":
    per_batch = float(sys.argv[1]) / generate.WINDOW_BATCHES
    sample_batch = generate.sample_batch

    def slow_sample_batch(*args, **kwargs):
        time.sleep(per_batch)
        return sample_batch(*args, **kwargs)

    generate.sample_batch = slow_sample_batch
    sys.exit(main(sys.argv[2:]))
