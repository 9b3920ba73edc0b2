"""pslab.sim: carry the measured small runs to 1,000-10,000 workers.

An analytic + Monte Carlo model of a distributed sparse-learning job: per-rank failure
hazards (`hazard`), the job and what a failure does to it on classic MPI allreduce, ULFM
elastic allreduce and the parameter server (`job`), fitting its parameters to measured
run summaries (`calibrate`), checking it against them (`validate`), and the published
numbers it is compared with (`anchors`).

Usage:

    from pslab.sim import (Job, StepTime, WeibullHazard, simulate, success_probability,
                           calibrate, validate, fit_osdi_weibull)

    # by hand
    job = Job("allreduce", workers=1000, steps=20_000,
              step_time=StepTime.lognormal(median_s=0.1, sigma=0.3),
              hazard=WeibullHazard(shape=0.7, scale_s=3e7), overhead_s=10.0)
    simulate(job, trials=1000, rng=0).success_rate     # Monte Carlo
    success_probability(job)                           # closed form (classic only)
    simulate(job.with_(backend="elastic", recovery_s=2.0), 1000, 0)

    # from measured runs (a list of summary.json dicts)
    cal = calibrate(runs)
    rows = validate(cal, runs)              # simulated vs measured, per cell
    for n in (10, 100, 1000, 10_000):
        simulate(cal.job("ps", n, deadline_s=3600), 500, 0)

    # the OSDI'14 failure table as a per-rank hazard for 1000-rank jobs
    fit_osdi_weibull().rank_hazard(1000)

Goodput (ETTR) of the four contenders as pslab implements them (`goodput`: scratch,
ckpt_restart, elastic, ps), under the anchors' failure laws (`presets`: llama3, meta_rsc,
osdi14, deck), with costs fitted from the goodput trials (`fit_goodput`) and every
measured cell checked (`validate.validate_goodput`):

    from pslab.sim import preset, contender_job, simulate_goodput, fit_costs, read_trials
    costs = fit_costs(read_trials("results/goodput")).costs
    job = contender_job("ps", 16384, preset("llama3"), costs, work_s=86400.0)
    simulate_goodput(job, 1000, rng=0).ettr_pooled
"""
from .anchors import (ANCHORS, OSDI_FAILURE_TABLE, Anchor, MachineHourWeibull, anchor,
                      deck_rank_rate, fit_osdi_weibull)
from .calibrate import BackendFit, Calibration, backend_key, calibrate, fit_step_time
from .hazard import ConstantHazard, Hazard, WeibullHazard, hazard_from_dict
from .job import (Job, SimResult, StepTime, simulate, success_probability,
                  success_upper_bound, wilson_interval)
from .contenders import contender_job, fatal_mtbf_s
from .fit_goodput import CostFit, fit_costs, read_trials
from .goodput import CONTENDERS, Costs, GoodputJob, GoodputResult, simulate_goodput
from .presets import HazardPreset, preset, young_daly_interval_s
from .validate import validate, validate_goodput

__all__ = [
    "ANCHORS", "OSDI_FAILURE_TABLE", "Anchor", "MachineHourWeibull", "anchor",
    "deck_rank_rate", "fit_osdi_weibull",
    "BackendFit", "Calibration", "backend_key", "calibrate", "fit_step_time",
    "ConstantHazard", "Hazard", "WeibullHazard", "hazard_from_dict",
    "Job", "SimResult", "StepTime", "simulate", "success_probability",
    "success_upper_bound", "wilson_interval",
    "validate", "validate_goodput",
    "contender_job", "fatal_mtbf_s", "CostFit", "fit_costs", "read_trials",
    "CONTENDERS", "Costs", "GoodputJob", "GoodputResult", "simulate_goodput",
    "HazardPreset", "preset", "young_daly_interval_s",
]
