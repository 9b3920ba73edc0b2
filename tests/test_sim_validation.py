"""The simulator, calibrated on the committed measured results (success-rate trials and
recovery runs under results/), predicts every measured cell's success rate inside the
cell's 95% Wilson interval. Each job size is simulated with the calibration of its own
runs (pslab.analysis.simulation.calibrate_by_size explains why), as experiments/simulate.py
does."""
from __future__ import annotations

from pathlib import Path

import pytest

from pslab.analysis import simulation as S

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


@pytest.fixture(scope="module")
def measured():
    if not (RESULTS / "success_rate" / "trials.jsonl").exists():
        pytest.skip("no committed success-rate trials (results/success_rate/trials.jsonl): "
                    "run experiments/success_rate.py")
    return S.calibration_runs(RESULTS)


def test_simulator_is_calibrated_on_the_measured_runs(measured):
    by_size = S.calibrate_by_size(measured)
    assert by_size, "no measured job sizes"
    for n, (cal, notes) in by_size.items():
        assert cal is not None, (n, notes)
        # classic and elastic allreduce are always measured; each fit comes from the runs
        for key in ("allreduce", "elastic"):
            assert key in cal.fits, (n, notes)
            fit = cal.fit(key)
            assert fit.steps > 0 and fit.step_time.mean > 0 and fit.overhead_s >= 0
        assert cal.fit("elastic").recovery_s is not None and cal.fit("elastic").recovery_s > 0
    cal, notes, label = S.for_curves(measured)
    assert cal is not None, notes


def test_predictions_fall_inside_the_measured_intervals(measured):
    rows = S.validate_results(S.calibrate_by_size(measured), measured, trials=4000)
    hazard_cells = [r for r in rows if r["hazard"]]
    assert len(hazard_cells) >= 3, "need measured cells under a hazard"
    outside = [r for r in rows if not r["inside"]]
    assert not outside, "\n".join(
        f"{r['backend']} n={r['ranks']}: simulated {r['simulated_rate']:.2f}, measured {r['measured_successes']}/"
        f"{r['runs']} (95% CI {r['measured_ci'][0]:.2f}-{r['measured_ci'][1]:.2f})" for r in outside)
