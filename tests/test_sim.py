"""Tests of pslab.sim: hazards, the job model, calibration, validation, anchors.

Everything here is seeded; the Monte Carlo checks allow 3-4 standard errors."""
import time
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pslab.sim import (OSDI_FAILURE_TABLE, ConstantHazard, Job, StepTime, WeibullHazard,
                       anchor, calibrate, deck_rank_rate, fit_osdi_weibull, simulate,
                       success_probability, success_upper_bound, validate)

STEP = StepTime.lognormal(median_s=0.05, sigma=0.3)


def _se(p, n):
    return np.sqrt(max(p * (1 - p), 1e-4) / n)


# --------------------------------------------------------------------------- hazards

@pytest.mark.parametrize("hz", [ConstantHazard(0.01), WeibullHazard(0.7, 100.0),
                                WeibullHazard(1.8, 50.0)])
def test_hazard_samples_follow_cdf(hz):
    x = hz.sample(4000, rng=1)
    assert stats.kstest(x, hz.cdf).pvalue > 0.01
    # the first of n failures, drawn directly, follows 1 - S(t)^n
    first = hz.first_failure(50, 4000, rng=2)
    assert stats.kstest(first, lambda t: hz.prob_any_failure(50, t)).pvalue > 0.01
    assert np.allclose(hz.survival(x[:10]) + hz.cdf(x[:10]), 1.0)


@pytest.mark.parametrize("true", [ConstantHazard(0.004), WeibullHazard(0.7, 300.0),
                                  WeibullHazard(2.0, 150.0)])
def test_mle_recovers_parameters_under_censoring(true):
    rng = np.random.default_rng(3)
    life = true.sample(6000, rng)
    # ranks watched for different run lengths; most of them never fail
    watched = rng.uniform(50.0, 250.0, size=life.size)
    failed = life <= watched
    assert 0.1 < failed.mean() < 0.9
    fit = type(true).fit(life[failed], censored_at=watched[~failed])
    if isinstance(true, ConstantHazard):
        assert fit.rate_per_s == pytest.approx(true.rate_per_s, rel=0.06)
    else:
        assert fit.shape == pytest.approx(true.shape, rel=0.06)
        assert fit.scale_s == pytest.approx(true.scale_s, rel=0.08)
    with pytest.raises(ValueError, match="no failures"):
        type(true).fit([], censored_at=watched)


# --------------------------------------------------------------------------- job model

@pytest.mark.parametrize("workers,restarts", [(2, 0), (64, 0), (1000, 0), (1000, 2)])
def test_monte_carlo_matches_closed_form_for_classic_allreduce(workers, restarts):
    hz = WeibullHazard(0.7, 2e6)
    job = Job("allreduce", workers, 2000, STEP, hz, overhead_s=5.0, restarts=restarts,
              restart_cost_s=3.0)
    p = success_probability(job)
    sim = simulate(job, 4000, rng=workers + restarts)
    assert abs(sim.success_rate - p) < 4 * _se(p, 4000)
    assert sim.success_ci[0] <= sim.success_rate <= sim.success_ci[1]


def test_closed_form_with_deadline_and_step_noise():
    # few steps and much noise: the deadline cuts into the compute-time distribution
    job = Job("allreduce", 16, 40, StepTime.lognormal(0.5, 0.8), ConstantHazard(1e-3),
              deadline_s=45.0)
    assert job.failure_free_wall_s() > 30
    p = success_probability(job)
    sim = simulate(job, 4000, rng=5)
    assert abs(sim.success_rate - p) < 4 * _se(p, 4000)
    assert np.all(sim.wall_s[sim.succeeded] <= 45.0)


def test_classic_success_falls_with_workers():
    hz = ConstantHazard(1.0 / (30 * 24 * 3600))
    rates = []
    for n in (2, 10, 100, 1000, 10_000):
        job = Job("allreduce", n, 20_000, STEP, hz, overhead_s=10.0)
        rates.append((success_probability(job), simulate(job, 400, rng=n).success_rate))
    analytic, mc = np.array(rates).T
    assert np.all(np.diff(analytic) < 0)
    assert np.all(np.diff(mc) <= 0.02)
    assert analytic[0] > 0.99 and analytic[-1] < 0.01


