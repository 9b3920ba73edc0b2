"""The goodput model (pslab.sim.goodput) against closed forms, the hazard presets against
their anchors, and the PS's rule for a second server failure. No MPI; a few seconds."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import optimize

from pslab.sim import anchors as A
from pslab.sim.contenders import contender_job, fatal_mtbf_s
from pslab.sim.goodput import (Costs, GoodputJob, daly_interval_s, daly_wall, expected_wall_exponential,
                               ps_range_loss_probability, scratch_expected_wall, simulate_goodput)
from pslab.sim.hazard import ConstantHazard, WeibullHazard
from pslab.sim.presets import preset, young_daly_interval_s

COSTS = Costs(startup_s=30.0, checkpoint_s=20.0, restart_s=60.0, detect_kill_s=10.0, detect_hang_s=100.0,
              recovery_s=5.0, rereplication_s=50.0, finish_s=15.0)


def _within(mc: np.ndarray, exact: float, k: float = 4.0):
    se = mc.std() / math.sqrt(mc.size)
    assert abs(mc.mean() - exact) < k * se + 1e-9 * exact, (mc.mean(), exact, se)


@pytest.mark.parametrize("contender,tau,work", [("scratch", None, 4000.0), ("ckpt_restart", 400.0, 40_000.0),
                                                ("ckpt_restart", 1500.0, 40_000.0)])
def test_wall_time_matches_the_exact_renewal_formula(contender, tau, work):
    lam = 1 / 3600  # the job's failure rate: 100 ranks at lam / 100
    job = GoodputJob(contender, 100, work, ConstantHazard(lam / 100), COSTS, checkpoint_interval_s=tau)
    r = simulate_goodput(job, 4000, rng=1)
    assert r.success_rate == 1.0 and r.restarts_mean > 0.5
    _within(r.wall_s, expected_wall_exponential(work, lam, COSTS, tau))
    # productive time is the work, whatever was redone
    p = r.per_trial
    assert np.allclose(p["train_s"] - p["redone_s"], work)


@pytest.mark.parametrize("contender,tau", [("scratch", None), ("ckpt_restart", 600.0)])
def test_only_the_ranks_part_of_start_up_is_exposed(contender, tau):
    """mpirun's spawn before the ranks start cannot fail (the fault clock starts with each
    rank): with a long spawn and a short rank start-up, the Monte Carlo still matches the
    closed forms, and a job fails less often than one whose whole start-up is exposed."""
    lam, work = 1 / 600, 1200.0
    part = replace(COSTS, startup_s=300.0, rank_startup_s=20.0)
    assert part.exposed_startup_s == 20.0 and part.relaunch_exposed_s == 20.0
    assert replace(COSTS, startup_s=300.0).exposed_startup_s == 300.0
    job = GoodputJob(contender, 10, work, ConstantHazard(lam / 10), part, checkpoint_interval_s=tau)
    r = simulate_goodput(job, 6000, rng=4)
    _within(r.wall_s, expected_wall_exponential(work, lam, part, tau))
    if contender == "scratch":
        _within(r.wall_s, scratch_expected_wall(work, ConstantHazard(lam / 10), 10, part))
    whole = simulate_goodput(replace(job, costs=replace(part, rank_startup_s=None)), 6000, rng=4)
    assert whole.restarts_mean > r.restarts_mean + 0.2


def test_daly_formula_and_the_young_daly_interval():
    M, C, work = 6 * 3600.0, 60.0, 30 * 86400.0
    costs = Costs(checkpoint_s=C)
    exact = lambda tau: expected_wall_exponential(work, 1 / M, costs, tau)  # noqa: E731
    best = optimize.minimize_scalar(exact, bounds=(100.0, 20_000.0), method="bounded").x
    young = young_daly_interval_s(C, M)
    assert young == pytest.approx(math.sqrt(2 * C * M))
    assert abs(best / young - 1) < 0.1 and abs(best / daly_interval_s(C, M) - 1) < 0.1
    # at the optimum Daly's formula and the exact renewal agree (no restart cost here)
    assert daly_wall(work, M, C, 0.0, young) == pytest.approx(exact(young), rel=0.01)
    assert exact(young) < exact(young / 4) and exact(young) < exact(young * 4)


def test_scratch_closed_form_for_any_hazard():
    hz = WeibullHazard(0.7, 2e6)
    job = GoodputJob("scratch", 64, 3000.0, hz, COSTS)
    r = simulate_goodput(job, 4000, rng=2)
    _within(r.wall_s, scratch_expected_wall(3000.0, hz, 64, COSTS))


def test_ps_second_failure_loses_a_range_with_the_analytic_probability():
    lam, w, S = 2e-5, 1000.0, 200
    job = GoodputJob("ps", 4, 10_000.0, ConstantHazard(lam), Costs(rereplication_s=w), servers=S,
                     first_at_risk=False, spared_workers=4, checkpoint_interval_s=100.0)
    r = simulate_goodput(job, 3000, rng=3)
    assert r.success_rate == 1.0
    ratio = r.range_losses / r.server_failures.sum()
    # a window opened at a uniform time of the job is cut by its end: w / (2 T) of it is lost
    p = ps_range_loss_probability(lam, 2, w) * (1 - w / (2 * r.wall_mean_s))
    assert ratio == pytest.approx(p, rel=0.1), (ratio, p)
    # windows that close at once lose nothing; with R = 1 every server failure loses ranges
    assert simulate_goodput(job.with_(costs=Costs()), 500, rng=3).range_losses == 0
    r1 = simulate_goodput(job.with_(replication=1), 300, rng=3)
    assert r1.range_losses == r1.server_failures.sum() > 0


def test_ps_without_a_checkpoint_or_a_spare_server_fails():
    hz = ConstantHazard(1e-3)
    # two servers, R = 2: the survivor holds the only copies and has no spare to re-replicate to
    two = GoodputJob("ps", 2, 5000.0, hz, COSTS, servers=2, first_at_risk=False, spared_workers=2,
                     max_restarts=0)
    r = simulate_goodput(two, 2000, rng=4)
    both_died = r.server_failures >= 2
    assert both_died.any() and not r.succeeded[both_died].any()
    assert r.succeeded[r.server_failures <= 1].all()
    # a lost range without a checkpoint ends the attempt; the launcher can relaunch it
    relaunched = simulate_goodput(two.with_(max_restarts=None), 500, rng=4)
    assert relaunched.success_rate == 1.0 and relaunched.restarts_mean > 0


def test_rank0_is_at_risk_and_hangs_end_elastic_attempts():
    hz = ConstantHazard(1e-4)
    job = GoodputJob("elastic", 16, 5000.0, hz, COSTS, checkpoint_interval_s=500.0)
    assert job.layout() == {"fatal": 1, "workers": 15, "servers": 0}
    r = simulate_goodput(job, 3000, rng=5)
    # rank 0 dies at its rate over the time its ranks are up (not detection, not the relaunch
    # pause), and each death relaunches the job
    up = r.wall_s - r.per_trial["restarts"] * (COSTS.detect_kill_s + COSTS.restart_s)
    assert r.success_rate == 1.0
    assert r.restarts_mean == pytest.approx(hz.rate_per_s * up.mean(), rel=0.1)
    safe = simulate_goodput(job.with_(first_at_risk=False), 3000, rng=5)
    assert safe.restarts_mean == 0 and safe.failures_mean > 0
    hung = simulate_goodput(job.with_(first_at_risk=False, hang_fraction=1.0), 3000, rng=5)
    assert hung.restarts_mean == pytest.approx(hung.failures_mean)
    assert hung.components_mean_s["recovery_s"] == 0


def test_hosts_fail_together():
    p = preset("llama3")
    job = contender_job("elastic", 64, p, COSTS, 86400.0)
    assert job.layout() == {"fatal": 1, "workers": 7, "servers": 0}
    r = simulate_goodput(job.with_(hazard=ConstantHazard(1e-5)), 500, rng=6)
    assert r.success_rate == 1.0


def test_presets_reproduce_their_anchors():
    llama = preset("llama3")
    assert llama.units(16384) == 2048
    assert llama.job_mtbf_s(16384) / 3600 == pytest.approx(54 * 24 / 419, rel=1e-9)   # ~3.1 h
    first = llama.unit_hazard(16384).first_failure(2048, 20000, rng=0)
    assert first.mean() / 3600 == pytest.approx(3.09, rel=0.03)
    rsc = preset("meta_rsc")
    assert rsc.job_mtbf_s(1024) / 3600 == pytest.approx(7.9, rel=1e-6)
    assert rsc.job_mtbf_s(8) / 86400 == pytest.approx(47.7, rel=1e-6)
    assert 0.9 < rsc.unit_hazard(8).shape < 1.0
    deck = preset("deck")
    job_s = 24 * 3600.0
    assert math.exp(-1000 * deck.unit_hazard(1000, job_s).cumulative_hazard(job_s)) == pytest.approx(0.30)
    osdi = preset("osdi14")
    for mh, _, p_fail in A.OSDI_FAILURE_TABLE:
        n = 100
        h = osdi.unit_hazard(n).cumulative_hazard(mh / n * 3600.0)
        assert -math.expm1(-n * h) == pytest.approx(p_fail, rel=0.25)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("llama4")
    with pytest.raises(ValueError, match="sim.rate_per_s"):
        preset("constant")


def test_young_daly_interval_follows_each_contenders_fatal_failures():
    p = preset("llama3")
    ckpt = contender_job("ckpt_restart", 16384, p, COSTS, 86400.0)
    assert fatal_mtbf_s(ckpt) == pytest.approx(p.job_mtbf_s(16384))
    assert ckpt.checkpoint_interval_s == pytest.approx(math.sqrt(2 * 20.0 * p.job_mtbf_s(16384)))
    elastic = contender_job("elastic", 16384, p, COSTS, 86400.0 * 400)
    assert fatal_mtbf_s(elastic) == pytest.approx(p.job_mtbf_s(16384) * 2048)   # rank 0's host only
    assert contender_job("scratch", 16384, p, COSTS, 86400.0).checkpoint_interval_s is None


def test_the_job_clock_fires_each_rank_slot_once():
    """pslab's injector: one failure time per rank on the job's up-time clock; a relaunch
    brings the slot back, but its fault has fired. So at most N failures per job, and
    scratch always finishes given N relaunches, which fresh ranks would not."""
    hz = ConstantHazard(0.05)
    job = GoodputJob("scratch", 4, 60.0, hz, COSTS.__class__(restart_s=1.0), max_restarts=4, clock="job")
    r = simulate_goodput(job, 2000, rng=8)
    assert r.per_trial["failures"].max() <= 4 and r.success_rate == 1.0
    fresh = simulate_goodput(job.with_(clock="attempt"), 2000, rng=8)
    assert fresh.success_rate < 0.5 and fresh.per_trial["failures"].max() >= 5
