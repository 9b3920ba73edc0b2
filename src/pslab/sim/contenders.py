"""The four contenders at any size, under a hazard preset: the jobs the headline curves run.

    from pslab.sim.contenders import contender_job
    from pslab.sim.presets import preset
    job = contender_job("ckpt_restart", 16384, preset("llama3"), costs, work_s=86400.0)

Each contender relaunches without limit (the launcher's `--max-restarts`, which covers
classic allreduce, elastic allreduce and the PS); every one that checkpoints does so at the
Young/Daly interval sqrt(2 C M), M being the mean time between the failures that end
*its* attempts: any failure for classic allreduce; rank 0's host, or a hang anywhere
(the step watchdog), for elastic allreduce; the coordinator's host for the PS (with
R = 1 also any server). The PS has `servers_per_worker * workers` servers and one
coordinator, all exposed to failures like the workers. The costs are the measured ones,
carried unchanged: re-replication sends a server's share of the model, so a fixed
re-replication time means the model grows with the servers (weak scaling), and a
relaunch of 16,384 ranks is assumed to take what one of 4-16 ranks took (`sim.costs.*`
overrides either).
"""
from __future__ import annotations

import math

from .goodput import CONTENDERS, Costs, GoodputJob
from .presets import HazardPreset, job_mtbf_s, young_daly_interval_s

SERVERS_PER_WORKER = 0.25   # the PS layout carried to scale, when no measured one is given
REPLICATION = 2


def ps_servers(workers: int, servers_per_worker: float = SERVERS_PER_WORKER) -> int:
    return max(2, int(round(servers_per_worker * workers)))


def fatal_mtbf_s(job: GoodputJob) -> float:
    """Mean time to the first failure that ends an attempt of `job` (fresh units)."""
    lay = job.layout()
    if job.contender in ("scratch", "ckpt_restart"):
        units = lay["fatal"]
    elif job.contender == "elastic":
        units = lay["fatal"] + job.hang_fraction * lay["workers"]
    else:
        units = lay["fatal"] + (lay["servers"] if job.replication == 1 else 0)
    return job_mtbf_s(job.hazard, units)


def contender_job(contender: str, workers: int, hazard: HazardPreset, costs: Costs | dict,
                  work_s: float, *, servers_per_worker: float = SERVERS_PER_WORKER,
                  replication: int = REPLICATION, max_restarts: int | None = None,
                  checkpoint_interval_s: float | None | str = "young_daly") -> GoodputJob:
    """A GoodputJob of `contender` with `workers` workers under `hazard`.

    costs: one Costs for all, or {contender: Costs}. checkpoint_interval_s: "young_daly"
    (sqrt(2 C M) with M from `fatal_mtbf_s`), a number, or None (no checkpoints)."""
    if contender not in CONTENDERS:
        raise ValueError(f"contender must be one of {CONTENDERS}, got {contender!r}")
    c = costs[contender] if isinstance(costs, dict) else costs
    servers = ps_servers(workers, servers_per_worker) if contender == "ps" else 0
    ranks = workers + (servers + 1 if contender == "ps" else 0)
    job = GoodputJob(contender, int(workers), float(work_s), hazard.unit_hazard(ranks, work_s), c,
                     ranks_per_host=hazard.ranks_per_host, hang_fraction=hazard.hang_fraction,
                     max_restarts=max_restarts, servers=servers,
                     replication=min(replication, max(servers, 1)) if contender == "ps" else REPLICATION)
    if contender == "scratch" or checkpoint_interval_s is None:
        return job
    if checkpoint_interval_s == "young_daly":
        tau = young_daly_interval_s(c.checkpoint_s, fatal_mtbf_s(job))
        if tau is None and math.isfinite(fatal_mtbf_s(job)):
            tau = work_s / 1000.0  # free checkpoints: as often as makes no difference
    else:
        tau = float(checkpoint_interval_s)
    return job.with_(checkpoint_interval_s=None if tau is None else min(tau, work_s))
