"""Training runs: config, data, model, optimizer, loop, evaluation, checkpoint — one straight path,
the same for a run alone and for a fused array of runs (an *engine*, :mod:`stilts_tui.train.engines`,
holds what differs: the model's forward and the optimizer).

:func:`train_group` reads the runs' specs (:mod:`~stilts_tui.train.members`), prepares their data and
models on the process's :class:`~stilts_tui.train.worker.Worker`, picks their engine and hands them to
:func:`fit`, the loop; runs that leave early do so by :mod:`~stilts_tui.train.drops`' rules.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from stilts_tui.contract import CANCEL_FILE, CHECKPOINT_DIR, Event, ResultStatus, Status, optional
from stilts_tui.errors import UserError, first_line
from stilts_tui.fmt import duration
from stilts_tui.store import files
from stilts_tui.tasks.metrics import compute as compute_metrics
from stilts_tui.train import data, degenerate, engines
from stilts_tui.train.debug import Debug
from stilts_tui.train.drops import drop, drop_cancelled, drop_degenerate, drop_diverged
from stilts_tui.train.events import RunLog
from stilts_tui.train.members import Member, Prepared, Schedule, new_result, prepare, read_spec
from stilts_tui.train.step import Parts, Setup, StepLog, is_oom, make_batch, resolve_setup, seed_everything
from stilts_tui.train.worker import Worker


def train_run(worker: Worker, run_dir: Path) -> dict:
    """Train one run folder to its ``result.json``. Never raises for a failure of the run itself."""
    return train_group(worker, [Path(run_dir)], fuse=False)[0]


def train_group(worker: Worker, run_dirs: list[Path], fuse: bool) -> list[dict]:
    """Train the runs (as one fused array when ``fuse``); each ends with its own ``result.json``.
    Runs that cannot join (their spec or setup fails) end at once; the others go on."""
    everyone: list[Member] = []
    process_s = worker.take_startup()
    for d in map(Path, run_dirs):
        m = Member(d, RunLog(d, echo=worker.s.echo), time.time(), result=new_result())
        m.result["timings"] = {"process_s": process_s}
        if worker.threads:
            m.result["threads"] = dict(worker.threads)
        everyone.append(m)
        if (d / CANCEL_FILE).exists():  # cancelled while it waited in this worker: never begun
            m.finish(worker, Status.CANCELLED, "cancelled while it waited for its turn in the worker")
            continue
        try:
            m.spec = read_spec(d)
            m.result["primary_metric"] = m.spec["task"].get("metric")
            m.log.event(Event.START, run_id=m.spec["run_id"], pid=os.getpid(), device=str(worker.s.device))
            if worker.threads:
                t = worker.threads
                m.log.line(f"threads: {t['intra_op']} intra-op, {t['inter_op']} inter-op ({t['why']})")
            m.stop = _stop_rule(m)
        except UserError as e:
            m.finish(worker, ResultStatus.FAILED, str(e))
    members = [m for m in everyone if not m.done]
    if worker.s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    oom = None
    try:
        _train_members(worker, members, fuse)
    except Exception as e:  # noqa: BLE001 - the runs still training fail (or end oom); the process goes on
        if is_oom(e):
            oom = f"CUDA out of memory: {first_line(e, 300)}"
        else:
            why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e, 300)}"
            for m in members:
                if not m.done:
                    if not isinstance(e, UserError):
                        m.log.line("".join(traceback.format_exception(e)).rstrip())
                    m.finish(worker, ResultStatus.FAILED, why)
    if oom:  # outside the except block: its traceback no longer holds the step's tensors
        left = worker.free_memory()
        for m in members:
            if not m.done:
                m.log.line(f"out of memory; after clean-up {left:.1f} MB of tensors alive on {worker.s.device.type}")
                m.result["mem_after_cleanup_mb"] = round(left, 3)
                m.finish(worker, ResultStatus.OOM, oom)
    return [m.result for m in everyone]


def _stop_rule(m: Member) -> dict | None:
    """The run's stop_degenerate rule; off for a retry of a run stopped before (it trains to its end)."""
    rule = degenerate.rule_of(m.spec)
    if rule is not None and degenerate.stopped_before(m.dir):
        m.log.line("stop_degenerate is off for this attempt: an earlier one was stopped as degenerate")
        m.result["stop_degenerate"] = "off: retried after a degenerate attempt"
        return None
    return rule


