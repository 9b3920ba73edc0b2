"""Fit the simulator's parameters to measured runs.

The small runs on one machine measure what a rank does: its step time, how long a
recovery takes, the launch overhead, how many steps reach the target, and (when the
fault plan is a hazard) when ranks die. `calibrate(runs)` turns a list of run summaries
(`summary.json`, one dict per run, BRIEF section 3 plus the fields listed below) into a
`Calibration`, per backend, which builds a `Job` for any number of workers. Every
number comes from the runs; when the runs lack what a parameter needs, the error says
which field of which backend is missing, instead of falling back to a guess.

Fields read from each summary: status, backend ("allreduce" | "ps"), elastic (bool,
allreduce only), ranks, workers, servers, replication, wall_s, examples, steps (or
steps_to_target when the run records it), step_time_s (list of per-step times, or their
median), recovery_s (list, one per recovered failure; PS runs may split it into
worker_recovery_s / server_recovery_s), hazard (dict or null), failure_times_s (list of
hazard-failure times since start, optional), consistency, staleness.

How each parameter is fitted:
- step time: a lognormal per worker, by maximum likelihood (scipy.optimize). A measured
  BSP step lasts as long as the slowest of its n workers, so a BSP observation is
  treated as the maximum of n per-worker draws (density n f F^(n-1)); that is what lets
  the simulator recompute the maximum for 10,000 workers instead of reusing the
  2-worker figure. Runs with a straggler fault are left out (that is the experiment,
  not the noise). Needs per-step lists; medians alone cannot give the spread.
- overhead: wall time not spent in steps or recoveries, median over successful runs
  (over those without failures, when there are any).
- steps: median steps of successful BSP runs (steps to target).
- recovery: median of the measured recovery times.
- staleness cost c: least squares through the origin of steps_ssp / steps_bsp - 1 on
  the effective staleness, over the SSP/ASP runs.
- hazard: censored MLE (`hazard.*.fit`) on failure_times_s where runs give them
  (ranks that did not fail are censored at wall_s); otherwise the hazard the runs were
  configured with, if they agree on one.

The goodput model's costs (checkpoint, restart, detection, recovery, re-replication) are
fitted from the goodput trials by `fit_goodput.fit_costs`, re-exported here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from .hazard import ConstantHazard, Hazard, WeibullHazard, hazard_from_dict
from .job import Job, StepTime

_FROM_FIT = object()  # "use the calibrated value" (None is a legitimate explicit value)


def backend_key(run: dict) -> str:
    """The simulator's backend name for a run: allreduce, elastic or ps."""
    backend = run.get("backend")
    if backend == "ps":
        return "ps"
    if backend == "allreduce":
        return "elastic" if run.get("elastic") else "allreduce"
    raise ValueError(f"run has backend {backend!r}; only 'allreduce' and 'ps' can be simulated")


def run_steps(run: dict):
    return run.get("steps_to_target", run.get("steps"))


def run_consistency(run: dict) -> str:
    return (run.get("consistency") or "bsp").lower()


def _step_times(run: dict) -> np.ndarray:
    st = run.get("step_time_s")
    return np.atleast_1d(np.asarray([] if st is None else st, dtype=float))


def _is_straggler_run(run: dict) -> bool:
    return run.get("faults") == "straggler" or float(run.get("straggler_factor") or 1.0) != 1.0


def fit_step_time(observations: list[tuple[np.ndarray, int]]) -> StepTime:
    """Per-worker lognormal from (step times, n) pairs, each time the max of n workers.

    Maximum likelihood over (log median, log sigma) with scipy.optimize; the start is
    the plain lognormal fit of all times, which is right for n = 1."""
    x = np.concatenate([t for t, _ in observations])
    n = np.concatenate([np.full(t.size, k) for t, k in observations])
    if x.size < 2 or np.any(x <= 0):
        raise ValueError("need >= 2 positive per-step times to fit the step time")
    sigma0, _, median0 = stats.lognorm.fit(x, floc=0)
    # in log time a lognormal is a normal, whose log-cdf scipy.special computes directly;
    # the likelihood is the same, just without re-freezing a distribution per evaluation
    y, log_n = np.log(x), np.log(n)

    def neg_loglik(p):
        mu, sigma = p[0], np.exp(p[1])
        z = (y - mu) / sigma
        logpdf = stats.norm.logpdf(z) - np.log(sigma) - y
        return -np.sum(log_n + logpdf + (n - 1) * special.log_ndtr(z))

    start = np.array([np.log(median0), np.log(max(sigma0, 1e-3))])
    res = optimize.minimize(neg_loglik, start, method="Nelder-Mead",
                            options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000})
    return StepTime.lognormal(float(np.exp(res.x[0])), float(np.exp(res.x[1])))


