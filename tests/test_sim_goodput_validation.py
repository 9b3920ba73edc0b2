"""Fitting and validating the goodput model on a trials.jsonl in the goodput experiment's
format: trials drawn from the model itself pass every cell; trials that contradict it fail;
bad input is refused with the file, line and key. No MPI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pslab.sim.fit_goodput import cells, fit_costs, read_trials
from pslab.sim.goodput import Costs, GoodputJob, simulate_goodput
from pslab.sim.hazard import ConstantHazard
from pslab.sim.validate import validate_goodput

COSTS = Costs(startup_s=1.5, checkpoint_s=0.2, restart_s=0.8, detect_kill_s=0.3, detect_hang_s=6.0,
              recovery_s=0.1, rereplication_s=0.4, finish_s=2.0)
RATE = 4e-3
STEPS = 400
HANG = 0.3
ROLES = ["worker", "server"]   # pslab's default: the PS coordinator is not at risk


def trials_from_model(job: GoodputJob, n: int, rng) -> list[dict]:
    """n trials of `job` as experiments/goodput.py writes them."""
    r = simulate_goodput(job, n, rng)
    p = r.per_trial
    every = None if not job.checkpoint_interval_s else int(round(job.checkpoint_interval_s / job.work_s * STEPS))
    ranks = job.workers + (job.servers + 1 if job.contender == "ps" else 0)
    out = []
    for i in range(n):
        fails = int(p["failures"][i])
        recov = int(round(p["recovery_s"][i] / job.costs.recovery_s)) if job.costs.recovery_s else 0
        out.append({
            "contender": job.contender, "ranks": ranks, "workers": job.workers, "servers": job.servers,
            "seed": i, "status": "succeeded" if r.succeeded[i] else "failed",
            "ettr": float(r.ettr[i]) if r.succeeded[i] else None, "attempts": int(p["restarts"][i]) + 1,
            "wall_s": float(r.wall_s[i]), "job_wall_s": float(p["job_wall_s"][i]),
            "productive_s": float(p["train_s"][i] - p["redone_s"][i]), "pause_s": float(p["recovery_s"][i]),
            **{k: float(p[k][i]) for k in ("checkpoint_s", "restart_s", "redone_s", "detect_s", "startup_s",
                                           "train_s", "finish_s")},
            "faults_injected": fails, "failures_detected": int(p["detected"][i]), "checkpoint_every": every,
            "checkpoints": int(round(p["checkpoints"][i])), "steps": STEPS, "max_restarts": job.max_restarts,
            "recovery_s": [job.costs.recovery_s + job.costs.detect_kill_s] * recov,   # fault to recovered
            "rereplication_s": [job.costs.rereplication_s] * int(r.server_failures[i]),
            "hazard": {"kind": "constant", "rate_per_s": RATE, "actions": {"kill": 1 - job.hang_fraction,
                                                                            "hang": job.hang_fraction},
                       "roles": ROLES, "exclude_ranks": []},
            "run_dir": f"runs/goodput/{job.contender}-{ranks}-{i}"})
    return out


def _fixture(rng) -> list[dict]:
    """The goodput experiment's setting in small: pslab's injector (the job clock), a 70/30
    kill/hang mix with different detection delays, hangs fenced, rank 0 at risk."""
    hz = ConstantHazard(RATE)
    common = dict(hang_fraction=HANG, clock="job", fence_hangs=True)
    jobs = [GoodputJob("scratch", 4, 60.0, hz, COSTS, max_restarts=3, **common),
            GoodputJob("ckpt_restart", 8, 60.0, hz, COSTS, checkpoint_interval_s=6.0, max_restarts=3, **common),
            GoodputJob("elastic", 8, 60.0, hz, COSTS, checkpoint_interval_s=6.0, max_restarts=2, **common),
            GoodputJob("ps", 5, 60.0, hz, COSTS, servers=2, checkpoint_interval_s=6.0, max_restarts=2,
                       first_at_risk=False, **common)]
    return [t for j in jobs for t in trials_from_model(j, 40, rng)]


@pytest.fixture(scope="module")
def trials_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("goodput")
    (d / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in _fixture(np.random.default_rng(7))))
    return d


def test_costs_are_fitted_from_the_trials(trials_file):
    trials = read_trials(trials_file)
    fit = fit_costs(trials)
    for c in ("ckpt_restart", "elastic", "ps"):
        got = fit.costs[c]
        assert got.startup_s == pytest.approx(COSTS.startup_s)
        assert got.restart_s == pytest.approx(COSTS.restart_s)
        # the trials mix kills and hangs: detection is their mean (per detected failure), for both
        own = [t for t in trials if t["contender"] == c]
        mean = sum(t["detect_s"] for t in own) / sum(t["failures_detected"] for t in own)
        assert got.detect_kill_s == got.detect_hang_s == pytest.approx(mean)
        assert "mix" in fit.sources[c]["detect_kill_s"]
        # an interrupted checkpoint's time counts, not the checkpoint: slightly above C
        assert COSTS.checkpoint_s * (1 - 1e-9) <= got.checkpoint_s < 1.2 * COSTS.checkpoint_s
        assert "measured" in fit.sources[c]["checkpoint_s"]
    mix = (1 - HANG) * COSTS.detect_kill_s + HANG * COSTS.detect_hang_s
    pooled = sum(t["detect_s"] for t in trials) / sum(t["failures_detected"] for t in trials)
    assert pooled == pytest.approx(mix, rel=0.15)
    assert fit.costs["elastic"].recovery_s == pytest.approx(COSTS.recovery_s)
    assert fit.costs["ps"].rereplication_s == pytest.approx(COSTS.rereplication_s)
    assert fit.costs["scratch"].finish_s == pytest.approx(COSTS.finish_s)
    cs = cells(read_trials(trials_file), fit)
    assert [c.job.contender for c in cs] == ["scratch", "ckpt_restart", "elastic", "ps"]
    ps = cs[-1].job
    assert (ps.servers, ps.workers, ps.first_at_risk, ps.max_restarts) == (2, 5, False, 2)
    assert ps.clock == "job" and ps.hang_fraction == pytest.approx(HANG)
    assert ps.checkpoint_interval_s == pytest.approx(6.0) and ps.work_s == pytest.approx(60.0)


def test_validation_passes_on_the_models_own_data(trials_file):
    report = validate_goodput(read_trials(trials_file), trials_per_cell=2000)
    assert report["total"] == 4
    assert report["passed"] == 4, [(r["contender"], r["simulated_rate"], r["measured_ci"],
                                    r["simulated_ettr_mean"], r["measured_ettr_ci"]) for r in report["cells"]]
    assert all(r["ettr_inside"] is True for r in report["cells"])
    # the fixture is hard enough to mean something: failures, relaunches and failed trials occur
    rates = [r["measured_rate"] for r in report["cells"]]
    assert min(rates) < 0.95


def test_validation_fails_on_data_that_contradict_the_model(trials_file):
    trials = read_trials(trials_file)
    slower = [dict(t, ettr=None if t["ettr"] is None else t["ettr"] * 0.85) for t in trials]
    report = validate_goodput(slower, trials_per_cell=1000)
    assert report["passed"] == 0 and all(r["ettr_inside"] is False for r in report["cells"])
    # every trial of the checkpoint-restart cell failed: the model cannot explain it
    broken = [dict(t, status="failed", ettr=0.0, productive_s=0.0) if t["contender"] == "ckpt_restart" else t
              for t in trials]
    # the job's length from the fault-free reference run, as experiments/goodput.py records it
    ref = [{"contender": "ckpt_restart", "ranks": 8, "status": "succeeded", "train_s": 60.0, "steps": STEPS}]
    rows = {r["contender"]: r for r in validate_goodput(broken, trials_per_cell=1000, references=ref)["cells"]}
    assert rows["ckpt_restart"]["success_inside"] is False and not rows["ckpt_restart"]["passed"]
    assert rows["ckpt_restart"]["simulated_rate"] > 0.5
    # without the reference its length is unknown: the cell fails the check and says why
    rows = {r["contender"]: r for r in validate_goodput(broken, trials_per_cell=200)["cells"]}
    assert rows["ckpt_restart"]["passed"] is False and "length is unknown" in rows["ckpt_restart"]["notes"]["error"]
    assert rows["elastic"]["passed"]


def test_cli_writes_validation_json(trials_file, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / "simulate.py"
    spec = importlib.util.spec_from_file_location("simulate_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--validate", str(trials_file), "--validation-trials", "500"]) in (0, 1)
    out = json.loads((trials_file / "validation.json").read_text())
    assert out["total"] == 4 and len(out["cells"]) == 4 and "cost_sources" in out
    assert "cells pass" in capsys.readouterr().out


@pytest.mark.parametrize("line,message", [
    ("not json", "trials.jsonl:1: not JSON"),
    ('{"contender": "mpi", "ranks": 4, "status": "failed"}', "'contender' must be one of"),
    ('{"contender": "ps", "ranks": "4", "status": "failed"}', "'ranks' must be a positive integer"),
    ('{"contender": "ps", "ranks": 4, "status": "done"}', "'status' must be"),
])
def test_bad_trials_are_refused_with_file_line_and_key(tmp_path, line, message):
    (tmp_path / "trials.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_trials(tmp_path)
    with pytest.raises(FileNotFoundError, match="no goodput trials"):
        read_trials(tmp_path / "nowhere")


def test_a_cell_without_the_job_length_is_named():
    t = {"contender": "elastic", "ranks": 4, "status": "failed", "hazard": None}
    (cell,) = cells([t], fit_costs([t]))
    assert cell.job is None and "cell elastic ranks=4: no successful trial" in cell.notes["error"]


def test_each_size_gets_the_costs_its_own_trials_measure(trials_file):
    """Start-up and relaunch grow with the ranks sharing two cores: a 16-rank cell keeps
    its own costs, not the pool's; a cost its size does not measure comes from the pool."""
    trials = read_trials(trials_file)
    big = [dict(t, ranks=16, workers=16, startup_s=2 * t["startup_s"], restart_s=2 * t["restart_s"])
           for t in trials if t["contender"] == "ckpt_restart"]
    both = trials + big
    fit = fit_costs(both)
    by_size = {c.key[1]: c.job.costs for c in cells(both, fit) if c.key[0] == "ckpt_restart"}
    assert by_size[8].startup_s == pytest.approx(COSTS.startup_s)
    assert by_size[16].startup_s == pytest.approx(2 * COSTS.startup_s)
    assert by_size[16].restart_s == pytest.approx(2 * COSTS.restart_s)
    assert COSTS.startup_s < fit.costs["ckpt_restart"].startup_s < 2 * COSTS.startup_s   # the pool blurs them
    pooled = {c.key[1]: c.job.costs for c in cells(both, fit, per_size=False) if c.key[0] == "ckpt_restart"}
    assert pooled[8] == pooled[16] == fit.costs["ckpt_restart"]
