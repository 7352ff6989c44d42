"""What a Slurm partition's nodes can hold, asked of ``sinfo`` before a study is submitted: a plan whose
one job no node can run is refused with the setting to change, rather than left pending for good."""

from __future__ import annotations

from dataclasses import dataclass

from stilts_tui.plan.slurm import resolved
from stilts_tui.queue.executors.slurm import SlurmError, one_line, slurm_command


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


def partition_nodes(partition: str | None) -> tuple[str, list[Node]]:
    """The nodes of a partition (the default one when None), as sinfo reports them: (partition, nodes)."""
    args = ["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G"]
    out = slurm_command(args + (["-p", partition] if partition else []))
    if out.returncode != 0:
        raise SlurmError(f"sinfo: {one_line(out)}")
    nodes, default = [], None
    for line in out.stdout.splitlines():
        part, name, cpus, mem, gres = (line.strip().split("|") + ["", "", "", ""])[:5]
        if not partition:
            if not part.endswith("*"):
                continue
            default = part.rstrip("*")
        nodes.append(Node(name, _int(cpus), _int(mem), _gpus(gres)))
    return (partition or default or "(default)"), nodes


def _int(text: str) -> int:
    digits = "".join(c for c in text.split("+")[0] if c.isdigit())
    return int(digits) if digits else 0


def _gpus(gres: str) -> int:
    """GPUs in an sinfo %G field such as ``gpu:2``, ``gpu:a100:4(S:0-1)`` or ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def mem_mb(text: str) -> int:
    """sbatch's --mem value in MB (a bare number is MB)."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    unit = text[-1].upper() if text and text[-1].isalpha() else "M"
    return int(float(text.rstrip("KMGTkmgt")) * units.get(unit, 1))


def fit_problem(settings: dict) -> str | None:
    """None when some node of the partition can run one job with these CPUs, memory and GPUs; else one
    line naming the setting that no node meets and the largest node."""
    settings = resolved(settings)
    partition, nodes = partition_nodes(settings.get("partition"))
    if not nodes:
        return f"--partition: Slurm knows no partition '{partition}' (sinfo lists none of its nodes)"
    cpus, gpus = int(settings["cpus"]), int(settings["gpus"])
    mem = mem_mb(settings["mem"]) if settings.get("mem") else 0
    if any(n.cpus >= cpus and n.mem_mb >= mem and n.gpus >= gpus for n in nodes):
        return None
    big = max(nodes, key=lambda n: (n.cpus, n.mem_mb, n.gpus))
    have = f"the largest node of partition '{partition}' has {big.cpus} CPUs, {big.mem_mb} MB, {big.gpus} GPUs"
    if not any(n.cpus >= cpus for n in nodes):
        return f"--cpus-per-run {cpus}: no node can run it ({have})"
    if not any(n.mem_mb >= mem for n in nodes):
        return f"--mem {settings['mem']}: no node can run it ({have})"
    if not any(n.gpus >= gpus for n in nodes):
        return f"--gpus-per-run {gpus}: no node can run it ({have})"
    return f"--cpus-per-run {cpus}, --mem {settings.get('mem')}, --gpus-per-run {gpus}: no one node has all ({have})"
