"""`daemon start`, `daemon stop` and `daemon status`.

`daemon start`'s options are made from two tables: the daemon's own flags (queue/settings.py's
``FLAGS``: name, type, default, help, bounds) and the Slurm settings (cli/slurm.py's ``SLURM_OPTIONS``);
the argv it starts the daemon with comes from the first (``settings.argv``), so a flag is declared once."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from stilts_tui import bounds
from stilts_tui.cli.root import JsonFlag, daemon_app, runs_root
from stilts_tui.cli.slurm import SLURM_OPTIONS, slurm_settings
from stilts_tui.contract import DAEMON_LOG, Env
from stilts_tui.errors import UserError
from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.queue import settings
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger

ON_FINISH_HELP = (
    "a command to run when a plan finishes or a run fails, e.g. --on-finish 'notify-send stilts'; split into "
    "words, run without a shell; what happened is in its environment (docs/results.md)"
)


def daemon_start(ctx: typer.Context, **given: Any) -> None:
    """Start the queue daemon for this runs-dir, detached from the terminal."""
    from stilts_tui.queue import ops

    values = {f.name: given[f.name] for f in settings.FLAGS if f.on_cli}
    slurm = slurm_settings(values["executor"], values["mps"], {o.key: given[o.param] for o in SLURM_OPTIONS})
    args = _daemon_argv(values, slurm)
    if given["on_finish"] is not None:
        _set_on_finish(given["on_finish"])
    root = runs_root(ctx)
    info = ops.start_daemon(root, args)
    typer.echo(terminal_safe(f"daemon started (pid {info['pid']}) on {root}; log: {root / DAEMON_LOG}"))


def _daemon_argv(values: dict[str, Any], slurm: dict) -> list[str]:
    """The daemon's own command line from `daemon start`'s options, each checked (one line, exit 2)."""
    args = settings.argv({**values, "slurm": slurm})
    if settings.parse_fuse(values["fuse"]) != "off" and values["executor"] == "slurm":
        raise UserError("--fuse: fused arrays run on the local executor (each Slurm job is one run)")
    return args


def _option(name: str, kind: type, default: Any, option: str, text: str, parse: Any = None) -> inspect.Parameter:
    """One typer option as a keyword parameter of `daemon start` (None as the default: optional); a number
    is read by ``parse`` (the table of bounds: ASCII digits, within bounds) instead of typer's int()."""
    hint = list[str] | None if kind is list else (kind | None if default is None else kind)
    extra = {"parser": parse, "metavar": kind.__name__.upper()} if parse is not None else {}
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[hint, typer.Option(option, help=text, **extra)],
    )


def _start_signature() -> inspect.Signature:
    """`daemon start`'s parameters: the context, the daemon's flags in their table's order (the Slurm
    settings where the table has ``slurm``), then --on-finish."""
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in settings.FLAGS:
        if f.on_cli:
            number = f.type in (int, float)
            params.append(_option(f.name, f.type, f.default, f.option, f.help, f.check if number else None))
        elif f.name == "slurm":
            params += [_option(o.param, o.type, None, o.option, o.help) for o in SLURM_OPTIONS]
    params.append(_option("on_finish", str, None, "--on-finish", ON_FINISH_HELP))
    return inspect.Signature(params, return_annotation=None)


daemon_start.__signature__ = _start_signature()  # typer reads the options from it
daemon_start.__annotations__ = {p.name: p.annotation for p in daemon_start.__signature__.parameters.values()}
daemon_app.command("start")(daemon_start)


