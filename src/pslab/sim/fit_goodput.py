"""Fit the goodput simulator's costs, and each measured cell's conditions, from the goodput
trials (results/goodput/trials.jsonl, one JSON object per trial, written by
experiments/goodput.py).

    from pslab.sim.fit_goodput import read_trials, fit_costs, cells
    trials = read_trials("results/goodput/trials.jsonl")
    fit = fit_costs(trials)           # fit.costs[contender] -> goodput.Costs; fit.sources says from what
    for cell in cells(trials, fit): cell.job, cell.trials

Fields read per trial (any may be null or missing except contender, ranks and status):
contender (scratch | ckpt_restart | elastic | ps), ranks, workers, servers, replication,
status, ettr, attempts, wall_s, productive_s, checkpoint_s, restart_s, detect_s,
startup_s, train_s, failures_detected, checkpoint_every, checkpoints, recovery_s [..],
rereplication_s [..], hazard {kind, rate_per_s | shape, scale_s, action, roles,
exclude_ranks, max_faults, ranks_per_host}, max_restarts, deadline_s, steps.

How each cost is fitted (as pslab.launcher.ettr measures the parts; sums over trials, so a
trial counts by its events):
- startup_s: mean start-up (first launch to the first training step, once per job);
- rank_startup_s: mean of the ranks' own part of it (the median rank's start to the first
  step, pslab.launcher.ettr): the part a fault plan's clock runs through, since it starts
  with each rank (mpirun spawning 16 Python processes on 2 cores takes seconds before it);
- finish_s: mean teardown after the result of the successful trials (`finish_s`; else
  wall_s - job_wall_s - startup_s);
- checkpoint_s: checkpoint_s / checkpoints;
- restart_s: restart_s / (attempts - 1) over trials that relaunched (detection to training
  again: relaunch, start-up, checkpoint loading);
- detect_kill_s / detect_hang_s: detect_s / failures_detected over trials whose hazard
  only kills / only hangs; a hazard that mixes both gives their mean, used for both
  (the trials do not say which failure took how long);
- recovery_s: the pause from a survived failure's detection to training again (elastic
  shrink; PS failover): pause_s / the recoveries listed, else their median;
- rereplication_s: median of the PS's measured re-replications.
Each is fitted per contender; a contender without the events falls back to its family
(classic allreduce = scratch + ckpt_restart; allreduce = those + elastic), then to all
trials, then to DEFAULT_COSTS, and `sources` records which. A measured cell uses what its
own size's trials measure first (`size_costs`: on one oversubscribed machine start-up,
relaunch and detection grow with the ranks), the pooled fit for the rest.

A cell (contender, ranks, hazard, checkpoint_every) fixes the conditions the simulator is
run under: the work (median productive_s of the successful trials, the fault-free ones
when there are any), the checkpoint interval in seconds of work, the relaunch limit, the
hazard (who is at risk: roles, exclude_ranks) and the layout.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .goodput import CONTENDERS, Costs, GoodputJob
from .hazard import hazard_from_dict

# Used where no trial measures a cost: the first round's measurements on this machine
# (results/recovery: ULFM shrink 0.08 s, PS promotion 0.07 s, worker failover 0.04 s,
# a relaunch of 4 ranks ~2 s) and pslab's configured timeouts (PS heartbeat 5 s; a step
# watchdog of 10 s as the goodput check runs it). Documented as defaults wherever used.
DEFAULT_COSTS = {"startup_s": 2.0, "checkpoint_s": 0.05, "restart_s": 1.0, "detect_kill_s": 0.1,
                 "detect_hang_s": 10.0, "recovery_s": 0.08, "rereplication_s": 0.1, "finish_s": 0.0,
                 "rank_startup_s": None}  # None: all of the start-up is on the fault clock
FAMILIES = {"scratch": ("scratch", "ckpt_restart"), "ckpt_restart": ("scratch", "ckpt_restart"),
            "elastic": ("scratch", "ckpt_restart", "elastic"), "ps": ("ps",)}


def read_trials(path) -> list[dict]:
    """The trials of a trials.jsonl (or of DIR/trials.jsonl); a clear error names the file,
    the line and the key when a line is not a usable trial."""
    p = Path(path)
    if p.is_dir():
        p = p / "trials.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no goodput trials (run experiments/goodput.py)")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{i}: not JSON ({e})") from None
        if not isinstance(t, dict):
            raise ValueError(f"{p}:{i}: a trial must be a JSON object")
        if t.get("contender") not in CONTENDERS:
            raise ValueError(f"{p}:{i}: 'contender' must be one of {CONTENDERS}, got {t.get('contender')!r}")
        if not isinstance(t.get("ranks"), int) or t["ranks"] < 1:
            raise ValueError(f"{p}:{i}: 'ranks' must be a positive integer, got {t.get('ranks')!r}")
        if t.get("status") not in ("succeeded", "failed"):
            raise ValueError(f"{p}:{i}: 'status' must be 'succeeded' or 'failed', got {t.get('status')!r}")
        out.append(t)
    if not out:
        raise ValueError(f"{p}: no trials")
    return out


def _num(t: dict, key: str):
    v = t.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _list(t: dict, key: str) -> list[float]:
    """Numbers of a list field; entries may also be records with their time in 'time_s'
    or 'seconds' (as summary.json's `rereplications` are)."""
    v = t.get(key)
    if not isinstance(v, list):
        return []
    out = []
    for x in v:
        if isinstance(x, dict):
            x = x.get("time_s", x.get("seconds"))
        if isinstance(x, (int, float)) and math.isfinite(x):
            out.append(float(x))
    return out


def hazard_action(t: dict) -> tuple[float | None, str | None]:
    """(share of failures that hang, 'kill' | 'hang' | 'mixed') of a trial's hazard."""
    h = t.get("hazard") or {}
    if "hang_fraction" in h:
        f = float(h["hang_fraction"])
    else:
        acts = h.get("actions", h.get("action"))
        if acts is None:
            return None, None
        if isinstance(acts, str):
            acts = [acts]
        if isinstance(acts, dict):
            total = sum(float(v) for v in acts.values())
            f = float(acts.get("hang", 0.0)) / total if total else 0.0
        else:
            acts = [a for a in acts if a in ("kill", "hang")]
            f = acts.count("hang") / len(acts) if acts else 0.0
    return f, "kill" if f == 0 else "hang" if f == 1 else "mixed"


def _ratio(trials, num, den):
    """sum(num) / sum(den) over trials where both are known and den > 0."""
    pairs = [(num(t), den(t)) for t in trials]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and b > 0]
    if not pairs:
        return None, 0
    return sum(a for a, _ in pairs) / sum(b for _, b in pairs), len(pairs)


