"""95% intervals, and the rule every caption follows: a ranking is stated only where
the intervals separate.

- rates (success rate): Wilson score intervals (`wilson`, pslab.sim's);
- means of per-trial values: a seeded percentile bootstrap of the mean (`bootstrap_mean`),
  from 5 trials on;
- mean ETTR of trials a fault may or may not strike (`ettr_interval`): stratified by
  whether a fault struck, so that a small sample in which no trial (or few) met a fault
  does not give an interval that excludes what faults would cost;
- ratios paired by repetition (a time to target over the reference arm's, one per
  repetition): a Student t interval on the log-ratios (`ratio_interval`), from 3
  repetitions on (with 2 the spread is one difference: no interval, no ranking).

`separated(a, b)` says whether two intervals do not overlap; `excludes(iv, x)` whether an
interval lies wholly on one side of x (a ratio's 1.0, a gain's 0) and at least `MARGIN`
away from it. `order(items)` returns the ranking, or None when some neighbours' intervals
overlap. `no_ranking(iv, x)` is what a caption says where `excludes` is False.

Why a margin for the paired ratios and gains: their intervals can be far narrower than
what the measurement resolves. PS BSP with and without a straggler computes bit-identical
models (the same final log-loss to the last digit), yet its examples to the target differ
by 0.7-1.0% (with an interval of 1.004-1.013 over 3 repetitions): examples are read from
the workers' progress when rank 0's evaluation ran, and a straggler moves that moment.
A difference of that size is the clock, not the algorithm, and two reproductions ranked
it in opposite ways (SSP(1) 1.005x "more" in one, 0.996x in the other). So a direction is
stated only where the interval also clears a band of MARGIN (2%, twice that artefact)
around "no difference"; an interval wholly inside the band is reported as "within 2% of no
difference" (`equivalent`), a claim too; one across the band's edge as too close to rank.
A claim is one of: a direction, equivalent, or none (experiments/compare_rankings.py
counts a direction in one reproduction against equivalence in another as a contradiction,
against none as ranked in one run only).
"""
from __future__ import annotations

import math

import numpy as np

