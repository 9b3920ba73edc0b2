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

`validate_goodput(trials)` does the same for the goodput trials (results/goodput/
trials.jsonl) and the goodput model (pslab.sim.goodput): per cell, the simulated success
rate inside the measured Wilson 95% interval and the simulated mean ETTR inside the
95% interval of the measured mean (stratified by whether a fault struck). Every rank the measured hazard put at risk
is at risk in the simulation, rank 0 included (the cell's hazard says who was spared).

    python experiments/simulate.py --validate results/goodput   # writes results/goodput/validation.json
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


# --------------------------------------------------------------------------- goodput trials


def ettr_mean_interval(values, struck, confidence: float = 0.95) -> tuple[float, float] | None:
    """The 95% interval of a cell's mean ETTR the captions use (stratified by whether a
    fault struck: pslab.analysis.intervals.ettr_interval), from 2 trials on."""
    from ..analysis.intervals import ettr_interval
    return ettr_interval(values, struck, confidence, min_n=2)


def validate_goodput(trials: list[dict], trials_per_cell: int = 2000, rng=0, fit=None,
                     meta: dict | None = None, references: list[dict] | None = None,
                     per_size: bool = True) -> dict:
    """Simulate every measured goodput cell (pslab.sim.fit_goodput.cells) and check that the
    simulated success rate lies in the cell's Wilson 95% interval and the simulated mean
    ETTR (successful trials) in the 95% interval of the measured mean (ettr_mean_interval).

    Returns {"cells": [row..], "passed": k, "total": n, "costs": {...}, "cost_sources": {...}};
    a row: contender, ranks, workers, servers, hazard, checkpoint_interval_s, max_restarts,
    trials, measured_successes, measured_rate, measured_ci, simulated_rate, success_inside,
    measured_ettr_mean, measured_ettr_ci, simulated_ettr_mean, ettr_inside (None: too few
    measured values), passed, notes. meta, references: the experiment's meta.json
    (max_restarts) and fault-free runs (references.jsonl), where the trials lack them.
    per_size: each cell's costs fitted from its own size's trials first (fit_goodput.size_costs).
    What is checked is the model of each mechanism (what a failure leads to), given what
    each part costs at that size."""
    from dataclasses import asdict

    from ..analysis.comparisons import struck_by_fault
    from .fit_goodput import cells, fit_costs
    from .goodput import simulate_goodput
    fit = fit or fit_costs(trials)
    rng = np.random.default_rng(rng)
    rows = []
    for cell in cells(trials, fit, meta, references, per_size):
        ts, job = cell.trials, cell.job
        k = sum(t["status"] == "succeeded" for t in ts)
        lo, hi = wilson_interval(k, len(ts))
        if job is None:  # cannot be simulated: a failed check, with the reason
            rows.append({"contender": cell.key[0], "ranks": cell.key[1], "hazard": ts[0].get("hazard"),
                         "trials": len(ts), "measured_successes": k, "measured_rate": k / len(ts),
                         "measured_ci": (lo, hi), "simulated_rate": None, "success_inside": False,
                         "measured_ettr_mean": None, "measured_ettr_ci": None, "simulated_ettr_mean": None,
                         "ettr_inside": None, "passed": False, "notes": cell.notes})
            continue
        sim = simulate_goodput(job, trials_per_cell, rng)
        done = [t for t in ts if t["status"] == "succeeded"]
        measured = [t.get("ettr") for t in done]
        ci = ettr_mean_interval(measured, [struck_by_fault(t) for t in done])
        vals = [v for v in measured if isinstance(v, (int, float)) and np.isfinite(v)]
        e_in = None if ci is None or not np.isfinite(sim.ettr_mean) else bool(ci[0] <= sim.ettr_mean <= ci[1])
        s_in = bool(lo <= sim.success_rate <= hi)
        rows.append({
            "contender": job.contender, "ranks": cell.key[1], "workers": job.workers, "servers": job.servers,
            "hazard": ts[0].get("hazard"), "checkpoint_interval_s": job.checkpoint_interval_s,
            "max_restarts": job.max_restarts, "work_s": job.work_s, "trials": len(ts),
            "measured_successes": k, "measured_rate": k / len(ts), "measured_ci": (lo, hi),
            "simulated_rate": sim.success_rate, "success_inside": s_in,
            "measured_ettr_mean": float(np.mean(vals)) if vals else None, "measured_ettr_ci": ci,
            "simulated_ettr_mean": None if not np.isfinite(sim.ettr_mean) else sim.ettr_mean,
            "ettr_inside": e_in, "passed": s_in and e_in is not False, "notes": cell.notes})
    return {"cells": rows, "passed": sum(r["passed"] for r in rows), "total": len(rows),
            "costs": {c: asdict(v) for c, v in fit.costs.items()}, "cost_sources": fit.sources,
            "method": "success rate: Wilson 95% of the measured cell; ETTR: 95% interval of the measured "
                      "mean over successful trials, stratified by whether a fault struck "
                      f"(pslab.analysis.intervals.ettr_interval); {trials_per_cell} simulated trials per cell"}