@dataclass(frozen=True)
class BackendFit:
    backend: str
    runs: int
    step_time: StepTime            # one worker, one step
    overhead_s: float
    steps: int                     # BSP steps to the target
    examples_per_worker_step: float | None
    recovery_s: float | None       # elastic shrink, PS worker
    server_recovery_s: float | None
    staleness_cost: float | None
    servers_per_worker: float | None
    replication: int | None


@dataclass(frozen=True)
class Calibration:
    fits: dict                     # backend name -> BackendFit
    hazard: Hazard | None
    hazard_source: str

    def fit(self, backend: str) -> BackendFit:
        if backend not in self.fits:
            raise ValueError(f"no measured runs of backend {backend!r} to calibrate from "
                             f"(have: {sorted(self.fits)})")
        return self.fits[backend]

    def job(self, backend: str, workers: int, *, steps: int | None = None,
            examples: float | None = None, hazard=_FROM_FIT, deadline_s: float | None = None,
            servers: int | None = None, replication: int | None = None,
            consistency: str = "bsp", staleness: int = 0, straggler_factor: float = 1.0,
            restarts: int = 0, restart_cost_s: float | None = None,
            checkpoint_interval_s: float | None = None, min_workers: int = 1) -> Job:
        """A Job for `workers` workers with the fitted parameters.

        steps: steps to the target; default the measured median (each worker does as many
        steps as in the measured runs, i.e. weak scaling). examples: alternatively the
        total examples to process, at the measured examples per worker-step.
        hazard: default the calibrated hazard; pass None for failure-free.
        restart_cost_s: default the fitted launch overhead (a restart is a relaunch)."""
        fit = self.fit(backend)
        if hazard is _FROM_FIT:
            if self.hazard is None:
                raise ValueError(f"no hazard was calibrated ({self.hazard_source}); "
                                 "pass hazard=... (or hazard=None for failure-free)")
            hazard = self.hazard
        if steps is None and examples is not None:
            if fit.examples_per_worker_step is None:
                raise ValueError(f"{backend} runs lack 'examples' to convert examples to steps")
            steps = int(np.ceil(examples / (fit.examples_per_worker_step * workers)))
        if consistency != "bsp" and fit.staleness_cost is None:
            raise ValueError(f"no SSP/ASP runs of backend {backend!r} with 'steps' to fit the "
                             "staleness cost c")
        kw = dict(backend=backend, workers=workers, steps=steps or fit.steps,
                  step_time=fit.step_time, hazard=hazard, overhead_s=fit.overhead_s,
                  deadline_s=deadline_s, consistency=consistency, staleness=staleness,
                  staleness_cost=fit.staleness_cost or 0.0, straggler_factor=straggler_factor,
                  min_workers=min_workers, checkpoint_interval_s=checkpoint_interval_s)
        if backend == "allreduce":
            kw.update(restarts=restarts, restart_cost_s=fit.overhead_s if restart_cost_s is None
                      else restart_cost_s)
        elif backend == "elastic":
            kw.update(recovery_s=_need(fit.recovery_s, "recovery_s", backend))
        else:
            if servers is None:
                ratio = _need(fit.servers_per_worker, "servers", backend)
                servers = max(1, int(round(ratio * workers)))
            replication = replication or _need(fit.replication, "replication", backend)
            server_rec = _need(fit.server_recovery_s, "server_recovery_s (or recovery_s)", backend)
            # Re-replicating or restoring a shard is what a server recovery measures.
            kw.update(servers=servers, replication=min(replication, servers),
                      worker_recovery_s=_need(fit.recovery_s, "worker_recovery_s (or recovery_s)", backend),
                      server_recovery_s=server_rec, rereplication_s=server_rec,
                      restore_s=server_rec)
        return Job(**kw)


def _need(value, what: str, backend: str):
    if value is None:
        raise ValueError(f"the {backend} runs carry no '{what}' to calibrate from")
    return value


def _median_or_none(values):
    values = [float(v) for v in values if v is not None]
    return float(np.median(values)) if values else None