def test_ps_at_least_elastic_at_least_classic():
    hz = WeibullHazard(0.7, 4e7)
    base = Job("allreduce", 1000, 20_000, STEP, hz, overhead_s=10.0)
    classic = simulate(base, 2000, rng=1)
    elastic = simulate(base.with_(backend="elastic", recovery_s=1.0, min_workers=900), 2000, rng=2)
    ps = simulate(base.with_(backend="ps", servers=100, replication=2, worker_recovery_s=1.0,
                             server_recovery_s=1.0, rereplication_s=5.0, min_workers=900),
                  2000, rng=3)
    assert 0.05 < classic.success_rate < 0.8
    tol = 3 * _se(elastic.success_rate, 2000)
    assert ps.success_rate >= elastic.success_rate - tol
    assert elastic.success_rate > classic.success_rate + 0.1
    # recoveries lengthen the job, and the bound ignores that
    for job, res in [(base.with_(backend="elastic", recovery_s=1.0, min_workers=900), elastic)]:
        assert res.success_rate <= success_upper_bound(job) + tol


def test_ps_replication_and_checkpoints():
    hz = ConstantHazard(2e-4)
    ps = Job("ps", 32, 10_000, STEP, hz, servers=8, replication=1, overhead_s=5.0,
             worker_recovery_s=1.0, server_recovery_s=1.0, rereplication_s=30.0, restore_s=2.0)
    no_ckpt = simulate(ps, 1000, rng=1).success_rate
    ckpt = simulate(ps.with_(checkpoint_interval_s=30.0), 1000, rng=1)
    replicated = simulate(ps.with_(replication=2), 1000, rng=1).success_rate
    assert ckpt.success_rate > no_ckpt + 0.2
    assert replicated > no_ckpt + 0.2
    # a long re-replication window makes double failures fatal
    slow_rerep = simulate(ps.with_(replication=2, rereplication_s=5000.0), 1000, rng=1)
    assert slow_rerep.success_rate < replicated


def test_restarts_and_checkpoints_help_classic():
    hz = ConstantHazard(1e-5)
    job = Job("allreduce", 100, 10_000, STEP, hz, overhead_s=5.0, restart_cost_s=10.0)
    once = simulate(job, 2000, rng=1)
    scratch = simulate(job.with_(restarts=3), 2000, rng=1)
    ckpt = simulate(job.with_(restarts=3, checkpoint_interval_s=60.0), 2000, rng=1)
    assert scratch.success_rate > once.success_rate
    assert ckpt.wall_mean_s < scratch.wall_mean_s


def test_consistency_models():
    job = Job("ps", 16, 1000, STEP, servers=4, replication=1, staleness_cost=0.04)
    bsp = job.step_moments()[0]
    ssp = [job.with_(consistency="ssp", staleness=s) for s in (0, 1, 2, 4, 8, 16, 64)]
    per_step = [j.step_moments()[0] for j in ssp]
    asp = job.with_(consistency="asp")
    assert per_step[0] == pytest.approx(bsp)
    assert np.all(np.diff(per_step) < 0) and asp.step_moments()[0] < per_step[-1]
    assert asp.step_moments()[0] == pytest.approx(STEP.mean, rel=1e-6)
    assert np.all(np.diff([j.idle_fraction() for j in ssp]) < 0) and asp.idle_fraction() == 0
    assert [j.steps_needed() for j in ssp] == [int(np.ceil(1000 * (1 + 0.04 * s)))
                                               for s in (0, 1, 2, 4, 8, 16, 64)]
    # fewer, costlier steps against more, cheaper ones: an interior best staleness
    walls = [j.failure_free_wall_s() for j in ssp]
    best = int(np.argmin(walls))
    assert 0 < best < len(ssp) - 1
    # a persistent straggler paces SSP as it paces BSP; ASP does not wait for it
    slow = job.with_(straggler_factor=4.0)
    assert slow.with_(consistency="ssp", staleness=64).step_moments()[0] > 3.5 * STEP.mean
    assert slow.with_(consistency="asp").step_moments()[0] < 1.3 * STEP.mean


