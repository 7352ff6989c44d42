"""The trackers a run reports to (a plan's ``report_to``, Hugging Face's names): its resolved settings, its
step metrics (loss, lr, samples/s) and its evaluations, logged through each tracker's own library in its
local or offline mode: TensorBoard event files in the run folder, MLflow's file store under the runs-dir,
W&B offline files in the run folder.

A run's :class:`RunLog` (train/events.py) hands every event it writes to events.jsonl to the run's
:class:`Sink` as well, so a tracker sees exactly what the file holds. A tracker that fails (not installed,
a folder it cannot write, an error while logging) never fails the run: one warning line in train.log,
that tracker off for the rest of the run, and ``trackers`` in result.json says which ended how.

``python -m stilts_tui.train.trackers`` replays finished runs' events.jsonl into one tracker (what
``stilts-tui export`` runs, as a process: the tracker libraries, torch's TensorBoard writer among them,
are imported by the trainer's processes alone). The tracker libraries are imported here only, inside
the functions that open a tracker: importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui.contract import (
    EVENTS_FILE,
    MLFLOW_DIR,
    REPORT_TO,
    REPORT_TO_KEY,
    SPEC_FILE,
    TENSORBOARD_DIR,
    TRAINED_STAGES,
    WANDB_DIR,
    Event,
    ResultStatus,
    Status,
)
from stilts_tui.store import files

OK = "ok"
STEP_KEYS = ("loss", "lr", "samples_per_s")  # a step event's metrics, logged as train/<key>
MLFLOW_ENDS = {ResultStatus.DONE: "FINISHED", ResultStatus.DEGENERATE: "FINISHED", Status.CANCELLED: "KILLED"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


@dataclass
class RunInfo:
    """What a tracker is told of a run: where it lives, its tags and its resolved settings."""

    run_dir: Path
    run_id: str
    plan: str
    stage: str
    name: str  # the stage's name in the plan (the target, or the intermediate stage)
    start: str  # the starting point: the intermediate a target starts from ("none": the model), else its name
    seed: int
    group: str  # every setting but the seed: the runs a tracker's UI draws as one line with a band
    hparams: dict = field(default_factory=dict)  # flat: str, int, float or bool values
    metrics: list[str] = field(default_factory=list)  # the task's dev metrics (eval/<metric>)

    @property
    def runs_root(self) -> Path:
        return self.run_dir.parent

    @property
    def run_name(self) -> str:
        return f"{self.group}.seed{self.seed}"

    @property
    def tags(self) -> dict[str, str]:
        target = self.name if self.stage == "target" else "-"
        return {
            "plan": self.plan,
            "stage": self.stage,
            "start": self.start,
            "target": target,
            "seed": str(self.seed),
            "group": self.group,
            "run_id": self.run_id,
        }

    @classmethod
    def of(cls, run_dir: Path, spec: dict, grid: dict | None = None) -> RunInfo:
        """A run's info from its spec.json (``grid``: what varies in its target's grid, where the spec
        predates ``report_to`` and so does not say; the ledger's row does)."""
        stage, name = str(spec["stage"]), str(spec.get("name") or spec["task"].get("name"))
        start = str(spec.get("intermediate") or "none")
        grid = spec.get("grid") if grid is None else grid
        parts = [str(spec.get("plan") or "plan"), stage, name] + ([f"from-{start}"] if stage == "target" else [])
        parts += [f"{k}={v}" for k, v in sorted((grid or {}).items())]
        hparams = _flat(spec["params"])
        hparams.update(
            seed=int(spec["seed"]),
            task=str(spec["task"].get("name")),
            model=str(spec["model"].get("parent") or spec["model"].get("name")),
        )
        info = cls(
            run_dir=Path(run_dir),
            run_id=str(spec["run_id"]),
            plan=str(spec.get("plan") or "plan"),
            stage=stage,
            name=name,
            start=start,
            seed=int(spec["seed"]),
            group=_UNSAFE.sub("_", ".".join(parts)),
            metrics=list(spec["task"].get("metrics") or [spec["task"].get("metric") or "acc"]),
        )
        info.hparams = {**{k: v for k, v in info.tags.items() if k != "seed"}, **hparams}
        return info


def _flat(params: dict, prefix: str = "") -> dict:
    """Settings as trackers take them: nested tables as dotted keys, lists and nulls as text."""
    out: dict = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, str)):
            out[prefix + k] = v
        else:
            out[prefix + k] = json.dumps(v)
    return out


# ---- the trackers: each opened with a run's info, told its scalars, ended once --------------------------


