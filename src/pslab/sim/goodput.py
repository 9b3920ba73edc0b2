"""Goodput (ETTR) of a training job under failures, for the four contenders pslab runs.

ETTR (effective training time ratio, Kokolis et al.) = productive time / the job's wall
time from its first training step to its result (pslab.launcher.ettr: the first start-up
and the teardown after the result are outside the ratio), where the unproductive part is
relaunch overhead, detection delay, recovery pauses, work redone since the last
checkpoint, and checkpoint overhead. A job needs `work_s` seconds of
failure-free training; its ranks fail in *units* (a rank, or a host of `ranks_per_host`
ranks) drawn from a per-unit hazard; a failure crashes the unit (kill) or freezes it
(hang, with probability `hang_fraction`), which changes how long detection takes.
What a failure does is what pslab implements:

- "scratch": classic MPI allreduce resubmitted from scratch: any failure ends the attempt;
  after the detection delay the launcher relaunches (`restart_s`, from the detection to
  training again, the new ranks' start-up included) and the job starts over
  (`--max-restarts K` without checkpoints).
- "ckpt_restart": the same with `backend.checkpoint_every`: every `checkpoint_interval_s`
  of work a checkpoint stops training for `checkpoint_s`; a relaunch resumes from the last
  complete checkpoint (a failure during a checkpoint loses that checkpoint).
- "elastic": ULFM shrink. A crashed rank other than rank 0 costs the detection delay plus
  `recovery_s` and the job goes on with its host's ranks fewer (at the survivors' rate).
  Rank 0's host is a single point of failure. MPI never reports a hung rank: the step
  watchdog finds it after `detect_hang_s` and fences it (SIGKILL by pid) when a live rank
  shares its host (`fence_hangs`: true on one machine, false when a unit is a whole
  host), and the job shrinks as after a crash; otherwise it aborts. An abort or rank 0's
  death ends the attempt, and the launcher's `--max-restarts` relaunches all ranks from
  the latest checkpoint (or from scratch).
- "ps": the parameter server with R = 1 or 2 copies of each key range. A dead worker
  costs detection plus `recovery_s` (its batches go to the others); a dead server costs
  detection plus `recovery_s` (a backup of each of its ranges is promoted) and opens a
  re-replication window (`detection + rereplication_s`) during which the ranges it shared
  have one copy left, held by its `min(2, live)` partner units (the ring neighbours of
  `ranges.initial_map`); a failure of a partner inside a window loses ranges. With no
  spare server left (live < R) the window never closes. A lost range is restored from
  the last complete checkpoint or, without one, ends the attempt (pslab trains on and
  counts the lost rows in `lost_updates`; here they are work to redo, since their effect
  on the model is gone); so do the death of the coordinator and of the last server or worker. The
  launcher may relaunch as for the others.

Hazard clocks (`clock`): "attempt" (the at-scale default): a relaunch brings fresh units
whose clocks start with their ranks (exact for a constant hazard; for a Weibull, each
attempt is a new job, as in the tables the Weibull presets come from). "job" (what
pslab's injector does, pslab.faults.jobstate, so what the measured cells are simulated
with): one failure time per rank slot on the job's up-time clock, which stops while the
job is down between attempts; a slot whose fault fired never fails again. Either way the
clock runs through the ranks' start-up (`rank_startup_s`: a rank's start to the first
step), not through mpirun's spawn before it nor the launcher's pause. Work goes at alive_workers / workers of the
full rate; Kokolis' ETTR counts such slower training as productive, so productive =
training time minus the training later redone.

Monte Carlo (`simulate_goodput`) is vectorised over trials and loops over failures (one
iteration handles the next failure of every trial). Closed forms: `expected_wall_exponential`
(exact for scratch / ckpt_restart under a constant hazard: Daly's renewal argument for this
model), `daly_wall` (Daly 2006's own formula), `scratch_expected_wall` (any hazard,
attempts are independent), `ps_range_loss_probability`.

    from pslab.sim.goodput import Costs, GoodputJob, simulate_goodput
    job = GoodputJob("ckpt_restart", workers=1024, work_s=86400.0, hazard=ConstantHazard(1e-7),
                     costs=Costs(checkpoint_s=30.0), checkpoint_interval_s=3600.0)
    simulate_goodput(job, trials=1000, rng=0).ettr_mean
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import integrate

from .hazard import ConstantHazard, Hazard
from .job import wilson_interval

CONTENDERS = ("scratch", "ckpt_restart", "elastic", "ps")
COMPONENTS = ("startup_s", "train_s", "checkpoint_s", "restart_s", "detect_s", "recovery_s", "redone_s",
              "finish_s")
_WINDOWS = 32         # open re-replication windows kept per trial (the oldest is dropped when full)
_EPS = 1e-9


@dataclass(frozen=True)
class Costs:
    """What each mechanism costs, in seconds (fitted by pslab.sim.calibrate.fit_goodput)."""

    startup_s: float = 0.0        # first launch to the first step (outside ETTR)
    checkpoint_s: float = 0.0     # one checkpoint (training waits)
    restart_s: float = 0.0        # detection that ended an attempt to training again (relaunch,
                                  #   the new ranks' start-up, loading the checkpoint)
    detect_kill_s: float = 0.0    # crash to detection
    detect_hang_s: float = 0.0    # freeze to detection (watchdog, heartbeat timeout)
    recovery_s: float = 0.0       # elastic shrink; PS worker failover / replica promotion
    rereplication_s: float = 0.0  # PS: a spare server holds a copy again
    finish_s: float = 0.0         # after the result: teardown (outside ETTR)
    rank_startup_s: float | None = None  # the ranks' part of start-up (a rank's start to the
                                  #   first step: on the hazard's clock; mpirun's spawn before
                                  #   it is not); None: all of startup_s

    @property
    def exposed_startup_s(self) -> float:
        """The part of the first start-up during which the ranks run, so can fail."""
        return self.startup_s if self.rank_startup_s is None else min(self.rank_startup_s, self.startup_s)

    @property
    def relaunch_exposed_s(self) -> float:
        """The part of a relaunch during which the new ranks run (their start-up)."""
        return min(self.exposed_startup_s, self.restart_s)

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if v is None and k == "rank_startup_s":
                continue
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"cost {k} must be a finite number >= 0, got {v}")


@dataclass(frozen=True)
class GoodputJob:
    """One job of one contender (see the module docstring). Times in seconds."""

    contender: str
    workers: int                          # allreduce: ranks; PS: worker ranks
    work_s: float                         # failure-free training time
    hazard: Hazard | None                 # per unit; None: no failures
    costs: Costs = field(default_factory=Costs)
    ranks_per_host: int = 1               # a unit: one host of this many ranks
    hang_fraction: float = 0.0
    checkpoint_interval_s: float | None = None   # of work; None: no checkpoints
    max_restarts: int | None = None       # None: relaunch until done
    servers: int = 0                      # PS
    replication: int = 2                  # PS: 1 or 2
    min_workers: int = 1                  # elastic / PS: fewer ends the attempt
    deadline_s: float | None = None
    first_at_risk: bool = True            # rank 0 (allreduce) / the coordinator (PS) can fail
    spared_workers: int = 0               # other ranks a measured hazard left out
    spared_servers: int = 0
    max_faults: int | None = None         # the injector's cap: per attempt, or per job ('job' clock)
    clock: str = "attempt"                # "attempt": fresh units per attempt; "job": pslab's injector
    fence_hangs: bool = False             # elastic: a live rank on the hung rank's host fences it

    def __post_init__(self):
        if self.contender not in CONTENDERS:
            raise ValueError(f"contender must be one of {CONTENDERS}, got {self.contender!r}")
        if self.workers < 1 or not self.work_s > 0:
            raise ValueError("need workers >= 1 and work_s > 0")
        if self.contender == "ps" and (self.servers < 1 or self.replication not in (1, 2)):
            raise ValueError("a PS job needs servers >= 1 and replication 1 or 2 (pslab's runs use "
                             f"R <= 2), got servers={self.servers}, replication={self.replication}")
        if self.contender == "scratch" and self.checkpoint_interval_s:
            raise ValueError("'scratch' restarts from scratch: no checkpoint interval")
        if self.checkpoint_interval_s is not None and not self.checkpoint_interval_s > 0:
            raise ValueError("checkpoint_interval_s must be > 0 (or None)")
        if not 0.0 <= self.hang_fraction <= 1.0 or self.ranks_per_host < 1:
            raise ValueError("need 0 <= hang_fraction <= 1 and ranks_per_host >= 1")
        if self.clock not in ("attempt", "job"):
            raise ValueError(f"clock must be 'attempt' or 'job', got {self.clock!r}")

    def with_(self, **changes) -> "GoodputJob":
        return replace(self, **changes)

    # -- the failure units --------------------------------------------------------------

    def layout(self) -> dict:
        """Units per class: 'fatal' (every unit of classic allreduce; rank 0's host in
        elastic; the PS coordinator), 'workers' (elastic: the other hosts; PS: worker
        hosts), 'servers' (PS server hosts)."""
        g = self.ranks_per_host
        first = 1 if self.first_at_risk else 0
        if self.contender in ("scratch", "ckpt_restart"):
            at_risk = self.workers - (0 if self.first_at_risk else 1) - self.spared_workers
            return {"fatal": math.ceil(max(at_risk, 0) / g), "workers": 0, "servers": 0}
        if self.contender == "elastic":
            others = math.ceil(max(self.workers - g, 0) / g) - self.spared_workers
            return {"fatal": first, "workers": max(others, 0), "servers": 0}
        return {"fatal": first,
                "workers": max(math.ceil(self.workers / g) - self.spared_workers, 0),
                "servers": max(math.ceil(self.servers / g) - self.spared_servers, 0)}

    def server_units(self) -> int:
        return math.ceil(self.servers / self.ranks_per_host)

    def failure_free_wall_s(self) -> float:
        c = self.checkpoint_interval_s
        n_ckpt = 0 if not c else max(0, math.ceil(self.work_s / c - _EPS) - 1)
        c = self.costs
        return c.startup_s + self.work_s + n_ckpt * c.checkpoint_s + c.finish_s


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GoodputResult:
    trials: int
    successes: int
    success_rate: float
    success_ci: tuple[float, float]          # Wilson 95%
    ettr_mean: float                         # over successful trials (nan if none)
    wall_mean_s: float                       # over successful trials
    failures_mean: float                     # unit failures per trial
    restarts_mean: float
    range_losses: int                        # PS: lost-range events over all trials
    components_mean_s: dict                  # COMPONENTS, means over successful trials
    ettr: np.ndarray = field(repr=False)     # per trial; nan for a failed one
    wall_s: np.ndarray = field(repr=False)
    succeeded: np.ndarray = field(repr=False)
    server_failures: np.ndarray = field(repr=False)
    per_trial: dict = field(repr=False, default_factory=dict)  # COMPONENTS, failures, detected, restarts, ...

    @property
    def ettr_pooled(self) -> float:
        """Productive time over wall time, summed over the successful trials: the ETTR of
        a stream of such jobs (the mean of the ratios weighs short lucky jobs more)."""
        ok = self.succeeded
        if not ok.any():
            return float("nan")
        p = self.per_trial
        return float((p["train_s"][ok] - p["redone_s"][ok]).sum() / p["job_wall_s"][ok].sum())


# --------------------------------------------------------------------------- units


class _Units:
    """n identical units per trial, all launched at `start`; draws their failures in order
    (the next of m survivors of cumulative hazard h fails at H^-1(h + E / m))."""

    def __init__(self, hazard, n: int, trials: int, rng):
        self.hazard, self.n, self.rng = hazard, int(n) if hazard is not None else 0, rng
        self.left = np.zeros(trials, dtype=np.int64)
        self.h = np.zeros(trials)
        self.start = np.zeros(trials)
        self.next = np.full(trials, np.inf)
        self.reset(np.ones(trials, dtype=bool), np.zeros(trials))

    def pause(self, mask, gap):
        """The clock stops for `gap` seconds (the job is down): later failures move later."""
        self.start[mask] += gap[mask]
        self.next[mask] += gap[mask]

    def reset(self, mask, t0):
        self.left[mask] = self.n
        self.h[mask] = 0.0
        self.start[mask] = t0[mask]
        self.next[mask] = np.inf
        self._draw(mask)

    def _draw(self, mask):
        self.next[mask & (self.left <= 0)] = np.inf
        m = mask & (self.left > 0)
        if m.any():
            h = self.h[m] + self.rng.exponential(size=int(m.sum())) / self.left[m]
            self.next[m] = self.start[m] + self.hazard.inverse_cumulative_hazard(h)
            self.h[m] = h

    def fired(self, mask):
        self.left[mask] -= 1
        self._draw(mask)


# --------------------------------------------------------------------------- checkpoint arithmetic


def _finish(x, T, r, tau, C):
    """Wall time from work x to the end T at rate r: training plus the checkpoints at the
    multiples of tau strictly between x and T (none at the end: the job is done)."""
    fwd = (T - x) / r
    if not tau or C <= 0:
        return fwd, np.zeros_like(x)
    n = np.maximum(0.0, np.ceil(T / tau - _EPS) - 1 - np.floor(x / tau + _EPS))
    return fwd + n * C, n * C


def _advance(x, dt, r, tau, C):
    """Work reached after dt seconds from work x at rate r, with a checkpoint of C seconds at
    every multiple of tau. Returns (x1, checkpoint seconds spent, checkpoints completed,
    work at the last completed one)."""
    if not tau:
        return x + dt * r, np.zeros_like(x), np.zeros_like(x), x
    if C <= 0:  # free checkpoints: every boundary passed is saved
        x1 = x + dt * r
        n = np.floor(x1 / tau + _EPS) - np.floor(x / tau + _EPS)
        return x1, np.zeros_like(x), n, np.floor(x1 / tau + _EPS) * tau
    nxt = (np.floor(x / tau + _EPS) + 1) * tau
    first = (nxt - x) / r
    before = dt < first
    dt2 = np.maximum(dt - first, 0.0)
    cycle = C + tau / r
    k = np.floor(dt2 / cycle)
    rem = dt2 - k * cycle
    done = k + (rem >= C)
    x1 = np.where(before, x + dt * r, nxt + k * tau + np.maximum(rem - C, 0.0) * r)
    ck = np.where(before, 0.0, k * C + np.minimum(rem, C))
    n = np.where(before, 0.0, done)
    last = nxt + (n - 1) * tau
    return x1, ck, n, last


# --------------------------------------------------------------------------- Monte Carlo


def simulate_goodput(job: GoodputJob, trials: int = 2000, rng=None,
                     max_events: int = 200_000) -> GoodputResult:
    """Monte Carlo of `job`: success rate, ETTR and the wall-time breakdown.

    A trial still running after `max_events` failures, or past 1,000 failure-free
    durations, counts as failed (e.g. a job relaunched from scratch that cannot finish)."""
    rng = np.random.default_rng(rng)
    n, c, W = trials, job.costs, job.workers
    T, g, R = float(job.work_s), job.ranks_per_host, job.replication
    tau = job.checkpoint_interval_s if job.contender != "scratch" else None
    C = c.checkpoint_s if tau else 0.0
    lay = job.layout()
    hz = job.hazard
    fatal = _Units(hz, lay["fatal"], n, rng)
    workers = _Units(hz, lay["workers"], n, rng)
    servers = _Units(hz, lay["servers"], n, rng)
    if c.startup_s > c.exposed_startup_s:  # the ranks start (their clocks with them) after mpirun's spawn
        for u in (fatal, workers, servers):
            u.pause(np.ones(n, dtype=bool), np.full(n, c.startup_s - c.exposed_startup_s))
    ps, elastic = job.contender == "ps", job.contender == "elastic"
    srv_units = job.server_units() if ps else 0

    t = np.full(n, c.startup_s)            # training (re)starts at t
    x = np.zeros(n)                        # work done
    saved = np.zeros(n)                    # work at the last complete checkpoint
    has_ckpt = np.zeros(n, dtype=bool)
    alive = np.full(n, W, dtype=float)
    live_srv = np.full(n, srv_units)
    faults = np.zeros(n, dtype=np.int64)   # this attempt
    failures = np.zeros(n, dtype=np.int64)
    srv_fail = np.zeros(n, dtype=np.int64)
    restarts = np.zeros(n, dtype=np.int64)
    losses = np.zeros(n, dtype=np.int64)
    n_ckpts = np.zeros(n)
    spent_n = np.zeros(n, dtype=np.int64)   # faults that fired in a dying attempt: never detected
    comp = {k: np.zeros(n) for k in COMPONENTS}
    comp["startup_s"][:] = c.startup_s
    win_end = np.full((n, _WINDOWS), -np.inf)
    win_k = np.zeros((n, _WINDOWS))
    wall = np.zeros(n)
    ok = np.zeros(n, dtype=bool)
    running = np.ones(n, dtype=bool)
    horizon = job.deadline_s if job.deadline_s is not None else 1000.0 * job.failure_free_wall_s()
    left = np.full(n, np.iinfo(np.int64).max if job.max_restarts is None else job.max_restarts)

    for _ in range(max_events):
        if not running.any():
            break
        r = alive / W
        t_e = np.minimum(np.minimum(fatal.next, workers.next), servers.next)
        if job.max_faults is not None:
            t_e = np.where(faults >= job.max_faults, np.inf, t_e)
        need, ck_end = _finish(x, T, r, tau, C)
        t_fin = t + need
        fin = running & (t_fin <= t_e)
        comp["train_s"][fin] += (need - ck_end)[fin]
        comp["checkpoint_s"][fin] += ck_end[fin]
        comp["finish_s"][fin] = c.finish_s
        t_fin = t_fin + c.finish_s  # the last step is done: failures no longer matter
        if tau and C > 0:
            n_ckpts[fin] += (ck_end / C)[fin]
        wall[fin], ok[fin] = t_fin[fin], True
        running &= ~fin
        late = running & (np.minimum(t_e, t_fin) > horizon)
        wall[late] = horizon
        running &= ~late
        ev = running.copy()
        if not ev.any():
            break

        # progress up to the failure (none if it struck during a recovery)
        dt = np.where(ev, np.maximum(t_e - t, 0.0), 0.0)
        x1, ck, n_ck, last = _advance(x, dt, r, tau, C)
        comp["train_s"][ev] += (dt - ck)[ev]
        comp["checkpoint_s"][ev] += ck[ev]
        got = ev & (n_ck > 0)
        n_ckpts[ev] += n_ck[ev]
        saved[got], has_ckpt[got] = last[got], True
        x[ev] = x1[ev]
        t[ev] = np.maximum(t, t_e)[ev]
        faults[ev] += 1
        failures[ev] += 1

        is_f = ev & (fatal.next == t_e)
        is_w = ev & ~is_f & (workers.next == t_e)
        is_s = ev & ~is_f & ~is_w
        hang = rng.random(n) < job.hang_fraction
        d = np.where(hang, c.detect_hang_s, c.detect_kill_s)
        end = is_f.copy()
        if elastic and not job.fence_hangs:
            end |= is_w & hang                     # a hung rank: the watchdog can only abort
            shrink = is_w & ~hang
        else:
            shrink = is_w
        if elastic or ps:
            alive[shrink] -= g
            end |= shrink & (alive < job.min_workers)
            cont = shrink & ~end
            comp["detect_s"][cont] += d[cont]
            comp["recovery_s"][cont] += c.recovery_s
            t[cont] = np.maximum(t, t_e + d + c.recovery_s)[cont]
        if ps and is_s.any():
            srv_fail[is_s] += 1
            opened = win_end > t_e[:, None]
            p_loss = np.minimum(1.0, (win_k * opened).sum(axis=1) / np.maximum(live_srv, 1))
            lost = is_s & ((R == 1) | (rng.random(n) < p_loss))
            live_srv[is_s] -= 1
            end |= is_s & (live_srv <= 0)
            restore = lost & ~end & has_ckpt
            end |= lost & ~has_ckpt
            losses[lost] += 1
            cont = is_s & ~end
            comp["redone_s"][restore] += ((x - saved) / r)[restore]
            x[restore] = saved[restore]
            comp["detect_s"][cont] += d[cont]
            comp["recovery_s"][cont] += c.recovery_s
            t[cont] = np.maximum(t, t_e + d + c.recovery_s)[cont]
            if R == 2:  # the dead unit's partners hold the only copy until re-replicated
                w_end = np.where(live_srv >= R, t_e + d + c.rereplication_s, np.inf)
                win_end[cont] = np.column_stack([win_end[cont, 1:], w_end[cont]])
                win_k[cont] = np.column_stack([win_k[cont, 1:], np.minimum(2, live_srv[cont])])
        fatal.fired(is_f)
        workers.fired(is_w)
        servers.fired(is_s)

        # the attempt is over: relaunch from the last checkpoint, or fail
        again = end & (left > 0)
        fail = end & ~again
        wall[fail] = (t_e + d)[fail]
        comp["detect_s"][end] += d[end]
        running &= ~fail
        if again.any():
            base = np.where(has_ckpt, saved, 0.0)
            comp["redone_s"][again] += ((x - base) / r)[again]
            x[again] = base[again]
            comp["restart_s"][again] += c.restart_s
            gap = c.restart_s - c.relaunch_exposed_s    # the job is down; then the new ranks start
            t[again] = (t_e + d + c.restart_s)[again]
            if job.clock == "job":
                # faults due while the attempt was dying fire in it and are spent
                dying = t_e + d
                for u in (fatal, workers, servers):
                    while True:
                        spent = again & (u.next <= dying)
                        if not spent.any():
                            break
                        failures[spent] += 1
                        spent_n[spent] += 1
                        faults[spent] += 1
                        u.fired(spent)
                    u.pause(again, np.full(n, gap))
            else:
                for u in (fatal, workers, servers):
                    u.reset(again, t_e + d + gap)
            alive[again], live_srv[again] = W, srv_units
            if job.clock == "attempt":
                faults[again] = 0
            win_end[again], win_k[again] = -np.inf, 0.0
            restarts[again] += 1
            left[again] -= 1
    else:  # out of events: whatever still runs has not finished
        wall[running] = np.maximum(t[running], wall[running])
    if job.deadline_s is not None:
        ok &= wall <= job.deadline_s
    productive = comp["train_s"] - comp["redone_s"]
    job_wall = wall - c.startup_s - c.finish_s   # first step to the result
    ettr = np.where(ok, productive / np.where(job_wall > 0, job_wall, np.nan), np.nan)
    k = int(ok.sum())
    mean = (lambda a: float(a[ok].mean()) if k else float("nan"))
    return GoodputResult(n, k, k / n, wilson_interval(k, n), mean(ettr), mean(wall),
                         float(failures.mean()), float(restarts.mean()), int(losses.sum()),
                         {key: mean(v) for key, v in comp.items()}, ettr, wall, ok, srv_fail,
                         {**comp, "failures": failures, "restarts": restarts, "checkpoints": n_ckpts,
                          "range_losses": losses, "job_wall_s": job_wall, "detected": failures - spent_n})


# --------------------------------------------------------------------------- closed forms


def _block(L, lam, D):
    """Expected time to get L seconds without a failure, each failure costing D before
    the next try: (e^{lam L} - 1)(1 / lam + D) (a geometric number of tries)."""
    return math.expm1(lam * L) * (1.0 / lam + D)


def expected_wall_exponential(work_s: float, rate_per_s: float, costs: Costs,
                              checkpoint_interval_s: float | None, detect_s: float | None = None) -> float:
    """Exact expected wall time (start-up and teardown included) of scratch / ckpt_restart
    in this model when the job fails at a constant `rate_per_s` (all its units together,
    fresh units per attempt), relaunches are unlimited and there is no deadline.

    Work is cut into segments of tau + C (the last without a checkpoint). A segment's first
    try is F (the first one also holds the start-up); a failure costs D = detection + the
    relaunch while the job is down, after which startup' + L must run uninterrupted
    (startup' = Costs.relaunch_exposed_s, exposed), which takes (e^{lam B} - 1)(1/lam + D)
    on average (a geometric number of tries). Daly's renewal argument, for this model."""
    lam, c = float(rate_per_s), costs
    s_r = c.relaunch_exposed_s
    D = (c.detect_kill_s if detect_s is None else detect_s) + c.restart_s - s_r
    tau = checkpoint_interval_s
    if tau:
        m = max(1, math.ceil(work_s / tau - _EPS))
        lengths = [tau + c.checkpoint_s] * (m - 1) + [work_s - (m - 1) * tau]
    else:
        lengths = [work_s]
    s0 = c.exposed_startup_s  # the rest of the first start-up cannot fail
    total = c.startup_s + c.finish_s
    for i, L in enumerate(lengths):
        first = L + (s0 if i == 0 else 0.0)
        p_fail = -math.expm1(-lam * first)
        total += p_fail / lam + p_fail * (D + _block(s_r + L, lam, D)) - (s0 if i == 0 else 0.0)
    return total


def daly_wall(work_s: float, mtbf_s: float, checkpoint_s: float, restart_s: float,
              interval_s: float) -> float:
    """Daly (2006), eq. for the expected wall time with exponential failures:
    T_w = M e^{R/M} (e^{(tau + C)/M} - 1) T_s / tau."""
    M = mtbf_s
    return M * math.exp(restart_s / M) * math.expm1((interval_s + checkpoint_s) / M) * work_s / interval_s


def daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly (2006)'s higher-order optimum: sqrt(2CM)[1 + sqrt(C/2M)/3 + C/(18M)] - C for
    C < 2M, else M."""
    C, M = checkpoint_s, mtbf_s
    if C >= 2 * M:
        return M
    return math.sqrt(2 * C * M) * (1 + math.sqrt(C / (2 * M)) / 3 + C / (18 * M)) - C


def scratch_expected_wall(work_s: float, hazard: Hazard, units: float, costs: Costs,
                          detect_s: float | None = None) -> float:
    """Expected wall time of 'scratch' with unlimited relaunches, any hazard, fresh units per
    attempt: the first attempt needs startup + work without a failure among `units` units,
    a relaunched one startup' + work (Costs.relaunch_exposed_s); after the first, attempts
    are independent, so from a relaunch E = (E[min(T_fail, B)] + (1 - S(B)) D) / S(B)
    (renewal-reward), D = detection + the relaunch while the job is down."""
    s_r = costs.relaunch_exposed_s
    D = (costs.detect_kill_s if detect_s is None else detect_s) + costs.restart_s - s_r
    first, again = costs.exposed_startup_s + work_s, s_r + work_s

    def log_s(t):
        return -units * float(hazard.cumulative_hazard(t))

    def up(t):  # E[min(T_fail, t)]
        if isinstance(hazard, ConstantHazard):
            lam = units * hazard.rate_per_s
            return -math.expm1(-lam * t) / lam
        return integrate.quad(lambda x: math.exp(log_s(x)), 0.0, t, limit=200)[0]

    if log_s(again) < -700:
        return math.inf
    p = math.exp(log_s(again))
    retry = (up(again) + (1.0 - p) * D) / p
    p0 = math.exp(log_s(first))
    return up(first) + (1.0 - p0) * (D + retry) + costs.finish_s + costs.startup_s - costs.exposed_startup_s


def ps_range_loss_probability(unit_rate_per_s: float, partners: int, window_s: float) -> float:
    """P(one of the `partners` units holding a range's last copy fails within the
    re-replication window), constant hazard: 1 - exp(-partners * rate * window)."""
    return -math.expm1(-partners * unit_rate_per_s * window_s)
