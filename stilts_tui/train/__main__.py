"""``python -m stilts_tui.train RUN_DIR [RUN_DIR...]``: train each run folder, one after another.

Exit status 0 when every run is done, 1 when any failed (each failure is in its ``result.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from stilts_tui.contract import CANCEL_FILE, EXIT_FAILURE, EXIT_OK, PAUSED_FILE, RANK_STAGE, Env, ResultStatus
from stilts_tui.errors import Failure, UserError, report

PROG = "stilts_tui.train"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stilts_tui.train", description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--device", default=os.environ.get(Env.DEVICE, "auto"), help="auto | cpu | cuda")
    ap.add_argument(
        "--compile", default=os.environ.get(Env.COMPILE, "auto"), choices=("auto", "off", "cudagraphs", "inductor")
    )
    ap.add_argument(
        "--compile-scope",
        default=os.environ.get(Env.COMPILE_SCOPE, "regional"),
        choices=("regional", "whole"),
        help="what a compiled run compiles: each encoder layer (one graph every layer reuses) or the whole loss",
    )
    ap.add_argument("--pad", default=os.environ.get(Env.PAD, "auto"), choices=("auto", "max", "buckets", "longest"))
    ap.add_argument(
        "--group",
        default=os.environ.get(Env.GROUP, "auto"),
        choices=("auto", "on", "off"),
        help="length-grouped batches: auto (the spec's batching), on, off (uniformly random)",
    )
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    ap.add_argument(
        "--dropout-streams",
        default="member",
        choices=("member", "one"),
        help="fused arrays, eager: each member draws its run's own dropout masks, or one stream for all",
    )
    ap.add_argument(
        "--fuse",
        type=int,
        default=int(os.environ.get(Env.FUSE, "0") or 0),
        metavar="K",
        help="train runs of one shape as arrays of up to K runs (0 or 1: each run alone)",
    )
    return ap


def _needs_hub(run_dirs: list[Path]) -> bool:
    """Whether a run reads the Hugging Face Hub: a hub model, or a task with no local files."""
    from stilts_tui.contract import SPEC_FILE
    from stilts_tui.store import rundir
    from stilts_tui.tasks import data

    for d in run_dirs:
        try:
            spec = rundir.read_json(d / SPEC_FILE, nofollow=True) or {}
            model, task = spec["model"], spec["task"]
            if (model.get("source") == "hub" and not model.get("path")) or (
                task.get("hub") and data.file_for(task, "train") is None
            ):
                return True
        except Exception:  # noqa: BLE001 - a bad spec is reported by the run itself
            continue
    return False


def _offline_if_unreachable(run_dirs: list[Path]) -> None:
    """With the hub unreachable, transformers and datasets read their local caches at once instead of
    retrying for about 26 s a run before they fail: offline mode (unless the user set it either way)."""
    if "HF_HUB_OFFLINE" in os.environ or not _needs_hub(run_dirs):
        return
    from stilts_tui.tasks.data import hub_reachable

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        print(
            f"the Hugging Face Hub ({url}) is unreachable: reading only the local caches (HF_HUB_OFFLINE=1)",
            file=sys.stderr,
            flush=True,
        )


def _stage(run_dir: Path) -> str | None:
    """The stage a run folder's spec.json names (None where it cannot be read: the trainer says why)."""
    from stilts_tui.contract import SPEC_FILE
    from stilts_tui.store import rundir

    return (rundir.read_json(run_dir / SPEC_FILE, nofollow=True) or {}).get("stage")


def _rank_runs(dirs: list[Path], device: str) -> list[str]:
    """A plan's rank runs (stilts_tui.train.rank): each run's status."""
    if not dirs:
        return []
    from stilts_tui.train.rank import rank_run

    return [rank_run(d, device) for d in dirs]


