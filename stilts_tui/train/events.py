"""What a run writes while it trains: ``train.log`` (for people), ``events.jsonl`` (for the TUI and
queue), and ``result.json`` (written last, atomically)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stilts_tui.contract import EVENTS_FILE, RESULT_FILE, TRAIN_LOG, Event
from stilts_tui.store.rundir import write_json_atomic
from stilts_tui.train import trackers


class RunLog:
    """Appends to one run folder's ``train.log`` and ``events.jsonl``."""

    def __init__(self, run_dir: Path, echo: bool | None = None):
        self.dir = run_dir
        self.echo = sys.stdout.isatty() if echo is None else echo
        self._log = open(run_dir / TRAIN_LOG, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._events = open(run_dir / EVENTS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._sink: trackers.Sink | None = None  # the spec's report_to, opened at the start event

    def line(self, text: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        self._log.write(stamped + "\n")
        if self.echo:
            print(f"{self.dir.name} {stamped}", flush=True)

    def event(self, name: Event, **fields) -> None:
        """One line of events.jsonl: the time, the event's name (the contract's :class:`Event`), its fields."""
        t = time.time()
        self._events.write(json.dumps({"t": t, "event": str(name), **fields}) + "\n")
        # the trackers see what the file holds (the one place events are sent to them)
        if name == Event.START and self._sink is None:
            self._sink = trackers.open_sink(self.dir, self.line)
        if self._sink is not None:
            self._sink.event(str(name), t, fields)

    @property
    def tracker_states(self) -> dict[str, str] | None:
        """How each tracker of the run fared ("ok" or "failed: why"); None where the run reports to none."""
        return dict(self._sink.states) if self._sink is not None else None

    @property
    def closed(self) -> bool:
        return self._log.closed

    def close(self) -> None:
        if self._sink is not None:
            self._sink.end(None)  # a run that ends without an end event: its trackers are closed all the same
        self._log.close()
        self._events.close()


def write_result(run_dir: Path, result: dict) -> None:
    write_json_atomic(run_dir / RESULT_FILE, result)
