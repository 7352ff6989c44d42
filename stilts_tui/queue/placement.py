"""Where a run may go: memory estimates (learned from finished runs of the same shape, a safe
formula before any), the choice of a GPU with room, and the grouping of ready runs into launches
(workers trained in sequence, fused arrays; one run a job on Slurm)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from stilts_tui.contract import TRAINED_STAGES, Status, array_key, is_lora, shape_key, waits
from stilts_tui.estimate.modelsize import model_params

MARGIN = 1.15  # learned peaks are padded by this much
HEADROOM = 0.95  # never plan beyond this share of a GPU's memory


GENERATION_LEN = 128  # tokens of a synthesis batch's texts, for its memory formula (a synth run has no max_len)


def formula_gb(spec: dict, k: int = 1) -> float:
    """A safe first estimate for ``k`` runs of ``spec``'s shape in one process: weights, gradients and
    AdamW state in fp32 (16 bytes a parameter, plus bf16 copies) and activations growing with batch x
    choices x length, for each run. LoRA runs share one frozen encoder: its weights (and a bf16 copy)
    count once, and each run adds its activations and its adapters and head with their gradients and
    AdamW state (at most 1 % of the encoder for rank 16 on two layers; more for more).
    The spec is checked (queue/checks.py): a trained run's params hold every training default."""
    params = model_params(spec.get("model", {}))
    p = spec["params"]
    choices = spec.get("task", {}).get("num_choices") or 1
    length = p["max_len"] if spec.get("stage") in TRAINED_STAGES else GENERATION_LEN
    tokens = p["batch_size"] * choices * length
    act = tokens * 1.2e-3 * (params / 355e6)
    if is_lora(p):
        lora = p.get("lora") or {}
        own = 0.01 * params * max(1.0, lora.get("r", 8) * len(lora.get("targets") or [0, 0]) / 32)
        return round(max(1.0, 6 * params / 2**30 + k * (act + 16 * own / 2**30)), 2)
    return round(k * max(1.0, 18 * params / 2**30 + act), 2)


@dataclass
class Device:
    """A GPU (or the CPU, index None) and what this queue has placed on it."""

    index: int | None
    total_gb: float
    free_gb: float
    slots: int
    reserved_gb: float = 0.0
    procs: int = 0
    alone: bool = False  # a run that must be alone holds it
    run_ids: list[str] = field(default_factory=list)

    def room_gb(self) -> float:
        return min(self.total_gb * HEADROOM - self.reserved_gb, self.free_gb)

    def fits(self, est_gb: float, alone: bool) -> bool:
        if self.alone or self.procs >= self.slots:
            return False
        if alone:
            return self.procs == 0
        return self.index is None or est_gb <= self.room_gb()


def choose(devices: list[Device], est_gb: float, alone: bool) -> Device | None:
    """The device with the most room that fits (spreads runs across GPUs)."""
    ok = [d for d in devices if d.fits(est_gb, alone)]
    if not ok:
        return None
    return max(ok, key=lambda d: (d.room_gb() if d.index is not None else 0, -d.procs))


# -- fused arrays: what finished runs measured ---------------------------------------------------------

MAX_ARRAY = 16  # --fuse auto: at most this many runs in one array
PROBE_ARRAY = 4  # --fuse auto: an array of a shape with no measured peak yet holds at most this many


@dataclass
class Shape:
    """What finished runs of one shape measured."""

    share_gb: float | None = None  # the largest peak a run: an array's peak / its K, or a run's own peak
    share_from: str = ""  # which run gave it, for the log
    fused_rates: list[float] = field(default_factory=list)  # samples/s a run, trained in arrays
    alone_rates: list[float] = field(default_factory=list)  # samples/s a run, trained in its own process


def array_size(result: dict, ledger_fused: int | None) -> int:
    """How many runs shared the process that wrote ``result`` (1 when it trained alone): the trainer's
    own count (runs that failed to join an array are not in it), else what the daemon launched."""
    setup = result.get("setup") or {}
    for k in (setup.get("fused"), result.get("fused"), ledger_fused):
        if isinstance(k, int) and not isinstance(k, bool) and k >= 0:
            return max(1, k)
    return 1