def test_empirical_step_time_agrees_with_its_source():
    source = StepTime.lognormal(0.05, 0.3)
    emp = StepTime.empirical(source.dist.rvs(size=20_000, random_state=7))
    for n in (2, 100):
        assert Job("allreduce", n, 10, emp).step_moments()[0] == pytest.approx(
            Job("allreduce", n, 10, source).step_moments()[0], rel=0.03)


def test_ten_thousand_workers_is_fast():
    hz = WeibullHazard(0.7, 1e7)
    job = Job("elastic", 10_000, 20_000, STEP, hz, overhead_s=10.0, recovery_s=2.0)
    start = time.perf_counter()
    el = simulate(job, 200, rng=0)
    ps = simulate(job.with_(backend="ps", servers=1000, replication=3, worker_recovery_s=1.0,
                            server_recovery_s=1.0, rereplication_s=10.0), 200, rng=0)
    classic = simulate(job.with_(backend="allreduce"), 200, rng=0)
    assert time.perf_counter() - start < 5.0
    assert el.failures_mean > 10 and ps.failures_mean > el.failures_mean
    assert classic.success_rate < el.success_rate


# --------------------------------------------------------------------------- calibration

TRUE_STEP = StepTime.lognormal(median_s=0.05, sigma=0.25)
TRUE_HAZARD = ConstantHazard(2e-3)
OVERHEAD, RECOVERY, STEPS, DEADLINE = 4.0, 1.5, 500, 70.0


def _true_job(backend, workers):
    return Job(backend, workers, STEPS, TRUE_STEP, TRUE_HAZARD, overhead_s=OVERHEAD,
               deadline_s=DEADLINE, recovery_s=RECOVERY)


def _measured(backend, workers, runs, rng):
    """Run summaries as the launcher would write them, drawn from the true model."""
    sim = simulate(_true_job(backend, workers), runs, rng)
    out = []
    for wall, ok, failures in zip(sim.wall_s, sim.succeeded, sim.failures):
        # each logged step lasts as long as its slowest worker
        steps = TRUE_STEP.dist.rvs(size=(30, workers), random_state=rng).max(axis=1)
        recoveries = RECOVERY * rng.lognormal(0.0, 0.1, size=failures) if backend == "elastic" else []
        out.append({
            "status": "succeeded" if ok else "failed", "exit_code": 0 if ok else 1,
            "backend": "allreduce", "elastic": backend == "elastic", "ranks": workers,
            "workers": workers, "servers": 0, "wall_s": float(wall), "steps": STEPS,
            "examples": STEPS * workers * 256, "step_time_s": steps.tolist(),
            "recovery_s": list(recoveries), "hazard": TRUE_HAZARD.to_dict(),
            "deadline_s": DEADLINE, "consistency": "bsp", "staleness": 0,
            "faults_injected": int(failures), "failures_detected": int(failures),
            "ranks_alive_end": workers - int(failures)})
    return out


@pytest.fixture(scope="module")
def measured():
    rng = np.random.default_rng(11)
    return [run for backend, n in [("allreduce", 4), ("allreduce", 8), ("elastic", 8)]
            for run in _measured(backend, n, 300, rng)]


def test_calibration_recovers_the_true_model(measured):
    cal = calibrate(measured)
    assert set(cal.fits) == {"allreduce", "elastic"}
    assert cal.hazard == TRUE_HAZARD and cal.hazard_source == "configured in the runs"
    for fit in cal.fits.values():
        assert fit.step_time.dist.median() == pytest.approx(0.05, rel=0.03)
        assert fit.step_time.dist.kwds["s"] == pytest.approx(0.25, rel=0.1)
        assert fit.overhead_s == pytest.approx(OVERHEAD, abs=0.5)
        assert fit.steps == STEPS and fit.examples_per_worker_step == pytest.approx(256)
    assert cal.fits["elastic"].recovery_s == pytest.approx(RECOVERY, rel=0.05)
    job = cal.job("elastic", 10_000, deadline_s=3600.0)
    assert job.workers == 10_000 and job.recovery_s == cal.fits["elastic"].recovery_s
    with pytest.raises(ValueError, match="'ps'"):
        cal.job("ps", 10)