def _fit_backend(backend: str, runs: list[dict]) -> BackendFit:
    bsp = [r for r in runs if run_consistency(r) == "bsp"]
    noisy = [r for r in (bsp or runs) if not _is_straggler_run(r)]
    # a BSP step is the max over the workers; anything else is one worker's step
    obs = [(_step_times(r), int(r["workers"]) if run_consistency(r) == "bsp" else 1)
           for r in noisy if _step_times(r).size >= 2]
    if not obs:
        raise ValueError(f"the {backend} runs have no per-step time lists ('step_time_s' as a "
                         "list) to fit the step-time distribution; medians alone give no spread")
    step_time = fit_step_time(obs)

    ok = [r for r in runs if r.get("status") == "succeeded"]
    ok_bsp = [r for r in ok if run_consistency(r) == "bsp" and run_steps(r)]
    if not ok_bsp:
        raise ValueError(f"no successful BSP {backend} run records 'steps' and 'wall_s'")
    # Runs that lost a worker also ran slower after it; where there are clean runs,
    # only they measure the overhead.
    clean = [r for r in ok_bsp if not r.get("recovery_s") and not r.get("failures_detected")]
    overheads = []
    for r in clean or ok_bsp:
        st, k = _step_times(r), int(run_steps(r))
        # the full list sums exactly; a sample or a median stands for k steps
        busy = st.sum() if st.size == k else k * (st.mean() if st.size > 1 else st[0])
        recovered = float(np.sum(r.get("recovery_s") or []))
        overheads.append(float(r["wall_s"]) - busy - recovered)
    overhead = max(0.0, float(np.median(overheads)))
    steps = int(round(float(np.median([run_steps(r) for r in ok_bsp]))))
    examples = _median_or_none(r.get("examples") and r["examples"] / (run_steps(r) * r["workers"])
                               for r in ok_bsp)

    def pooled(*fields):
        for f in fields:
            values = [v for r in runs for v in (r.get(f) or [])]
            if values:
                return float(np.median(values))
        return None

    recovery = pooled("worker_recovery_s", "recovery_s") if backend == "ps" else pooled("recovery_s")
    server_recovery = pooled("server_recovery_s", "recovery_s") if backend == "ps" else None

    servers_per_worker = replication = None
    if backend == "ps":
        servers_per_worker = _median_or_none(r.get("servers") and r["servers"] / r["workers"]
                                             for r in runs)
        replication = _median_or_none(r.get("replication") for r in runs)
        replication = None if replication is None else int(round(replication))

    staleness_cost = _fit_staleness_cost(backend, runs, step_time, steps, overhead)
    return BackendFit(backend, len(runs), step_time, overhead, steps, examples, recovery,
                      server_recovery, staleness_cost, servers_per_worker, replication)


def _fit_staleness_cost(backend, runs, step_time, bsp_steps, overhead) -> float | None:
    """c in steps * (1 + c * staleness), least squares through the origin."""
    xs, ys = [], []
    for r in runs:
        consistency = run_consistency(r)
        if consistency == "bsp" or r.get("status") != "succeeded" or not run_steps(r):
            continue
        probe = Job("ps", int(r["workers"]), bsp_steps, step_time, consistency=consistency,
                    staleness=int(r.get("staleness") or 0), servers=1, overhead_s=overhead)
        xs.append(probe.effective_staleness())
        ys.append(run_steps(r) / bsp_steps - 1.0)
    if not xs or not np.any(np.asarray(xs) > 0):
        return None
    xs, ys = np.asarray(xs), np.asarray(ys)
    return max(0.0, float(np.sum(xs * ys) / np.sum(xs * xs)))


def _fit_hazard(runs: list[dict], kind: str | None) -> tuple[Hazard | None, str]:
    observed = [r for r in runs if r.get("failure_times_s") is not None]
    configured = {json.dumps(r["hazard"], sort_keys=True) for r in runs if r.get("hazard")}
    if observed:
        times = np.concatenate([np.asarray(r["failure_times_s"], dtype=float) for r in observed])
        censored = np.concatenate([np.full(int(r["ranks"]) - len(r["failure_times_s"]),
                                           float(r["wall_s"])) for r in observed])
        if kind is None:
            kinds = {json.loads(c)["kind"] for c in configured}
            kind = kinds.pop() if len(kinds) == 1 else "constant"
        family = WeibullHazard if kind == "weibull" else ConstantHazard
        hz = family.fit(times, censored)
        return hz, (f"{kind} MLE from {times.size} failures and {censored.size} censored ranks "
                    f"in {len(observed)} runs")
    if len(configured) == 1:
        return hazard_from_dict(json.loads(configured.pop())), "configured in the runs"
    if configured:
        return None, (f"runs were configured with {len(configured)} different hazards and "
                      "report no failure_times_s")
    return None, "no run configures a hazard or reports failure_times_s"


def calibrate(runs: list[dict], hazard_kind: str | None = None) -> Calibration:
    """Fit a Calibration from run summaries (runs of other backends are ignored).

    hazard_kind: 'constant' or 'weibull' for the MLE on failure_times_s; default the
    kind the runs were configured with, else constant."""
    by_backend: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("backend") in ("allreduce", "ps"):
            by_backend.setdefault(backend_key(r), []).append(r)
    if not by_backend:
        raise ValueError("no allreduce or ps runs to calibrate from")
    fits = {b: _fit_backend(b, rs) for b, rs in sorted(by_backend.items())}
    hazard, source = _fit_hazard([r for rs in by_backend.values() for r in rs], hazard_kind)
    return Calibration(fits, hazard, source)


from .fit_goodput import CostFit, fit_costs  # noqa: E402,F401  (re-exported: the goodput model's costs)
