"""Hazard draws: when does a rank fail?

Each eligible rank draws its own time to failure from numpy's Generator seeded with
(plan seed, rank), so a trial is replayed exactly by rerunning it with the same seed and
size, and every rank can recompute every other rank's draw without talking (which is
what makes a cap on the number of faults per run possible without messages).

- constant: exponential lifetimes with mean 1 / rate_per_s (Generator.exponential);
- weibull:  scale_s * Generator.weibull(shape); shape < 1 is a hazard that falls with
  age, as published cluster failure statistics show.

Times are seconds since the rank started (the clock of every event's `elapsed` field).
"""
from __future__ import annotations

import numpy as np

from .plan import HazardSpec, layout

EVENT_STREAM = 1 << 20  # seeds [plan seed, EVENT_STREAM, event id] for hazard-triggered events
ACTION_STREAM = 1 << 21  # seeds [plan seed, rank, ACTION_STREAM] for a rank's action in a mix


def draw(spec: HazardSpec, rng: np.random.Generator, size=None):
    """Times to failure drawn from the hazard's lifetime distribution."""
    if spec.kind == "constant":
        return rng.exponential(1.0 / spec.rate_per_s, size=size)
    if spec.kind == "weibull":
        return spec.scale_s * rng.weibull(spec.shape, size=size)
    raise ValueError(f"unknown hazard kind {spec.kind!r}")


def rank_failure_time(spec: HazardSpec, seed: int, rank: int) -> float:
    """The failure time of one rank in a run with this plan seed (same on every rank)."""
    return float(draw(spec, np.random.default_rng([int(seed), int(rank)])))


def rank_action(spec: HazardSpec, seed: int, rank: int) -> str:
    """What a failing rank does: spec.action, or with a mix (spec.actions) an action drawn
    by weight from a stream of its own, so the failure times stay those of the same seed
    without a mix (same on every rank)."""
    if spec.actions is None:
        return spec.action
    names = [a for a, _ in spec.actions]
    w = np.array([x for _, x in spec.actions], float)
    u = np.random.default_rng([int(seed), int(rank), ACTION_STREAM]).random()
    return names[min(int(np.searchsorted(np.cumsum(w / w.sum()), u, side="right")), len(names) - 1)]


def event_failure_time(spec: HazardSpec, seed: int, event_id: int) -> float:
    """The firing time of a scheduled event whose trigger is a hazard."""
    return float(draw(spec, np.random.default_rng([int(seed), EVENT_STREAM, int(event_id)])))


def cdf(spec: HazardSpec, t):
    """P(one rank has failed by time t)."""
    t = np.maximum(np.asarray(t, dtype=float), 0.0)
    if spec.kind == "constant":
        return -np.expm1(-spec.rate_per_s * t)
    return -np.expm1(-(t / spec.scale_s) ** spec.shape)


def eligible(spec: HazardSpec, role: str, rank: int) -> bool:
    return role in spec.roles and rank not in spec.exclude_ranks


def schedule(spec: HazardSpec, seed: int, roles: dict) -> dict[int, float] | None:
    """{rank: failure time} of every eligible rank, capped at max_faults (the earliest
    draws win). Needs the conventional layout to know every rank's role; None if the
    role counts fit no known layout."""
    lay = layout(roles)
    if lay is None:
        return None
    times = {r: rank_failure_time(spec, seed, r) for r, (role, _) in enumerate(lay) if eligible(spec, role, r)}
    if spec.max_faults is not None:
        keep = sorted(times, key=lambda r: (times[r], r))[:spec.max_faults]
        times = {r: times[r] for r in sorted(keep)}
    return times


def my_failure_time(spec: HazardSpec, seed: int, role: str, index: int, rank: int, roles: dict) -> dict:
    """What the hazard does to this rank: {"eligible", "drawn_s", "fires_at_s" (None: this
    rank does not fail, or is outside the max_faults cap), "capped"}."""
    if not eligible(spec, role, rank):
        return {"eligible": False, "drawn_s": None, "fires_at_s": None, "capped": False}
    t = rank_failure_time(spec, seed, rank)
    out = {"eligible": True, "drawn_s": t, "fires_at_s": t, "capped": False,
           "action": rank_action(spec, seed, rank)}
    if spec.max_faults is not None:
        lay = layout(roles)
        if lay is None or rank >= len(lay) or lay[rank] != (role, index):
            # An unconventional layout: every rank cannot know the others' roles, so the
            # cap cannot be enforced exactly. Say so in the record instead of guessing.
            out["cap_unenforced"] = True
        else:
            sched = schedule(spec, seed, roles)
            if rank not in sched:
                out.update(fires_at_s=None, capped=True)
    return out


HOST_STREAM = 1 << 21  # seeds [plan seed, HOST_STREAM, host index] for per-host hazards


def host_schedule(spec: HazardSpec, seed: int, rank_hosts: list[str]) -> dict[str, float]:
    """faults.hazard.per=host: {host: failure time} of every eligible host (one that
    holds no excluded rank, so by default not rank 0's), capped at max_faults (the
    earliest draws win). Every rank computes the same schedule without talking."""
    hosts = list(dict.fromkeys(rank_hosts))
    times = {h: float(draw(spec, np.random.default_rng([int(seed), HOST_STREAM, i])))
             for i, h in enumerate(hosts)
             if not any(rank_hosts[r] == h for r in spec.exclude_ranks if r < len(rank_hosts))}
    if spec.max_faults is not None:
        keep = sorted(times, key=lambda h: (times[h], hosts.index(h)))[:spec.max_faults]
        times = {h: times[h] for h in keep}
    return times


def my_host_failure_time(spec: HazardSpec, seed: int, rank: int, rank_hosts: list[str] | None) -> dict:
    """What a per-host hazard does through this rank: only the lowest rank of an eligible
    host draws (and fires) for it. {"eligible", "host", "drawn_s", "fires_at_s", "capped"}."""
    out = {"eligible": False, "host": None, "drawn_s": None, "fires_at_s": None, "capped": False}
    if not rank_hosts or rank >= len(rank_hosts) or rank_hosts.index(rank_hosts[rank]) != rank:
        return out
    host = rank_hosts[rank]
    if any(rank_hosts[r] == host for r in spec.exclude_ranks if r < len(rank_hosts)):
        return out
    t = float(draw(spec, np.random.default_rng([int(seed), HOST_STREAM, list(dict.fromkeys(rank_hosts)).index(host)])))
    out.update(eligible=True, host=host, drawn_s=t, fires_at_s=t)
    if host not in host_schedule(spec, seed, rank_hosts):
        out.update(fires_at_s=None, capped=True)
    return out
