"""Firing faults inside a rank.

A backend builds one Injector per rank once it knows the run's role counts and planned
steps (through the factory pslab.train passes it), then

- calls `injector.on_step(step)` after every completed step (servers: after each clock;
  the PS coordinator: after each global step), which fires step- and progress-triggered
  faults and, for a straggler, stretches the step;
- optionally calls `injector.slow_down(step_seconds)` inside a step to stretch it by
  (factor - 1) x step_seconds (once a backend does, on_step never stretches; otherwise
  on_step stretches the time since the previous on_step, from the second step on);
- optionally calls `injector.stop()` when the rank's work is done (otherwise that happens
  at interpreter exit, before MPI_Finalize).

Time triggers (`elapsed_s`, hazards) run on a timer thread, so they fire even while the
rank is blocked inside an MPI call. Every fault is written to the rank's events file
with fsync (`fault_injected`) *before* it fires: a SIGKILL right after cannot lose it.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from . import hazard as hz
from .plan import HOST_ACTIONS, Plan, Resolved, layout, parse_plan, resolve_events

HOST_FAULT_WAIT_S = 15.0  # a rank that requested its host's death waits this long for it


def rank_hosts_from_env() -> list[str] | None:
    from ..launcher.hosts import rank_hosts_from_env as from_env

    return from_env()


class Injector:
    def __init__(self, plan: Plan, events: list[Resolved], role: str, index: int, rank: int,
                 roles: dict, planned_steps: int, rec, job: dict | None = None,
                 rank_hosts: list[str] | None = None):
        self.plan, self.role, self.index, self.rank, self.roles = plan, role, index, rank, dict(roles)
        self.rec = rec
        self.rank_hosts = rank_hosts  # every rank's emulated host (None: one host, or a real cluster)
        self.planned = max(1, int(planned_steps))
        # The clock of the time triggers: the rank's start (every event's `elapsed` field),
        # moved back by the earlier attempts' up time when the job restarted (jobstate.py).
        job = job or {}
        self.t0 = float(getattr(rec, "t0", None) or time.time()) - float(job.get("clock_offset_s", 0.0))
        self.mine = [e for e in events if e.hits(role, index, rank)]
        self.factor = 1.0
        self.fired: set = set(job.get("fired", ()))  # fired in an earlier attempt: never again
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._stopped = False
        self._slowed = False           # slow_down() was called since the last on_step()
        self._backend_slows = False    # the backend calls slow_down(): on_step never stretches
        self._last = None              # when the last on_step() returned
        self._recent: deque = deque(maxlen=15)  # recent step times (between on_step calls)
        for e in self.mine:
            trig = e.trigger
            if e.id in self.fired:
                continue
            if trig.kind == "elapsed_s":
                self._at(float(trig.value), self._spec_event(e))
            elif trig.kind == "hazard":
                t = hz.event_failure_time(trig.value, plan.seed, e.id)
                self._at(t, self._spec_event(e, drawn_s=t))
            elif (trig.kind == "step" and int(trig.value) == 0) or (trig.kind == "progress" and trig.value == 0):
                self._fire(self._spec_event(e), step=0)  # "from the start"
        if plan.hazard is not None and plan.hazard.per == "host":
            self._host_hazard(plan)
        elif plan.hazard is not None:
            h = hz.my_failure_time(plan.hazard, plan.seed, role, index, rank, self.roles)
            if h["eligible"]:
                rec.event("hazard_drawn", hazard=plan.hazard.to_dict(), drawn_s=h["drawn_s"],
                          fires_at_s=h["fires_at_s"], capped=h["capped"], action=h["action"],
                          **({"cap_unenforced": True} if h.get("cap_unenforced") else {}))
            if h["fires_at_s"] is not None and f"hazard-r{rank}" not in self.fired:
                self._at(h["fires_at_s"], {
                    "fid": f"hazard-r{rank}", "action": h["action"], "factor": plan.hazard.factor,
                    "target_role": role, "target_index": index, "trigger": "hazard",
                    "at": {"hazard": plan.hazard.distribution()}, "drawn_s": h["drawn_s"]})
        if self._timers:
            atexit.register(self.stop)

    def _host_hazard(self, plan: Plan) -> None:
        """faults.hazard.per=host: the lowest rank of each eligible host draws the host's
        failure time (hostfaults executes it on every rank of the host)."""
        h = hz.my_host_failure_time(plan.hazard, plan.seed, self.rank, self.rank_hosts)
        if not h["eligible"]:
            return
        self.rec.event("hazard_drawn", hazard=plan.hazard.to_dict(), drawn_s=h["drawn_s"], fires_at_s=h["fires_at_s"],
                       capped=h["capped"], host=h["host"])
        if h["fires_at_s"] is not None:
            self._at(h["fires_at_s"], {
                "fid": f"hazard-{h['host']}", "action": f"{hz.rank_action(plan.hazard, plan.seed, self.rank)}_host", "factor": 1.0,
                "target_role": "host", "target_index": h["host"], "host": h["host"], "trigger": "hazard",
                "at": {"hazard": plan.hazard.distribution()}, "drawn_s": h["drawn_s"]})

    # -------------------------------------------------------------- plumbing

    def _spec_event(self, e: Resolved, **extra) -> dict:
        d = {"fid": e.id, "action": e.action, "factor": e.factor, "target_role": e.role,
             "target_index": e.index, **e.trigger.describe(), **extra}
        if e.host is not None:
            d.update(host=e.host, target_index=e.host)
        return d

    def _at(self, t_s: float, spec: dict) -> None:
        """Fire spec at t_s seconds since the rank started (now, if that has passed)."""
        spec = dict(spec, due_s=float(t_s))
        delay = max(0.0, t_s - (time.time() - self.t0))
        timer = threading.Timer(delay, self._fire, args=(spec, None))
        timer.daemon = True
        timer.name = f"pslab-fault-{spec['fid']}"
        self._timers.append(timer)
        timer.start()

    def _due(self, e: Resolved, step: int) -> bool:
        trig = e.trigger
        if trig.kind == "step":
            return step >= int(trig.value)
        if trig.kind == "progress":
            return step >= max(1, int(round(float(trig.value) * self.planned)))
        return False

    def _fire(self, spec: dict, step) -> None:
        with self._lock:
            if self._stopped or spec["fid"] in self.fired:
                return
            self.fired.add(spec["fid"])
            fields = {k: v for k, v in spec.items() if k not in ("fid",)}
            if spec["action"] != "slow":
                fields.pop("factor", None)
            if spec["action"] in HOST_ACTIONS:
                host_fault = fields
            else:
                host_fault = None
            try:
                if host_fault is None:
                    self.rec.event("fault_injected", sync=True, step=step, fault_id=spec["fid"],
                                   target_rank=self.rank, fired_s=time.time() - self.t0, pid=os.getpid(), **fields)
            except (ValueError, OSError):
                return  # the recorder is closed: this rank has finished; an unrecorded fault never fires
            if spec["action"] == "slow":
                self.factor = max(self.factor, float(spec["factor"]))
                return
        if host_fault is not None:
            self._request_host_fault(spec, step, host_fault)
        elif spec["action"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif spec["action"] == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)

    def _request_host_fault(self, spec: dict, step, fields: dict) -> None:
        """A whole-host fault: the launcher executes it (pslab.launcher.hostfaults), as only
        it knows every process of the host. Record the request, leave it in the run dir,
        then wait to be killed with the host (a bounded wait: no launcher, no fault)."""
        try:
            self.rec.event("host_fault_requested", sync=True, step=step, fault_id=spec["fid"],
                           fired_s=time.time() - self.t0, pid=os.getpid(), **fields)
        except (ValueError, OSError):
            return
        req = {"fault_id": spec["fid"], "host": spec["host"], "action": spec["action"], "rank": self.rank,
               "step": step, "trigger": spec.get("trigger"), "elapsed": time.time() - self.t0,
               "roles": self._rank_roles()}
        d = Path(os.environ.get("PSLAB_HOSTS_DIR") or Path(self.rec.run_dir) / "hosts")
        tmp = d / f".request-{spec['fid']}.tmp"
        tmp.write_text(json.dumps(req))
        os.replace(tmp, d / f"request-{spec['fid']}.json")
        if threading.current_thread() is threading.main_thread():
            time.sleep(HOST_FAULT_WAIT_S)  # the step-triggered fault: stop here, as the host dies

    def _rank_roles(self) -> dict:
        lay = layout(self.roles)
        return {str(r): role for r, (role, _) in enumerate(lay)} if lay else {}

    # -------------------------------------------------------------- the backends' API

    def on_step(self, step: int) -> None:
        """After each completed step (or clock): stretch it for a straggler, then fire what is due."""
        now = time.perf_counter()
        if not self._backend_slows and self._last is not None:
            # A backend that does not call slow_down(): stretch the time since the last
            # step, but not an evaluation or epoch change that came in between (at most
            # 3x the median of the recent steps).
            dt = max(0.0, now - self._last)
            if self._recent:
                dt = min(dt, 3.0 * float(np.median(self._recent)))
            self._recent.append(max(0.0, now - self._last))
            if self.factor > 1.0 and not self._slowed:
                time.sleep((self.factor - 1.0) * dt)
        self._slowed = False
        self._fire_due(step, None)
        self._last = time.perf_counter()

    def point(self, name: str, step: int) -> None:
        """At a protocol point inside a step (plan.POINTS): fire the faults due there."""
        self._fire_due(step, name)

    def _fire_due(self, step: int, point: str | None) -> None:
        for e in self.mine:
            if (e.trigger.kind in ("step", "progress") and e.trigger.point == point and e.id not in self.fired
                    and self._due(e, step)):
                self._fire(self._spec_event(e, point=point) if point else self._spec_event(e), step)

    def slow_down(self, step_seconds: float) -> None:
        """A straggler takes `factor` times as long per step: sleep (factor - 1) x step_seconds."""
        self._backend_slows = True
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * max(0.0, float(step_seconds)))
            self._slowed = True

    def stop(self) -> None:
        """No more faults from this rank (its work is done); idempotent."""
        with self._lock:
            self._stopped = True
        for t in self._timers:
            t.cancel()


def make_injector(cfg, role: str, index: int, rank: int, roles: dict, planned_steps: int, rec) -> Injector:
    """The injector for one rank. cfg: the run's config (its `faults` group); roles: role
    -> count (worker, server, coordinator) plus 'rank' -> world size."""
    from .jobstate import read_job

    faults = cfg.get("faults") if hasattr(cfg, "get") else getattr(cfg, "faults", None)
    plan = parse_plan(faults)
    run = cfg.get("run") if hasattr(cfg, "get") else getattr(cfg, "run", None)
    job = read_job(run.get("job_dir") if run is not None and hasattr(run, "get") else None)
    hosts = rank_hosts_from_env()
    return Injector(plan, resolve_events(plan, roles, hosts), role, index, rank, roles, planned_steps, rec, job,
                    hosts)
