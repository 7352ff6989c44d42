"""The score table's data: one cell per (intermediate, target[, seed]) and the table that holds them.

Data only: the statistics fill a cell (:mod:`.stats`, :mod:`.failed`, :mod:`.table`); the notes and
exports read it (:mod:`.notes`, :mod:`.text`, :mod:`.figure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALPHA = 0.05  # the test's default level (two-sided)
SETUP_KEYS = ("method", "lora", "precision", "tf32", "batching", "pad", "clip", "compile", "fused")
LORA_MARK = "LoRA"  # before a score: the cell's runs are LoRA runs (method = "lora"), not full fine-tunes


@dataclass
class Cell:
    """One (intermediate, target[, seed]) cell: its runs' scores and every statistic of them."""

    intermediate: str
    target: str
    seed: int | None  # set with --by-seed
    n: int
    missing: int
    values: list[float] = field(repr=False)
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    max: float | None = None
    min: float | None = None
    best_of_grid: float | None = None
    gain: float | None = None  # mean(cell) - mean(none), all done runs
    gain_ci: tuple[float, float] | None = None  # bootstrap of that difference (unpaired resampling)
    gain_significant: bool = False  # the paired test's verdict is "significant"
    # failed runs: dev score at or below the majority-class score of the target's dev set
    majority: float | None = None
    failed: int | None = None
    failed_rate: float | None = None
    n_ok: int | None = None
    stopped: int = 0  # runs stopped as degenerate (stop_degenerate): always counted as failed
    pruned: int = 0  # runs a rank stage left out (never trained: among the missing, never counted as failed)
    mean_ok: float | None = None
    std_ok: float | None = None
    # the paired analysis over (seed, grid point) pairs with the "none" row
    pairs: int = 0
    paired_gain: float | None = None
    paired_ci: tuple[float, float] | None = None
    p_value: float | None = None
    test: str | None = None  # "exact" | "monte carlo"
    min_p: float | None = None  # the smallest p the exact test can give with these pairs
    verdict: str | None = None  # "significant" | "not significant" | "too few pairs"
    setups: list[dict] = field(default_factory=list, repr=False)  # distinct result["setup"]s recorded
    setup_note: str | None = None  # why the cell is marked "*": mixed setups, or not what the plan asked
    # the predicted order (stilts_tui.estimate.predicted): this starting point's rank for the target, 1 = best
    predicted_rank: int | None = None
    transferability: float | None = None  # its LogME score (higher: predicted better)

    @property
    def method(self) -> str | None:
        """ "full", "lora", or "full/lora" for a cell that mixes them (None: no setup recorded)."""
        methods = sorted({str(s.get("method", "full")) for s in self.setups})
        return "/".join(methods) or None

    keyed: dict = field(default_factory=dict, repr=False)  # (seed, grid) -> value, for pairing
    stopped_flags: list[bool] = field(default_factory=list, repr=False)  # per value: stopped as degenerate


@dataclass
class ScoreTable:
    """A plan's score table: its rows (starting points), targets, cells, and how they were computed."""

    plan: str
    metric: str  # the metric name, or "primary" when each target uses its own
    metrics: dict[str, str]  # target -> metric used
    by_seed: bool
    rows: list[str]
    targets: list[str]
    cells: list[Cell]
    alpha: float = ALPHA
    without_failed: bool = False  # show the mean and std without the failed runs
    notes: list[str] = field(default_factory=list)  # e.g. a majority score that could not be computed
    rankings: dict = field(default_factory=dict)  # target -> predicted.Ranking (a rank run or `stilts-tui rank`)
    plan_note: str | None = None  # the plan's note (`stilts-tui note --plan`), as typed
    plan_tags: list[str] = field(default_factory=list)

    def cell(self, intermediate: str, target: str, seed: int | None = None) -> Cell | None:
        """The cell of a starting point and target (and seed with --by-seed), or None."""
        for c in self.cells:
            if (c.intermediate, c.target, c.seed) == (intermediate, target, seed):
                return c
        return None
