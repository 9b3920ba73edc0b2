"""Parse and validate a fault plan (the `faults` config group) into plain data.

A plan is

    name: kill_one_worker
    seed: 0                 # resolves "random" targets and seeds every hazard draw
    events:                 # scheduled faults
      - action: kill        # kill (SIGKILL) | hang (SIGSTOP) | slow (straggler)
                            # | kill_host | hang_host (every rank of a host and its daemon)
        target: {role: worker, index: -1}     # or {rank: 3}; index: N | -1 (last) | random
                                              # host actions: {host: N | -1 | random | auto}
        at: {progress: 0.5}                   # step: N | progress: F | elapsed_s: T
                                              #   | hazard: {kind: ..., ...}
                                              # with step/progress, optionally point: P, a
                                              # protocol point inside the step (POINTS)
        factor: 3           # slow only: each step takes `factor` times as long
    hazard:                 # optional: every eligible rank draws its own failure time
      kind: constant        # constant (rate_per_s) | weibull (shape, scale_s)
      rate_per_s: 0.01
      roles: [worker, server]
      action: kill
      actions: null         # or a mix, {kill: 0.7, hang: 0.3}: each rank draws its action
      exclude_ranks: [0]    # rank 0 / the coordinator is a single point of failure
      max_faults: null      # cap on hazard faults per run (null: no cap)
      per: rank             # rank: each rank draws; host: each host draws (kill/hang: the host)

Every mistake raises FaultPlanError naming the config key (e.g.
`faults.events[0].at.progress=1.5: must be in [0, 1]`). Parsing needs no MPI and no
knowledge of the run's size; `resolve_events` then turns targets into concrete
(role, index) pairs for a run with known role counts, the same way on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError

ACTIONS = ("kill", "hang", "slow", "kill_host", "hang_host")
HOST_ACTIONS = ("kill_host", "hang_host")  # emulated hosts only (python -m pslab.launch --hosts K)
ROLES = ("worker", "server", "coordinator")
TRIGGERS = ("step", "progress", "elapsed_s", "hazard")
HAZARD_KINDS = ("constant", "weibull")
# Protocol points where a step/progress fault may fire instead of at the step's end: a PS
# worker before its push, between its per-server sends, after them but before it has
# recorded the acknowledgements, or on receiving handed-over work; a PS server before it
# forwards an update to the backups, between forwards, or after them before the pushes
# are acknowledged. A backend calls injector.point(name, step) at each.
POINTS = ("before_push", "mid_push", "after_push", "handover", "before_forward", "mid_forward", "after_forward")
HAZARD_ACTIONS = ("kill", "hang", "slow")


class FaultPlanError(ConfigError):
    """A fault plan that cannot run; the message names the config key."""


@dataclass(frozen=True)
class HazardSpec:
    kind: str                       # constant | weibull
    rate_per_s: float | None = None  # constant
    shape: float | None = None       # weibull
    scale_s: float | None = None     # weibull
    roles: tuple[str, ...] = ("worker", "server")
    action: str = "kill"
    factor: float = 1.0              # slow only
    exclude_ranks: tuple[int, ...] = (0,)
    max_faults: int | None = None
    per: str = "rank"                # rank | host: who draws a failure time
    actions: tuple[tuple[str, float], ...] | None = None  # a mix: (action, weight); None: `action` always

    def to_dict(self) -> dict:
        """The summary form (also what pslab.sim.hazard.hazard_from_dict reads)."""
        d = {"kind": self.kind}
        if self.kind == "constant":
            d["rate_per_s"] = self.rate_per_s
        else:
            d.update(shape=self.shape, scale_s=self.scale_s)
        d.update(roles=list(self.roles), action=self.action, exclude_ranks=list(self.exclude_ranks),
                 max_faults=self.max_faults)
        if self.per != "rank":
            d["per"] = self.per
        if self.actions is not None:
            d["actions"] = {a: w for a, w in self.actions}
        if self.action == "slow":
            d["factor"] = self.factor
        return d

    def distribution(self) -> dict:
        """Only the lifetime distribution: {kind, rate_per_s} or {kind, shape, scale_s}."""
        if self.kind == "constant":
            return {"kind": "constant", "rate_per_s": self.rate_per_s}
        return {"kind": "weibull", "shape": self.shape, "scale_s": self.scale_s}


@dataclass(frozen=True)
class Target:
    role: str | None     # worker | server | coordinator | host; None when the target is a rank
    index: int | str     # int (negative counts from the end) or "random" ("auto": hosts); the rank if role is None


@dataclass(frozen=True)
class Trigger:
    kind: str                          # step | progress | elapsed_s | hazard
    value: float | HazardSpec          # the step, the fraction, the seconds, or the hazard
    point: str | None = None           # a protocol point (POINTS); None: the step's end

    def describe(self) -> dict:
        if self.kind == "hazard":
            return {"trigger": "hazard", "at": {"hazard": self.value.distribution()}}
        at = {self.kind: self.value, **({"point": self.point} if self.point else {})}
        return {"trigger": self.kind, "at": at}


@dataclass(frozen=True)
class FaultEvent:
    id: int
    action: str
    target: Target
    trigger: Trigger
    factor: float = 1.0


@dataclass(frozen=True)
class Plan:
    name: str = "none"
    seed: int = 0
    events: tuple[FaultEvent, ...] = ()
    hazard: HazardSpec | None = None

    @property
    def empty(self) -> bool:
        return not self.events and self.hazard is None


@dataclass(frozen=True)
class Resolved:
    """One scheduled fault with its target fixed for this run."""
    id: int
    action: str
    role: str             # worker | server | coordinator | rank (a rank target)
    index: int            # index within the role (the rank for role=rank)
    rank: int | None      # the rank it hits, when known (rank targets, conventional layouts)
    trigger: Trigger
    factor: float = 1.0
    by_rank: bool = False  # match on rank instead of (role, index)
    host: str | None = None  # host actions: the host that fails (its lowest rank fires the trigger)

    def hits(self, role: str, index: int, rank: int) -> bool:
        return rank == self.rank if self.by_rank else (role, index) == (self.role, self.index)


# ---------------------------------------------------------------- parsing helpers

def _plain(obj):
    """OmegaConf containers (or plain ones) to plain dicts/lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


