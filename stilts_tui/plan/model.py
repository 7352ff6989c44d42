"""The plan and its runs as data: :class:`Plan` (a validated plan file) and :class:`Run` (one run of its
expansion: what the ledger records and the trainer reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stilts_tui import contract


@dataclass
class Run:
    """One run of an expanded plan: what the ledger records and the trainer reads."""

    id: str
    plan: str
    stage: str  # synth | intermediate | target
    name: str  # the stage's name in the plan ([target.rte] -> "rte")
    task: str
    intermediate: str | None  # the starting point: intermediate stage name, "none", or None (synth)
    seed: int | None
    params: dict
    grid: dict  # the grid values that vary across this target's runs
    parent: str | None
    order: int
    task_spec: dict = field(default_factory=dict)  # resolved data paths, for spec.json
    model: dict = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # runs it waits for, settled (the rank stage's)
    starts: list[dict] = field(default_factory=list)  # a rank run's starting points: {label, run_id}

    def record(self) -> dict:
        """The ledger's view of this run (spec.json holds the rest)."""
        return {
            "id": self.id,
            "plan": self.plan,
            "stage": self.stage,
            "name": self.name,
            "task": self.task,
            "intermediate": self.intermediate,
            "seed": self.seed,
            "params": self.params,
            "grid": self.grid,
            "parent": self.parent,
            "order": self.order,
            **({contract.AFTER_FIELD: self.after} if self.after else {}),  # rows of plans without rank: as before
        }


@dataclass
class Plan:
    """A validated plan file: its settings and stages as written (expansion resolves them into runs)."""

    name: str
    path: Path
    model: str
    baseline: bool
    target_seeds: list[int]
    defaults: dict
    synth: dict[str, dict]
    intermediate: dict[str, dict]
    target: dict[str, dict]
    tasks: dict[str, dict]
    text: str = ""
    slurm: dict = field(default_factory=dict)  # sbatch settings for this plan's runs (not part of run ids)
    on_finish: list[str] | None = None  # as written; `queue add` records it resolved (:meth:`finish_command`)

    def finish_command(self) -> list[str] | None:
        """``on_finish`` as the daemon runs it: a program named with a '/' is relative to the plan's folder.
        `queue add` records this in the ledger; the daemon never reads the plan file again."""
        if not self.on_finish:
            return None
        cmd = list(self.on_finish)
        if "/" in cmd[0]:
            cmd[0] = str((self.dir / cmd[0]).expanduser().resolve())
        return cmd

    @property
    def dir(self) -> Path:
        """The plan file's folder: relative paths in the plan start here."""
        return self.path.parent
