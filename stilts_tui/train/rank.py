"""Transferability of starting points to a target, from frozen features: LogME (You et al., "LogME:
Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

``python -m stilts_tui.train.rank JOBS_JSON`` (run by ``stilts-tui rank``; torch stays out of the CLI):
each job names a starting point's weights, a target task and N; the starting point's encoder, frozen,
encodes the target's first N training examples (tokenized by the trainer's own task code,
:mod:`stilts_tui.train.data`); the first token's last hidden state (``<s>`` / ``[CLS]``) is the feature
vector; LogME scores it against the labels; the score goes to the job's cache file (JSON, written
atomically). One progress line a job on stderr.

Why written here in numpy: ``hf-dataset-selector`` pins numpy 2.0.0 and needs numba, and
``transformer-ranker`` pulls torchmetrics and sentencepiece; LogME itself is a few lines of linear algebra.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from stilts_tui.contract import EXIT_OK
from stilts_tui.errors import UserError, first_line, report
from stilts_tui.store import rundir

PROG = "stilts_tui.train.rank"
FEATURES = "the frozen encoder's last hidden state at the first token (<s> / [CLS])"
MAX_ITER = 11  # the paper's code: converges in 2-3 steps, at most 10
TOLERANCE = 0.01  # relative change of alpha / beta that ends the fixed-point iteration
EPSILON = 1e-5  # keeps the updates finite when a fit is perfect


def evidence(f: np.ndarray, y: np.ndarray, s: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    """(log evidence per example, alpha, beta) of the Bayesian linear model ``y ~ N(f w, 1/beta)``,
    ``w ~ N(0, 1/alpha)``, with alpha and beta chosen by the fixed-point iteration that maximises the
    evidence (the paper's Algorithm 1). ``s``, ``v``: eigenvalues and eigenvectors of ``f.T @ f``."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    projected = v.T @ (f.T @ y)
    for _ in range(MAX_ITER):
        gamma = float((beta * s / (alpha + beta * s)).sum())
        m = v @ (beta * projected / (alpha + beta * s))
        alpha_de = float(m @ m)
        beta_de = float(((y - f @ m) ** 2).sum())
        new_alpha, new_beta = gamma / (alpha_de + EPSILON), (n - gamma) / (beta_de + EPSILON)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < TOLERANCE
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m = v @ (beta * projected / (alpha + beta * s))  # the posterior mean at the final alpha, beta
    alpha_de, beta_de = float(m @ m), float(((y - f @ m) ** 2).sum())
    value = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * s))
        - beta / 2 * beta_de
        - alpha / 2 * alpha_de
        - n / 2 * np.log(2 * np.pi)
    )
    return float(value) / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray, regression: bool = False) -> float:
    """LogME of features [N, D] for labels [N]: the mean log evidence over the classes (each class one
    versus the rest, a 0/1 target), or of the target itself for regression. Higher: transfers better."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) != len(labels) or len(f) < 2:
        raise ValueError(f"features [N, D] and N labels expected (N >= 2), got {f.shape} and {len(labels)}")
    s, v = np.linalg.eigh(f.T @ f)
    s = np.clip(s, 0.0, None)  # a positive semi-definite matrix: rounding may make a zero slightly negative
    if regression:
        return evidence(f, np.asarray(labels, dtype=np.float64), s, v)[0]
    classes = np.unique(labels)
    return float(np.mean([evidence(f, (labels == k).astype(np.float64), s, v)[0] for k in classes]))


def problem(split, kind: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(row order of the features, labels, regression?) for a split: multiple choice is scored as a binary
    problem over every choice ("is this choice the answer?"), one feature vector a choice."""
    if kind == "multiple_choice":
        n, c = split.ids.shape[:2]
        answer = (np.arange(c)[None, :] == split.labels[:, None]).astype(np.int64)
        return np.arange(n * c), answer.reshape(-1), False
    return np.arange(len(split)), split.labels, kind == "regression"


