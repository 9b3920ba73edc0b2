"""Fault plans as data, fired inside the ranks.

A plan (conf/faults/*.yaml) is a list of events, each with
  action:  kill (SIGKILL: a machine crash) | hang (SIGSTOP: a frozen node) | slow (a straggler)
  target:  {role: worker|server|coordinator|rank, index: N | -1 (last) | random}
  at:      {step: N} | {progress: F} (fraction of the run's planned steps) | {elapsed_s: T}
  factor:  for slow, how many times longer each step takes
and an optional hazard that draws a failure time for every rank (see hazard.py). Every
fault is written to the rank's events file, synced to disk, before it fires.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

ACTIONS = ("kill", "hang", "slow")
ROLES = ("worker", "server", "coordinator", "rank")


class FaultPlanError(ValueError):
    pass


def _resolve_index(index, n: int, rng: np.random.Generator, key: str) -> int:
    if n <= 0:
        raise FaultPlanError(f"{key}: no rank has that role in this run")
    if index == "random":
        return int(rng.integers(n))
    i = int(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise FaultPlanError(f"{key}: index {index} out of range for {n} ranks of that role")
    return i


def resolve_plan(cfg_faults, roles: dict[str, int]) -> list[dict]:
    """Concrete events for this run: targets resolved to (role, index), seeded so every
    rank resolves 'random' the same way. roles maps role -> count."""
    rng = np.random.default_rng(int(cfg_faults.get("seed", 0)))
    out = []
    for i, ev in enumerate(cfg_faults.get("events") or []):
        key = f"faults.events[{i}]"
        action = ev.get("action")
        if action not in ACTIONS:
            raise FaultPlanError(f"{key}.action={action!r}: choose one of {ACTIONS}")
        target = ev.get("target") or {}
        role = target.get("role", "worker")
        if role not in ROLES:
            raise FaultPlanError(f"{key}.target.role={role!r}: choose one of {ROLES}")
        index = _resolve_index(target.get("index", -1), roles.get(role, 0), rng, f"{key}.target")
        at = dict(ev.get("at") or {})
        if len(at) != 1 or next(iter(at)) not in ("step", "progress", "elapsed_s"):
            raise FaultPlanError(f"{key}.at={at}: give exactly one of step, progress, elapsed_s")
        out.append({"id": i, "action": action, "role": role, "index": index, "at": at,
                    "factor": float(ev.get("factor", 1.0))})
    return out


class Injector:
    """Fires this rank's share of the plan. Backends call on_step(step) after each step
    (servers: after each clock) and slow_down(seconds) to stretch a step."""

    def __init__(self, events: list[dict], role: str, index: int, rank: int, planned_steps: int, rec):
        self.rec = rec
        self.planned = max(1, int(planned_steps))
        self.t0 = time.time()
        self.mine = [e for e in events
                     if (e["role"] == role and e["index"] == index) or (e["role"] == "rank" and e["index"] == rank)]
        self.factor = 1.0
        self.fired: set[int] = set()
        for e in self.mine:  # time triggers fire even while the rank is blocked in MPI
            if "elapsed_s" in e["at"]:
                t = threading.Timer(float(e["at"]["elapsed_s"]), self._fire, args=(e, None))
                t.daemon = True
                t.start()

    def _due(self, e: dict, step: int) -> bool:
        at = e["at"]
        if "step" in at:
            return step >= int(at["step"])
        if "progress" in at:
            return step >= max(1, int(round(float(at["progress"]) * self.planned)))
        return False

    def on_step(self, step: int) -> None:
        for e in self.mine:
            if e["id"] not in self.fired and self._due(e, step):
                self._fire(e, step)

    def _fire(self, e: dict, step) -> None:
        if e["id"] in self.fired:
            return
        self.fired.add(e["id"])
        self.rec.event("fault_injected", sync=True, action=e["action"], target_role=e["role"],
                       target_index=e["index"], step=step, factor=e["factor"], fault_id=e["id"])
        if e["action"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif e["action"] == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            self.factor = e["factor"]

    def slow_down(self, step_seconds: float) -> None:
        """A straggler takes `factor` times as long per step."""
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * step_seconds)


def make_injector(cfg, role: str, index: int, rank: int, roles: dict[str, int], planned_steps: int, rec):
    return Injector(resolve_plan(cfg.faults, roles), role, index, rank, planned_steps, rec)
