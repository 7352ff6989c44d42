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

from stilts_tui.cli.root import JsonFlag, daemon_app, runs_root
from stilts_tui.cli.slurm import SLURM_OPTIONS, slurm_settings
from stilts_tui.contract import DAEMON_LOG, Env
from stilts_tui.errors import UserError
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
    typer.echo(f"daemon started (pid {info['pid']}) on {root}; log: {root / DAEMON_LOG}")


def _daemon_argv(values: dict[str, Any], slurm: dict) -> list[str]:
    """The daemon's own command line from `daemon start`'s options, each checked (one line, exit 2)."""
    args = settings.argv({**values, "slurm": slurm})
    if settings.parse_fuse(values["fuse"]) != "off" and values["executor"] == "slurm":
        raise UserError("--fuse: fused arrays run on the local executor (each Slurm job is one run)")
    return args


def _option(name: str, kind: type, default: Any, option: str, text: str) -> inspect.Parameter:
    """One typer option as a keyword parameter of `daemon start` (None as the default: optional)."""
    hint = list[str] | None if kind is list else (kind | None if default is None else kind)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[hint, typer.Option(option, help=text)],
    )


def _start_signature() -> inspect.Signature:
    """`daemon start`'s parameters: the context, the daemon's flags in their table's order (the Slurm
    settings where the table has ``slurm``), then --on-finish."""
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in settings.FLAGS:
        if f.on_cli:
            params.append(_option(f.name, f.type, f.default, f.option, f.help))
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
def daemon_stop(ctx: typer.Context) -> None:
    """Stop the daemon. Running runs go on; the next daemon adopts them."""
    from stilts_tui.queue import ops

    pid = ops.stop_daemon(runs_root(ctx))
    typer.echo("no daemon was running" if pid is None else f"daemon stopped (pid {pid})")


@daemon_app.command("status")
def daemon_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Is the daemon running, with which settings, and the queue's totals."""
    from stilts_tui.queue import mps, ops

    info = ops.daemon_status(runs_root(ctx))
    ledger = Ledger(runs_root(ctx))
    counts: dict[str, int] = {}
    for r in ledger.runs():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    mps_line = mps.describe(runs_root(ctx), (info or {}).get("pid"))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "running": info is not None,
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
        typer.echo(f"no daemon is running on {runs_root(ctx)}")
    else:
        typer.echo(f"daemon running (pid {info.get('pid')}) on {runs_root(ctx)}")
        for key, value in (info.get("settings") or {}).items():  # one setting a line, as `daemon start` takes it
            if isinstance(value, dict):  # the Slurm options: one line of key=value, or none
                value = " ".join(f"{k}={v}" for k, v in value.items() if v not in (None, [], "")) or "none"
            typer.echo(f"  {key.replace('_', '-')}: {'default' if value is None else value}")
    if mps_line:
        typer.echo(mps_line)
    typer.echo(("paused; " if ledger.meta("paused") else "") + ", ".join(f"{v} {k}" for k, v in counts.items()))
