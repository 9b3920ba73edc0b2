"""Fault plans as data, fired inside the ranks.

A plan (conf/faults/*.yaml) is a list of scheduled events, each with
  action:  kill (SIGKILL: a machine crash) | hang (SIGSTOP: a frozen node) | slow (a straggler)
  target:  {role: worker|server|coordinator, index: N | -1 (last) | random} or {rank: N}
  at:      {step: N} | {progress: F} (fraction of the run's planned steps)
           | {elapsed_s: T} (seconds since the rank started) | {hazard: {kind: ..., ...}}
  factor:  for slow, how many times longer each step takes
and an optional per-rank hazard (constant rate or Weibull) from which every eligible rank
draws its own failure time, seeded by (plan seed, rank). Every fault is written to the
rank's events file, synced to disk, before it fires.

Modules: plan (parse, validate, resolve targets), hazard (seeded draws), injector
(firing in-rank). The backends use `make_injector(...)`, `Injector.on_step(step)` and
`Injector.slow_down(step_seconds)`.
"""
from __future__ import annotations

from .hazard import cdf, draw, event_failure_time, rank_failure_time, schedule
from .injector import Injector, make_injector
from .plan import (ACTIONS, ROLES, FaultEvent, FaultPlanError, HazardSpec, Plan, Resolved, Target, Trigger,
                   layout, parse_plan, resolve_events)

__all__ = ["ACTIONS", "ROLES", "FaultEvent", "FaultPlanError", "HazardSpec", "Injector", "Plan", "Resolved",
           "Target", "Trigger", "cdf", "draw", "event_failure_time", "layout", "make_injector", "parse_plan",
           "rank_failure_time", "resolve_events", "schedule"]