def _train_members(worker: Worker, members: list[Member], fuse: bool) -> None:
    """Data and starting weights for each member, then their setup and engine, then the loop."""
    if not members:
        return
    debug = Debug.of([m.spec for m in members])
    joined: list[Member] = []
    prep = None
    states = []
    for m in members:
        try:
            prep = prepare(
                worker,
                m.dir,
                m.spec,
                m.log,
                same_data=prep if fuse else None,
                dump_weights=debug.dump_initial_weights,
                timings=m.result.setdefault("timings", {}),
            )
            m.schedule = Schedule.of(m.spec["params"], len(prep.train))
            m.result["data"] = {"train": prep.train.source, "dev": prep.dev.source}  # what it trained on
            if fuse:  # what the member owns in the array (a LoRA member: its head and adapter)
                states.append(engines.member_state(prep.model.module, m.spec))
            joined.append(m)
        except UserError as e:
            m.finish(worker, ResultStatus.FAILED, str(e))
    if not joined:
        return
    p0 = joined[0].spec["params"]
    setup = resolve_setup(worker.s, p0, int(p0["grad_accum"]), joined[0].schedule.total, fused=bool(fuse))
    if setup.compile != "off" and worker.s.device.type == "cpu":
        _settle_isa(worker, joined)
    engine = engines.choose(worker, prep, joined, states if fuse else None, setup, debug)
    fit(worker, joined, engine, prep, setup, debug)


def _settle_isa(worker: Worker, members: list[Member]) -> None:
    """Inductor's CPU vector check, once a process, before its first CPU compile (see
    :mod:`stilts_tui.train.isa`): its seconds go into the members' ``timings.isa_check_s`` (0 after the
    process's first group) and a line in their logs says what was found and how."""
    spent = 0.0
    if worker.vec_isa is None:
        from stilts_tui.train import isa

        t0 = time.time()
        sets, how = isa.settle()
        spent = round(time.time() - t0, 3)
        worker.vec_isa = (sets, how)
    sets, how = worker.vec_isa
    for m in members:
        m.result["timings"]["isa_check_s"] = spent
        found = ", ".join(sets) if sets else "left to inductor"
        m.log.line(f"inductor's CPU vector sets: {found} ({how}; {spent:.1f} s here)")


