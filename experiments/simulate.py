"""Calibrate the simulator (pslab.sim) on the measured results, validate it, and carry
the success rate to 10,000 workers (BRIEF section 5, #1; issue 6, the simulator) and the
goodput (ETTR) of the four contenders to 16,384 workers (issue 14, the headline).

    .venv/bin/python experiments/simulate.py                  # all of it, ~2 min
    .venv/bin/python experiments/simulate.py --trials 4000    # smoother success-rate curves
    .venv/bin/python experiments/simulate.py --job-hours 4    # production regime: 4 h jobs
    .venv/bin/python experiments/simulate.py --validate results/goodput   # goodput cells only; exit 1 if one fails
    .venv/bin/python experiments/simulate.py --goodput sim.hazard=llama3 sim.job_hours=48  # headline only

Goodput (pslab.sim.goodput, settings in conf/sim/goodput.yaml, overridden as sim.KEY=VALUE):
costs fitted from results/goodput/trials.jsonl (pslab.sim.fit_goodput; defaults, said so,
when there are no trials), every measured cell simulated and checked (validation.json
next to the trials), then ETTR vs workers under each hazard preset:
    results/goodput/validation.json  one row per measured goodput cell, pass/fail
    results/sim/goodput_scale.json   the curves and the one-sentence conclusion
    results/figures/goodput_scale.png

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


def validate_goodput(trials_dir: Path, trials: int) -> dict:
    """Validate the goodput model on DIR/trials.jsonl; writes DIR/validation.json."""
    from pslab.sim.fit_goodput import read_trials
    from pslab.sim.validate import validate_goodput as run
    from pslab.analysis.io import read_json, read_jsonl
    d = Path(trials_dir)
    report = run(read_trials(d), trials_per_cell=trials, meta=read_json(d / "meta.json"),
                 references=read_jsonl(d / "references.jsonl") if (d / "references.jsonl").exists() else None)
    write_json_atomic(Path(trials_dir) / "validation.json", report)
    rows = [{**r, "ettr_ci": r["measured_ettr_ci"]} for r in report["cells"]]
    print(table(rows, ["contender", "ranks", "trials", "measured_successes", "measured_ci", "simulated_rate",
                       "measured_ettr_mean", "ettr_ci", "simulated_ettr_mean", "passed"],
                title="goodput validation: simulated vs measured (95% intervals)"))
    print(f"[simulate] goodput: {report['passed']}/{report['total']} cells pass -> {Path(trials_dir) / 'validation.json'}")
    return report


def goodput(root: Path, overrides, validation_trials: int) -> None:
    """Fit, validate (when trials exist), carry to 16,384 workers, draw, conclude."""
    from pslab.analysis import goodput_scale as G
    cfg = G.settings(overrides)
    rows = None
    if (root / "goodput" / "trials.jsonl").exists():
        rows = validate_goodput(root / "goodput", validation_trials)["cells"]
    costs, label = G.costs(root)
    print(f"[simulate] goodput curves: presets {', '.join(cfg['presets'])}; {label}")
    curves = G.scale_curves(cfg, costs, label)
    print(f"[simulate] {G.write_curves(curves, root)}")
    print(f"[simulate] figure: {G.figure(curves, rows)[1]}")
    print(f"[simulate] conclusion: {curves['conclusion']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--validate", type=Path, metavar="DIR", help="validate the goodput model on DIR/trials.jsonl only")
    ap.add_argument("--goodput", action="store_true", help="the goodput headline only (validation, curves, figure)")
    ap.add_argument("overrides", nargs="*", metavar="sim.KEY=VALUE", help="goodput settings (conf/sim/goodput.yaml)")
    ap.add_argument("--trials", type=int, default=2000, help="Monte Carlo trials per point of a curve")
    ap.add_argument("--validation-trials", type=int, default=4000)
    ap.add_argument("--job-hours", type=float, default=1.0, help="job length in the production regime")
    ap.add_argument("--results", type=Path, default=None, help="default results/")
    ap.add_argument("--preset", default=None, help="ignored (reproduce passes it to every script)")
    args = ap.parse_args(argv)
    root = (args.results or results_root()).resolve()
    t0 = time.time()
    if args.validate is not None:
        report = validate_goodput(args.validate, min(args.validation_trials, 2000))
        return 0 if report["passed"] == report["total"] else 1
    if args.goodput:
        goodput(root, args.overrides, min(args.validation_trials, 2000))
        print(f"[simulate] done in {time.time() - t0:.0f} s")
        return 0
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
    goodput(root, args.overrides, min(args.validation_trials, 2000))
    print(f"[simulate] done in {time.time() - t0:.0f} s -> {root / 'sim'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