from ..sim import wilson_interval

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
INDISTINCT = "indistinguishable at this sample size"
MARGIN = 0.02  # the smallest difference in a paired ratio (vs 1) or gain (vs 0) a caption ranks on
WITHIN = f"within {MARGIN:.0%} of no difference"
EDGE = f"across the {MARGIN:.0%} margin's edge: too close to rank"


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a rate (pslab.sim's, so figures and the simulator agree)."""
    return wilson_interval(successes, trials, confidence)


MIN_TRIALS = 5  # a bootstrap of fewer values is a handful of points, not an interval


def bootstrap_mean(values, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0, min_n: int = MIN_TRIALS) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (None values dropped; None
    with fewer than min_n left). Seeded: the same values give the same interval."""
    x = np.array([float(v) for v in values if v is not None and np.isfinite(v)], float)
    if x.size == 0 or x.size < min_n:
        return None
    if x.size == 1 or np.ptp(x) == 0:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    a = (1 - confidence) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def ettr_interval(values, struck, confidence: float = CONFIDENCE, min_n: int = MIN_TRIALS,
                  seed: int = 0) -> tuple[float, float] | None:
    """Interval of the mean ETTR of trials (values in [0, 1]; `struck[i]`: a fault struck
    trial i). A bootstrap alone cannot see what no trial met: with a fault in a few
    trials of 20 (a small job, a low hazard), the trials that met none make a tight
    interval around ~1 that the faults' cost lies outside of. So the mean is taken as
    (1 - p) a + p b, p the share of trials a fault strikes (Wilson interval: 0 of 20 still
    allows 16%), a and b the mean ETTR of the trials without and with a fault (bootstrap
    intervals; a fault-free trial's ETTR is 1 less its checkpoints, with no rare event in
    it, so any number of them will do for a; b needs MIN_TRIALS trials that met a fault,
    else it is anywhere in [0, 1]: one trial that met a kill says nothing of what a hang
    costs), each at 1 - (1 - confidence)/3
    so the three together hold at `confidence` (Bonferroni); the bounds are the extremes
    of the mean over those ranges. None with fewer than min_n trials."""
    pairs = [(float(v), bool(f)) for v, f in zip(values, struck) if v is not None and np.isfinite(v)]
    if len(pairs) < min_n:
        return None
    each = 1 - (1 - confidence) / 3
    hit = [v for v, f in pairs if f]
    clean = [v for v, f in pairs if not f]
    p_lo, p_hi = wilson(len(hit), len(pairs), each)

    def stratum(x, least):
        if len(x) < least:
            return 0.0, 1.0  # too few of the kind to say what their mean is
        return bootstrap_mean(x, each, seed=seed, min_n=1)

    (a_lo, a_hi), (b_lo, b_hi) = stratum(clean, 1), stratum(hit, MIN_TRIALS)
    if not clean:  # every trial met a fault: p = 1 whatever the interval says
        return b_lo, b_hi
    lo = min((1 - p) * a_lo + p * b_lo for p in (p_lo, p_hi))
    hi = max((1 - p) * a_hi + p * b_hi for p in (p_lo, p_hi))
    return float(lo), float(hi)


MIN_REPS = 3  # a spread estimated from two repetitions (one difference) is too erratic to rank on


def ratio_interval(ratios, confidence: float = CONFIDENCE, min_reps: int = MIN_REPS) -> tuple[float, float] | None:
    """Interval of the typical ratio: exp(mean(log r) +- t * sd(log r) / sqrt(k)) over k
    paired repetitions (None with fewer than min_reps, or a non-positive ratio)."""
    r = [float(v) for v in ratios if v is not None]
    if len(r) < max(2, min_reps) or min(r) <= 0:
        return None
    from scipy import stats
    logs = np.log(r)
    half = stats.t.ppf(1 - (1 - confidence) / 2, len(r) - 1) * logs.std(ddof=1) / math.sqrt(len(r))
    m = float(logs.mean())
    return float(math.exp(m - half)), float(math.exp(m + half))


def separated(a, b) -> bool:
    """Two intervals (lo, hi) that do not overlap (False if either is missing)."""
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def excludes(iv, x: float = 1.0, margin: float = MARGIN) -> bool:
    """The interval lies wholly above x + margin or below x - margin (a paired ratio's
    null is 1, a gain's 0; see MARGIN for why differences inside it are not ranked)."""
    return iv is not None and (iv[0] > x + margin or iv[1] < x - margin)


def equivalent(iv, x: float = 1.0, margin: float = MARGIN) -> bool:
    """The interval lies wholly inside the margin around x: "no difference worth ranking"
    is itself shown (two one-sided tests), not just "no difference shown"."""
    return iv is not None and x - margin <= iv[0] and iv[1] <= x + margin


def no_ranking(iv, x: float = 1.0, margin: float = MARGIN) -> str:
    """What a caption says where `excludes` is False: WITHIN where the interval lies
    inside the margin (equivalence shown), EDGE where it lies off x but across the
    margin's edge, else INDISTINCT (it holds x and reaches past the margin). Neither of
    the last two is a claim: more repetitions could still rank it."""
    if equivalent(iv, x, margin):
        return WITHIN
    return EDGE if excludes(iv, x, 0.0) else INDISTINCT


def order(items: list[tuple[str, float, tuple[float, float] | None]], higher_is_better: bool = True):
    """[(name, value, interval)] -> the names best first, if every neighbour's interval
    separates from the next one's; else None (no ranking at this sample size)."""
    if len(items) < 2 or any(iv is None for _, _, iv in items):
        return None
    ranked = sorted(items, key=lambda t: t[1], reverse=higher_is_better)
    for (_, _, a), (_, _, b) in zip(ranked, ranked[1:]):
        if not separated(a, b):
            return None
    return [name for name, _, _ in ranked]


def fmt_interval(iv, pct: bool = False, digits: int = 2) -> str:
    if iv is None:
        return "no interval: too few repetitions"
    if pct:
        return f"95% CI {iv[0]:.0%}-{iv[1]:.0%}"
    return f"95% CI {iv[0]:.{digits}f}-{iv[1]:.{digits}f}"
