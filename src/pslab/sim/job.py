"""The job model: how long a distributed training job takes, and whether it finishes.

A job is N workers (plus S servers and a coordinator for the parameter server) that must
run a number of steps to reach a target loss, while every rank may die at random
(`pslab.sim.hazard`). Three backends differ only in what a rank failure does:

- "allreduce" (classic MPI): any failure kills the job. Optionally `restarts=k` relaunches,
  from scratch or from the last checkpoint, each paying `restart_cost_s` plus the launch
  `overhead_s` again, with fresh ranks.
- "elastic" (ULFM shrink): a failure costs `recovery_s` and the job goes on with one
  worker fewer, which then carries that worker's share of the data; it fails when fewer
  than `min_workers` remain or when rank 0 (the coordinator, a single point of failure)
  dies.
- "ps": a worker failure costs `worker_recovery_s` (the others go on, with its data
  redistributed); a server failure with replication R >= 2 costs `server_recovery_s`
  and is survived unless R servers are down at once (a new failure within
  `rereplication_s` of the previous R-1), the conservative reading of consistent hashing
  with virtual nodes, where any R servers share some key range; with R = 1 the shard is
  restored from the last checkpoint (`restore_s`, and the work since that checkpoint is
  redone) or, without checkpoints, the job fails; a coordinator failure fails the job.

Step time. A worker's step time is a distribution (lognormal, or empirical from
measurements), optionally with one straggler slower by `straggler_factor`. What one
global step costs depends on the consistency model:
- BSP waits for the slowest worker: the expected maximum of N step times, computed by
  integrating the distribution of the maximum (as cheap for N = 10,000 as for N = 2).
- ASP never waits: the job moves at the workers' total throughput, i.e. the harmonic
  mean of their mean step times.
- SSP(s) is approximated by a bounded lag: a worker may run s steps ahead, so the
  barrier effectively applies to windows of s+1 steps, and a step costs the expected
  maximum over workers of their mean step time over a window (the window mean's
  distribution moment-matched by a lognormal, Fenton-Wilkinson). s = 0 is BSP; a large s
  averages transient noise away but still waits for a *persistent* straggler.
Staleness costs convergence: reaching the target takes steps * (1 + c * staleness), with
c (`staleness_cost`) fitted from measured runs. For SSP(s) the staleness is s: worker
clocks drift apart like random walks, so over a long job the fast workers do reach the
bound. ASP has no bound; its staleness defaults to the delay, in global steps, of the
slowest worker's gradient (expected slowest step time / mean global step time: 1 without
noise, about the straggler factor with a straggler) and can be set with `asp_staleness`.
Under that default ASP is the optimistic end of the range; SSP shows the interior
optimum of the OSDI'14 delay sweep (per-step time falls with s, steps grow with s).

Over many steps the total compute time is a sum of per-step times, drawn here from a
gamma distribution with the exact mean and variance (positive, and normal by the CLT
for long jobs), so a trial costs O(1) instead of O(steps * N).

Monte Carlo (`simulate`) is vectorised over trials; failures are drawn lazily as the
ordered failure times of each class of identical ranks (the next of n survivors of age
t fails at H^-1(H(t) + E/n)), so one loop iteration handles one failure in every trial
at once and no N-sized array is ever drawn. `success_probability` is the closed form for
classic allreduce, `success_upper_bound` a bound for elastic and PS (it ignores the time
that recoveries add, which can only expose the job to more failures).

Not modelled, on purpose: communication cost growing with N (the step time is what one
worker measured; supply a different `step_time` to study that), failures of replacement
ranks (a restored PS server keeps its slot's failure clock: exact for a constant hazard),
and correlated failures (rack, switch).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import integrate, stats

from .hazard import Hazard

BACKENDS = ("allreduce", "elastic", "ps")
CONSISTENCIES = ("bsp", "ssp", "asp")
QUANTILES = (0.1, 0.5, 0.9, 0.99)


# ---------------------------------------------------------------------------------------
# step time of one worker, and of one global step


@dataclass(frozen=True)
class StepTime:
    """Time one worker takes for one step; `dist` is a frozen scipy.stats distribution."""

    dist: object
    label: str = ""

    @classmethod
    def lognormal(cls, median_s: float, sigma: float) -> "StepTime":
        if not (median_s > 0 and sigma > 0):
            raise ValueError("lognormal step time needs median_s > 0 and sigma > 0")
        return cls(stats.lognorm(s=sigma, scale=median_s),
                   f"lognormal(median={median_s:.4g}s, sigma={sigma:.3g})")

    @classmethod
    def empirical(cls, samples) -> "StepTime":
        """A smoothed empirical distribution (a histogram with uniform bins)."""
        x = np.asarray(samples, dtype=float)
        if x.size < 2 or np.ptp(x) == 0 or np.any(x <= 0):
            raise ValueError("empirical step time needs >= 2 distinct positive samples")
        return cls(stats.rv_histogram(np.histogram(x, bins="auto"), density=False),
                   f"empirical(n={x.size}, median={np.median(x):.4g}s)")

    @property
    def mean(self) -> float:
        return float(self.dist.mean())

    @property
    def var(self) -> float:
        return float(self.dist.var())


def _max_moments(dist, n_normal: int, slow_factor: float | None) -> tuple[float, float]:
    """Mean and variance of max(X_1..X_n, slow_factor * X_0), X_i iid from `dist`.

    Integrates the cdf of the maximum, F(x)^n * F(x / f), on a grid wide enough that
    the tails left out are below 1e-12; E[M] = lo + int S_M and
    Var[M] = int 2|x - E[M]| * (S_M above the mean, F_M below), no cancellation."""
    f = 1.0 if slow_factor is None else slow_factor
    tail = 1e-12
    lo = float(dist.ppf(tail)) * min(1.0, f)
    hi = float(dist.isf(tail / max(n_normal, 1))) * max(1.0, f)
    x = np.linspace(lo, hi, 40001)
    with np.errstate(divide="ignore"):
        log_f = n_normal * dist.logcdf(x) if n_normal else np.zeros_like(x)
        if slow_factor is not None:
            log_f = log_f + dist.logcdf(x / f)
    cdf = np.exp(log_f)
    sf = -np.expm1(log_f)
    mean = lo + integrate.trapezoid(sf, x)
    dev = np.where(x >= mean, sf, cdf) * 2.0 * np.abs(x - mean)
    return float(mean), float(integrate.trapezoid(dev, x))


def _window_mean_dist(step: StepTime, window: int):
    """Distribution of a worker's mean step time over `window` steps: a lognormal with
    the right mean and variance (Fenton-Wilkinson)."""
    if window == 1:
        return step.dist
    mu, var = step.mean, step.var / window
    sigma2 = np.log1p(var / mu ** 2)
    return stats.lognorm(s=np.sqrt(sigma2), scale=mu * np.exp(-sigma2 / 2))


# ---------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class Job:
    """One training job: who runs it, how long a step takes, how ranks fail, and what a
    failure costs on its backend (see the module docstring). Times are in seconds."""

    backend: str                      # "allreduce" | "elastic" | "ps"
    workers: int
    steps: int                        # steps to the target loss under BSP
    step_time: StepTime
    hazard: Hazard | None = None      # per rank; None: ranks never fail
    overhead_s: float = 0.0           # launch + setup + teardown, paid once per attempt
    deadline_s: float | None = None   # not finished by then = failed
    consistency: str = "bsp"
    staleness: int = 0                # SSP bound s
    staleness_cost: float = 0.0       # c in steps * (1 + c * staleness)
    asp_staleness: float | None = None  # ASP's effective staleness; None: slowest-step lag
    straggler_factor: float = 1.0     # one worker this many times slower
    # allreduce
    restarts: int = 0
    restart_cost_s: float = 0.0
    checkpoint_interval_s: float | None = None  # of compute; allreduce restarts, PS R=1
    # elastic
    recovery_s: float = 0.0
    min_workers: int = 1
    # ps
    servers: int = 0
    replication: int = 1
    worker_recovery_s: float = 0.0
    server_recovery_s: float = 0.0
    rereplication_s: float = 0.0
    restore_s: float = 0.0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {CONSISTENCIES}")
        if self.backend != "ps" and self.consistency != "bsp":
            raise ValueError("allreduce backends are bulk-synchronous (consistency='bsp')")
        if self.workers < 1 or self.steps < 1:
            raise ValueError("need workers >= 1 and steps >= 1")
        if self.backend == "ps" and (self.servers < 1 or self.replication < 1):
            raise ValueError("a PS job needs servers >= 1 and replication >= 1")
        if self.replication > max(self.servers, 1):
            raise ValueError("replication cannot exceed the number of servers")
        if not 1 <= self.min_workers <= self.workers:
            raise ValueError("need 1 <= min_workers <= workers")
        if self.straggler_factor <= 0 or self.staleness < 0 or self.staleness_cost < 0:
            raise ValueError("straggler_factor must be > 0, staleness and its cost >= 0")

    @property
    def ranks(self) -> int:
        return self.workers + (self.servers + 1 if self.backend == "ps" else 0)

    def with_(self, **changes) -> "Job":
        """A copy with some fields changed (e.g. `job.with_(workers=1000)`)."""
        return replace(self, **changes)

    # -- per-step time --------------------------------------------------------------

    def _worker_split(self):
        """(number of normal workers, straggler factor or None)."""
        if self.straggler_factor == 1.0 or self.workers == 1:
            return self.workers, None
        return self.workers - 1, self.straggler_factor

    def _bsp_moments(self, dist=None):
        n, f = self._worker_split()
        return _max_moments(self.step_time.dist if dist is None else dist, n, f)

    def _asp_step_mean(self) -> float:
        n, f = self._worker_split()
        throughput = n / self.step_time.mean + (0.0 if f is None else 1.0 / (f * self.step_time.mean))
        return self.workers / throughput

    def step_moments(self) -> tuple[float, float]:
        """Mean and variance of the wall time of one global step with all workers up."""
        if self.consistency == "bsp":
            return self._bsp_moments()
        if self.consistency == "asp":
            return self._asp_step_mean(), self.step_time.var / self.workers
        window = self.staleness + 1
        mean, var = self._bsp_moments(_window_mean_dist(self.step_time, window))
        return mean, window * var  # one draw of the window maximum covers `window` steps

    def effective_staleness(self) -> float:
        if self.consistency == "bsp":
            return 0.0
        if self.consistency == "ssp":
            return float(self.staleness)
        if self.asp_staleness is not None:
            return float(self.asp_staleness)
        return self._bsp_moments()[0] / self._asp_step_mean()

    def steps_needed(self) -> int:
        return int(np.ceil(self.steps * (1.0 + self.staleness_cost * self.effective_staleness())))

    def idle_fraction(self) -> float:
        """Share of worker time spent waiting at barriers, failure-free."""
        if self.consistency == "asp":
            return 0.0
        n, f = self._worker_split()
        busy = self.step_time.mean * (n + (0 if f is None else f)) / self.workers
        return float(1.0 - busy / self.step_moments()[0])

    def failure_free_wall_s(self) -> float:
        return self.overhead_s + self.steps_needed() * self.step_moments()[0]

    def compute_distribution(self):
        """Distribution of the total compute time of all steps, all workers up: a gamma
        with the exact mean and variance of the sum (None if deterministic)."""
        k = self.steps_needed()
        m, v = self.step_moments()
        if v <= 0:
            return None
        return stats.gamma(a=k * m * m / v, scale=v / m)


# ---------------------------------------------------------------------------------------
# results


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class SimResult:
    """Outcome of `simulate`: success rate with its Wilson interval, and wall times."""

    trials: int
    successes: int
    success_rate: float
    success_ci: tuple[float, float]          # Wilson 95%
    wall_mean_s: float                       # successful runs (nan if none)
    wall_quantiles_s: dict                   # {q: seconds} over successful runs
    time_to_target_s: float                  # = wall_mean_s: a run stops at the target
    resubmit_time_to_target_s: float         # failed jobs resubmitted until one succeeds
    failures_mean: float                     # rank failures per run (all runs)
    wall_s: np.ndarray = field(repr=False)   # every trial; failed: the time it died
    succeeded: np.ndarray = field(repr=False)
    failures: np.ndarray = field(repr=False)  # rank failures in every trial


def _summarize(wall, ok, failures) -> SimResult:
    n, k = wall.size, int(ok.sum())
    good = wall[ok]
    mean = float(good.mean()) if k else float("nan")
    quant = {q: float(np.quantile(good, q)) if k else float("nan") for q in QUANTILES}
    # renewal-reward: E[total time until the first success] = E[wall of any run] / p
    resubmit = float(wall.mean() / (k / n)) if k else float("inf")
    return SimResult(n, k, k / n, wilson_interval(k, n), mean, quant, mean, resubmit,
                     float(failures.mean()), wall, ok, failures)


# ---------------------------------------------------------------------------------------
# Monte Carlo


def simulate(job: Job, trials: int = 1000, rng=None) -> SimResult:
    rng = np.random.default_rng(rng)
    dist = job.compute_distribution()
    if dist is None:
        compute = np.full(trials, job.steps_needed() * job.step_moments()[0])
    else:
        compute = dist.rvs(size=trials, random_state=rng)
    if job.backend == "allreduce":
        wall, ok, failures = _run_allreduce(job, compute, rng)
    else:
        wall, ok, failures = _run_shrinking(job, compute, rng)
    if job.deadline_s is not None:
        ok = ok & (wall <= job.deadline_s)
        wall = np.minimum(wall, job.deadline_s)
    return _summarize(wall, ok, failures)


def _run_allreduce(job: Job, compute, rng):
    trials = compute.size
    wall = np.zeros(trials)
    ok = np.zeros(trials, dtype=bool)
    failures = np.zeros(trials, dtype=int)
    remaining = compute.copy()    # compute seconds still to do
    clock = np.zeros(trials)      # wall time at the start of the current attempt
    running = np.ones(trials, dtype=bool)
    for attempt in range(job.restarts + 1):
        if attempt:
            clock[running] += job.restart_cost_s
        need = job.overhead_s + remaining
        if job.hazard is None:
            t_fail = np.full(trials, np.inf)
        else:
            t_fail = job.hazard.first_failure(job.workers, trials, rng)
        done = running & (t_fail >= need)
        wall[done] = clock[done] + need[done]
        ok |= done
        running &= ~done
        failures[running] += 1
        if job.checkpoint_interval_s:
            progress = np.clip(t_fail - job.overhead_s, 0.0, None)
            saved = np.floor(progress / job.checkpoint_interval_s) * job.checkpoint_interval_s
            remaining = np.where(running, remaining - saved, remaining)
        clock[running] += t_fail[running]
        wall[running] = clock[running]
        if not running.any() or job.deadline_s is not None and np.all(clock[running] > job.deadline_s):
            break
    return wall, ok, failures


class _RankClass:
    """n identical ranks started together at time 0; draws their failures in order."""

    def __init__(self, hazard, n, trials, rng, shrinks=True):
        self.hazard, self.rng, self.shrinks = hazard, rng, shrinks
        self.left = np.full(trials, n if hazard is not None else 0)
        self.h = np.zeros(trials)           # cumulative hazard at the last failure
        self.next = np.full(trials, np.inf)
        self._draw(np.ones(trials, dtype=bool))

    def _draw(self, mask):
        mask = mask & (self.left > 0)
        if not mask.any():
            return
        e = self.rng.exponential(size=int(mask.sum()))
        h = self.h[mask] + e / self.left[mask]
        self.next[mask] = self.hazard.inverse_cumulative_hazard(h)
        self.h[mask] = h

    def fired(self, mask):
        if self.shrinks:
            self.left[mask] -= 1
        self.next[mask & (self.left == 0)] = np.inf
        self._draw(mask)


def _run_shrinking(job: Job, compute, rng):
    """Elastic allreduce and parameter server: failures cost time, not the job."""
    trials, n = compute.size, job.workers
    ps = job.backend == "ps"
    restore = ps and job.replication == 1
    workers = _RankClass(job.hazard, n if ps else n - 1, trials, rng)   # rank 0 apart
    fatal = _RankClass(job.hazard, 1, trials, rng)                       # rank 0 / coordinator
    servers = _RankClass(job.hazard, job.servers if ps else 0, trials, rng, shrinks=not restore)
    worker_cost = job.worker_recovery_s if ps else job.recovery_s

    alive = np.full(trials, n)
    servers_alive = np.full(trials, job.servers)
    recent = np.full((trials, max(job.replication - 1, 1)), -np.inf)  # last R-1 server failures
    rem = compute.copy()
    now = np.full(trials, job.overhead_s)
    wall = np.zeros(trials)
    ok = np.zeros(trials, dtype=bool)
    failures = np.zeros(trials, dtype=int)
    running = np.ones(trials, dtype=bool)
    # Without a deadline, a run livelocked by restores counts as failed at 100x its
    # failure-free time; with any realistic hazard this never binds.
    horizon = job.deadline_s if job.deadline_s is not None else 100.0 * (job.overhead_s + compute.max())

    while running.any():
        t_e = np.minimum(np.minimum(workers.next, servers.next), fatal.next)
        t_fin = now + rem * n / np.maximum(alive, 1)
        fin = running & (t_fin <= t_e)
        wall[fin], ok[fin] = t_fin[fin], True
        running &= ~fin
        late = running & ((t_e > horizon) | (now > horizon))
        wall[late] = np.maximum(now[late], horizon)
        running &= ~late
        if not running.any():
            break

        # progress up to the failure (none if it hit during a recovery)
        adv = running & (t_e > now)
        rem[adv] -= (t_e[adv] - now[adv]) * alive[adv] / n
        now[adv] = t_e[adv]
        failures[running] += 1
        is_w = running & (workers.next == t_e)
        is_s = running & ~is_w & (servers.next == t_e)
        is_f = running & ~is_w & ~is_s
        dead = is_f.copy()

        # a worker: shrink; recoveries that overlap are handled together
        alive[is_w] -= 1
        now[is_w] = np.maximum(now[is_w], t_e[is_w] + worker_cost)
        dead |= is_w & (alive < job.min_workers)

        if restore:
            if job.checkpoint_interval_s:
                done = compute - rem
                saved = np.floor(done / job.checkpoint_interval_s) * job.checkpoint_interval_s
                rem[is_s] = compute[is_s] - saved[is_s]
                now[is_s] = np.maximum(now[is_s], t_e[is_s] + job.restore_s)
            else:
                dead |= is_s
        elif ps:
            # all R replicas of some range down at once: the oldest of the last R-1
            # failures is still being re-replicated
            dead |= is_s & (t_e - recent[:, 0] < job.rereplication_s)
            recent[is_s] = np.column_stack([recent[is_s, 1:], t_e[is_s]])
            servers_alive[is_s] -= 1
            dead |= is_s & (servers_alive < 1)
            now[is_s] = np.maximum(now[is_s], t_e[is_s] + job.server_recovery_s)

        wall[dead] = t_e[dead]
        running &= ~dead
        workers.fired(is_w)
        servers.fired(is_s)
        fatal.fired(is_f)
    return wall, ok, failures


# ---------------------------------------------------------------------------------------
# closed forms


def _expect_over_compute(job: Job, g) -> float:
    """E[g(T); T <= deadline] with T = overhead + total compute time, g vectorised.

    Integrated over the quantile u of the compute time, g(overhead + ppf(u)) for u up to
    F(deadline - overhead), by Gauss-Legendre: exact for the point mass, and unlike
    quadrature in seconds it cannot miss the narrow peak of a long job's compute time."""
    dist = job.compute_distribution()
    upper = np.inf if job.deadline_s is None else job.deadline_s - job.overhead_s
    if dist is None:
        c = job.steps_needed() * job.step_moments()[0]
        return float(g(np.array([job.overhead_s + c]))[0]) if c <= upper else 0.0
    u_max = float(dist.cdf(upper)) if np.isfinite(upper) else 1.0
    if u_max <= 0:
        return 0.0
    value, _ = integrate.fixed_quad(lambda u: g(job.overhead_s + dist.ppf(u)), 0.0, u_max, n=256)
    return float(value)