def _mapping(v, key: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise FaultPlanError(f"{key}={v!r}: expected a mapping")
    return v


def _unknown(d: dict, allowed: tuple, key: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise FaultPlanError(f"{key}.{extra[0]}: unknown key (allowed: {', '.join(allowed)})")


def _number(v, key: str, *, lo: float | None = None, hi: float | None = None, strict_lo: bool = False,
            integer: bool = False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultPlanError(f"{key}={v!r}: expected a number")
    if integer and float(v) != int(v):
        raise FaultPlanError(f"{key}={v!r}: expected an integer")
    if not np.isfinite(v):
        raise FaultPlanError(f"{key}={v!r}: must be finite")
    if lo is not None and (v <= lo if strict_lo else v < lo):
        raise FaultPlanError(f"{key}={v!r}: must be {'>' if strict_lo else '>='} {lo:g}")
    if hi is not None and v > hi:
        raise FaultPlanError(f"{key}={v!r}: must be <= {hi:g}")
    return int(v) if integer else float(v)


def _choice(v, choices: tuple, key: str) -> str:
    if v not in choices:
        raise FaultPlanError(f"{key}={v!r}: choose one of {', '.join(choices)}")
    return v


def parse_hazard(d, key: str = "faults.hazard") -> HazardSpec | None:
    d = _plain(d)
    if d is None:
        return None
    d = _mapping(d, key)
    _unknown(d, ("kind", "rate_per_s", "shape", "scale_s", "roles", "action", "actions", "factor",
                 "exclude_ranks", "max_faults", "per"), key)
    kind = _choice(d.get("kind"), HAZARD_KINDS, f"{key}.kind")
    rate = shape = scale = None
    if kind == "constant":
        if d.get("rate_per_s") is None:
            raise FaultPlanError(f"{key}.rate_per_s: required for kind=constant (failures per rank per second)")
        rate = _number(d["rate_per_s"], f"{key}.rate_per_s", lo=0, strict_lo=True)
    else:  # the other kind's parameters may stay in the file (switch with faults.hazard.kind=...)
        for k in ("shape", "scale_s"):
            if d.get(k) is None:
                raise FaultPlanError(f"{key}.{k}: required for kind=weibull")
        shape = _number(d["shape"], f"{key}.shape", lo=0, strict_lo=True)
        scale = _number(d["scale_s"], f"{key}.scale_s", lo=0, strict_lo=True)
    roles = d.get("roles", ["worker", "server"])
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not roles:
        raise FaultPlanError(f"{key}.roles={roles!r}: give a non-empty list of {', '.join(ROLES)}")
    for j, r in enumerate(roles):
        _choice(r, ROLES, f"{key}.roles[{j}]")
    action = _choice(d.get("action", "kill"), HAZARD_ACTIONS, f"{key}.action")
    actions = _parse_actions(d.get("actions"), f"{key}.actions")
    slow = action == "slow" if actions is None else any(a == "slow" for a, _ in actions)
    factor = _number(d.get("factor", 3.0 if slow else 1.0), f"{key}.factor", lo=1.0)
    excl = d.get("exclude_ranks", [0])
    if excl is None:
        excl = []
    if isinstance(excl, int) and not isinstance(excl, bool):
        excl = [excl]
    if not isinstance(excl, list):
        raise FaultPlanError(f"{key}.exclude_ranks={excl!r}: give a list of ranks (e.g. [0])")
    excl = tuple(_number(r, f"{key}.exclude_ranks[{j}]", lo=0, integer=True) for j, r in enumerate(excl))
    mf = d.get("max_faults")
    if mf is not None:
        mf = _number(mf, f"{key}.max_faults", lo=0, integer=True)
    per = _choice(d.get("per", "rank"), ("rank", "host"), f"{key}.per")
    if per == "host" and slow:
        raise FaultPlanError(f"{key}.action=slow: per=host draws whole-host failures (kill or hang)")
    return HazardSpec(kind, rate, shape, scale, tuple(roles), action, factor, excl, mf, per, actions)


def _parse_actions(v, key: str) -> tuple[tuple[str, float], ...] | None:
    """A mix of hazard actions, {action: weight} (weights >= 0, some > 0; they are
    normalized): each failing rank draws its action from it. None: no mix."""
    if v is None:
        return None
    v = _mapping(v, key)
    if not v:
        raise FaultPlanError(f"{key}={{}}: give at least one action with a weight, e.g. {{kill: 0.7, hang: 0.3}}")
    out = []
    for a, w in v.items():
        _choice(a, HAZARD_ACTIONS, f"{key}.{a}")
        out.append((a, _number(w, f"{key}.{a}", lo=0.0)))
    if sum(w for _, w in out) <= 0:
        raise FaultPlanError(f"{key}={v}: the weights sum to 0; give at least one positive weight")
    return tuple(out)


def _parse_target(t, key: str) -> Target:
    t = _mapping(t, key)
    _unknown(t, ("role", "index", "rank", "host"), key)
    if "host" in t:
        if len(t) > 1:
            raise FaultPlanError(f"{key}: give host alone (a host target names no role or rank)")
        h = t["host"]
        if h not in ("random", "auto"):
            h = _number(h, f"{key}.host", integer=True)
        return Target("host", h)
    if "rank" in t and t["rank"] is not None:
        if "role" in t or "index" in t:
            raise FaultPlanError(f"{key}: give either rank or role+index, not both")
        return Target(None, _number(t["rank"], f"{key}.rank", lo=0, integer=True))
    role = t.get("role", "worker")
    if role == "rank":  # the older spelling {role: rank, index: N}
        idx = t.get("index")
        if idx is None:
            raise FaultPlanError(f"{key}.index: required with role=rank")
        return Target(None, _number(idx, f"{key}.index", lo=0, integer=True))
    role = _choice(role, ROLES, f"{key}.role")
    idx = t.get("index", -1)
    if idx != "random":
        idx = _number(idx, f"{key}.index", integer=True)
    return Target(role, idx)


def _parse_trigger(at, key: str) -> Trigger:
    at = dict(_mapping(at, key))
    point = at.pop("point", None)
    if point is not None:
        point = _choice(point, POINTS, f"{key}.point")
        if not any(at.get(k) is not None for k in ("step", "progress")):
            raise FaultPlanError(f"{key}.point={point}: goes with a step or progress trigger")
        t = _parse_trigger(at, key)
        return Trigger(t.kind, t.value, point)
    given = [k for k in at if at[k] is not None]
    if len(given) != 1 or given[0] not in TRIGGERS:
        if given and given[0] not in TRIGGERS:
            _unknown(at, TRIGGERS, key)
        raise FaultPlanError(f"{key}={at}: give exactly one of {', '.join(TRIGGERS)}")
    kind = given[0]
    v = at[kind]
    if kind == "step":
        return Trigger("step", _number(v, f"{key}.step", lo=0, integer=True))
    if kind == "progress":
        return Trigger("progress", _number(v, f"{key}.progress", lo=0.0, hi=1.0))
    if kind == "elapsed_s":
        return Trigger("elapsed_s", _number(v, f"{key}.elapsed_s", lo=0.0))
    hz = _mapping(_plain(v), f"{key}.hazard")
    for k in ("roles", "exclude_ranks", "max_faults", "action", "factor"):
        if k in hz:
            raise FaultPlanError(f"{key}.hazard.{k}: not used in an event trigger (the event names "
                                 "its own target and action; use faults.hazard for per-rank hazards)")
    return Trigger("hazard", parse_hazard(hz, f"{key}.hazard"))


def parse_event(ev, i: int) -> FaultEvent:
    key = f"faults.events[{i}]"
    ev = _mapping(_plain(ev), key)
    _unknown(ev, ("action", "target", "at", "factor"), key)
    action = _choice(ev.get("action"), ACTIONS, f"{key}.action")
    if "target" not in ev:
        raise FaultPlanError(f"{key}.target: required (e.g. {{role: worker, index: -1}} or {{rank: 3}})")
    target = _parse_target(ev["target"], f"{key}.target")
    if (action in HOST_ACTIONS) != (target.role == "host"):
        raise FaultPlanError(f"{key}.target: action={action} " + ("needs a host target ({host: auto}, "
                             "{host: N} or {host: random})" if action in HOST_ACTIONS else
                             "hits one rank: give {role: ..., index: ...} or {rank: N}, not a host"))
    if "at" not in ev:
        raise FaultPlanError(f"{key}.at: required (one of {', '.join(TRIGGERS)})")
    trigger = _parse_trigger(ev["at"], f"{key}.at")
    if action == "slow":
        factor = _number(ev.get("factor", 3.0), f"{key}.factor", lo=1.0)
    else:
        if ev.get("factor") not in (None, 1, 1.0):
            raise FaultPlanError(f"{key}.factor: only for action=slow")
        factor = 1.0
    return FaultEvent(i, action, target, trigger, factor)


def parse_plan(cfg_faults) -> Plan:
    """The `faults` config group (a DictConfig or dict; None means no faults) as a Plan."""
    d = _plain(cfg_faults)
    if d is None:
        return Plan()
    d = _mapping(d, "faults")
    _unknown(d, ("name", "seed", "events", "hazard"), "faults")
    seed = _number(d.get("seed", 0), "faults.seed", lo=0, integer=True)
    events = d.get("events") or []
    if not isinstance(events, list):
        raise FaultPlanError(f"faults.events={events!r}: expected a list of events")
    return Plan(str(d.get("name", "custom")), seed, tuple(parse_event(e, i) for i, e in enumerate(events)),
                parse_hazard(d.get("hazard")))


# ---------------------------------------------------------------- the run's layout

def n_ranks(roles: dict) -> int:
    if roles.get("rank"):
        return int(roles["rank"])
    return int(sum(int(roles.get(r, 0)) for r in ROLES))


def layout(roles: dict) -> list[tuple[str, int]] | None:
    """(role, index) of every rank under the conventional layouts: rank 0 the
    coordinator, ranks 1..S the servers, the rest the workers (ps); every rank a worker
    with index = rank (allreduce, local: rank 0 also coordinates, whether or not the
    backend counts a coordinator). None when the counts fit neither."""
    n = n_ranks(roles)
    c, s, w = (int(roles.get(r, 0)) for r in ("coordinator", "server", "worker"))
    if c + s + w == n:
        return [("coordinator", i) for i in range(c)] + [("server", i) for i in range(s)] + \
            [("worker", i) for i in range(w)]
    if s == 0 and w == n:
        return [("worker", i) for i in range(n)]
    return None


def _resolve_index(index, n: int, rng: np.random.Generator, key: str) -> int:
    if n <= 0:
        raise FaultPlanError(f"{key}: no rank has that role in this run")
    if index == "random":
        return int(rng.integers(n))
    i = int(index)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise FaultPlanError(f"{key}.index={index}: out of range for {n} rank(s) of that role")
    return i


def resolve_host(index, rank_hosts: list[str] | None, rng: np.random.Generator, key: str) -> tuple[str, int]:
    """(host, its lowest rank) for a host target. `auto` and `random` pick among the hosts
    that do not hold rank 0 (the PS coordinator, allreduce's evaluating rank: a single
    point of failure in every backend); `auto` the last of them. A number names any host."""
    if not rank_hosts:
        raise FaultPlanError(f"{key}: whole-host faults need emulated hosts (python -m pslab.launch -n N --hosts K); "
                             "on a real cluster, take a machine down instead")
    hosts = list(dict.fromkeys(rank_hosts))
    if index in ("auto", "random"):
        spare = [h for h in hosts if h != rank_hosts[0]]
        if not spare:
            raise FaultPlanError(f"{key}.host={index}: every host holds rank 0 (--hosts 1); name the host "
                                 "({host: 0}) to kill it anyway")
        host = spare[-1] if index == "auto" else spare[int(rng.integers(len(spare)))]
    else:
        i = int(index) + (len(hosts) if int(index) < 0 else 0)
        if not 0 <= i < len(hosts):
            raise FaultPlanError(f"{key}.host={index}: out of range for {len(hosts)} host(s)")
        host = hosts[i]
    return host, rank_hosts.index(host)


def resolve_events(plan: Plan, roles: dict, rank_hosts: list[str] | None = None) -> list[Resolved]:
    """Concrete targets for a run with the given role counts (role -> count, plus
    'rank' -> world size). Deterministic in (plan.seed, roles): every rank resolves
    "random" to the same target without talking. A `coordinator` target in a run
    without a separate coordinator rank (allreduce, local) means rank 0, which
    evaluates and writes the result."""
    rng = np.random.default_rng([plan.seed, 0x5eed])
    lay = layout(roles)
    size = n_ranks(roles)
    out = []
    for ev in plan.events:
        key = f"faults.events[{ev.id}].target"
        t = ev.target
        if t.role == "host":
            host, first = resolve_host(t.index, rank_hosts, rng, key)
            out.append(Resolved(ev.id, ev.action, "host", first, first, ev.trigger, ev.factor, by_rank=True,
                                host=host))
            continue
        if t.role is None:
            if t.index >= size:
                raise FaultPlanError(f"{key}.rank={t.index}: this run has {size} rank(s)")
            out.append(Resolved(ev.id, ev.action, "rank", int(t.index), int(t.index), ev.trigger, ev.factor,
                                by_rank=True))
            continue
        if t.role == "coordinator" and (lay is None or ("coordinator", 0) not in lay) and not (
                lay is None and roles.get("coordinator")):
            _resolve_index(t.index, 1, rng, key)  # validates; keeps the draws in step
            out.append(Resolved(ev.id, ev.action, "coordinator", 0, 0, ev.trigger, ev.factor, by_rank=True))
            continue
        n = int(roles.get(t.role, 0))
        if n <= 0:
            raise FaultPlanError(f"{key}.role={t.role}: this run has no rank with that role "
                                 f"(roles: {', '.join(f'{k}={v}' for k, v in roles.items())})")
        role, index = t.role, _resolve_index(t.index, n, rng, key)
        rank = lay.index((role, index)) if lay else None
        out.append(Resolved(ev.id, ev.action, role, index, rank, ev.trigger, ev.factor))
    return out


__all__ = ["ACTIONS", "ROLES", "FaultPlanError", "HazardSpec", "Target", "Trigger", "FaultEvent", "Plan",
           "Resolved", "parse_plan", "parse_event", "parse_hazard", "resolve_events", "layout",
           "n_ranks"]
