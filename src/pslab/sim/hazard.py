"""Per-rank failure hazards: when does one rank (process, machine) die?

A distributed job is only as reliable as the chance that none (classic MPI), or not too
many (elastic allreduce, parameter server), of its ranks die before it finishes. That
chance is set by the distribution of a single rank's time to failure, modelled here:

- `ConstantHazard(rate_per_s)`: exponential lifetimes, the memoryless textbook model.
- `WeibullHazard(shape, scale_s)`: shape < 1 gives a hazard that falls with age (infant
  mortality), which is what published cluster failure statistics show; shape == 1 is the
  constant hazard, shape > 1 wear-out.

Both offer the same small interface: `survival(t)`, `cdf(t)`, `sample(n, rng)`,
`cumulative_hazard(t)` and its inverse (the simulator uses these to draw the *ordered*
failure times of n identical ranks lazily, without sampling all n), `prob_any_failure(n,
t)` and a `fit(times, censored_at)` classmethod: maximum likelihood with right-censoring,
because in a measured run most ranks do not fail and are only known to have lived at
least until the end of the run.

Times are in seconds of wall clock since the rank started. The distributions themselves
come from scipy.stats (`expon`, `weibull_min`); only the closed-form cumulative hazard
inverse is written out, because scipy has no such method and `isf(exp(-h))` loses all
precision for the tiny h of a single reliable rank over one step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


def _as_times(times) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError("failure and censoring times must be finite and >= 0")
    return t


def _censoring(censored_at) -> np.ndarray:
    if censored_at is None:
        return np.zeros(0)
    return _as_times(censored_at)


class _Hazard:
    """Shared behaviour; subclasses provide `dist` (a frozen scipy distribution),
    `cumulative_hazard` and `inverse_cumulative_hazard`."""

    dist: stats.rv_continuous

    def survival(self, t):
        return self.dist.sf(t)

    def cdf(self, t):
        return self.dist.cdf(t)

    def sample(self, n: int, rng=None) -> np.ndarray:
        """Times to failure of n independent ranks."""
        return self.dist.rvs(size=n, random_state=np.random.default_rng(rng))

    def prob_any_failure(self, n_ranks: int, t):
        """P(at least one of n_ranks independent ranks fails within t seconds)."""
        # 1 - S(t)^n written through the cumulative hazard keeps precision when the
        # answer is tiny (a reliable rank, a short job).
        return -np.expm1(-n_ranks * self.cumulative_hazard(t))

    def first_failure(self, n_ranks: int, size: int, rng=None) -> np.ndarray:
        """`size` draws of the time of the first failure among n_ranks fresh ranks.

        The minimum of n iid lifetimes has cumulative hazard n*H(t), so it is
        H^-1(E / n) with E ~ Exp(1): one draw per job instead of n."""
        e = stats.expon.rvs(size=size, random_state=np.random.default_rng(rng))
        return self.inverse_cumulative_hazard(e / n_ranks)


@dataclass(frozen=True)
class ConstantHazard(_Hazard):
    """Exponential lifetimes: every rank fails at `rate_per_s` per second, at any age."""

    rate_per_s: float

    def __post_init__(self):
        if not (self.rate_per_s > 0 and np.isfinite(self.rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive finite number, got {self.rate_per_s}")

    @property
    def dist(self):
        return stats.expon(scale=1.0 / self.rate_per_s)

    @property
    def mean_lifetime_s(self) -> float:
        return 1.0 / self.rate_per_s

    def cumulative_hazard(self, t):
        return self.rate_per_s * np.asarray(t, dtype=float)

    def inverse_cumulative_hazard(self, h):
        return np.asarray(h, dtype=float) / self.rate_per_s

    def to_dict(self) -> dict:
        return {"kind": "constant", "rate_per_s": float(self.rate_per_s)}

    @classmethod
    def fit(cls, times, censored_at=None) -> "ConstantHazard":
        """Censored maximum likelihood: failures / total exposure.

        For the exponential the likelihood maximum is this closed form, so no optimizer
        is needed (it is what scipy.optimize would converge to)."""
        t = _as_times(times)
        c = _censoring(censored_at)
        if t.size == 0:
            raise ValueError("no failures observed: the maximum-likelihood rate is 0 "
                             "(configure the hazard, or observe longer)")
        return cls(rate_per_s=t.size / (t.sum() + c.sum()))


@dataclass(frozen=True)
class WeibullHazard(_Hazard):
    """Weibull lifetimes: cumulative hazard (t / scale_s) ** shape.

    shape < 1: young ranks fail more often than old ones, so a job of many short-lived
    ranks sees more failures than the mean lifetime suggests."""

    shape: float
    scale_s: float

    def __post_init__(self):
        for name in ("shape", "scale_s"):
            v = getattr(self, name)
            if not (v > 0 and np.isfinite(v)):
                raise ValueError(f"{name} must be a positive finite number, got {v}")

    @property
    def dist(self):
        return stats.weibull_min(c=self.shape, scale=self.scale_s)

    def cumulative_hazard(self, t):
        return (np.asarray(t, dtype=float) / self.scale_s) ** self.shape

    def inverse_cumulative_hazard(self, h):
        return self.scale_s * np.asarray(h, dtype=float) ** (1.0 / self.shape)

    def to_dict(self) -> dict:
        return {"kind": "weibull", "shape": float(self.shape), "scale_s": float(self.scale_s)}

    @classmethod
    def fit(cls, times, censored_at=None) -> "WeibullHazard":
        """Censored maximum likelihood over (shape, scale).

        For a fixed shape k the best scale has a closed form,
        scale**k = sum(all times**k) / n_failures, so the search is one-dimensional in
        log k (scipy.optimize.minimize_scalar), which is robust even for a handful of
        failures among many censored ranks."""
        t = _as_times(times)
        c = _censoring(censored_at)
        if t.size == 0:
            raise ValueError("no failures observed: a Weibull hazard cannot be fitted")
        if np.any(t == 0):
            raise ValueError("a failure at time 0 has zero Weibull density; drop or shift it")
        every = np.concatenate([t, c])
        every = every[every > 0]  # a rank censored at 0 carries no information

        def best_scale(k):
            return (np.sum(every ** k) / t.size) ** (1.0 / k)

        def neg_loglik(log_k):
            k = np.exp(log_k)
            d = stats.weibull_min(c=k, scale=best_scale(k))
            return -(np.sum(d.logpdf(t)) + np.sum(d.logsf(c[c > 0])))

        res = optimize.minimize_scalar(neg_loglik, bounds=(np.log(0.02), np.log(50.0)),
                                       method="bounded", options={"xatol": 1e-8})
        k = float(np.exp(res.x))
        return cls(shape=k, scale_s=float(best_scale(k)))


Hazard = ConstantHazard | WeibullHazard


def hazard_from_dict(d: dict | None) -> Hazard | None:
    """Build a hazard from the run summary form, e.g. {"kind": "weibull", "shape": 0.7,
    "scale_s": 100.0}; None (no hazard configured) stays None."""
    if d is None:
        return None
    kind = d.get("kind")
    if kind == "constant":
        return ConstantHazard(rate_per_s=float(d["rate_per_s"]))
    if kind == "weibull":
        return WeibullHazard(shape=float(d["shape"]), scale_s=float(d["scale_s"]))
    raise ValueError(f"unknown hazard kind {kind!r} (expected 'constant' or 'weibull')")