def _estimators():
    def detect(action):
        return lambda ts: _ratio([t for t in ts if hazard_action(t)[1] == action],
                                 lambda t: _num(t, "detect_s"), lambda t: _num(t, "failures_detected"))

    def median(key):
        def f(ts):
            v = [x for t in ts for x in _list(t, key)]
            return (float(np.median(v)), len(v)) if v else (None, 0)
        return f

    def mean(key):
        return lambda ts: _ratio(ts, lambda t: _num(t, key), lambda t: 1.0 if _num(t, key) is not None else None)

    def finish(ts):
        ts = [t for t in ts if t["status"] == "succeeded"]  # a failed job has no result to tear down after
        v, n = mean("finish_s")(ts)
        if v is not None:
            return v, n
        r = [_num(t, "wall_s") - _num(t, "job_wall_s") - (_num(t, "startup_s") or 0.0) for t in ts
             if _num(t, "wall_s") is not None and _num(t, "job_wall_s") is not None]
        return (max(0.0, float(np.mean(r))), len(r)) if r else (None, 0)

    def pause(ts):
        """Pause after a detection per survived failure (the launcher's pause_s over the
        recoveries listed); else the recoveries' median, which may include detection."""
        v, n = _ratio(ts, lambda t: _num(t, "pause_s"), lambda t: float(len(_list(t, "recovery_s"))))
        return (v, n) if v is not None else median("recovery_s")(ts)

    def detect_any(action):
        def f(ts):
            v, n = detect(action)(ts)
            return (v, n) if v is not None else detect("mixed")(ts)
        return f

    attempts = lambda t: _num(t, "attempts")  # noqa: E731
    relaunches = lambda t: None if attempts(t) is None else attempts(t) - 1  # noqa: E731
    return {
        "startup_s": mean("startup_s"),
        "rank_startup_s": mean("rank_startup_s"),
        "checkpoint_s": lambda ts: _ratio(ts, lambda t: _num(t, "checkpoint_s"), lambda t: _num(t, "checkpoints")),
        "restart_s": lambda ts: _ratio(ts, lambda t: _num(t, "restart_s"), relaunches),
        "detect_kill_s": detect_any("kill"),
        "detect_hang_s": detect_any("hang"),
        "recovery_s": pause,
        "rereplication_s": median("rereplication_s"),
        "finish_s": finish,
    }


@dataclass(frozen=True)
class CostFit:
    costs: dict          # contender -> Costs
    sources: dict        # contender -> {cost: "measured (n=..)" | "family (..)" | "all trials" | "default"}


