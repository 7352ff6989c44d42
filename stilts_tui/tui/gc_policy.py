"""The app's garbage collector, set so that a key never waits on a full collection.

Measured in the real app in tmux (bench/tui.py's log panes, idle, 1,000 runs in the ledger): CPython's
full collection walked the app's ~200,000 objects (Textual's widgets, the queue table's rows, rendered
strips and their caches) in 110-180 ms, every 3 s or so, and a key pressed meanwhile waited for it: the
log panes' p95 of 138 ms. Two changes:

- once the queue table holds its runs, what is alive is moved out of the collector's sight
  (``gc.freeze``): the app's long-lived objects are never walked again. Objects freed by reference
  counting are still freed; only a reference cycle among the frozen ones is never collected, and those
  are the app's own screen and widgets, which live as long as it does.
- the thresholds are raised, so that a full collection of what remains comes about once a minute or so
  rather than every few seconds, while the young generations still take a few milliseconds each.
"""

from __future__ import annotations

import gc

THRESHOLDS = (2000, 10, 70)  # CPython's default (700, 10, 10): a full collection every 70,000 net allocations


def settle() -> None:
    """Collect once, freeze what is left, raise the thresholds (once the app's first screen is built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
