"""`doctor`: GPUs (and the run behind each GPU process), driver, MPS, the hub, disk, the daemon and the
ledger, each line ok or what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from stilts_tui.cli.root import JsonFlag, app, runs_root
from stilts_tui.errors import UserError
from stilts_tui.fmt import json_text, terminal_safe
from stilts_tui.store.ledger import Ledger


def _gpu_checks(root: Path) -> tuple[list[tuple[str, str]], object]:
    """doctor's GPU lines: each GPU NVML fails on, each GPU with its processes (ours by run), the driver."""
    from stilts_tui.queue import gpu_procs
    from stilts_tui.queue import gpus as gpu_info

    checks: list[tuple[str, str]] = []
    probe = gpu_info.probe()
    for g in probe.gpus:
        if g.error:
            checks.append(("fail", f"GPU {g.index}: NVML fails on it ({g.error}); the queue leaves it out"))
    if probe.error:
        checks.append(("fail", f"{probe.error}: the queue places no run until NVML answers"))
    report = gpu_procs.snapshot(root)
    for g in report.gpus:
        used = "?" if g.used_gb is None else f"{g.used_gb:.1f}"
        util = "" if g.util is None else f", {g.util:.0f}% busy"
        checks.append(
            ("ok", f"GPU {g.index}: {g.name}, {used} of {g.total_gb:.1f} GiB used{util}, {len(g.procs)} processes")
        )
        for pr in g.procs:
            who = (
                f"run {' '.join(pr.run_ids)} ({pr.plan}, {pr.stage})"
                if pr.ours
                else f"not ours: user {pr.user or '?'}, {pr.command or '?'}"
            )
            checks.append(("info", f"  pid {pr.pid} on GPU {g.index}: {who}"))
    if report.gpus:
        checks.append(("ok", f"driver {report.driver}"))
    elif not probe.error and not probe.gpus:
        checks.append(
            ("warn", f"no GPU found ({report.reason}): runs train on the CPU; install the NVIDIA driver for GPUs")
        )
    return checks, report


def _mps_check(root: Path, info: dict | None, checks: list[tuple[str, str]]) -> tuple[str | None, bool]:
    """doctor's MPS line: the running daemon's MPS state, a control daemon left over, or whether it can start."""
    from stilts_tui.queue import mps

    mps_line = mps.describe(root, (info or {}).get("pid"))
    mps_ok = bool(shutil.which(mps.EXE))
    if mps_line:
        checks.append(("ok" if mps_line.startswith("MPS on") else "warn", f"the daemon's {mps_line}"))
    elif info is None and mps.control_daemons(mps.base_dir(root)):
        left = ", ".join(str(pr.pid) for pr in mps.control_daemons(mps.base_dir(root)))
        checks.append(
            (
                "warn",
                f"an MPS control daemon is left running for this runs-dir (pid {left}); "
                "`daemon start --mps` reuses or replaces it",
            )
        )
    elif mps_ok:
        checks.append(("ok", f"MPS can start ({mps.EXE} found)"))
    else:
        checks.append(("info", f"MPS unavailable ({mps.EXE} not on PATH); --mps will not work"))
    return mps_line, mps_ok


@app.command("doctor")
def doctor(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Check GPUs (and the run behind each GPU process), driver, MPS, hub reachability, disk and the daemon;
    each line ok or what to do."""
    import shutil

    from stilts_tui.queue import ops
    from stilts_tui.tasks.data import hub_reachable

    root = runs_root(ctx)
    info = ops.daemon_status(root)
    checks, report = _gpu_checks(root)
    mps_line, mps_ok = _mps_check(root, info, checks)
    hub = hub_reachable()  # $HF_ENDPOINT, as the trainer and `tasks show` see it
    if hub:
        checks.append(("ok", "Hugging Face Hub reachable"))
    else:
        checks.append(("warn", "Hugging Face Hub unreachable: set data_dir and local model folders in plans"))
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free / 2**30
    checks.append(
        (
            "ok" if free > 20 else "warn",
            f"{free:.0f} GiB free in {root}"
            + ("" if free > 20 else " (intermediate checkpoints need ~1.5 GB each for RoBERTa-large)"),
        )
    )
    checks.append(
        ("ok", f"daemon running (pid {info.get('pid')})")
        if info
        else ("info", "no daemon running: `stilts-tui daemon start` (queue add starts one)")
    )
    try:
        runs = Ledger(root).runs()
        checks.append(("ok", f"ledger readable ({len(runs)} runs)"))
    except UserError as e:
        runs = []
        checks.append(("fail", str(e)))
    from stilts_tui.queue.executors.slurm import stuck_lines

    checks += [("fail", line) for line in stuck_lines(runs)]
    if as_json:
        typer.echo(
            json_text(
                {
                    **report.as_dict(),
                    "mps": mps_ok,
                    "mps_state": mps_line,
                    "hub_reachable": hub,
                    "disk_free_gb": round(free, 1),
                    "runs_dir": str(root),
                    "daemon": info,
                    "checks": [{"level": lv, "text": t} for lv, t in checks],
                },
                indent=2,
            )
        )
        return
    for level, text in checks:
        typer.echo(f"{level:<5} {terminal_safe(text)}")