def fit_costs(trials: list[dict]) -> CostFit:
    est = _estimators()
    costs, sources = {}, {}
    for c in CONTENDERS:
        own = [t for t in trials if t["contender"] == c]
        fam = [t for t in trials if t["contender"] in FAMILIES[c]]
        vals, src = {}, {}
        for key, f in est.items():
            for label, ts in ((f"measured on {c}", own), (f"measured on {'+'.join(FAMILIES[c])}", fam),
                              ("measured on all contenders", trials)):
                v, n = f(ts)
                if v is not None:
                    vals[key], src[key] = max(v, 0.0), f"{label} (n={n})"
                    break
            else:
                vals[key], src[key] = DEFAULT_COSTS[key], "default (no trial measures it)"
        for key, action in (("detect_kill_s", "kill"), ("detect_hang_s", "hang")):
            pure = any(hazard_action(t)[1] == action for t in fam or trials)
            if not pure and src[key].startswith("measured"):
                src[key] += ": the mean over the hazard's kill/hang mix"
        costs[c], sources[c] = Costs(**vals), src
    return CostFit(costs, sources)


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    key: tuple           # (contender, ranks, hazard json, checkpoint_every)
    trials: list
    job: GoodputJob | None   # None: the cell cannot be simulated (notes["error"] says why)
    notes: dict


def cell_key(t: dict) -> tuple:
    return (t["contender"], int(t["ranks"]), json.dumps(t.get("hazard"), sort_keys=True),
            t.get("checkpoint_every"))


def _median(values):
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _work_s(ts: list[dict], ref: dict | None) -> tuple[float, str]:
    """The job's failure-free length (first step to result): the fault-free trials'
    productive time, else the fault-free reference run's training time, else the
    successful trials' (a failed job's productive time is 0 by definition)."""
    ok = [t for t in ts if t["status"] == "succeeded"]
    clean = [t for t in ok if not t.get("failures_detected")]
    groups = [("fault-free successful trials", clean, ("productive_s", "train_s")),
              ("fault-free reference run", [ref] if ref else [], ("train_s",)),
              ("successful trials", ok, ("productive_s", "train_s"))]
    for label, group, keys in groups:
        for key in keys:
            w = _median(t.get(key) for t in group)
            if w and w > 0:
                return w, f"median {key} of the {label}"
    raise ValueError(f"cell {ts[0]['contender']} ranks={ts[0]['ranks']}: no successful trial records "
                     "productive_s and no reference run train_s, so the job's length is unknown")


def _interval_s(ts: list[dict], work: float, ref: dict | None) -> tuple[float | None, str]:
    every = ts[0].get("checkpoint_every")
    if not every:
        return None, "no checkpoints"
    with_steps = [t for t in ts if t.get("steps") and t["status"] == "succeeded"] or \
        ([ref] if ref and ref.get("steps") else [])
    if with_steps:
        steps = _median(t["steps"] for t in with_steps)
        return work * float(every) / steps, f"checkpoint_every={every} of {steps:.0f} steps"
    once = [t for t in ts if t["status"] == "succeeded" and (t.get("attempts") or 1) == 1
            and t.get("checkpoints") is not None]
    if not once:
        return None, "checkpoint_every set but no single-attempt trial counts its checkpoints"
    k = _median(t["checkpoints"] for t in once)
    # k checkpoints in a job of `work` s: the interval lies in (work / (k + 1), work / k]
    return work / (k + 0.5), f"work / (checkpoints + 0.5), checkpoints={k:g}"


def _exposure(t: dict, contender: str, workers: int, servers: int) -> dict:
    """Who the measured hazard put at risk (roles, exclude_ranks): rank 0 is the PS
    coordinator (role 'coordinator'), ranks 1..S its servers, the rest its workers; in
    allreduce every rank is a worker."""
    h = t.get("hazard") or {}
    roles = set(h.get("roles") or ["worker", "server", "coordinator"])
    excl = {int(r) for r in (h.get("exclude_ranks") or [])}
    if contender == "ps":
        first = "coordinator" in roles and 0 not in excl
        sw = workers if "worker" not in roles else sum(1 for r in excl if r > servers)
        ss = servers if "server" not in roles else sum(1 for r in excl if 1 <= r <= servers)
    else:
        first = "worker" in roles and 0 not in excl
        sw = workers - 1 if "worker" not in roles else sum(1 for r in excl if 1 <= r < workers)
        ss = 0
    return {"first_at_risk": first, "spared_workers": sw, "spared_servers": ss}


