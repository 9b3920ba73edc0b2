"""Check a calibrated simulator against the runs that were actually measured.

Extrapolating to 10,000 workers is only worth something if the simulator already
reproduces the small runs. `validate` groups the measured runs into cells (backend,
ranks, and the experimental condition: consistency, staleness, configured hazard),
simulates each cell with the calibrated parameters, and reports the simulated success
rate next to the measured one and its Wilson 95% interval: a prediction outside the
interval is evidence the model (or its calibration) is wrong at that cell.

The configured hazard and deadline of a cell are experimental conditions, so the cell is
simulated under them; what is being validated is everything the calibration fitted
(step time, overhead, recovery, steps, and the hazard itself where it was estimated).
Runs whose faults were scheduled (faults injected, no hazard, no failure_times_s) are
left out: the simulator models random failures, not a kill at a chosen step.
"""
from __future__ import annotations

import json

import numpy as np

from .calibrate import Calibration, backend_key, run_consistency, run_steps
from .hazard import hazard_from_dict
from .job import simulate, wilson_interval


def _cell_key(run: dict) -> tuple:
    return (backend_key(run), int(run["ranks"]), run_consistency(run),
            int(run.get("staleness") or 0), json.dumps(run.get("hazard"), sort_keys=True))


def _scheduled_faults(run: dict) -> bool:
    return (not run.get("hazard") and run.get("failure_times_s") is None
            and int(run.get("faults_injected") or 0) > 0)


def _median(values):
    values = [float(v) for v in values if v is not None]
    return float(np.median(values)) if values else None


def validate(calibration: Calibration, measured_runs: list[dict], trials: int = 4000,
             rng=0) -> list[dict]:
    """One row per measured cell, sorted by backend and ranks.

    Row fields: backend, ranks, workers, servers, consistency, staleness, hazard, runs,
    measured_successes, measured_rate, measured_ci (Wilson 95%), simulated_rate,
    simulated_ci, inside (simulated_rate within measured_ci), measured_wall_median_s,
    simulated_wall_median_s (both over successful runs)."""
    rng = np.random.default_rng(rng)
    cells: dict[tuple, list[dict]] = {}
    for r in measured_runs:
        if r.get("backend") in ("allreduce", "ps") and not _scheduled_faults(r):
            cells.setdefault(_cell_key(r), []).append(r)

    rows = []
    for key in sorted(cells):
        backend, ranks, consistency, staleness, hazard_json = key
        runs = cells[key]
        hazard = hazard_from_dict(json.loads(hazard_json))
        workers = int(round(_median(r["workers"] for r in runs)))
        servers = _median(r.get("servers") for r in runs) if backend == "ps" else None
        done = [r for r in runs if r.get("status") == "succeeded"]
        steps = _median(run_steps(r) for r in done)
        job = calibration.job(
            backend, workers,
            steps=None if steps is None else int(round(steps)),
            hazard=hazard if hazard is not None else calibration.hazard,
            deadline_s=_median(r.get("deadline_s") for r in runs),
            servers=None if servers is None else int(round(servers)),
            consistency=consistency, staleness=staleness)
        sim = simulate(job, trials, rng)
        k, n = len(done), len(runs)
        lo, hi = wilson_interval(k, n)
        rows.append({
            "backend": backend, "ranks": ranks, "workers": workers,
            "servers": job.servers if backend == "ps" else 0,
            "consistency": consistency, "staleness": staleness,
            "hazard": None if hazard is None else hazard.to_dict(),
            "runs": n, "measured_successes": k, "measured_rate": k / n,
            "measured_ci": (lo, hi),
            "simulated_rate": sim.success_rate, "simulated_ci": sim.success_ci,
            "inside": bool(lo <= sim.success_rate <= hi),
            "measured_wall_median_s": _median(r.get("wall_s") for r in done),
            "simulated_wall_median_s": sim.wall_quantiles_s[0.5],
        })
    return rows