class TensorBoard:
    """Event files in ``<run>/tensorboard/<group>.seed<N>/``: the run name TensorBoard shows carries the
    group, so a regex of it selects every seed; the settings go to the HParams dashboard."""

    def __init__(self, info: RunInfo, replace: bool = True):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        top = info.run_dir / TENSORBOARD_DIR
        if top.is_dir():  # the run folder's curves are its last attempt's (or export's): never two overlaid
            shutil.rmtree(top)
        self.w = SummaryWriter(log_dir=str(top / info.run_name), flush_secs=10)
        for summary in hparams(info.hparams, {f"eval/{m}": 0.0 for m in info.metrics}):
            self.w.file_writer.add_summary(summary)

    def scalars(self, values: dict[str, float], step: int, t: float) -> None:
        for tag, value in values.items():
            self.w.add_scalar(tag, value, global_step=step, walltime=t)

    def end(self, status: str | None) -> None:
        self.w.close()


class MLflow:
    """One MLflow run a run (an experiment a plan) in the file store ``<runs-dir>/.mlflow`` (a file store:
    every trainer process writes its own run's folder, where a database would be one file all of them
    lock), or where ``MLFLOW_TRACKING_URI`` points, as Hugging Face's callback does."""

    def __init__(self, info: RunInfo, replace: bool = False):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (info.runs_root / MLFLOW_DIR).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store in maintenance: its opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.c = MlflowClient(tracking_uri=uri)
        exp = self.c.get_experiment_by_name(info.plan)
        exp_id = exp.experiment_id if exp is not None else self.c.create_experiment(info.plan)
        if replace:  # an export replaces what an earlier export (or the run itself) logged
            for old in self.c.search_runs([exp_id], filter_string=f"tags.run_id = '{info.run_id}'"):
                self.c.delete_run(old.info.run_id)
        self.id = self.c.create_run(exp_id, run_name=info.run_name, tags=info.tags).info.run_id
        params = [Param(k, str(v)) for k, v in info.hparams.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.c.log_batch(self.id, params=params[i : i + 100])

    def scalars(self, values: dict[str, float], step: int, t: float) -> None:
        from mlflow.entities import Metric

        ms = int(t * 1000)
        self.c.log_batch(self.id, metrics=[Metric(k, float(v), ms, step) for k, v in values.items()])

    def end(self, status: str | None) -> None:
        self.c.set_terminated(self.id, MLFLOW_ENDS.get(status, "FAILED"))


class WandB:
    """A W&B run in ``<run>/wandb/``, offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads
    it): project the plan, group every setting but the seed, job type the stage."""

    def __init__(self, info: RunInfo, replace: bool = False):
        import wandb

        folder = info.run_dir / WANDB_DIR
        folder.mkdir(exist_ok=True)
        self.run = wandb.init(
            project=info.plan,
            group=info.group,
            name=info.run_name,
            job_type=info.stage,
            tags=[info.stage, info.name, f"from-{info.start}"],
            config=info.hparams,
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",  # a fused array: one W&B run for each of its runs, at once
            # train.log is the run's console: W&B neither wraps the process's output nor prints its own
            settings=wandb.Settings(console="off", silent=True),
        )

    def scalars(self, values: dict[str, float], step: int, t: float) -> None:
        self.run.log(dict(values), step=step)

    def end(self, status: str | None) -> None:
        self.run.finish(exit_code=0 if status in (ResultStatus.DONE, ResultStatus.DEGENERATE) else 1)


OPENERS: dict[str, Callable[..., object]] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # the module each needs
assert set(OPENERS) == set(REPORT_TO)


def _why(name: str, e: BaseException) -> str:
    """One line: why a tracker failed."""
    if isinstance(e, ImportError):
        if (e.name or "").split(".")[0] == PACKAGES[name] or name == "tensorboard":  # torch's says it in words
            return f"{PACKAGES[name]} is not installed (pip install 'stilts-tui[{name}]')"
        return f"{PACKAGES[name]} does not import ({' '.join(str(e).split())[:200]})"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class Sink:
    """A run's trackers, fed the run's events. Each tracker that raises is recorded and dropped, once."""

    def __init__(self, info: RunInfo, names: Iterable[str], warn: Callable[[str], None], replace: bool = False):
        self.info, self.warn = info, warn
        self.states: dict[str, str] = {}
        self.live: dict[str, object] = {}
        self.per_epoch: int | None = None
        self.last_step = 0
        self.ended = False
        for name in names:
            try:
                self.live[name] = OPENERS[name](info, replace=replace)
                self.states[name] = OK
            except Exception as e:  # noqa: BLE001 - a tracker never fails the run
                self._failed(name, e)

    def _failed(self, name: str, e: BaseException) -> None:
        why = _why(name, e)
        self.states[name] = f"failed: {why}"
        self.live.pop(name, None)
        self.warn(f"warning: tracker {name} failed ({why}); the run goes on without it")

    def _each(self, call: Callable[[object], None]) -> None:
        for name, tracker in list(self.live.items()):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker never fails the run
                self._failed(name, e)

    def event(self, name: str, t: float, fields: dict) -> None:
        """One event of events.jsonl (its name, time and fields) to every live tracker."""
        if name == Event.BEGIN and fields.get("total_steps") and fields.get("epochs"):
            self.per_epoch = int(fields["total_steps"]) // int(fields["epochs"])
        elif name == Event.STEP:
            step = int(fields["step"])
            self.last_step = step
            values = {f"train/{k}": fields[k] for k in STEP_KEYS if isinstance(fields.get(k), (int, float))}
            self._each(lambda tr: tr.scalars(values, step, t))
        elif name == Event.EVAL and isinstance(fields.get("metrics"), dict):
            epoch = int(fields.get("epoch") or 0)
            # at the epoch's last optimizer step, which the step events need not have logged
            step = epoch * self.per_epoch if self.per_epoch and epoch else self.last_step
            values = {f"eval/{k}": v for k, v in fields["metrics"].items() if isinstance(v, (int, float))}
            self._each(lambda tr: tr.scalars(values, step, t))
        elif name == Event.END:
            self.end(fields.get("status"))

    def end(self, status: str | None) -> None:
        """End every tracker once (the end event, or the log closed without one)."""
        if not self.ended:
            self.ended = True
            self._each(lambda tr: tr.end(status))
            self.live.clear()


def open_sink(run_dir: Path, warn: Callable[[str], None]) -> Sink | None:
    """The trackers a trained run's spec.json names, opened; None where it names none (or is unreadable:
    the trainer says so itself)."""
    try:
        spec = files.load_json(run_dir / SPEC_FILE, nofollow=True)
        names = spec.get(REPORT_TO_KEY) or []
        if not names or spec.get("stage") not in TRAINED_STAGES:
            return None
        info = RunInfo.of(run_dir, spec)
    except (OSError, files.DamagedFile, ValueError, KeyError, TypeError, AttributeError):
        return None
    known = [n for n in names if n in OPENERS]
    sink = Sink(info, known, warn)
    for n in names:
        if n not in OPENERS:
            sink.states[n] = f"failed: unknown tracker (known: {', '.join(REPORT_TO)})"
            warn(f"warning: tracker {n} is unknown (known: {', '.join(REPORT_TO)}); the run goes on without it")
    return sink


# ---- replay: `stilts-tui export` -----------------------------------------------------------------------


def last_attempt(run_dir: Path) -> list[dict]:
    """The events of the run's last attempt (from its last start event); unreadable lines are skipped."""
    events: list[dict] = []
    try:
        lines = (
            (files.load_bytes(run_dir / EVENTS_FILE, 1 << 30, nofollow=True)).decode("utf-8", "replace").splitlines()
        )
    except (OSError, files.DamagedFile):
        return []
    for line in lines:
        try:
            e = files.loads(line)
        except ValueError:
            continue
        if not isinstance(e, dict):
            continue
        if e.get("event") == Event.START:
            events = []
        events.append(e)
    return events


def replay(run_dir: Path, to: str, grid: dict | None, warn: Callable[[str], None]) -> str:
    """One finished run's last attempt into tracker ``to``: "ok", "skipped: ..." or "failed: ..."."""
    spec = files.load_json(run_dir / SPEC_FILE, nofollow=True)
    events = last_attempt(run_dir)
    if not any(e.get("event") == Event.STEP for e in events):
        return "skipped: no step logged"
    sink = Sink(RunInfo.of(run_dir, spec, grid), [to], warn, replace=True)
    for e in events:
        if e.get("event") != Event.START:
            sink.event(str(e.get("event")), float(e.get("t") or 0), e)
    sink.end(None)  # where the attempt has no end event (its process was killed)
    return sink.states[to]


def main(argv: list[str] | None = None) -> int:
    """Read ``{"to": NAME, "runs": [{"dir": RUN_DIR, "grid": {...}}, ...]}`` on stdin; one line a run on
    stdout (``RUN_ID STATE``); exit 1 where any run failed to export."""
    request = json.loads(sys.stdin.read())
    to, failed = request["to"], 0
    for r in request["runs"]:
        d = Path(r["dir"])
        try:
            state = replay(d, to, r.get("grid"), lambda _line: None)
        except (OSError, files.DamagedFile, ValueError, KeyError, TypeError) as e:
            state = f"failed: {_why(to, e)}"
        failed += state.startswith("failed")
        print(f"{d.name} {state}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
