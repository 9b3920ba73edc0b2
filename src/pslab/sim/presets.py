"""Named failure laws for the goodput simulator (`sim.hazard=NAME`), each built from an anchor.

A preset says how a job of n ranks fails: ranks are grouped into *failure units* of
`ranks_per_host` ranks (a host: when it dies, all its ranks die at once; 78% of Llama 3's
interruptions were hardware, most of them whole-host), and every unit draws its lifetime
from `unit_hazard(n_ranks, job_s)` (a pslab.sim.hazard law). Presets:

- `llama3`: Meta's Llama 3 405B run (anchors.LLAMA3): 419 unexpected interruptions in 54 days
  on 16,384 GPUs, hosts of 8 GPUs, constant hazard: the job sees one every ~3.1 h.
- `meta_rsc`: Kokolis et al. (anchors.KOKOLIS), hosts of 8 GPUs: mean time to failure
  47.7 days for 8-GPU jobs and 7.9 h for 1,024-GPU jobs; a per-host Weibull through both
  points (two equations, two unknowns: shape 0.97, almost constant).
- `osdi14`: Li et al. OSDI'14 Table 1 (job failure rate by machine-hours), one rank per
  machine, the per-rank Weibull of anchors.fit_osdi_weibull for jobs of n ranks.
- `deck`: the seed deck's 30% of classic MPI jobs of 1,000 workers finished, one rank per
  machine, a constant rate for jobs of `job_s` seconds (the deck gives no duration).
- `constant` / `weibull`: a per-rank law given by its parameters (rate_per_s; shape, scale_s).

    from pslab.sim.presets import preset
    p = preset("llama3")
    p.job_mtbf_s(16384) / 3600        # ~3.1 h
    p.units(16384), p.unit_hazard(16384, 86400.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import special

from . import anchors as A
from .hazard import ConstantHazard, Hazard, WeibullHazard

H = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class HazardPreset:
    """A failure law for jobs of any size: units of `ranks_per_host` ranks, each failing
    by `law(n_ranks, job_s)` (a unit's Hazard in wall seconds since the job started)."""

    name: str
    ranks_per_host: int
    law: Callable[[int, float], Hazard] = field(repr=False)
    source: str = ""
    hang_fraction: float = 0.0     # share of failures that hang instead of crash

    def units(self, n_ranks: int) -> int:
        return max(1, math.ceil(int(n_ranks) / self.ranks_per_host))

    def unit_hazard(self, n_ranks: int, job_s: float = DAY) -> Hazard:
        return self.law(int(n_ranks), float(job_s))

    def job_mtbf_s(self, n_ranks: int, job_s: float = DAY) -> float:
        """Mean time to the first failure among the job's units (fresh units)."""
        return job_mtbf_s(self.unit_hazard(n_ranks, job_s), self.units(n_ranks))


def job_mtbf_s(hazard: Hazard | None, units: float) -> float:
    """Mean of the first failure among `units` fresh units of `hazard` (units may be
    fractional: a weighted count, e.g. only the hangs of some units are fatal). The
    minimum of n exponentials is exponential at n times the rate; of n Weibulls, a
    Weibull with the scale divided by n ** (1 / shape)."""
    if hazard is None or units <= 0:
        return math.inf
    if isinstance(hazard, ConstantHazard):
        return 1.0 / (units * hazard.rate_per_s)
    k = hazard.shape
    return hazard.scale_s * units ** (-1.0 / k) * special.gamma(1.0 + 1.0 / k)


# --------------------------------------------------------------------------- the anchors' laws


def llama3_host_rate() -> float:
    """Per-host failure rate (1/s) giving a 16,384-GPU job (2,048 hosts of 8) Llama 3's
    419 unexpected interruptions in 54 days."""
    a = A.LLAMA3_FIGURES
    return a["interruptions"] / (a["days"] * DAY) / (a["gpus"] / a["gpus_per_host"])


def meta_rsc_host_weibull() -> WeibullHazard:
    """Per-host Weibull through Kokolis et al.'s two job MTTFs (8 and 1,024 GPUs).

    A job of n hosts has MTTF = scale * n ** (-1 / shape) * Gamma(1 + 1 / shape), so the
    ratio of the two MTTFs fixes the shape and either point the scale."""
    k = A.KOKOLIS_FIGURES
    (g1, m1), (g2, m2) = k["mttf_s"]
    n1, n2 = g1 / k["gpus_per_host"], g2 / k["gpus_per_host"]
    shape = math.log(n2 / n1) / math.log(m1 / m2)
    scale = m1 * n1 ** (1.0 / shape) / special.gamma(1.0 + 1.0 / shape)
    return WeibullHazard(shape, scale)


def _osdi(n_ranks: int, job_s: float) -> Hazard:
    return A.fit_osdi_weibull().rank_hazard(n_ranks)


def _deck(n_ranks: int, job_s: float) -> Hazard:
    return A.deck_rank_rate(job_s / H)


PRESETS = {
    "llama3": lambda: HazardPreset("llama3", 8, lambda n, t: ConstantHazard(llama3_host_rate()),
                                   A.LLAMA3),
    "meta_rsc": lambda: HazardPreset("meta_rsc", 8, lambda n, t: meta_rsc_host_weibull(), A.KOKOLIS),
    "osdi14": lambda: HazardPreset("osdi14", 1, _osdi, A.OSDI14 + ", Table 1"),
    "deck": lambda: HazardPreset("deck", 1, _deck, A.DECK),
}
NAMES = tuple(PRESETS)


def preset(name: str, *, ranks_per_host: int | None = None, hang_fraction: float | None = None,
           rate_per_s: float | None = None, shape: float | None = None,
           scale_s: float | None = None) -> HazardPreset:
    """The preset `name` (llama3 | meta_rsc | osdi14 | deck | constant | weibull); the
    keyword arguments override its host size and hang share, and give constant / weibull
    their parameters."""
    if name == "constant":
        if rate_per_s is None:
            raise ValueError("sim.hazard=constant needs sim.rate_per_s")
        h = ConstantHazard(float(rate_per_s))
        p = HazardPreset("constant", 1, lambda n, t: h, "configured")
    elif name == "weibull":
        if shape is None or scale_s is None:
            raise ValueError("sim.hazard=weibull needs sim.shape and sim.scale_s")
        h = WeibullHazard(float(shape), float(scale_s))
        p = HazardPreset("weibull", 1, lambda n, t: h, "configured")
    elif name in PRESETS:
        p = PRESETS[name]()
    else:
        raise ValueError(f"sim.hazard={name!r}: unknown preset; known: "
                         f"{', '.join(NAMES + ('constant', 'weibull'))}")
    changes = {}
    if ranks_per_host is not None:
        if int(ranks_per_host) < 1:
            raise ValueError(f"sim.ranks_per_host must be >= 1, got {ranks_per_host}")
        changes["ranks_per_host"] = int(ranks_per_host)
    if hang_fraction is not None:
        if not 0.0 <= float(hang_fraction) <= 1.0:
            raise ValueError(f"sim.hang_fraction must be in [0, 1], got {hang_fraction}")
        changes["hang_fraction"] = float(hang_fraction)
    if changes:
        from dataclasses import replace
        p = replace(p, **changes)
    return p


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float | None:
    """Young (1974) / Daly (2006) first order: checkpoint every sqrt(2 C M) seconds of work.
    None when checkpoints are free or failures never come (no reason to pick one)."""
    if not (checkpoint_s > 0) or not np.isfinite(mtbf_s):
        return None
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)