def cells(trials: list[dict], fit: CostFit, meta: dict | None = None,
          references: list[dict] | None = None, per_size: bool = True) -> list[Cell]:
    """The measured cells, each with the GoodputJob that simulates its conditions: pslab's
    injector (one failure time per rank slot on the job's clock, `clock="job"`), hangs
    fenced by the step watchdog (every rank on one machine), and the relaunch limit of
    the trials (`max_restarts`), else of the experiment's meta.json, else the most seen.
    references: the experiment's fault-free runs (references.jsonl), for the job's length
    and steps where the trials lack them. per_size: each cell's costs from its own size's
    trials where they measure them (`size_costs`), else `fit` (pooled over sizes)."""
    meta = meta or {}
    refs = {(r.get("contender"), r.get("ranks")): r for r in references or []
            if r.get("status") == "succeeded"}
    groups: dict[tuple, list] = {}
    for t in trials:
        groups.setdefault(cell_key(t), []).append(t)
    out = []
    for key in sorted(groups, key=lambda k: (CONTENDERS.index(k[0]), k[1], k[2], str(k[3]))):
        try:
            costs = size_costs(trials, key[0], key[1], fit) if per_size else None
            out.append(_cell(key, groups[key], fit, meta, refs, costs))
        except ValueError as e:  # one cell's missing data must not hide the others
            out.append(Cell(key, groups[key], None, {"error": str(e)}))
    return out


def size_costs(trials: list[dict], contender: str, ranks: int, pooled: CostFit) -> tuple[Costs, dict]:
    """The costs of `contender` at `ranks` ranks: what its own trials of that size measure,
    the rest from the pooled fit. On one oversubscribed machine start-up, relaunch and
    detection grow with the ranks sharing the cores, which a pooled figure would blur."""
    own = fit_costs([t for t in trials if t["ranks"] == ranks])
    mine = f"measured on {contender} ("
    vals, src = {}, {}
    for key, v in asdict(pooled.costs[contender]).items():
        if own.sources[contender][key].startswith(mine):
            vals[key], src[key] = getattr(own.costs[contender], key), own.sources[contender][key] + f" at {ranks} ranks"
        else:
            vals[key], src[key] = v, pooled.sources[contender][key]
    return Costs(**vals), src


def _cell(key: tuple, ts: list[dict], fit: CostFit, meta: dict, refs: dict,
          costs: tuple[Costs, dict] | None = None) -> Cell:
    """One measured cell and the GoodputJob of its conditions (ValueError: data missing)."""
    contender, ranks = key[0], key[1]
    t0 = ts[0]
    hang, _ = hazard_action(t0)
    slow = (t0.get("hazard") or {}).get("action") == "slow"
    # a 'slow' hazard makes stragglers, not failures: nothing for this model to fail
    hz = None if slow else hazard_from_dict({k: v for k, v in (t0.get("hazard") or {}).items()
                                             if k in ("kind", "rate_per_s", "shape", "scale_s")} or None)
    workers = int(_median(t.get("workers") for t in ts) or ranks)
    servers = int(_median(t.get("servers") for t in ts) or 0) if contender == "ps" else 0
    if contender == "ps" and servers < 1:
        raise ValueError(f"cell ps ranks={ranks}: no trial records 'servers'")
    ref = refs.get((contender, ranks))
    work, work_note = _work_s(ts, ref)
    tau, tau_note = _interval_s(ts, work, ref) if contender != "scratch" else (None, "scratch")
    max_r = _median(t.get("max_restarts") for t in ts)
    r_note = "max_restarts of the trials"
    if max_r is None and isinstance(meta.get("max_restarts"), int):
        max_r, r_note = meta["max_restarts"], "max_restarts of meta.json"
    if max_r is None:
        max_r = max(int(t.get("attempts") or 1) for t in ts) - 1
        r_note = "max_restarts not recorded: the most relaunches seen"
    h = t0.get("hazard") or {}
    cost, cost_src = costs or (fit.costs[contender], fit.sources[contender])
    job = GoodputJob(contender, workers, work, hz, cost,
                     ranks_per_host=int(h.get("ranks_per_host") or 1), hang_fraction=hang or 0.0,
                     checkpoint_interval_s=tau, max_restarts=int(max_r), servers=servers,
                     replication=int(_median(t.get("replication") for t in ts) or 2) if contender == "ps" else 2,
                     deadline_s=_median(t.get("deadline_s") for t in ts),
                     max_faults=None if h.get("max_faults") is None else int(h["max_faults"]),
                     clock="job", fence_hangs=bool(h.get("fence_hangs", True)),
                     **_exposure(t0, contender, workers, servers))
    notes = {"work": work_note, "checkpoint_interval": tau_note, "restarts": r_note, "costs": cost_src}
    if slow:
        notes["hazard"] = "action 'slow': stragglers, simulated without failures"
    return Cell(key, ts, job, notes)
