"""Published numbers the comparisons are checked against, as data, with their sources.

These are the anchors of BRIEF section 5: what the deck and the papers report, so that a
plot can draw them next to the simulated and measured curves, and a test can check the
simulator reproduces them when fed the matching assumptions. They are not parameters of
the simulator (those come from `calibrate`).

The failure anchors need a bridge to a per-rank hazard. Li et al. report job failure
rates by job size in machine-hours; `fit_osdi_weibull` fits a Weibull over machine-hours
to the three points (a shape well below 1: failure probability grows much more slowly
than the job's size, so a constant per-rank rate cannot fit it), and
`MachineHourWeibull.rank_hazard(n)` turns it into the per-rank hazard in wall-clock
seconds that reproduces the same failure probability for jobs of n ranks. The deck's
single point (30% success above 1000 workers) only fixes the product rate * duration;
`deck_rank_rate` returns the constant per-rank rate for a chosen job duration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .hazard import ConstantHazard, WeibullHazard

DECK = ("\"Large-scale machine learning at Ant Financial and Alibaba\" (talk deck); the "
        "platform is published as J. Zhou et al., \"KunPeng: Parameter Server based "
        "Distributed Learning Systems and Its Applications in Alibaba and Ant Financial\", "
        "KDD 2017")
KUNPENG = ("J. Zhou et al., \"KunPeng: Parameter Server based Distributed Learning Systems "
           "and Its Applications in Alibaba and Ant Financial\", KDD 2017")
LLAMA3 = ("A. Grattafiori et al. (Llama Team, AI @ Meta), \"The Llama 3 Herd of Models\", 2024, "
          "section 3.3.4 (Reliability and Operational Challenges)")
KOKOLIS = ("A. Kokolis et al., \"Revisiting Reliability in Large-Scale Machine Learning Research "
           "Clusters\", HPCA 2025")
MEGASCALE = ("Z. Jiang et al., \"MegaScale: Scaling Large Language Model Training to More Than "
             "10,000 GPUs\", NSDI 2024")
YOUNG = "J. W. Young, \"A first order approximation to the optimum checkpoint interval\", CACM 17(9), 1974"
DALY = ("J. T. Daly, \"A higher order estimate of the optimum checkpoint interval for restart "
        "dumps\", Future Generation Computer Systems 22(3), 2006")
OSDI14 = ("M. Li, D. G. Andersen, J. W. Park, A. J. Smola, A. Ahmed, V. Josifovski, J. Long, "
          "E. J. Shekita, B.-Y. Su, \"Scaling Distributed Machine Learning with the Parameter "
          "Server\", OSDI 2014")


@dataclass(frozen=True)
class Anchor:
    key: str
    comparison: int        # row of BRIEF section 5 (7: the failure anchors of section 7)
    value: object          # a number, or a (low, high) range
    unit: str
    claim: str
    source: str


# Li et al. OSDI'14 Table 1: (machine-hours, jobs in that size class, failure rate).
OSDI_FAILURE_TABLE = ((100.0, 13187, 0.078), (1000.0, 1366, 0.137), (10000.0, 77, 0.247))

# The modern failure anchors as numbers (the goodput presets and the headline figure use them).
LLAMA3_FIGURES = {"interruptions": 419, "days": 54.0, "gpus": 16384, "gpus_per_host": 8,
                  "hardware_share": 0.78, "ettr_min": 0.90}
KOKOLIS_FIGURES = {"failures_per_1000_node_days": (6.50, 2.34), "gpus_per_host": 8,
                   "mttf_s": ((8, 47.7 * 86400.0), (1024, 7.9 * 3600.0))}
MEGASCALE_FIGURES = {"gpus": 10000, "restarts_min": 100, "ettr_min": 0.90,
                     "detect_s_max": 600.0, "catch_up_s": 900.0}

ANCHORS = (
    Anchor("deck_mpi_success_over_1000_workers", 1, 0.30, "fraction of jobs succeeded",
           "the earlier MPI-based system finished 30% of its jobs with more than 1000 "
           "worker instances", DECK),
    Anchor("osdi_job_failure_100_machine_hours", 1, 0.078, "fraction of jobs failed",
           "jobs of about 100 machine-hours (13,187 jobs): 7.8% failed", OSDI14 + ", Table 1"),
    Anchor("osdi_job_failure_1000_machine_hours", 1, 0.137, "fraction of jobs failed",
           "jobs of about 1,000 machine-hours (1,366 jobs): 13.7% failed", OSDI14 + ", Table 1"),
    Anchor("osdi_job_failure_10000_machine_hours", 1, 0.247, "fraction of jobs failed",
           "jobs of about 10,000 machine-hours (77 jobs): 24.7% failed", OSDI14 + ", Table 1"),
    Anchor("osdi_idle_delay_0", 2, 0.50, "fraction of worker time idle",
           "sparse LR, synchronous (delay 0): workers idle 50% of the time", OSDI14),
    Anchor("osdi_idle_delay_16", 2, 0.017, "fraction of worker time idle",
           "sparse LR, bounded delay 16: workers idle 1.7% of the time", OSDI14),
    Anchor("osdi_ssp_best_delay", 2, 8, "steps of bounded delay",
           "the fastest time to the target objective is at delay 8", OSDI14),
    Anchor("osdi_ssp_speedup_best_delay", 2, 1.6, "x faster than synchronous",
           "delay 8 reaches the target 1.6x faster than delay 0", OSDI14),
    Anchor("osdi_key_caching_saving", 3, 0.50, "fraction of traffic saved",
           "caching key lists saves about half of the traffic", OSDI14),
    Anchor("osdi_kkt_filtered", 3, 0.93, "fraction of features filtered",
           "the KKT filter drops more than 93% of the features", OSDI14),
    Anchor("osdi_traffic_reduction_server", 3, 40.0, "x less traffic",
           "server traffic reduced 40x by the filters", OSDI14),
    Anchor("osdi_traffic_reduction_worker", 3, 12.0, "x less traffic",
           "worker traffic reduced 12x by the filters", OSDI14),
    Anchor("osdi_server_recovery_s", 4, 0.8, "seconds",
           "a failed server is recovered in 0.8 s", OSDI14),
    Anchor("kunpeng_backup_instance_gain", 5, (0.10, 0.20), "fraction faster",
           "backup instances against stragglers gain 10-20%", KUNPENG),
    Anchor("llama3_interruptions", 7, (419, 54.0), "unexpected interruptions in days",
           "419 unexpected interruptions in a 54-day snapshot on up to 16,384 GPUs (about one "
           "every 3.1 h for the job); 78% confirmed or suspected hardware", LLAMA3),
    Anchor("llama3_ettr", 7, 0.90, "ETTR (lower bound)",
           "effective training time above 90% at 16,384 GPUs", LLAMA3),
    Anchor("kokolis_failure_rates", 7, (6.50, 2.34), "failures per 1,000 node-days",
           "two research clusters: 6.50 and 2.34 failures per 1,000 node-days", KOKOLIS),
    Anchor("kokolis_mttf_8_gpus", 7, 47.7 * 86400.0, "seconds",
           "mean time to failure of 8-GPU jobs: 47.7 days", KOKOLIS),
    Anchor("kokolis_mttf_1024_gpus", 7, 7.9 * 3600.0, "seconds",
           "mean time to failure of 1,024-GPU jobs: 7.9 h; ETTR = productive runtime / wall "
           "clock, the rest being restart overhead, work redone since the last checkpoint "
           "and checkpoint overhead", KOKOLIS),
    Anchor("megascale_ettr", 7, 0.90, "ETTR (lower bound)",
           "more than 100 restarts over several weeks on more than 10,000 GPUs, ETTR above "
           "90%; detection and diagnosis under 10 min, catch-up 15 min", MEGASCALE),
    Anchor("young_daly_interval", 7, "sqrt(2 C M)", "seconds",
           "optimal checkpoint interval about sqrt(2 C M) for checkpoint cost C and mean time "
           "between failures M", YOUNG + "; " + DALY),
    Anchor("deck_multiple_servers", 6, "multiple servers vs single server", "",
           "the PS shards the model over many servers; MPI keeps the whole model on each "
           "node", DECK),
)


def anchor(key: str) -> Anchor:
    for a in ANCHORS:
        if a.key == key:
            return a
    raise KeyError(f"no anchor {key!r}; known: {[a.key for a in ANCHORS]}")


@dataclass(frozen=True)
class MachineHourWeibull:
    """P(job fails) = 1 - exp(-(machine_hours / scale) ** shape)."""

    shape: float
    scale_machine_hours: float

    def failure_probability(self, machine_hours):
        return -np.expm1(-(np.asarray(machine_hours, dtype=float) / self.scale_machine_hours) ** self.shape)

    def hazard(self) -> WeibullHazard:
        """The same law as a hazard whose clock is machine-seconds of the whole job."""
        return WeibullHazard(self.shape, self.scale_machine_hours * 3600.0)

    def rank_hazard(self, n_ranks: int) -> WeibullHazard:
        """Per-rank Weibull in wall seconds giving n-rank jobs the table's failure rate.

        n ranks with cumulative hazard (t / s) ** k each fail with n (t / s) ** k, the
        table with (n t / 3600 / scale) ** k; equal for s = 3600 scale n ** (1/k - 1).
        The scale depends on n because the table's failures are not independent per
        machine: a bigger job fails more rarely per machine-hour."""
        k = self.shape
        return WeibullHazard(k, 3600.0 * self.scale_machine_hours * n_ranks ** (1.0 / k - 1.0))


def fit_osdi_weibull(table=OSDI_FAILURE_TABLE) -> MachineHourWeibull:
    """Fit shape and scale to the (machine-hours, jobs, failure rate) points.

    Least squares on the relative error of the failure rate (scipy.optimize), started
    from the straight line of the Weibull plot, log(-log(1 - p)) = k log M - k log scale."""
    m = np.array([row[0] for row in table])
    p = np.array([row[2] for row in table])
    k0, b0 = np.polyfit(np.log(m), np.log(-np.log1p(-p)), 1)

    def residual(theta):
        law = MachineHourWeibull(np.exp(theta[0]), np.exp(theta[1]))
        return law.failure_probability(m) / p - 1.0

    res = optimize.least_squares(residual, [np.log(k0), -b0 / k0])
    return MachineHourWeibull(float(np.exp(res.x[0])), float(np.exp(res.x[1])))


def deck_rank_rate(job_hours: float, workers: int = 1000,
                   success: float = 0.30) -> ConstantHazard:
    """Constant per-rank rate under which a classic MPI job of `workers` ranks running
    `job_hours` succeeds with probability `success` (the deck: 30% above 1000 workers).
    The deck gives no duration, so it is an input: the anchor fixes rate * duration."""
    return ConstantHazard(-np.log(success) / (workers * job_hours * 3600.0))