def _threads() -> dict:
    """Size torch's pools to the share the daemon gave this process (``STILTS_THREADS``), else to Slurm's
    ``--cpus-per-task``; a trainer started by hand keeps torch's defaults (OMP_NUM_THREADS, else the
    machine's cores). What the process uses, and why, for result.json."""
    import torch

    given = os.environ.get(Env.THREADS) or os.environ.get("SLURM_CPUS_PER_TASK")
    n = int(given) if given and given.isdigit() and int(given) > 0 else None
    if n is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # the inter-op pool already started (only when something ran in parallel first)
            pass
    if os.environ.get(Env.THREADS) and n is not None:
        why = os.environ.get(Env.THREADS_WHY) or "the daemon's share"
    elif n is not None:
        why = f"Slurm's --cpus-per-task ({n})"
    else:
        why = f"started by hand: torch's default (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(), "why": why}


def _worker(args: argparse.Namespace, device, startup_s: float, threads: dict):
    """The process's worker: the device and the flags every run of it trains with."""
    from stilts_tui.train.worker import Settings, Worker

    return Worker(
        threads=threads,
        startup_s=startup_s,
        settings=Settings(
            device=device,
            compile=args.compile,
            compile_scope=args.compile_scope,
            pad=args.pad,
            attn=args.attn,
            group=args.group,
            dropout_streams=args.dropout_streams,
        ),
    )


def _hold_while_paused(group: list[Path], poll_s: float = 0.5) -> None:
    """Wait before beginning ``group`` while its runs-dir's :data:`PAUSED_FILE` exists (the queue was
    paused after this worker was given the runs): a paused queue begins no run, even one a worker holds.
    A cancel of a run in the group ends the wait (the run is then skipped as cancelled)."""
    paused = group[0].resolve().parent / PAUSED_FILE
    said = False
    while os.path.lexists(paused) and not any((d / CANCEL_FILE).exists() for d in group):
        if not said:
            print(f"queue paused: {len(group)} run(s) wait in this worker until it resumes", flush=True)
            said = True
        time.sleep(poll_s)


def _no_cuda(dirs: list[Path]) -> int:
    """A process placed on a GPU that sees no CUDA: each run fails saying so (never trained on the CPU)."""
    import torch

    from stilts_tui.train.members import fail_run
    from stilts_tui.train.worker import Settings, Worker

    why = (
        f"CUDA is not available in this process (CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); a run placed on a GPU trains there or not at all"
    )
    for d in dirs:
        fail_run(Worker(Settings(device=torch.device("cpu"))), d, why)
    report(Failure(why), prog=PROG)
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # compiled kernels are cached beside the runs, shared by every worker (70 s cold -> ~13 s warm)
    cache = args.run_dirs[0].resolve().parent / ".cache"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    # inductor's FX graph cache and AOTAutograd's cache (on by default in torch 2.13; said here so that a
    # later torch or a user's environment cannot silently make every process compile cold)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _offline_if_unreachable(args.run_dirs)

    import psutil
    import torch
    from transformers.utils import logging as hf_logging

    from stilts_tui.train.engines.array import arrays, can_fuse
    from stilts_tui.train.loop import train_group, train_run

    startup_s = time.time() - psutil.Process().create_time()  # the process's start and its imports
    threads = _threads()  # before anything runs in torch's pools
    hf_logging.set_verbosity_error()  # no weight-loading reports or progress bars in train.log
    hf_logging.disable_progress_bar()

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    statuses = []
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            report(UserError(f"{run_dir}: no such run folder"), prog=PROG)
            statuses.append(ResultStatus.FAILED)
    dirs = [d for d in args.run_dirs if d.is_dir()]
    if device.type == "cuda" and not torch.cuda.is_available():  # never train a GPU placement on the CPU
        return _no_cuda(dirs)
    worker = _worker(args, device, startup_s, threads)
    statuses += _rank_runs([d for d in dirs if _stage(d) == RANK_STAGE], str(device))  # scored, not trained
    dirs = [d for d in dirs if _stage(d) != RANK_STAGE]
    groups = arrays(dirs, args.fuse) if args.fuse > 1 else [[d] for d in dirs]
    for i, group in enumerate(groups):
        if i:  # the first was begun by the launch; a later one waits while the queue is paused
            _hold_while_paused(group)
        if len(group) > 1 and can_fuse(group[0]):
            statuses += [r["status"] for r in train_group(worker, group, fuse=True)]
        else:
            statuses += [train_run(worker, d)["status"] for d in group]
    return EXIT_OK if all(s == ResultStatus.DONE for s in statuses) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