class Measurements:
    """Per shape: the measured memory a run takes, and samples/s a run fused and alone, read from the
    ``result.json`` of finished runs. Each result is read once (keyed by run id and finish time)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple] = {}  # run id -> (finished, shape, peak_gb, k, samples/s)
        self._shapes: dict[str, Shape] = {}

    def update(self, runs: list[dict], read_result) -> None:
        for r in runs:
            if r["status"] != Status.DONE or not r.get("shape"):
                continue
            mark = (r.get("finished"), r["shape"])
            old = self._seen.get(r["id"])
            if old is not None and old[:2] == mark:
                continue
            res = read_result(r["id"]) or {}
            peak = res.get("peak_gpu_mem_gb", r.get("peak_gpu_mem_gb"))
            rate = res.get("samples_per_s")
            self._seen[r["id"]] = (
                *mark,
                peak if _num(peak) else None,
                array_size(res, r.get("fused")),
                rate if _num(rate) else None,
            )
        self._shapes = {}
        for rid, (_, shape, peak, k, rate) in self._seen.items():
            sh = self._shapes.setdefault(shape, Shape())
            if peak is not None and peak > 0 and (sh.share_gb is None or peak / k > sh.share_gb):
                # peak / K, not (peak - fixed) / K: one array cannot tell a fixed part from the runs' parts,
                # and charging each run its share of the fixed part errs on the safe side for larger K
                sh.share_gb, sh.share_from = peak / k, f"{rid} ({peak:g} GB, {k} run{'s' if k > 1 else ''})"
            if rate is not None and rate > 0:
                (sh.fused_rates if k > 1 else sh.alone_rates).append(rate)

    def shape(self, key: str) -> Shape:
        return self._shapes.get(key) or Shape()

    def packing_reason(self, key: str) -> str | None:
        """Why separate processes beat an array for this shape, or None (fuse) until both are measured."""
        sh = self.shape(key)
        if not sh.fused_rates or not sh.alone_rates:
            return None
        fused = sum(sh.fused_rates) / len(sh.fused_rates)
        alone = sum(sh.alone_rates) / len(sh.alone_rates)
        if fused >= alone:
            return None
        return (
            f"packing, not fusing: fused runs measured {fused:.1f} samples/s a run "
            f"({len(sh.fused_rates)} runs) < {alone:.1f} alone ({len(sh.alone_rates)} runs)"
        )


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# -- what one launch starts, and the grouping of ready runs ---------------------------------------------


@dataclass
class Launch:
    """Runs started as one process (a worker trained in sequence, or a fused array) on ``device``, or one
    run submitted to Slurm (``device`` None, after the parent's job in ``dependency``). The executor sets
    ``ok`` (and ``job_id`` for Slurm) once it started them: the grouping of later runs depends on it."""

    runs: list[dict]
    device: Device | None = None
    est_gb: float = 0.0
    shape: str = ""
    fused: int = 0
    why: str = ""
    dependency: str | None = None
    ok: bool = False
    job_id: str | None = None


def ready(runs: list[dict]) -> list[dict]:
    """Queued runs whose parent (if any) is done and that wait for nothing, in the ledger's order."""
    status = {r["id"]: r["status"] for r in runs}
    return [
        r
        for r in runs
        if r["status"] == Status.QUEUED
        and (not r.get("parent") or status.get(r["parent"]) == Status.DONE)
        and not waits(r, status)
    ]


def slurm_launches(runs: list[dict], max_jobs: int) -> Iterator[Launch]:
    """The trivial placement of the Slurm executor: each queued run alone, Slurm places it. A run whose
    parent is done goes as is; one whose parent's job is in Slurm goes after it (``--dependency``); at
    most ``max_jobs`` of our runs in Slurm at once."""
    by_id = {r["id"]: r for r in runs}
    status = {r["id"]: r["status"] for r in runs}
    room = max_jobs - sum(1 for r in runs if r["status"] == Status.RUNNING)
    for r in runs:
        if room <= 0:
            return
        if r["status"] != Status.QUEUED or waits(r, status):  # a rank run's outcome is the daemon's to act on first
            continue
        parent = by_id.get(r.get("parent")) if r.get("parent") else None
        dependency = None
        if parent is not None and parent["status"] != Status.DONE:
            if parent["status"] != Status.RUNNING or not parent.get("job_id"):
                continue
            dependency = parent["job_id"]
        launch = Launch([r], dependency=dependency)
        yield launch
        if launch.ok:
            room -= 1
            if dependency is None:  # its children may follow in this tick, after its job
                by_id[r["id"]] = {**r, "status": Status.RUNNING.value, "job_id": launch.job_id}


class Grouper:
    """Which ready runs share a process and where it goes: runs of one shape trained in sequence by one
    worker (up to ``worker_runs``), or fused as one array (``--fuse`` / a plan's ``fuse = true``), on the
    device with most room. ``spec`` reads a run's checked spec.json; ``log`` writes daemon.log."""

    def __init__(self, spec: Callable[[str], dict], fuse: str, worker_runs: int, log: Callable[[str], None]):
        self.spec, self.fuse, self.worker_runs, self.log = spec, fuse, worker_runs, log
        self.learned = Measurements()
        self._array_keys: dict[str, str | None] = {}
        self._packing: dict[str, str] = {}

    def forget(self, run_id: str) -> None:
        """Drop what is cached of a run (its spec changed or it failed)."""
        self._array_keys.pop(run_id, None)

    def estimate(self, run: dict) -> tuple[float, str]:
        """A run's memory estimate (GB) and its shape: the measured peak a run of its shape (an array's
        peak / K) with a margin, else the formula."""
        spec = self.spec(run["id"])
        key = shape_key(spec)
        share = self.learned.shape(key).share_gb
        if share is not None:
            return round(share * MARGIN + 0.25, 2), key
        return formula_gb(spec), key

    def group_gb(self, run: dict, est: float, k: int) -> float:
        """The estimate of an array of ``k`` runs of ``run``'s shape: k times a run's (a measured share,
        or the formula), except LoRA runs before any is measured: their frozen encoder counts once."""
        spec = self.spec(run["id"])
        if is_lora(spec.get("params")) and self.learned.shape(shape_key(spec)).share_gb is None:
            return formula_gb(spec, k)
        return round(est * k, 2)

    def array_key(self, run_id: str) -> str | None:
        if run_id not in self._array_keys:
            self._array_keys[run_id] = array_key(self.spec(run_id))
        return self._array_keys[run_id]

    def fuse_mode(self, run: dict) -> tuple[str, str] | None:
        """How a run may be fused: (sizing "auto" or "K", why), or None when it trains in its own process.
        A plan's ``fuse = true`` asks for it (sized as the daemon's --fuse says, auto when off); an
        explicit daemon --fuse fuses every run of a shape, the operator's override."""
        asked = (self.spec(run["id"]).get("params") or {}).get("fuse") is True
        if asked:
            sizing = "auto" if self.fuse == "off" else self.fuse
            return sizing, f"the plan asks (fuse = true), --fuse {sizing} sizing"
        if self.fuse != "off":
            return self.fuse, f"daemon --fuse {self.fuse} (the operator's override: the plan did not ask)"
        return None

    def array_mates(self, ready: list[dict]) -> dict[str, list[dict]]:
        """Ready runs that may share an array, by array key (runs that must be alone, never)."""
        by_key: dict[str, list[dict]] = {}
        for r in ready:
            if r.get("alone") or (r.get("fuse_max") or MAX_ARRAY) < 2 or self.fuse_mode(r) is None:
                continue
            k = self.array_key(r["id"])
            if k is not None:
                by_key.setdefault(k, []).append(r)
        return by_key

    def array(
        self, r: dict, by_key: dict[str, list[dict]], taken: set[str], devs: list[Device], est: float
    ) -> tuple[list[dict], Device | None, str]:
        """Ready runs to train with ``r`` as one fused array, the device they fit on together, and why:
        up to K runs (``--fuse K``), or as many as fit by the measured peak a run (``--fuse auto``, GPUs
        only; at most PROBE_ARRAY before a run of the shape has finished, and packing where fused runs
        measured slower). An OOM halves the array a run may join (its ``fuse_max``)."""
        mode, key, cap = self.fuse_mode(r), self.array_key(r["id"]), r.get("fuse_max") or MAX_ARRAY
        if mode is None or key is None or r.get("alone") or cap < 2:
            return [r], None, ""
        sizing, why = mode
        shape = shape_key(self.spec(r["id"]))
        measured = self.learned.shape(shape)
        if sizing == "auto":
            if all(d.index is None for d in devs):
                return [r], None, ""  # on the CPU an array gains little: runs go alone
            pack = self.learned.packing_reason(shape)
            if pack:
                if pack != self._packing.get(shape):
                    self._packing[shape] = pack
                    self.log(f"{shape}: {pack}")
                return [r], None, pack
            limit = MAX_ARRAY if measured.share_gb is not None else PROBE_ARRAY
        else:
            limit = int(sizing)
        mates = [r] + [o for o in by_key.get(key, []) if o is not r and o["id"] not in taken]
        for k in range(min(len(mates), limit, cap), 1, -1):  # the largest array that fits somewhere
            group = [m for m in mates if (m.get("fuse_max") or MAX_ARRAY) >= k][:k]
            dev = choose(devs, self.group_gb(r, est, k), False) if len(group) == k else None
            if dev is not None:
                size = (
                    f"{measured.share_gb:.2f} GB a run measured by {measured.share_from}"
                    if measured.share_gb is not None
                    else "no run of this shape measured yet"
                    + (f" (at most {PROBE_ARRAY} until one is)" if sizing == "auto" else "")
                    + f", formula {est} GB a run"
                )
                return (
                    group,
                    dev,
                    f"{why}; {k} runs: {size}" + (f"; capped at {cap} after an OOM" if cap < MAX_ARRAY else ""),
                )
        return [r], None, ""

    def worker_group(self, r: dict, ready: list[dict], taken: set[str], key: str) -> list[dict]:
        """``r`` and ready runs of its shape for one worker to train in sequence (up to ``worker_runs``)."""
        group = [r]
        if r.get("alone") or r["stage"] not in TRAINED_STAGES:  # a synth or rank run has its own process
            return group
        for other in ready:
            if len(group) >= self.worker_runs:
                break
            if other["id"] in taken or other is r or other.get("alone") or other["stage"] not in TRAINED_STAGES:
                continue
            if self.estimate(other)[1] == key:
                group.append(other)
        return group

    def launches(
        self, runs: list[dict], devs: list[Device], mark: Callable[[str], None] = lambda _: None
    ) -> Iterator[Launch]:
        """The local placement: each ready run, in order, with its array or worker mates, on the device
        with most room where it fits; runs that fit nowhere wait. The launcher updates ``devs``; ``mark``
        hears which run is handled (an error in its spec is blamed on it)."""
        ready_runs = ready(runs)
        taken: set[str] = set()
        by_key = self.array_mates(ready_runs)  # once a tick, not once a run
        for r in ready_runs:
            if r["id"] in taken:
                continue
            if not any(d.procs < d.slots and not d.alone for d in devs):
                return
            mark(r["id"])
            est, key = self.estimate(r)
            group, dev, why = self.array(r, by_key, taken, devs, est)
            fused = len(group) if dev is not None else 0
            if dev is None:
                dev = choose(devs, est, bool(r.get("alone")))
                if dev is None:
                    continue
                group = self.worker_group(r, ready_runs, taken, key)
            else:
                est = self.group_gb(r, est, len(group))
            taken.update(x["id"] for x in group)
            yield Launch(group, dev, est, key, fused, why)
