"""pslab.analysis on a small fake results tree: loading, tables, per-run measures, figures
(written atomically), captions. No MPI, a few seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pslab.analysis import (aggregate, captions, figures, load_metrics, load_runs, table, time_to_target,
                            train_start_t, where)
from pslab.analysis import comparisons as C
from pslab.analysis import metrics as M
from pslab.analysis.io import rank_digest, save_run


def _write(d, name, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))


def _jsonl(d, name, rows):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(root, exp, arm, rep, *, t0=1000.0, rate=1.0, final=0.42, params=None, **summary):
    d = root / exp / arm / f"rep{rep}"
    s = {"status": "succeeded", "backend": "ps", "model": "lr", "ranks": 4, "workers": 2, "servers": 1,
         "wall_s": 10.0, "steps": 100, "examples": 6400, "test_logloss": final, "test_auc": 0.75,
         "bytes_sent": 1_000_000, "faults_injected": 0, "wait_fraction_by_worker": {"0": 0.5, "1": 0.2},
         **summary}
    _write(d, "summary.json", s)
    _write(d, "run.json", {"experiment": exp, "arm": arm, "rep": rep, "params": params or {}})
    # loss falls linearly from 0.5 to `final` over 100 steps, evaluated every 20
    evals = [{"kind": "eval", "t": t0 + st / rate / 10, "elapsed_s": 1.0 + st / rate / 10, "step": st,
              "examples": st * 64, "logloss": 0.5 - (0.5 - final) * st / 100} for st in range(20, 101, 20)]
    _jsonl(d, "metrics.jsonl", evals)
    ranks = [{"rank": 0, "role": "coordinator", "t_started": t0 - 2},
             *({"rank": r, "role": "worker", "t_started": t0 - 2, "finished": True,
                "first_steps": [{"step": 10, "t": t0 + 1 / rate}, {"step": 20, "t": t0 + 2 / rate}],
                "steps_logged": [10, 20, 50, 100], "step_t": [t0 + k / 10 / rate for k in (10, 20, 50, 100)],
                "peak_rss_bytes": 100 << 20} for r in (1, 2))]
    _write(d, "ranks.json", ranks)
    return d


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("PSLAB_RESULTS", str(tmp_path))
    monkeypatch.setenv("PSLAB_FIGURES_DIR", str(tmp_path / "figures"))
    for rep in (0, 1):
        fake_run(tmp_path, "consistency", "bsp-nostraggler", rep, rate=1.0,
                 params={"consistency": "bsp", "staleness": 0, "straggler": 1, "workers": 2})
        fake_run(tmp_path, "consistency", "bsp", rep, rate=0.5, injected=[{"action": "slow", "target_index": -1}],
                 params={"consistency": "bsp", "staleness": 0, "straggler": 3, "workers": 2})
        fake_run(tmp_path, "consistency", "ssp4", rep, rate=0.8, consistency="ssp", staleness_mean=2.0,
                 params={"consistency": "ssp", "staleness": 4, "straggler": 3, "workers": 2})
    return tmp_path


def test_load_runs_merges_labels_and_finds_series(results):
    runs = load_runs("consistency")
    assert len(runs) == 6
    assert {r["arm"] for r in runs} == {"bsp-nostraggler", "bsp", "ssp4"}
    r = where(runs, arm="bsp", rep=0)[0]
    assert r["params"]["straggler"] == 3 and r["_dir"].endswith("bsp/rep0")
    assert len(load_metrics(r)) == 5


def test_train_start_and_time_to_target(results):
    r = where(load_runs("consistency"), arm="bsp-nostraggler", rep=0)[0]
    # first records: step 10 at t0+1, step 20 at t0+2 -> step 0 at t0
    assert train_start_t(r) == pytest.approx(1000.0)
    # loss 0.5 -> 0.42 linearly; 0.46 is reached at step 50 = 5 s; interpolated between evals
    assert time_to_target(r, 0.46) == pytest.approx(5.0)
    assert time_to_target(r, 0.30) is None
    # examples come from the workers' own step records (2 workers x 32 rows per step)
    assert time_to_target(r, 0.46, "examples") == pytest.approx(2 * 50 * 32)


def test_first_below_interpolates():
    x, y = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.0])
    assert M.first_below(x, y, 0.25) == pytest.approx(1.5)
    assert M.first_below(x, y, 2.0) == 0.0
    assert M.first_below(x, y, -1) is None


def test_tables_print_and_aggregate(results):
    runs = load_runs("consistency")
    t = table(runs, ["arm", "rep", "test_logloss", ("ratio", lambda r: r["wall_s"] / 2)], sort=["arm", "rep"])
    assert t.column("arm")[0] == "bsp" and t.column("ratio")[0] == 5.0
    assert "test_logloss" in str(t) and "<table>" in t._repr_html_()
    a = aggregate(runs, "arm", {"loss": "test_logloss"})
    assert {row["arm"]: row["runs"] for row in a} == {"bsp-nostraggler": 2, "bsp": 2, "ssp4": 2}


def test_consistency_rows(results):
    rows = {r["arm"]: r for r in C.consistency_rows(load_runs("consistency"))}
    assert rows["bsp"]["speedup_vs_bsp"] == pytest.approx(1.0)
    assert rows["ssp4"]["speedup_vs_bsp"] == pytest.approx(0.8 / 0.5, rel=0.05)
    assert rows["bsp"]["idle_fraction"] == pytest.approx(0.5)  # worker 1, the slowed one, left out
    assert rows["bsp-nostraggler"]["idle_fraction"] == pytest.approx(0.35)
    text = captions.consistency(load_runs("consistency"))
    assert "examples to the target log-loss vs BSP: ssp4" in text and "too few repetitions to rank" in text  # 2 reps


def test_figures_are_written_atomically(results):
    runs = load_runs("consistency")
    fig, path = figures.fig_consistency(runs)
    assert path.parent == results / "figures" and path.stat().st_size > 10_000
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]
    # every figure function copes with no data at all
    for fn in (figures.fig_traffic, figures.fig_recovery, figures.fig_stragglers, figures.fig_scalability,
               figures.fig_goodput):
        assert fn([])[1].exists()
    assert figures.fig_success_rate([], None)[1].exists()
    assert figures.fig_sim_validation([])[1].exists()
    assert figures.fig_sim_curves({})[1].exists()


def test_save_run_keeps_only_small_records(tmp_path):
    run = tmp_path / "run"
    (run / "ranks").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "succeeded", "steps": 3}))
    (run / "mpirun.log").write_text("x" * 100_000)
    (run / "checkpoints").mkdir()
    _jsonl(run, "events.jsonl", [{"kind": "rank_started", "rank": 1, "t": 5.0}])
    _jsonl(run / "ranks", "rank-1.metrics.jsonl", [{"kind": "step", "step": s, "t": 5.0 + s, "role": "worker"}
                                                   for s in (20, 40)])
    (run / "ranks" / "rank-1.json").write_text(json.dumps({"role": "worker", "index": 0, "peak_rss_bytes": 7}))
    dest = save_run(run, tmp_path / "res" / "arm" / "rep0", {"arm": "arm"})
    assert sorted(p.name for p in dest.iterdir()) == ["events.jsonl", "ranks.json", "run.json", "summary.json"]
    d = rank_digest(run)
    assert d[0]["first_steps"][1] == {"step": 40, "t": 45.0} and d[0]["peak_rss_bytes"] == 7
    assert load_runs(tmp_path / "res")[0]["arm"] == "arm"


def test_scalability_fit_recovers_a_line():
    pts = [{"params_stored": p, "rank_rss_bytes": 80e6 + 12 * p, "status": "succeeded"} for p in (1e5, 1e6, 1e7)]
    base, per = C.memory_fit(pts, "rank_rss_bytes")
    assert base == pytest.approx(80e6, rel=1e-6) and per == pytest.approx(12, rel=1e-6)


def test_success_rates_wilson():
    trials = [{"backend_key": "allreduce", "ranks": 4, "success": i < 3} for i in range(4)]
    (row,) = M.success_rates(trials)
    assert row["rate"] == 0.75 and row["ci_low"] < 0.75 < row["ci_high"]
