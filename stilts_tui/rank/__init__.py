"""Ranking starting points before training (LogME): the plan's rank jobs and their cache. The scoring
itself is a process of the trainer's, ``python -m stilts_tui.train.rank``."""
