"""The tick's prune step: after a rank run ends, the target runs whose starting point it ranked below the
top K are pruned (recorded in the tick's commit, before any of them could be launched)."""

from __future__ import annotations

import time

from stilts_tui.contract import AFTER_FIELD, PRUNED_FILE, PRUNED_WHY_FIELD, RANK_METHOD, Status, pruned_why
from stilts_tui.queue import checks
from stilts_tui.queue.executor import Changes
from stilts_tui.queue.faults import machine_error
from stilts_tui.queue.runfiles import RunFiles
from stilts_tui.store import rundir


def after_rank(
    rank: dict, runs: list[dict], status: dict[str, str], changes: Changes, stats: dict, files: RunFiles
) -> None:
    """A rank run ended this tick. Done: the target's queued runs whose starting point it ranked below
    the top K intermediates are pruned (none always trains), each with the ranking in its folder
    (``pruned.json``) and the reason in the ledger. Failed or cancelled: nothing is pruned, every run
    trains (a failed saving is not a lost study). A run a person brought back from pruned (``retried`` in
    its pruned.json) is never pruned again."""
    rid, name = rank["id"], rank.get("name")
    res = files.final_result(rid) if status[rid] == Status.DONE else None
    ranking = res.get("ranking") if isinstance(res, dict) else None
    top = res.get("top") if isinstance(res, dict) else None
    if not isinstance(ranking, list) or not checks.is_int(top) or not all(isinstance(e, dict) for e in ranking):
        files.log(f"{rid}: rank run of {name} {status[rid]} without a ranking: nothing pruned, every run trains")
        return
    starts = [e.get("run_id") for e in ranking if e.get("run_id")]
    kept, of = set(starts[:top]), len(ranking)
    now, n = time.time(), 0
    for r in runs:
        parent = r.get("parent")
        if rid not in (r.get(AFTER_FIELD) or ()) or status[r["id"]] != Status.QUEUED or parent in kept:
            continue
        entry = next((e for e in ranking if parent is not None and e.get("run_id") == parent), None)
        if entry is None or files.brought_back(r["id"]):
            continue  # a starting point not ranked (no weights): its run waits on its parent as ever
        why = pruned_why(entry.get("rank"), of, str(name), top)
        record = {"by": rid, "target": name, "method": RANK_METHOD, "top": top, "start": entry.get("start")}
        fields = {"status": Status.PRUNED.value, PRUNED_WHY_FIELD: why, "finished": now}
        try:
            rundir.write_json_atomic(
                files.run_path(r["id"], PRUNED_FILE), {**record, "why": why, "ranking": ranking, "t": now}
            )
        except Exception as e:  # noqa: BLE001 - one target's damaged folder is that run's, never the queue's
            if machine_error(e):
                raise
            # the decision stands (the ledger is the record); its folder could not take the ranking: said on it
            line = f"pruned, but its {PRUNED_FILE} could not be written: {type(e).__name__}: {e}"
            fields["error"] = " ".join(line.split())[:300]
            files.log(f"{r['id']}: {fields['error']}")
        changes[r["id"]] = (Status.QUEUED, fields)
        status[r["id"]] = Status.PRUNED
        n += 1
    stats["pruned"] += n
    files.log(
        f"{rid}: rank run of {name} done: the top {top} of {len(starts)} intermediate starting points kept "
        f"(and none), {n} runs pruned"
    )
