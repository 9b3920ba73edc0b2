"""The goodput experiment (experiments/goodput.py) and the interval rule every caption
follows: records match the contract the simulator reads, cells and intervals are right,
a rerun resumes, captions rank only where 95% intervals separate. The harness is tested
with a fake launcher (no MPI); one slow test runs the tiny preset end to end."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pslab.analysis import captions, comparisons, intervals
from pslab.analysis.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"contender", "ranks", "workers", "servers", "seed", "status", "ettr", "attempts", "wall_s",
            "productive_s", "checkpoint_s", "restart_s", "redone_s", "detect_s", "startup_s", "train_s",
            "faults_injected", "failures_detected", "checkpoint_every", "checkpoints", "recovery_s",
            "rereplication_s", "hazard", "run_dir"}


@pytest.fixture(scope="module")
def gp():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        yield importlib.import_module("goodput")
    finally:
        sys.path.remove(str(ROOT / "experiments"))


# ------------------------------------------------------------------ intervals


def test_wilson_matches_the_textbook_value():
    lo, hi = intervals.wilson(8, 10)  # p = 0.8, n = 10, z = 1.96
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert intervals.wilson(0, 4)[0] == 0.0 and intervals.wilson(4, 4)[1] == 1.0


def test_bootstrap_mean_is_seeded_and_covers_the_mean():
    x = [0.2, 0.9, 0.8, 0.0, 0.95, 0.85, 0.9, 0.7]
    a = intervals.bootstrap_mean(x)
    assert a == intervals.bootstrap_mean(x) and a[0] < np.mean(x) < a[1]
    assert intervals.bootstrap_mean([0.5] * 6) == (0.5, 0.5) and intervals.bootstrap_mean([]) is None
    assert intervals.bootstrap_mean([0.2, 0.9, 0.8]) is None  # too few trials for an interval


def test_ettr_interval_covers_faults_a_small_sample_did_not_meet():
    """6 fault-free trials at 0.99: a bootstrap says [0.99, 0.99]; a fault may still strike
    a trial in 39% of them (Wilson) at any cost, so the interval reaches well below."""
    lo, hi = intervals.ettr_interval([0.99] * 6, [False] * 6)
    assert 0.99 <= hi <= 1.0 and lo < 0.7
    # coverage, by simulation: 20 trials, a fault in 10% of them costs ETTR 0.2
    rng = np.random.default_rng(0)
    true_mean, covered = 0.9 * 0.99 + 0.1 * 0.2, 0
    for _ in range(300):
        struck = rng.random(20) < 0.1
        x = np.where(struck, 0.2, 0.99)
        lo, hi = intervals.ettr_interval(x, struck)
        covered += lo <= true_mean <= hi
    assert covered / 300 >= 0.95
    # every trial struck: the faulted trials' own interval; a ranking needs a real gap
    assert intervals.ettr_interval([0.3, 0.35, 0.4, 0.32, 0.38], [True] * 5) == \
        intervals.bootstrap_mean([0.3, 0.35, 0.4, 0.32, 0.38], 1 - 0.05 / 3)
    assert intervals.ettr_interval([0.9] * 4, [False] * 4) is None  # fewer than 5 trials
    # one trial met a (cheap) kill: what faults cost is not known from it
    lo, _ = intervals.ettr_interval([0.98] * 19 + [0.96], [False] * 19 + [True])
    assert lo < 0.8


def test_ratio_interval_is_a_t_interval_on_log_ratios():
    lo, hi = intervals.ratio_interval([0.5, 0.6, 0.55])
    assert lo < 0.55 < hi < 1.0  # three agreeing repetitions: below 1
    lo, hi = intervals.ratio_interval([0.7, 1.3, 1.0])
    assert lo < 1.0 < hi  # three that disagree: no direction
    assert intervals.ratio_interval([0.5, 0.52]) is None  # two: the spread is one difference, no interval


def test_order_ranks_only_when_every_neighbour_separates():
    a, b, c = ("a", 0.9, (0.85, 0.95)), ("b", 0.5, (0.4, 0.6)), ("c", 0.45, (0.3, 0.55))
    assert intervals.order([b, a]) == ["a", "b"]
    assert intervals.order([a, b, c]) is None  # b and c overlap
    assert intervals.separated(a[2], b[2]) and not intervals.separated(b[2], c[2])


# ------------------------------------------------------------------ cells and captions


def _trial(c, n, seed, ok, ettr):
    return {"contender": c, "ranks": n, "seed": seed, "status": "succeeded" if ok else "failed",
            "ettr": ettr if ok else None, "attempts": 1 if ok else 4, "faults_injected": 1}


def test_goodput_cells_count_failed_jobs_as_zero_ettr_with_intervals():
    ts = [_trial("scratch", 4, s, s < 3, 0.8) for s in range(6)]
    cell = comparisons.goodput_cells(ts)[0]
    assert (cell["trials"], cell["successes"], cell["finished"]) == (6, 3, 3)
    assert cell["success_ci"] == list(intervals.wilson(3, 6))
    assert cell["ettr_mean"] == pytest.approx(0.4) and cell["ettr_finished_mean"] == pytest.approx(0.8)
    assert cell["ettr_ci"][0] < 0.4 < cell["ettr_ci"][1]
    assert "| scratch | 4 | 6 | 3/6 (50%)" in comparisons.goodput_markdown([cell])


def test_goodput_caption_ranks_only_separated_intervals():
    many = [_trial("elastic", 8, s, True, 0.9) for s in range(20)] + \
        [_trial("scratch", 8, s, s < 2, 0.5) for s in range(20)]
    text = captions.goodput(comparisons.goodput_cells(many))
    assert "success rate: elastic > scratch" in text and "ETTR: elastic > scratch" in text
    few = [_trial("elastic", 8, s, s < 2, 0.9) for s in range(3)] + [_trial("scratch", 8, s, s < 1, 0.8)
                                                                     for s in range(3)]
    text = captions.goodput(comparisons.goodput_cells(few))
    assert "success rate: indistinguishable at this sample size" in text
    assert "ETTR: indistinguishable at this sample size" in text and ">" not in text.split("; success rate")[1]
    one = captions.goodput(comparisons.goodput_cells([_trial("elastic", 4, 1, True, 0.9),
                                                      _trial("scratch", 4, 1, True, 0.3)]))
    assert "ETTR: indistinguishable" in one  # one trial each: no interval, no ranking


def test_straggler_and_consistency_wording_follows_the_interval():
    assert "sooner than BSP" in captions._gain("ASP", "BSP", "reached the target", 0.3, (0.2, 0.4))
    said = captions._gain("SSP", "BSP", "reached the target", -0.05, (-0.5, 0.3))
    assert "indistinguishable at this sample size" in said and "later" not in said
    row = {"arm": "ssp2", "time_vs_bsp": 0.77, "time_vs_bsp_ci": (0.7, 0.85)}
    assert "sooner" in captions._vs(row, "time_vs_bsp")
    row["time_vs_bsp_ci"] = (0.4, 1.6)
    assert "indistinguishable" in captions._vs(row, "time_vs_bsp")
    row["time_vs_bsp_ci"] = None  # fewer than 3 repetitions
    assert "too few repetitions to rank" in captions._vs(row, "time_vs_bsp")
    assert "too few repetitions to rank" in captions._gain("ASP", "BSP", "reached the target", 0.3, None)

    # a difference inside the margin is no ranking either, and is said to be one
    row = {"arm": "ssp1", "examples_vs_bsp": 1.005, "examples_vs_bsp_ci": (1.002, 1.007)}
    said = captions._vs(row, "examples_vs_bsp")
    assert "within 2% of no difference" in said and "more" not in said
    said = captions._gain("SSP", "BSP", "reached the target", -0.01, (-0.018, -0.004))
    assert "within 2% of no difference" in said and "later" not in said
    said = captions._gain("SSP", "BSP", "reached the target", -0.07, (-0.122, -0.019))  # across the edge
    assert "too close to rank" in said and "later" not in said


def test_a_direction_needs_the_interval_to_clear_the_margin():
    """BSP with and without a straggler compute the same model; their examples to target
    differed by 1.004-1.013x from when rank 0 evaluated: not a ranking."""
    assert intervals.MARGIN == 0.02
    assert not intervals.excludes((1.004, 1.013)) and intervals.excludes((1.021, 1.05))
    assert not intervals.excludes((0.97, 0.99)) and intervals.excludes((0.90, 0.979))
    assert not intervals.excludes((-0.12, -0.019), 0.0) and intervals.excludes((-0.12, -0.021), 0.0)
    assert intervals.excludes((1.004, 1.013), margin=0.0) and not intervals.excludes(None)
    assert intervals.no_ranking((1.004, 1.013)) == intervals.WITHIN
    assert intervals.equivalent((0.99, 1.01)) and not intervals.equivalent((0.971, 0.983))
    # across the margin's edge: neither a direction nor shown to be within it
    assert intervals.no_ranking((0.971, 0.983)) == intervals.EDGE
    assert intervals.no_ranking((0.95, 1.05)) == intervals.no_ranking(None) == intervals.INDISTINCT


# ------------------------------------------------------------------ the harness


def test_young_daly_interval(gp):
    assert gp.young_daly_s(0.5, 100.0) == pytest.approx(10.0)
    assert gp.interval_steps(0.5, 100.0, 0.1, 1000) == 100
    assert gp.interval_steps(0.5, 100.0, 0.1, 40) == 40 and gp.interval_steps(1e-9, 1.0, 10.0, 50) == 1


def test_combine_attempts_splits_the_lost_time(gp):
    failed = {"status": "failed", "wall_s": 12.0, "failure_times_s": [7.0], "faults_injected": 1,
              "failures_detected": 1}
    ok = {"status": "succeeded", "wall_s": 10.0, "train_s": 6.0, "faults_injected": 0, "recovery_s": []}
    acct = gp.combine_attempts([failed, ok])
    assert acct["attempts"] == 2 and acct["wall_s"] == 22.0
    assert (acct["startup_s"], acct["restart_s"], acct["productive_s"]) == (4.0, 4.0, 6.0)
    assert (acct["detect_s"], acct["redone_s"]) == (5.0, 3.0)  # fault at 7 s: 3 s of work lost, 5 s to end
    assert acct["ettr"] == pytest.approx(6.0 / (6 + 4 + 3 + 5))
    assert gp.combine_attempts([failed])["ettr"] == 0.0  # no model: ETTR 0, as the launcher says
    assert gp.combine_attempts([ok])["ettr"] == 1.0


def _fake_launcher(calls):
    """A launch() stand-in: references succeed; a trial attempt fails when its hazard seed is 2."""
    def launch(n, overrides, run_dir=None, deadline=None, quiet=True, **kw):
        calls.append((n, list(overrides), kw))
        ov = dict(o.split("=", 1) for o in overrides if "=" in o)
        if ov.get("faults") == "none":
            return {"status": "succeeded", "wall_s": 10.0, "train_s": 6.0, "steps": 60, "test_auc": 0.74,
                    "checkpoints": 6 if "backend.checkpoint_every" in ov else 0,
                    "checkpoint_s": 0.6 if "backend.checkpoint_every" in ov else None}
        fail = int(ov["faults.seed"]) == 2
        hz = {"kind": "constant", "rate_per_s": 0.006, "actions": {"kill": 0.7, "hang": 0.3}}
        if fail:
            return {"status": "failed", "wall_s": 8.0, "failure_times_s": [5.0], "faults_injected": 1,
                    "failures_detected": 1, "hazard": hz, "reason": "aborted"}
        return {"status": "succeeded", "wall_s": 10.0, "train_s": 6.0, "test_auc": 0.741, "faults_injected": 0,
                "hazard": hz, "recovery_s": []}
    return launch


def test_harness_records_the_contract_and_resumes(gp, tmp_path, capsys):
    p = dict(gp.PRESETS["small"], ranks=[4], max_restarts=1)
    calls = []
    runner = gp.Runner(p, tmp_path / "out", tmp_path / "runs", launch_fn=_fake_launcher(calls),
                       restarts_by_launcher=False)
    (tmp_path / "out").mkdir()
    gp.run(p, ["scratch", "ps"], [4], 2, tmp_path / "out", tmp_path / "runs", None, runner)
    trials = read_jsonl(tmp_path / "out" / "trials.jsonl")
    assert [(t["contender"], t["seed"]) for t in trials] == [("scratch", 1), ("ps", 1), ("scratch", 2), ("ps", 2)]
    for t in trials:
        assert CONTRACT <= set(t), CONTRACT - set(t)
        assert t["contender"] in gp.CONTENDERS and t["status"] in ("succeeded", "failed")
    ps = trials[1]
    # Young/Daly from the calibration reference: C = 0.6 s / 6 checkpoints, M = 1 / (4 x rate), 0.1 s a step
    every = gp.interval_steps(0.1, 1 / (4 * p["rate"]), 0.1, 60)
    assert every == round((2 * 0.1 / (4 * p["rate"])) ** 0.5 / 0.1)  # sqrt(2 C M) in 0.1 s steps
    assert (ps["workers"], ps["servers"]) == (1, 2) and ps["checkpoint_every"] == every
    assert (ps["replication"], ps["max_restarts"], trials[0]["replication"]) == (2, 1, None)
    assert trials[0]["checkpoint_every"] is None and trials[0]["hazard"]["actions"] == {"kill": 0.7, "hang": 0.3}
    # seed 2 fails its first attempt, the resubmission (hazard seed 1002) succeeds
    s2 = trials[2]
    assert s2["status"] == "succeeded" and s2["attempts"] == 2 and s2["faults_injected"] == 1
    assert 0 < s2["ettr"] < 1 and trials[0]["ettr"] == 1.0
    hazard_ov = [o for _, ov, _ in calls for o in ov if o.startswith("faults.")]
    assert "faults.hazard.exclude_ranks=[]" in hazard_ov and "faults.seed=1002" in hazard_ov
    # a rerun with one more trial a cell launches only seed 3 (references are kept too)
    before = len(calls)
    gp.run(p, ["scratch", "ps"], [4], 3, tmp_path / "out", tmp_path / "runs", None, runner)
    new = calls[before:]
    assert {dict(o.split("=", 1) for o in ov if "=" in o)["faults.seed"] for _, ov, _ in new} == {"3"}
    assert len(read_jsonl(tmp_path / "out" / "trials.jsonl")) == 6
    # each trial names the code it ran on; resuming over another commit's trials says so
    rows = read_jsonl(tmp_path / "out" / "trials.jsonl")
    assert {t["commit"] for t in rows} == {gp.git_commit()}
    (tmp_path / "out" / "trials.jsonl").write_text("".join(json.dumps({**r, "commit": "0ld"}) + "\n" for r in rows))
    gp.run(p, ["scratch", "ps"], [4], 3, tmp_path / "out", tmp_path / "runs", None, runner)
    assert "holds trials of other code (0ld" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["restarts_by"] == "harness" and meta["setting"]["rate"] == p["rate"]


def test_harness_uses_the_launchers_restarts_when_it_has_them(gp, tmp_path):
    p = dict(gp.PRESETS["small"], ranks=[4])
    calls = []
    runner = gp.Runner(p, tmp_path / "out", tmp_path / "runs", launch_fn=_fake_launcher(calls),
                       restarts_by_launcher=True)
    (tmp_path / "out").mkdir()
    gp.run(p, ["elastic"], [4], 1, tmp_path / "out", tmp_path / "runs", None, runner)
    trial_calls = [kw for _, ov, kw in calls if "faults=hazard" in ov]
    assert trial_calls == [{"max_restarts": p["max_restarts"], "restart_ranks": "same"}]
    t = read_jsonl(tmp_path / "out" / "trials.jsonl")[0]
    assert t["restarts_by"] == "launcher" and "--max-restarts" in t["replay"]


@pytest.mark.slow
def test_tiny_preset_end_to_end(gp, tmp_path):
    out = tmp_path / "gp"
    assert gp.main(["--preset", "tiny", "--out", str(out)]) == 0
    trials = read_jsonl(out / "trials.jsonl")
    assert len(trials) == 4 and {t["contender"] for t in trials} == {"scratch", "elastic"}
    for t in trials:
        assert CONTRACT <= set(t)
        assert t["status"] == "failed" or (t["ettr"] is not None and 0 < t["ettr"] <= 1)
        assert t["wall_s"] <= (t["deadline_s"] + 30) * t["attempts"]
    cells = json.loads((out / "cells.json").read_text())["cells"]
    assert {(c["contender"], c["ranks"], c["trials"]) for c in cells} == {("scratch", 2, 2), ("elastic", 2, 2)}
    assert (tmp_path / "figures" / "goodput_gp.png").exists()


def test_experiment_config_has_its_command():
    text = (ROOT / "conf" / "experiment" / "goodput.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "experiments/goodput.py" in text and "pslab.launch" in text


@pytest.mark.parametrize("preset", ["small", "large", "tiny"])
def test_every_contender_composes_and_passes_the_launchers_checks(gp, preset):
    from pslab.config import load_config
    from pslab.launcher.checks import check_run
    p = gp.PRESETS[preset]
    for c in p.get("contenders") or gp.CONTENDERS:
        for n in p["ranks"]:
            cfg = load_config(gp.contender_overrides(c, n, p, 7) + gp.hazard_overrides(p, 3))
            check_run(cfg, n)  # rank counts against the backend, the fault plan, the data
            assert cfg.faults.hazard.exclude_ranks == [] and cfg.faults.seed == 3
            assert cfg.train.batch_size % gp.layout(c, n)[0] == 0
            if c == "ps":
                assert cfg.backend.replication == 2 and cfg.backend.servers == gp.layout(c, n)[1]


def test_harness_runs_every_launch_over_emulated_hosts_when_asked(gp, tmp_path):
    """--hosts K reaches every launch (references and trials), and the setting records it,
    so trials over emulated hosts are never mixed with one-host trials."""
    p = dict(gp.PRESETS["small"], ranks=[4], hosts=2)
    calls = []
    runner = gp.Runner(p, tmp_path / "out", tmp_path / "runs", launch_fn=_fake_launcher(calls),
                       restarts_by_launcher=True)
    (tmp_path / "out").mkdir()
    gp.run(p, ["elastic"], [4], 1, tmp_path / "out", tmp_path / "runs", None, runner)
    assert calls and all(kw.get("hosts") == 2 for _, _, kw in calls)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["setting"]["hosts"] == 2
    one_host = dict(gp.PRESETS["small"])
    assert "hosts" not in {k for k in gp.SETTING_KEYS if k in one_host}