def test_calibration_names_what_is_missing(measured):
    medians_only = [{**r, "step_time_s": float(np.median(r["step_time_s"]))} for r in measured]
    with pytest.raises(ValueError, match="step_time_s"):
        calibrate(medians_only)
    no_hazard = [{**r, "hazard": None} for r in measured]
    with pytest.raises(ValueError, match="hazard"):
        calibrate(no_hazard).job("allreduce", 100)


def test_staleness_cost_is_fitted():
    rng = np.random.default_rng(4)
    c_true, runs = 0.05, []
    for consistency, s in [("bsp", 0)] * 3 + [("ssp", 2), ("ssp", 4), ("ssp", 8)]:
        runs.append({"status": "succeeded", "backend": "ps", "ranks": 8 + 2 + 1, "workers": 8,
                     "servers": 2, "replication": 2, "wall_s": 60.0,
                     "steps": int(round(400 * (1 + c_true * s))),
                     "step_time_s": TRUE_STEP.dist.rvs(size=50, random_state=rng).tolist(),
                     "recovery_s": [0.5], "hazard": None, "consistency": consistency,
                     "staleness": s})
    cal = calibrate(runs)
    assert cal.fits["ps"].staleness_cost == pytest.approx(c_true, rel=0.05)
    job = cal.job("ps", 100, hazard=None, consistency="ssp", staleness=8)
    assert job.servers == 25 and job.replication == 2 and job.steps_needed() in (560, 561)


def test_validation_flags_a_wrong_simulator(measured):
    cal = calibrate(measured)
    rows = validate(cal, measured, trials=4000, rng=1)
    assert [(r["backend"], r["ranks"]) for r in rows] == [("allreduce", 4), ("allreduce", 8),
                                                         ("elastic", 8)]
    assert all(r["runs"] == 300 for r in rows)
    assert all(r["inside"] for r in rows), rows
    assert 0.2 < rows[1]["measured_rate"] < 0.8
    # a simulator that thinks steps take 3x as long predicts far fewer successes
    wrong_step = StepTime.lognormal(0.15, 0.25)
    wrong = replace(cal, fits={b: replace(f, step_time=wrong_step) for b, f in cal.fits.items()})
    bad = validate(wrong, measured, trials=4000, rng=1)
    assert not any(r["inside"] for r in bad[:2])
    assert all(b["simulated_rate"] < r["simulated_rate"] for b, r in zip(bad, rows))


# --------------------------------------------------------------------------- anchors

def test_osdi_table_weibull_fit():
    law = fit_osdi_weibull()
    hours = np.array([row[0] for row in OSDI_FAILURE_TABLE])
    rates = np.array([row[2] for row in OSDI_FAILURE_TABLE])
    assert np.all(np.abs(law.failure_probability(hours) / rates - 1) < 0.03)
    assert law.shape < 1  # failure is far from proportional to machine-hours
    assert law.hazard().cdf(1000 * 3600.0) == pytest.approx(law.failure_probability(1000))
    # the per-rank form reproduces the table for jobs of a given size
    for n in (100, 1000):
        per_rank = law.rank_hazard(n)
        t = 10_000 * 3600.0 / n
        assert per_rank.prob_any_failure(n, t) == pytest.approx(0.247, rel=0.03)
    assert anchor("osdi_job_failure_1000_machine_hours").value == 0.137


def test_deck_anchor_rate():
    hz = deck_rank_rate(job_hours=5.0, workers=1000)
    job = Job("allreduce", 1000, 1000, StepTime.lognormal(18.0, 1e-3), hz)
    assert job.failure_free_wall_s() == pytest.approx(5 * 3600, rel=0.01)
    assert success_probability(job) == pytest.approx(anchor("deck_mpi_success_over_1000_workers").value,
                                                     rel=0.02)
