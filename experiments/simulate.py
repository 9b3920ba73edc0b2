"""Calibrate the simulator (pslab.sim) on the measured results, validate it, and carry
the success rate to 10,000 workers (BRIEF section 5, #1; issue 6, the simulator).

    .venv/bin/python experiments/simulate.py                  # ~1 min
    .venv/bin/python experiments/simulate.py --trials 4000    # smoother curves
    .venv/bin/python experiments/simulate.py --job-hours 4    # production regime: 4 h jobs

Reads results/success_rate/ (trials, their fault-free references and run records) and
results/recovery/ (recovery times), fits the simulator's parameters (pslab.sim.calibrate:
step time, launch overhead, steps, recovery times, hazard), checks each measured cell
(pslab.sim.validate: simulated success rate inside the measured 95% Wilson interval), and
writes:
    results/sim/calibration.json   fitted parameters per backend, and what was left out and why
    results/sim/validation.json    one row per measured cell
    results/sim/curves.json        success rate, wall time, failures per job for N = 2..10,000
    results/figures/success_rate.png, sim_validation.png, sim_curves.png
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.analysis import figures, results_root  # noqa: E402
from pslab.analysis import simulation as S  # noqa: E402
from pslab.analysis.io import write_json_atomic  # noqa: E402
from pslab.analysis.tables import table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000, help="Monte Carlo trials per point of a curve")
    ap.add_argument("--validation-trials", type=int, default=4000)
    ap.add_argument("--job-hours", type=float, default=1.0, help="job length in the production regime")
    ap.add_argument("--results", type=Path, default=None, help="default results/")
    ap.add_argument("--preset", default=None, help="ignored (reproduce passes it to every script)")
    args = ap.parse_args(argv)
    root = (args.results or results_root()).resolve()
    t0 = time.time()
    runs = S.calibration_runs(root)
    print(f"[simulate] {len(runs)} measured records: "
          + ", ".join(f"{k} {sum(r.get('source') == k for r in runs)}"
                      for k in ("success_rate", "success_rate_baseline", "recovery")))
    by_size = S.calibrate_by_size(runs)
    for n, (c, notes) in by_size.items():
        print(f"[simulate] {n} ranks: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    rows = S.validate_results(by_size, runs, args.validation_trials)
    cal, notes, label = S.for_curves(runs, by_size)
    cal_d = S.calibration_dict(cal, notes)
    cal_d["curves_from"] = label
    cal_d["by_size"] = {str(n): S.calibration_dict(c, nt) for n, (c, nt) in by_size.items()}
    write_json_atomic(root / "sim" / "calibration.json", cal_d)
    write_json_atomic(root / "sim" / "validation.json",
                      {"rows": rows, "inside": sum(r["inside"] for r in rows), "cells": len(rows),
                       "method": "each cell simulated with the calibration of its own job size"})
    if rows:
        print(table(rows, ["backend", "ranks", "workers", "runs", "measured_successes", "measured_rate", "measured_ci",
                           "simulated_rate", "inside"], title="validation"))
        print(f"[simulate] {sum(r['inside'] for r in rows)}/{len(rows)} cells inside the measured 95% interval")
    print(f"[simulate] curves: {label}")
    curves = S.curves(cal, runs, trials=args.trials, job_hours=args.job_hours)
    curves["calibration"] = label
    for k, v in curves.get("notes", {}).items():
        print(f"[simulate] curve {k}: {v}")
    write_json_atomic(root / "sim" / "curves.json", curves)
    trials = S.success_trials(root)
    for name, fn in (("success_rate", lambda: figures.fig_success_rate(trials, curves)),
                     ("sim_validation", lambda: figures.fig_sim_validation(rows)),
                     ("sim_curves", lambda: figures.fig_sim_curves(curves))):
        print(f"[simulate] figure: {fn()[1]}")
    print(f"[simulate] done in {time.time() - t0:.0f} s -> {root / 'sim'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