def fit(worker: Worker, members: list[Member], engine, prep: Prepared, setup: Setup, debug: Debug) -> None:
    """The loop: epochs of batches, forward, backward, clipping, optimizer step, logging, evaluation."""
    device = worker.s.device
    p0 = members[0].spec["params"]
    max_len, bs, accum = int(p0["max_len"]), int(p0["batch_size"]), int(p0["grad_accum"])
    seed_everything(int(members[0].spec["seed"]))  # an array's dropout masks: one stream
    sched = members[0].schedule
    buckets = data.buckets_for(max_len)
    _log_begin(members, prep, setup, sched, bs, accum, device)
    debug.begin(members[0].dir)
    live = list(members)
    steplog = StepLog([m.log for m in live], sched.total, sched.epochs, device)
    eval_bs = int(optional(p0, "eval_batch_size") or max(bs, 32))
    engine.train(True)
    engine.zero_grad()
    step = 0
    window: list[list] = []  # this step's micro-batches (replayed if the compiled backward fails)
    for epoch in range(1, sched.epochs + 1):
        orders = [
            data.train_order(prep.train.lengths, bs, int(m.spec["seed"]), epoch, setup.batching, buckets) for m in live
        ]
        for b in range(len(orders[0])):
            # a run alone too: a cancel that found it still waiting may land just as it began
            live, orders = drop_cancelled(worker, engine, steplog, live, orders)
            if not live:
                return
            idx = [o[b] for o in orders]
            own = [data.pad_length(int(prep.train.lengths[i].max()), setup.pad, max_len, buckets) for i in idx]
            parts = Parts([make_batch(prep.train, i, max(own), device, engine.fill_to) for i in idx], own)
            window.append(parts)
            each = _micro_step(engine, parts, window, setup, accum, live)
            steplog.add(each, len(idx[0]))
            last = b + 1 == len(orders[0])
            if (b + 1) % accum and not (last and len(orders[0]) < accum):
                continue
            if setup.clip == "step":
                engine.clip()
            engine.step()
            engine.zero_grad()
            window = []
            step += 1
            debug.after_step(step, live[0].dir)
            means = steplog.step(step, epoch, engine.lrs(step))
            if means is not None and not all(map(math.isfinite, means)):
                live, orders = drop_diverged(worker, engine, steplog, live, orders, means, step)
                if not live:
                    return
        live = _evaluate_epoch(worker, engine, live, steplog, prep, setup, epoch, eval_bs, max_len, buckets)
        if epoch < sched.epochs:  # at the last epoch nothing is left to save: the run ends done
            live = drop_degenerate(worker, engine, steplog, live, setup, step)
        if not live:
            return
    _summarise(worker, engine, live, prep, setup, steplog, step)


def _log_begin(members, prep, setup, sched, bs, accum, device) -> None:
    others = len(members) - 1
    for m in members:
        m.log.line(
            f"train {len(prep.train)} / dev {len(prep.dev)} examples, {sched.epochs} epochs x "
            f"{sched.steps_per_epoch} steps = {sched.total}, batch {bs}x{accum}, lr {m.spec['params']['lr']}, "
            f"warmup {m.schedule.warmup} steps, {device.type} {setup.line()}"
            + (f", fused with {others} other runs" if others else "")
        )
        m.log.event(
            Event.BEGIN,
            total_steps=sched.total,
            epochs=sched.epochs,
            n_train=len(prep.train),
            n_dev=len(prep.dev),
            device=device.type,
            setup=setup.record(),
            **({"fused": len(members)} if others else {}),
        )


def _micro_step(engine, parts, window, setup: Setup, accum: int, live: list[Member]) -> torch.Tensor:
    """Forward and backward of one micro-batch; a compiler failure falls back to eager, recorded."""
    try:
        total, each = engine.loss(parts, setup.amp)
    except Exception as e:  # noqa: BLE001 - a compiler failure must not cost the runs
        if engine.mode == "off" or is_oom(e):
            raise
        _fallback(engine, live, "forward", e)
        total, each = engine.loss(parts, setup.amp)
    try:
        engine.backward(total / accum)
    except Exception as e:  # noqa: BLE001 - the backward is compiled at its first call
        if engine.mode == "off" or is_oom(e):
            raise
        _fallback(engine, live, "backward", e)
        engine.zero_grad()  # redo this step's micro-batches eagerly: no gradient counted twice or lost
        for earlier in window:
            total, each = engine.loss(earlier, setup.amp)
            engine.backward(total / accum)
            if setup.clip == "micro_batch" and earlier is not parts:
                engine.clip()
    if setup.clip == "micro_batch":
        engine.clip()
    return each


def _fallback(engine, live: list[Member], where: str, e: Exception) -> None:
    why = f"{where}: {type(e).__name__}: {first_line(e, 200)}"
    for m in live:
        m.log.line(
            f"compile {engine.mode} failed in the {why.split(': ', 1)[0]} ({why.split(': ', 1)[1]}); "
            "going on without compilation"
        )
        m.result["compile_fallback"] = why
    engine.disable_compile()


