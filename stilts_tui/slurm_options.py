"""Moved to stilts_tui.plan.slurm; kept while queue/executors/slurm.py imports it from here."""

from stilts_tui.plan.slurm import MANAGED, option_problem  # noqa: F401
