"""Runs that leave a call before its end: cancelled, diverged, degenerate, or failed in evaluation.
Each ends with its own result; in an array the others go on (their rows and weights never meet)."""

from __future__ import annotations

import math
from collections.abc import Callable

from stilts_tui.contract import CANCEL_FILE, Event, ResultStatus, Status
from stilts_tui.train import degenerate
from stilts_tui.train.members import Member
from stilts_tui.train.step import Setup, StepLog
from stilts_tui.train.worker import Worker


def drop(
    worker: Worker,
    engine,
    steplog: StepLog,
    live: list[Member],
    gone: list[Member],
    status: str,
    why: str | Callable[[Member], str],
) -> list[int]:
    """End the ``gone`` runs with ``status`` and ``why`` (a line, or one per run); the engine and the step
    logger keep the others' rows. Returns the rows kept, in ``live``'s order."""
    rows = [i for i, m in enumerate(live) if m not in gone]
    for m in gone:
        m.finish(worker, status, why(m) if callable(why) else why)
    if rows:
        engine.keep(rows)
        steplog.keep(rows)
    return rows


def drop_cancelled(worker, engine, steplog, live, orders):
    """Runs whose folder holds a cancel request end cancelled; returns the runs and data orders left."""
    gone = [m for m in live if (m.dir / CANCEL_FILE).exists()]
    if not gone:
        return live, orders
    rows = drop(worker, engine, steplog, live, gone, Status.CANCELLED, "cancelled while training")
    return [live[i] for i in rows], [orders[i] for i in rows]


def drop_diverged(worker, engine, steplog, live, orders, means: list[float], step: int):
    """Runs whose training loss is no longer finite fail (read at each log line: no sync a step); in an
    array the others go on (their rows and weights never meet the diverged run's)."""
    gone = [m for m, x in zip(live, means, strict=True) if not math.isfinite(x)]
    rows = drop(
        worker,
        engine,
        steplog,
        live,
        gone,
        ResultStatus.FAILED,
        f"diverged: training loss {means[live.index(gone[0])]} by step {step}",
    )
    return [live[i] for i in rows], [orders[i] for i in rows]


def drop_degenerate(worker, engine, steplog, live: list[Member], setup: Setup, step: int) -> list[Member]:
    """Runs whose dev scores meet their stop_degenerate rule end ``degenerate`` (scores, curve and time
    kept); in an array the others go on, as after a diverged member."""
    gone, seconds = [], steplog.seconds
    for m in live:
        if m.stop is None:
            continue
        stopped = degenerate.verdict(m.spec, m.stop, [x[m.primary] for x in m.epoch_metrics])
        if stopped is not None:
            m.record(engine, setup, steplog, step, seconds)
            stopped.update(degenerate.saving(step, m.schedule.total, seconds))
            m.result["stopped"] = stopped
            m.log.event(Event.STOPPED, **stopped)
            gone.append(m)
    if not gone:
        return live
    why = lambda m: degenerate.reason(m.result["stopped"])  # noqa: E731 - read per member
    rows = drop(worker, engine, steplog, live, gone, ResultStatus.DEGENERATE, why)
    return [live[i] for i in rows]
