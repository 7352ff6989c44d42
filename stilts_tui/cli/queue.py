"""`queue add`, `cancel`, `retry`, `priority`, `pause` and `resume`: requests to the queue (`queue ls`
is in queue_ls.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from stilts_tui import bounds
from stilts_tui.cli.base import NoDaemon
from stilts_tui.cli.root import PlanOpt, PlanPath, RunIds, queue_app, runs_root
from stilts_tui.contract import CANCEL_GRACE_S, DAEMON_LOG, Env, Status
from stilts_tui.errors import Failure, UserError
from stilts_tui.fmt import terminal_safe
from stilts_tui.store.ledger import Ledger


@queue_app.command("add")
def queue_add(
    ctx: typer.Context,
    path: PlanPath,
    priority: Annotated[
        int, typer.Option("--priority", help="higher runs first", parser=bounds.parser("priority"), metavar="INTEGER")
    ] = 0,
    no_daemon: NoDaemon = False,
    max_runs: Annotated[
        int | None,
        typer.Option(
            "--max-runs",
            help=f"accept a plan of more runs than the limit (100,000, or ${Env.MAX_RUNS})",
            parser=bounds.parser("max_runs"),
            metavar="INTEGER",
        ),
    ] = None,
) -> None:
    """Queue every run of a plan not queued before (re-adding a plan queues nothing new)."""
    from stilts_tui.queue import ops

    root = runs_root(ctx)
    plan, runs, added = ops.add_plan(path, root, priority=priority, max_runs=max_runs)
    typer.echo(
        f"{plan.name}: {len(added)} runs queued, {len(runs) - len(added)} already in the ledger ({terminal_safe(root)})"
    )
    if not no_daemon and ops.daemon_status(root) is None:
        info = ops.start_daemon(root, [])
        typer.echo(f"started the queue daemon (pid {info['pid']}); `stilts-tui daemon status` shows it")


@queue_app.command("cancel")
def queue_cancel(
    ctx: typer.Context,
    run_ids: RunIds = None,
    plan: PlanOpt = None,
    grace: Annotated[
        float,
        typer.Option(help="seconds between SIGTERM and SIGKILL", parser=bounds.parser("grace"), metavar="FLOAT"),
    ] = CANCEL_GRACE_S,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once the daemon is asked")] = False,
) -> None:
    """Cancel runs: queued ones never start; running ones are stopped by the daemon (their whole process
    group, or their Slurm job). Waits for the daemon to do it unless --no-wait."""
    from stilts_tui.queue import ops

    root = runs_root(ctx)
    out = ops.cancel(root, run_ids or [], plan=plan, grace=grace)
    if out.requested and not out.daemon:
        typer.echo(
            f"cancelled {len(out.done)} runs; {len(out.requested)} running run(s) wait for the daemon to "
            f"stop them: no daemon runs on {terminal_safe(root)} "
            "(`stilts-tui daemon start` carries the cancel out first)"
        )
        return
    if out.requested and no_wait:
        typer.echo(f"cancelled {len(out.done)} runs; the daemon is stopping {len(out.requested)} running run(s)")
        return
    wait_s = grace + 30.0  # SIGKILL comes after the grace; a tick or two to see it and record it
    left = ops.wait_cancelled(root, out.requested, wait_s)
    if left and ops.daemon_status(root) is None:
        typer.echo(
            f"cancelled {len(out.done)} runs; {len(left)} running run(s) wait for the daemon to stop them: "
            f"the daemon on {terminal_safe(root)} stopped first "
            "(the next `stilts-tui daemon start` carries the cancel out)"
        )
        return
    if left:
        raise Failure(
            f"the daemon has not stopped {' '.join(left[:10])} within {wait_s:.0f} s; the cancel request "
            f"stands (see {root / DAEMON_LOG})"
        )
    ledger = Ledger(root)
    done = out.done + [rid for rid in out.requested if (ledger.get(rid) or {}).get("status") == Status.CANCELLED]
    ended = len(out.done) + len(out.requested) - len(done)
    typer.echo(
        f"cancelled {len(done)} runs"
        + (f": {' '.join(done)}" if len(done) <= 10 else "")
        + (f" ({ended} ended before the cancel)" if ended else "")
    )


@queue_app.command("retry")
def queue_retry(
    ctx: typer.Context,
    run_ids: RunIds = None,
    failed: Annotated[bool, typer.Option("--failed", help="every failed run")] = False,
    pruned: Annotated[bool, typer.Option("--pruned", help="every run a rank stage pruned: train it")] = False,
    plan: Annotated[str | None, typer.Option("--plan", help="with --failed or --pruned: only this plan's")] = None,
) -> None:
    """Queue failed, cancelled or pruned runs again (their blocked children follow once they succeed)."""
    from stilts_tui.queue import ops

    if not run_ids and not failed and not pruned:
        raise UserError("name run ids, or --failed, or --pruned")
    if plan is not None and not (failed or pruned):
        raise UserError("--plan: with --failed or --pruned (run ids name their runs)")
    done = ops.retry(runs_root(ctx), run_ids or [], failed=failed, pruned=pruned, plan=plan)
    typer.echo(f"requeued {len(done)} runs")


@queue_app.command("priority")
def queue_priority(
    ctx: typer.Context,
    priority: Annotated[
        int, typer.Argument(help="higher runs first", parser=bounds.parser("priority", "priority"), metavar="PRIORITY")
    ],
    run_ids: RunIds = None,
    plan: PlanOpt = None,
) -> None:
    """Set the priority of runs (or of every run of a plan)."""
    from stilts_tui.queue import ops

    done = ops.set_priority(runs_root(ctx), run_ids or [], priority=priority, plan=plan)
    typer.echo(f"priority {priority} for {len(done)} runs")


@queue_app.command("pause")
def queue_pause(ctx: typer.Context) -> None:
    """Start no new runs (running ones go on)."""
    from stilts_tui.queue import ops

    ops.set_paused(runs_root(ctx), True)
    typer.echo("queue paused")


@queue_app.command("resume")
def queue_resume(ctx: typer.Context) -> None:
    """Start runs again."""
    from stilts_tui.queue import ops

    ops.set_paused(runs_root(ctx), False)
    typer.echo("queue resumed")
