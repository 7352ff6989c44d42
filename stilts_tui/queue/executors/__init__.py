"""Executors: how the queue starts, watches and stops training processes."""
