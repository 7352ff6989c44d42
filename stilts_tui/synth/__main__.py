"""``python -m stilts_tui.synth RUN_DIR``: a plan's synth stage as a run (log, events, result).

Exit status 0 when done, 1 when it failed (the reason is in ``result.json``)."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from stilts_tui.contract import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    SPEC_FILE,
    SYNTH_DATA_DIR,
    Event,
    Result,
    ResultStatus,
)
from stilts_tui.store import rundir


def cli(params: dict, out: Path) -> int:
    """``stilts-tui synth``: a progress bar, one line at the end; bad input is one line and exit 2."""
    from rich.progress import Progress
    from transformers.utils import logging as hf_logging

    from stilts_tui.errors import UserError, report
    from stilts_tui.synth.run import synthesize

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with Progress(transient=True) as bar:
            ids: dict[str, int] = {}

            def progress(split: str, done: int, total: int) -> None:
                if split not in ids:
                    ids[split] = bar.add_task(f"{split} prompts", total=total)
                bar.update(ids[split], completed=done)

            info = synthesize(params, out, progress)
    except UserError as e:
        return report(e)
    print(
        f"wrote {', '.join(f'{v} {k}' for k, v in info['counts'].items())} examples to {out} "
        f"({info['prompts_per_s']:.1f} prompts/s)"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) == 3 and args[0] == "--cli":
        return cli(rundir.loads(args[1]), Path(args[2]))
    if len(args) != 1:
        print("usage: python -m stilts_tui.synth RUN_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = Path(args[0])
    from transformers.utils import logging as hf_logging

    from stilts_tui.errors import UserError, first_line
    from stilts_tui.synth.run import synthesize
    from stilts_tui.train.events import RunLog, write_result

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.time()
    log = RunLog(run_dir)
    result = Result().record()  # failed until it is done
    try:
        spec = rundir.load_json(run_dir / SPEC_FILE, nofollow=True)  # a FIFO or a folder: one line, never a hang
        log.event(Event.START, run_id=spec.get("run_id"))
        log.line(f"synthesis {spec.get('name')}: {spec['params']}")
        last = [0.0]

        def progress(split: str, done: int, total: int) -> None:
            if time.time() - last[0] > 2 or done == total:
                last[0] = time.time()
                log.line(f"{split}: {done}/{total} prompts")
                log.event(
                    Event.STEP,
                    step=done,
                    total_steps=total,
                    epoch=1,
                    split=split,
                    loss=None,
                    lr=None,
                    samples_per_s=done / max(time.time() - t0, 1e-9),
                )

        info = synthesize(spec["params"], run_dir / SYNTH_DATA_DIR, progress)
        result.update(status=ResultStatus.DONE, metrics={"prompts_per_s": info["prompts_per_s"]}, counts=info["counts"])
        log.line(f"done: {info['counts']} in {info['seconds']:.0f} s ({info['prompts_per_s']:.1f} prompts/s)")
    except (UserError, OSError, ValueError, KeyError) as e:
        result["error"] = first_line(e, 300)
    except Exception as e:  # noqa: BLE001 - the run fails with one line; the log has the rest
        result["error"] = f"{type(e).__name__}: {first_line(e, 300)}"
        log.line("".join(traceback.format_exception(e)).rstrip())
    result["wall_seconds"] = round(time.time() - t0, 3)
    if result["status"] != ResultStatus.DONE:
        log.line(f"run failed: {result['error']}")
    log.event(Event.END, status=result["status"], error=result["error"])
    log.close()
    write_result(run_dir, result)
    return EXIT_OK if result["status"] == ResultStatus.DONE else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
