"""What a run writes while it trains: ``train.log`` (for people), ``events.jsonl`` (for the TUI and
queue), and ``result.json`` (written last, atomically)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, RESULT_FILE, TRAIN_LOG, Event
from stilts_tui.store.rundir import write_json_atomic


class RunLog:
    """Appends to one run folder's ``train.log`` and ``events.jsonl``."""

    def __init__(self, run_dir: Path, echo: bool | None = None):
        self.dir = run_dir
        self.echo = sys.stdout.isatty() if echo is None else echo
        self._log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._events = open(run_dir / EVENTS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def line(self, text: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        self._log.write(stamped + "\n")
        if self.echo:
            print(f"{self.dir.name} {stamped}", flush=True)

    def event(self, name: Event, **fields) -> None:
        """One line of events.jsonl: the time, the event's name (the contract's :class:`Event`), its fields."""
        self._events.write(json.dumps({"t": time.time(), "event": str(name), **fields}) + "\n")

    @property
    def closed(self) -> bool:
        return self._log.closed

    def close(self) -> None:
        self._log.close()
        self._events.close()


def write_result(run_dir: Path, result: dict) -> None:
    write_json_atomic(run_dir / RESULT_FILE, result)
