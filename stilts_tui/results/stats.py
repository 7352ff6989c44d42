"""The statistics of a cell's gain over the "none" row: bootstrap intervals (unpaired and paired) and the
exact (or seeded Monte Carlo) sign-flip test, each cached by its inputs (the app reloads the table often).
docs/results.md states each one."""

from __future__ import annotations

import functools
import warnings

import numpy as np

from stilts_tui.results.cell import Cell

BOOT = {"n_resamples": 10000, "confidence": 0.95, "seed": 0}
EXACT_MAX_PAIRS = 16  # up to 2^16 sign patterns enumerated; beyond, a seeded Monte Carlo
MC_RESAMPLES = 100_000
MC_SEED = 0
TOO_FEW = "too few pairs"


def bootstrap_gain(x: list[float], base: list[float], seed: int = BOOT["seed"]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of mean(x) - mean(base), repeatable for a seed."""
    return _bootstrap_gain(tuple(map(float, x)), tuple(map(float, base)), seed)


@functools.lru_cache(maxsize=4096)
def _bootstrap_gain(x: tuple[float, ...], base: tuple[float, ...], seed: int) -> tuple[float, float] | None:
    if len(x) < 2 or len(base) < 2:
        return None
    from scipy import stats

    res = stats.bootstrap(
        (np.asarray(x, float), np.asarray(base, float)),
        lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
        n_resamples=BOOT["n_resamples"],
        confidence_level=BOOT["confidence"],
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(d: list[float], seed: int = BOOT["seed"]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the mean paired difference (pairs resampled), seeded."""
    return _paired_bootstrap(tuple(float(x) for x in d), seed)


@functools.lru_cache(maxsize=4096)
def _paired_bootstrap(d: tuple[float, ...], seed: int) -> tuple[float, float] | None:
    if len(d) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical differences: a degenerate (but right) interval
        res = stats.bootstrap(
            (np.asarray(d, float),),
            np.mean,
            n_resamples=BOOT["n_resamples"],
            confidence_level=BOOT["confidence"],
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def sign_flip_test(d: list[float], seed: int = MC_SEED) -> tuple[float, str]:
    """Two-sided paired sign-flip permutation test of mean(d) = 0: (p, "exact" | "monte carlo").

    Exact: all 2^n sign patterns when n <= EXACT_MAX_PAIRS, p = #{|sum(s*d)| >= |sum(d)|} / 2^n.
    Otherwise MC_RESAMPLES seeded random patterns, p = (#{...} + 1) / (MC_RESAMPLES + 1). Sums that
    differ from the observed one by float rounding only (1e-9 of sum|d|) count as reaching it.
    (numpy rather than scipy.stats.permutation_test: the same p, a hundred times faster, which the app's
    reloads need; tests check both against each other.)
    """
    return _sign_flip(tuple(float(x) for x in d), seed)


@functools.lru_cache(maxsize=4096)
def _sign_flip(d: tuple[float, ...], seed: int) -> tuple[float, str]:
    a = np.asarray(d, float)
    n = len(a)
    if n < 2:  # one pair (or none): every sign pattern reaches |d|
        return 1.0, "exact"
    observed = abs(a.sum()) - 1e-9 * np.abs(a).sum()
    if n <= EXACT_MAX_PAIRS:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        return float(np.mean(np.abs(signs @ a) >= observed)), "exact"
    rng, hits, left = np.random.default_rng(seed), 0, MC_RESAMPLES
    while left:
        k = min(left, 10_000)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
        hits += int(np.sum(np.abs(signs @ a) >= observed))
        left -= k
    return (hits + 1) / (MC_RESAMPLES + 1), "monte carlo"


def min_attainable_p(d: list[float]) -> float:
    """The smallest two-sided p the exact sign-flip test can give: 2 / 2^m over the m nonzero pairs
    (zero differences cannot change sign), and 1 with none."""
    m = sum(1 for x in d if x != 0)
    return min(1.0, 2.0 / 2**m)


def paired(c: Cell, base: Cell, alpha: float) -> None:
    """Fill ``c``'s paired analysis from the runs it shares a (seed, grid point) with ``base``."""
    keys = [k for k in c.keyed if k in base.keyed]
    c.pairs = len(keys)
    if not keys:
        return
    d = [c.keyed[k] - base.keyed[k] for k in keys]
    c.paired_gain = float(np.mean(d))
    c.paired_ci = paired_bootstrap(d)
    c.min_p = min_attainable_p(d)
    c.p_value, c.test = sign_flip_test(d)
    if c.min_p > alpha and c.test == "exact":
        c.verdict = TOO_FEW
    else:
        c.verdict = "significant" if c.p_value < alpha else "not significant"
    c.gain_significant = c.verdict == "significant"