def success_probability(job: Job) -> float:
    """Exact success probability of a classic allreduce job: no rank fails before the
    job is done (any of up to restarts+1 independent attempts from scratch)."""
    if job.backend != "allreduce":
        raise NotImplementedError("no closed form for elastic or PS jobs: use simulate() "
                                  "or success_upper_bound()")
    if job.restarts and (job.checkpoint_interval_s or job.deadline_s is not None):
        raise NotImplementedError("restarts with checkpoints or a deadline have no closed "
                                  "form: use simulate()")
    if job.hazard is None:
        return _expect_over_compute(job, np.ones_like)
    attempts = job.restarts + 1

    def p(t):
        # one attempt survives with S(t)^N; at least one of `attempts` does
        log_s = -job.workers * job.hazard.cumulative_hazard(t)
        return -np.expm1(attempts * np.log(-np.expm1(log_s))) if attempts > 1 else np.exp(log_s)

    return _expect_over_compute(job, p)


def success_upper_bound(job: Job) -> float:
    """An upper bound on the success probability of an elastic or PS job.

    Evaluated at the failure-free duration: rank 0 / the coordinator survives, not too
    many workers die, and (PS, R = 1 without checkpoints) no server dies. Recoveries only
    lengthen the job and replica loss is ignored, so the true value is lower; the bound
    is tight when recoveries are short against the job."""
    if job.backend == "allreduce":
        return success_probability(job)
    if job.hazard is None:
        return _expect_over_compute(job, np.ones_like)
    hz = job.hazard
    n_w = job.workers if job.backend == "ps" else job.workers - 1
    may_lose = job.workers - job.min_workers
    server_fatal = job.backend == "ps" and job.replication == 1 and not job.checkpoint_interval_s

    def p(t):
        out = hz.survival(t) * stats.binom.cdf(may_lose, n_w, hz.cdf(t))
        if server_fatal:
            out *= np.exp(-job.servers * hz.cumulative_hazard(t))
        return out

    return _expect_over_compute(job, p)