def _evaluate_epoch(worker, engine, live, steplog, prep, setup, epoch, eval_bs, max_len, buckets) -> list[Member]:
    t_eval = time.time()
    preds = evaluate(engine, prep.dev, eval_bs, setup, max_len, buckets, worker.s.device, prep.kind)
    steplog.eval_s += time.time() - t_eval
    failed = []
    for i, m in enumerate(live):
        try:
            metrics = compute_metrics(m.spec["task"].get("metrics") or [m.primary], preds[i], prep.dev.labels)
        except Exception as e:  # noqa: BLE001 - this run fails, the others go on
            m.result["error_detail"] = repr(e)
            failed.append(m)
            continue
        m.epoch_metrics.append(metrics)
        m.log.line(f"eval epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        m.log.event(Event.EVAL, epoch=epoch, metrics=metrics)
    if not failed:
        return live
    if len(live) == 1:
        raise RuntimeError(f"evaluation failed: {failed[0].result['error_detail']}")
    rows = drop(worker, engine, steplog, live, failed, ResultStatus.FAILED, "evaluation failed")
    return [live[i] for i in rows]


def evaluate(
    engine, split: data.Split, batch_size: int, setup: Setup, max_len: int, buckets, device, kind: str
) -> np.ndarray:
    """Every run's predictions on ``split`` [K, N] (the inputs are shared by the runs of an array)."""
    engine.train(False)
    preds = np.zeros((engine.k, len(split)), dtype=np.float32 if kind == "regression" else np.int64)
    for idx in data.eval_order(split.lengths, batch_size):
        length = data.pad_length(int(split.lengths[idx].max()), setup.pad, max_len, buckets)
        logits = engine.predict(make_batch(split, idx, length, device), setup.amp)
        out = logits.squeeze(-1) if kind == "regression" else logits.argmax(-1)
        preds[:, idx] = out.cpu().numpy()
    engine.train(True)
    return preds


def _summarise(worker, engine, live, prep, setup: Setup, steplog: StepLog, step: int) -> None:
    seconds = steplog.seconds
    rate = steplog.seen / max(seconds, 1e-9)
    for i, m in enumerate(live):
        try:
            if m.spec.get("keep_checkpoint") is True and hasattr(engine, "save"):  # LoRA: merged, and its adapter
                engine.save(i, m.dir / CHECKPOINT_DIR, prep)
                m.log.line(f"checkpoint saved to {m.dir / CHECKPOINT_DIR} (merged weights and the adapter)")
            elif m.spec.get("keep_checkpoint") is True:
                if engine.k > 1:
                    prep.model.module.load_state_dict(engine.state(i), strict=False)
                save_checkpoint(prep.model.module, prep.tok, m.dir / CHECKPOINT_DIR, prep.labels)
                m.log.line(f"checkpoint saved to {m.dir / CHECKPOINT_DIR}")
            scores = [x[m.primary] for x in m.epoch_metrics]
            best = int(np.argmax(scores)) + 1
            how = f", fused ({len(live)} runs at the end)" if setup.fused else ""
            m.log.line(
                f"done: {m.primary} {scores[-1]:.4f} (last epoch; best {max(scores):.4f} at epoch {best}) "
                f"in {duration(seconds)}, {rate:.1f} samples/s{how}"
            )
            m.record(engine, setup, steplog, step, seconds)
            m.finish(worker, ResultStatus.DONE, None)
        except Exception as e:  # noqa: BLE001 - e.g. a full disk while saving one checkpoint
            m.finish(worker, ResultStatus.FAILED, f"{type(e).__name__}: {first_line(e, 300)}")


def save_checkpoint(module: torch.nn.Module, tok, folder: Path, labels: list[str] | None) -> None:
    """safetensors weights + config + tokenizer, written beside and renamed into place."""
    with files.folder_built_beside(folder) as tmp:  # an unguessable name: never a planted link written through
        if labels:
            module.config.id2label = dict(enumerate(labels))
            module.config.label2id = {v: k for k, v in module.config.id2label.items()}
        module.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