def _set_on_finish(value: str) -> None:
    """Check --on-finish and hand it to the daemon process in its environment (a JSON argument list)."""
    import os
    import shlex

    shown = value if len(value) <= 80 else value[:77] + "..."  # a 30,000-deep array is not echoed whole
    try:  # rundir.loads: nesting deeper than a command is a ValueError, never a RecursionError
        cmd = rundir.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    except ValueError as e:
        raise UserError(f"--on-finish: cannot split '{shown}' into words ({e})") from None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) and x for x in cmd):
        raise UserError(f"--on-finish: expected a command, got '{shown}'")
    if "/" in cmd[0]:  # the daemon runs it from the runs-dir: a relative path must not change meaning
        cmd[0] = str(Path(cmd[0]).expanduser().resolve())
    if shutil.which(cmd[0]) is None:
        raise UserError(f"--on-finish: '{cmd[0]}' is not an executable program on PATH (nor a path to one)")
    os.environ[Env.ON_FINISH] = json.dumps(cmd)


@daemon_app.command("stop")
def daemon_stop(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="SIGKILL instead of SIGTERM (a stopped or stuck daemon)")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="seconds to wait for the daemon's process to end",
            parser=bounds.parser("stop_wait", "--wait"),
            metavar="FLOAT",
        ),
    ] = 15.0,
) -> None:
    """Stop the daemon; says stopped only once its process is gone. Running runs go on; the next daemon
    adopts them."""
    from stilts_tui.queue import daemon, ops

    root = runs_root(ctx)
    pid = ops.stop_daemon(root, wait=wait, force=force)
    if pid is None:
        problem = daemon.info_problem(root)
        typer.echo(f"no daemon was running on {root}" + (f"; {problem}" if problem else ""))
    else:
        typer.echo(f"daemon stopped (pid {pid}{', killed' if force else ''}): its process is gone")


@daemon_app.command("status")
def daemon_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Is the daemon running, with which settings, and the queue's totals."""
    from stilts_tui.queue import daemon, mps, ops

    info = ops.daemon_status(runs_root(ctx))
    ledger = Ledger(runs_root(ctx))
    counts: dict[str, int] = {}
    for r in ledger.runs():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    mps_line = mps.describe(runs_root(ctx), (info or {}).get("pid"))
    if as_json:
        typer.echo(
            json_text(
                {
                    "running": info is not None and not _stopped(info),
                    "daemon": info,
                    "counts": counts,
                    "paused": bool(ledger.meta("paused")),
                    "mps": mps_line,
                },
                indent=2,
            )
        )
        return
    if info is None:
        problem = daemon.info_problem(runs_root(ctx))
        typer.echo(
            f"no daemon is running on {terminal_safe(runs_root(ctx))}"
            + (f"; {terminal_safe(problem)}" if problem else "")
        )
    else:
        pid, where = terminal_safe(info.get("pid")), terminal_safe(runs_root(ctx))
        if _stopped(info):
            typer.echo(
                f"daemon stopped with SIGSTOP (pid {pid}) on {where}: it does not tick; `kill -CONT {pid}` "
                "resumes it, `stilts-tui daemon stop --force` ends it"
            )
        else:
            typer.echo(f"daemon running (pid {pid}) on {where}")
        if info.get("note"):
            typer.echo(f"  {terminal_safe(info['note'])}")
        for key, value in (info.get("settings") or {}).items():  # one setting a line, as `daemon start` takes it
            if isinstance(value, dict):  # the Slurm options: one line of key=value, or none
                value = " ".join(f"{k}={v}" for k, v in value.items() if v not in (None, [], "")) or "none"
            typer.echo(terminal_safe(f"  {key.replace('_', '-')}: {'default' if value is None else value}"))
    if mps_line:
        typer.echo(terminal_safe(mps_line))
    typer.echo(("paused; " if ledger.meta("paused") else "") + ", ".join(f"{v} {k}" for k, v in counts.items()))


def _stopped(info: dict) -> bool:
    """Is the daemon's process stopped (SIGSTOP, ctrl-z)? It is there, yet it ticks no more."""
    import psutil

    try:
        return psutil.Process(info["pid"]).status() == psutil.STATUS_STOPPED
    except (psutil.Error, OSError, KeyError, TypeError, ValueError):
        return False