def features(job: dict, device: str, progress) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """The job's feature matrix, labels, regression flag and number of examples."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # this command's own progress line is the one on stderr
    # and its only one: loading a classifier's checkpoint as a bare encoder makes transformers log a "LOAD
    # REPORT" table of the head's unused weights (17 lines a starting point), expected here and never news
    hf_logging.set_verbosity_error()

    from stilts_tui.tasks import labels_for
    from stilts_tui.train import data, transfer
    from stilts_tui.train.step import make_batch

    location = transfer.model_location(job["model"])
    try:
        tok = AutoTokenizer.from_pretrained(location)
        encoder = AutoModel.from_pretrained(location, dtype=torch.float32).to(device).eval()
    except OSError as e:
        raise transfer.hub_error(location, e) from None
    task, max_len = job["task"], int(job["max_len"])
    cache = Path(job["runs_dir"]) / ".cache" / "tokenized"
    split = data.load_split(
        task, "train", tok, data.tokenizer_fingerprint(tok), max_len, cache, int(job["examples"]), labels_for(task)
    )
    out = []
    with torch.no_grad():
        for idx in data.eval_order(split.lengths, 32):
            ids, types, mask, _, _ = make_batch(split, idx, int(split.lengths[idx].max()), device)
            kwargs = {"input_ids": ids.reshape(-1, ids.shape[-1]), "attention_mask": mask.reshape(-1, ids.shape[-1])}
            if types is not None:
                kwargs["token_type_ids"] = types.reshape(-1, ids.shape[-1])
            first = encoder(**kwargs).last_hidden_state[:, 0].float().cpu().numpy()
            out.append((idx, first.reshape(len(idx), -1, first.shape[-1])))
            progress(sum(len(i) for i, _ in out), len(split))
    width = out[0][1].shape[-1]
    every = np.zeros((len(split), out[0][1].shape[1], width))
    for idx, vectors in out:
        every[idx] = vectors
    rows, labels, regression = problem(split, task["kind"])
    return every.reshape(-1, width)[rows], labels, regression, len(split)


def run_job(job: dict, device: str, number: str) -> dict:
    """Score one job and write its cache file; the record written."""
    from stilts_tui.store.rundir import write_json_atomic

    t0 = time.time()
    what = f"rank {number}: {job['target']} from {job['start']}"

    def progress(done: int, total: int) -> None:
        print(f"\r{what}: encoding {done}/{total} examples", end="", file=sys.stderr, flush=True)

    f, labels, regression, n = features(job, device, progress)
    score = logme(f, labels, regression)
    record = {
        "version": 1,
        "method": "LogME",
        "key": job["key"],
        "start": job["start"],
        "target": job["target"],
        "examples": n,
        "score": score,
        "seconds": round(time.time() - t0, 3),
    }
    write_json_atomic(Path(job["cache"]), record)
    print(f"\r{what}: LogME {score:.4f} on {n} examples in {record['seconds']:.1f} s", file=sys.stderr, flush=True)
    return record


def _jobs(spec: dict, root: Path) -> tuple[list[dict], list[dict]]:
    """A rank run's jobs (one a starting point with weights, keyed as `stilts-tui rank` keys them), and the
    starting points without weights (an intermediate that failed leaves no checkpoint)."""
    from stilts_tui.rank import cache as rank_cache

    p, jobs, unranked = spec["params"], [], []
    for s in spec["starts"]:
        if s["run_id"] is not None and not (Path(s["model"]["path"]) / "model.safetensors").is_file():
            unranked.append(s)
            continue
        point = rank_cache.Start(s["label"], s["run_id"], s["model"])
        jobs.append(rank_cache.job(point, spec["name"], spec["task"], int(p["max_len"]), int(p["examples"]), root))
    return jobs, unranked


def rank_run(run_dir: Path, device: str) -> str:
    """A plan's rank run (``stage = "rank"`` in spec.json; the trainer entry hands it here): score each
    starting point whose checkpoint is there (through the cache `stilts-tui rank` uses), then write
    result.json with the ranking, best first. A starting point without weights (its intermediate failed)
    is listed as not ranked. The daemon prunes from the ranking; this process changes no other run."""
    import os

    from stilts_tui.contract import CHECKPOINT_DIR, RANK_METHOD, SPEC_FILE, Event, Result, ResultStatus
    from stilts_tui.rank import cache as rank_cache
    from stilts_tui.train.events import RunLog, write_result

    t0, log = time.time(), RunLog(run_dir, echo=False)
    log.event(Event.START, pid=os.getpid())
    result = Result()
    try:
        spec = rundir.load_json(run_dir / SPEC_FILE, nofollow=True)
        p = spec["params"]
        jobs, unranked = _jobs(spec, run_dir.resolve().parent)
        log.line(f"rank: {RANK_METHOD} of {len(jobs)} starting points on {spec['name']} ({device})")
        records = {}
        for i, job in enumerate(jobs, 1):
            records[job["key"]] = rank_cache.cached(job) or run_job(job, device, f"{i}/{len(jobs)}")
        doc = rank_cache.ranking(spec["plan"], jobs, records, int(p["examples"]))["targets"][0]
        result.status, result.extra = (
            ResultStatus.DONE,
            {
                "method": RANK_METHOD,
                "top": p["top"],
                "examples": doc["examples"],
                "ranking": doc["ranking"],
                "unranked": [
                    {"start": s["label"], "run_id": s["run_id"], "why": f"no {CHECKPOINT_DIR}"} for s in unranked
                ],
            },
        )
        for r in doc["ranking"]:
            log.line(f"  {r['rank']:>2}  {r['start']}  {r['score']:.4f}")
    except Exception as e:  # noqa: BLE001 - the run fails with one line; the daemon then trains every run
        result.error = first_line(e)
        log.line(f"rank failed: {result.error}")
    result.wall_seconds = round(time.time() - t0, 3)
    log.event(Event.END, status=result.status, score=None, error=result.error)
    log.close()
    write_result(run_dir, result.record())
    return result.status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 1:
            raise UserError("usage: python -m stilts_tui.train.rank JOBS_JSON (written by `stilts-tui rank`)")
        try:
            request = rundir.loads(args[0])
            jobs, device = request["jobs"], request.get("device", "cpu")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"JOBS_JSON: not a rank request ({first_line(e)})") from None
        for i, job in enumerate(jobs, 1):
            run_job(job, device, f"{i}/{len(jobs)}")
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        return report(e, PROG)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
