"""pslab.analysis.simulation on a fake results/success_rate drawn from a known job: the
trial lines and run folders are read as the simulator needs them, the calibration comes
out, validation passes, curves and the headline figure are written. No MPI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pslab.analysis import figures
from pslab.analysis import simulation as S
from pslab.sim import ConstantHazard, Job, StepTime, simulate

STEP = StepTime.lognormal(median_s=0.05, sigma=0.25)
HAZARD = ConstantHazard(4e-3)


def _fake_results(root, rng):
    d = root / "success_rate"
    d.mkdir(parents=True)
    trials, baselines = [], []
    for key, n in [("allreduce", 4), ("allreduce", 8), ("elastic", 4), ("elastic", 8)]:
        job = Job("allreduce" if key == "allreduce" else "elastic", n, 300, STEP, HAZARD, overhead_s=4.0,
                  deadline_s=90.0, recovery_s=1.0)
        sim = simulate(job, 12, rng)
        for i, (wall, ok, fails) in enumerate(zip(sim.wall_s, sim.succeeded, sim.failures)):
            name = f"trial-{key}-n{n}-s{i + 1}"
            run = d / name
            run.mkdir()
            steps = STEP.dist.rvs(size=(20, n), random_state=rng).max(axis=1)
            (run / "summary.json").write_text(json.dumps({
                "backend": "allreduce", "workers": n, "servers": 0, "steps": 300 if ok else None,
                "examples": 300 * n * 60, "step_time_s": steps.tolist(), "consistency": "bsp"}))
            trials.append({"trial": name, "backend_key": key, "backend": "allreduce", "elastic": key == "elastic",
                           "ranks": n, "seed": i + 1, "status": "succeeded" if ok else "failed",
                           "success": bool(ok), "wall_s": float(wall), "deadline_s": 90.0,
                           "faults_injected": int(fails), "failures_detected": int(fails),
                           "recovery_s": [1.0] * int(fails) if key == "elastic" else [],
                           "failure_times_s": None, "hazard": HAZARD.to_dict(), "run_dir": name,
                           "replay": f".venv/bin/python -m pslab.launch -n {n} backend=allreduce"})
    (d / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    (d / "baselines.jsonl").write_text("")
    return trials


def test_simulation_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("PSLAB_FIGURES_DIR", str(tmp_path / "figures"))
    _fake_results(tmp_path, np.random.default_rng(3))
    runs = S.calibration_runs(tmp_path)
    assert len(runs) == 48 and all(r["workers"] in (4, 8) for r in runs)
    cal, notes = S.calibrate_results(runs)
    assert notes["allreduce"] == notes["elastic"] == "calibrated" and notes["ps"] == "no measured runs"
    assert cal.fit("elastic").recovery_s == pytest.approx(1.0)
    rows = S.validate_results(cal, runs, trials=2000)
    assert len(rows) == 4 and all(r["inside"] for r in rows)
    by_size = S.calibrate_by_size(runs)
    assert sorted(by_size) == [4, 8]
    rows = S.validate_results(by_size, runs, trials=2000)
    assert len(rows) == 4 and all(r["inside"] for r in rows)
    curves = S.curves(cal, runs, ns=[2, 16, 1000, 10000], trials=300)
    meas = curves["measured_regime"]["curves"]
    assert meas["allreduce"]["success_rate"][1] < meas["elastic"]["success_rate"][1]
    prod = curves["production_regime"]["curves"]["allreduce"]
    # 1 h jobs under the Weibull fitted to Li et al.'s table: ~75% of 10,000-machine-hour jobs finish
    assert prod["success_rate"][-1] == pytest.approx(1 - 0.247, abs=0.06)
    fig, path = figures.fig_success_rate(S.success_trials(tmp_path), curves)
    assert path.exists() and path.stat().st_size > 20_000


def test_goodput_headline_curves_sentence_and_figure(tmp_path, monkeypatch):
    """The headline pipeline at two sizes: the sentence carries the numbers, the figure and
    the curves file are written, and the stored sentence reads back (what `make demo` prints)."""
    from pslab.analysis import goodput_scale as G
    monkeypatch.setenv("PSLAB_FIGURES_DIR", str(tmp_path / "figures"))
    cfg = G.settings(["sim.workers=[8,4096]", "sim.trials=150", "sim.presets=[llama3,deck]"])
    with pytest.raises(ValueError, match="no key 'hazards'"):
        G.settings(["sim.hazards=llama3"])
    costs, label = G.costs(tmp_path)
    assert label.startswith("default costs")
    curves = G.scale_curves(cfg, costs, label)
    ll = curves["presets"]["llama3"]
    # from scratch collapses with size, checkpoint-restart does not, and its Monte Carlo
    # agrees with Daly's closed form at the Young/Daly interval
    assert ll["contenders"]["scratch"]["ettr"][1] < ll["contenders"]["scratch"]["ettr"][0] - 0.05
    assert ll["contenders"]["ckpt_restart"]["ettr"][1] == pytest.approx(ll["daly_ettr"][1], abs=2e-3)
    assert curves["presets"]["deck"]["single_attempt_success"][0] > 0.9
    text = curves["conclusion"]
    assert "4,096 workers" in text and "llama3" in text and "%" in text and "default costs" in text
    G.write_curves(curves, tmp_path)
    assert G.headline(tmp_path) == text and G.headline(tmp_path / "none") is None
    fig, path = G.figure(curves, None)
    assert path.name == "goodput_scale.png" and path.stat().st_size > 30_000
