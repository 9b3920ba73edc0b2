"""The parts of checkpoint-restart, without MPI: the job-level fault state (fired events do
not refire, the job's clock), the ETTR arithmetic, the step watchdog's verdict, the
allreduce checkpoint's round trip and its resume over another rank count, and the
launcher's restart flags. test_restart.py runs the whole thing under mpirun."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pslab.backends import arckpt, stepwatch
from pslab.faults import Injector, parse_plan, resolve_events
from pslab.faults.jobstate import fired_ids, read_job, write_job
from pslab.launch import main
from pslab.launcher import ettr, restart


class FakeRec:
    def __init__(self, run_dir=None, rank=0):
        self.t0 = time.time()
        self.events = []
        self.run_dir, self.rank = run_dir, rank

    def event(self, kind, sync=False, **fields):
        self.events.append({"kind": kind, **fields})


def make_injector(plan, job=None, rank=0, roles=None):
    roles = roles or {"worker": 4, "rank": 4}
    p = parse_plan(plan)
    rec = FakeRec()
    return Injector(p, resolve_events(p, roles), "worker", rank, rank, roles, 10, rec, job), rec


# ------------------------------------------------------------------ the job's fault plan

def test_an_event_fired_in_an_earlier_attempt_does_not_fire_again(tmp_path):
    plan = {"events": [{"action": "slow", "target": {"role": "worker", "index": 0}, "at": {"step": 3}, "factor": 2}]}
    inj, rec = make_injector(plan)
    inj.on_step(3)
    assert [e["fault_id"] for e in rec.events if e["kind"] == "fault_injected"] == [0]
    write_job(tmp_path, 1, fired_ids(rec.events), 12.5)
    job = read_job(tmp_path)
    assert job == {"attempt": 1, "fired": {0}, "clock_offset_s": 12.5}
    again, rec2 = make_injector(plan, job)
    for step in range(1, 8):
        again.on_step(step)
    assert not [e for e in rec2.events if e["kind"] == "fault_injected"]


def test_a_fired_hazard_does_not_fire_again_and_time_runs_on_the_job_clock():
    plan = {"hazard": {"kind": "constant", "rate_per_s": 1.0, "roles": ["worker"], "exclude_ranks": [],
                       "action": "slow", "factor": 2}}  # slow: a kill would end pytest
    # the job has run 1000 s already: every draw (mean 1 s) is due, so it fires at once
    inj, rec = make_injector(plan, {"fired": set(), "clock_offset_s": 1000.0}, rank=1)
    time.sleep(0.3)
    fired = [e for e in rec.events if e["kind"] == "fault_injected"]
    assert len(fired) == 1 and fired[0]["fault_id"] == "hazard-r1" and fired[0]["fired_s"] >= 1000
    inj.stop()
    inj2, rec2 = make_injector(plan, {"fired": {"hazard-r1"}, "clock_offset_s": 1000.0}, rank=1)
    time.sleep(0.3)
    assert not [e for e in rec2.events if e["kind"] == "fault_injected"]
    inj2.stop()


def test_no_job_dir_means_no_job_state():
    assert read_job(None) == {"attempt": 0, "fired": set(), "clock_offset_s": 0.0}


# ------------------------------------------------------------------ ETTR

def tl(t_launch, t_train, t_end, t_done=None, checkpoints=(), survived=(), t_fault=None, t_detect=None):
    return {"t_launch": t_launch, "t_train": t_train, "t_end": t_end, "t_done": t_done, "ok": t_done is not None,
            "checkpoints": list(checkpoints), "survived": list(survived), "t_fault": t_fault, "t_detect": t_detect}


def test_ettr_of_a_fault_free_run_counts_only_checkpoints_against_it():
    g = ettr.goodput([tl(0, 5, 32, t_done=30, checkpoints=[(10, 0.5), (20, 0.5)])])
    assert g["job_wall_s"] == 25 and g["startup_s"] == 5 and g["finish_s"] == 2
    assert g["checkpoint_s"] == 1.0 and g["productive_s"] == 24.0 and g["ettr"] == 0.96
    assert g["restart_s"] == g["redone_s"] == g["detect_s"] == g["pause_s"] == 0


def test_ettr_of_a_restarted_job_parts_add_up_to_its_wall():
    first = tl(0, 5, 22, checkpoints=[(10, 0.5)], t_fault=14, t_detect=15)  # fault at 14, seen at 15
    second = tl(22, 30, 52, t_done=50)
    g = ettr.goodput([first, second])
    assert g["job_wall_s"] == 45  # from the first step (5) to the last result (50)
    assert g["productive_s"] == 4.5 + 20  # up to the checkpoint (less its write), then all of attempt 1
    assert g["checkpoint_s"] == 0.5 and g["redone_s"] == 4 and g["detect_s"] == 1 and g["restart_s"] == 15
    parts = sum(g[k] for k in ("productive_s", "checkpoint_s", "redone_s", "detect_s", "restart_s", "pause_s"))
    assert parts == pytest.approx(g["job_wall_s"])
    assert 0 < g["ettr"] < 1


def test_ettr_of_a_survived_failure_counts_detection_and_pause():
    g = ettr.goodput([tl(0, 2, 21, t_done=20, survived=[(8, 10, 10.5)])])
    assert g["detect_s"] == 2 and g["pause_s"] == 0.5 and g["productive_s"] == 15.5


def test_overlapping_failures_count_their_overlap_once():
    """Two hangs seen by one heartbeat timeout: detections 8-18 and 9-18, pauses to 19 and
    20 (one pause inside the other's detection). The parts still add up to the wall."""
    g = ettr.goodput([tl(0, 2, 31, t_done=30, survived=[(8, 18, 19), (9, 18, 20)])])
    assert g["detect_s"] == 10 and g["pause_s"] == 2 and g["productive_s"] == 28 - 12
    parts = sum(g[k] for k in ("productive_s", "checkpoint_s", "redone_s", "detect_s", "restart_s", "pause_s"))
    assert parts == pytest.approx(g["job_wall_s"])


def test_a_failed_job_has_no_productive_time():
    g = ettr.goodput([tl(0, 2, 12, t_fault=9, t_detect=10)])
    assert g["ettr"] == 0 and g["productive_s"] == 0 and g["redone_s"] == 7


def test_timeline_reads_the_records():
    events = [{"kind": "training_started", "rank": 0, "t": 5.0},
              {"kind": "checkpoint", "rank": 0, "t": 10.0, "seconds": 0.25, "step": 10},
              {"kind": "fault_injected", "rank": 3, "t": 14.0, "action": "kill"},
              {"kind": "failure_detected", "rank": 1, "t": 14.5},
              {"kind": "aborting", "rank": 1, "t": 14.6}]
    t = ettr.timeline(events, None, 0.0, 18.0)
    assert (t["t_train"], t["t_fault"], t["t_detect"], t["ok"]) == (5.0, 14.0, 14.5, False)
    assert t["checkpoints"] == [(10.0, 0.25)]
    assert t["t_ranks"] is None and ettr.goodput([t])["rank_startup_s"] is None


def test_the_ranks_own_start_up_is_the_median_rank_start_to_the_first_step():
    """mpirun's spawn (launch to the ranks' start) is start-up a fault plan cannot hit:
    its clock starts with each rank. rank_startup_s is the rest, a mean over attempts."""
    a0 = [{"kind": "rank_started", "rank": r, "t": t} for r, t in enumerate((3.0, 3.5, 9.0))]
    a0 += [{"kind": "training_started", "rank": 0, "t": 4.5}, {"kind": "fault_injected", "rank": 2, "t": 6.0,
                                                               "action": "kill"},
           {"kind": "failure_detected", "rank": 1, "t": 6.2}, {"kind": "aborting", "rank": 1, "t": 6.3}]
    a1 = [{"kind": "rank_started", "rank": r, "t": 12.0} for r in range(3)]
    a1 += [{"kind": "training_started", "rank": 0, "t": 14.0}]
    tls = [ettr.timeline(a0, None, 0.0, 7.0), ettr.timeline(a1, {"status": "completed", "t": 20.0}, 8.0, 21.0)]
    assert tls[0]["t_ranks"] == 3.5 and tls[1]["t_ranks"] == 12.0
    g = ettr.goodput(tls)
    assert g["startup_s"] == 4.5 and g["rank_startup_s"] == pytest.approx((1.0 + 2.0) / 2)


# ------------------------------------------------------------------ the step watchdog

def beat(d, rank, n, in_collective):
    (d / "ranks" / f"beat-{rank}.json").write_text(json.dumps({"n": n, "in_collective": in_collective}))


@pytest.mark.parametrize("peers, hang", [
    ({1: "stale", 2: "waiting"}, [1]),      # a peer stopped beating: a hang, it is named
    ({1: "waiting", 2: "waiting"}, []),     # everyone waits in the collective: a hang, nobody to blame
    ({1: "working", 2: "waiting"}, None),   # rank 1 is alive outside the collective (evaluating): wait
])
def test_step_watchdog_verdict(tmp_path, peers, hang):
    (tmp_path / "ranks").mkdir()
    calls = []
    w = stepwatch.StepWatch(FakeRec(tmp_path, 0), 2.0, lambda step, waited, stale: calls.append(stale), [0, 1, 2])
    for r, state in peers.items():
        beat(tmp_path, r, 1, state == "waiting")
    w.peers(0.0)  # first look at the beats

    def live_peers_beat(n):
        for r, state in peers.items():
            if state != "stale":
                beat(tmp_path, r, n, state == "waiting")

    with w.collective(7):
        w.since = 0.0
        live_peers_beat(2)
        w.check(0.5)  # within the timeout: nothing
        assert calls == []
        live_peers_beat(3)
        w.check(3.0)
    assert calls == ([] if hang is None else [hang])


# ------------------------------------------------------------------ allreduce checkpoints

class FakeTable:
    def __init__(self, n):
        self.W = np.zeros((n, 1), np.float32)
        self.S = np.ones((n, 1), np.float32)


class FakeData:
    def block_len(self, b):
        return 100


class FakeTrainer:
    def __init__(self, n, cfg):
        from pslab.backends.elastic import Plan

        self.cfg, self.batch, self.n_world = cfg, 64, n
        self.table = FakeTable(16)
        self.s = type("S", (), {"data": FakeData()})()
        self.step, self.epoch, self.steps_in_epoch, self.examples = 0, 0, 0, 0
        self.plan = Plan(FakeData(), list(range(n)), [[0, 1], [2, 3], [4], [5]][:n], [16] * n)


def test_allreduce_checkpoint_round_trip_and_resume_over_fewer_ranks(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"backend": {"checkpoint_every": 5}, "train": {"seed": 0}})
    tr = FakeTrainer(4, cfg)
    tr.table.W[3] = 2.5
    for st, c in zip(tr.plan.streams, (30, 30, 30, 30)):
        st.commit(c)
    tr.step, tr.steps_in_epoch, tr.examples = 5, 5, 120
    ck = arckpt.Checkpointer(cfg, FakeRec(tmp_path))
    assert ck.due(5) and not ck.due(6)
    ck.write(tr)
    man = arckpt.find(tmp_path)
    assert man.name == "manifest.json" and arckpt.complete(man)
    info = arckpt.load(tmp_path / "checkpoints")
    same = FakeTrainer(4, cfg)
    arckpt.restore(same, info, [0, 1, 2, 3])
    assert same.step == 5 and same.table.W[3, 0] == 2.5 and same.plan.counts() == [16] * 4
    assert [s.left for s in same.plan.streams] == [170, 170, 70, 70]
    fewer = FakeTrainer(3, cfg)
    arckpt.restore(fewer, info, [0, 1, 2])
    assert fewer.plan.sizes == [22, 21, 21] and fewer.plan.rows_left() == 480  # every row still to do, once
    other_seed = OmegaConf.create({"backend": {}, "train": {"seed": 1}})
    with pytest.raises(SystemExit, match="train.seed"):
        arckpt.restore(FakeTrainer(4, other_seed), info, [0, 1, 2, 3])


def test_checkpoint_interval_in_seconds(tmp_path):
    from omegaconf import OmegaConf

    ck = arckpt.Checkpointer(OmegaConf.create({"backend": {"checkpoint_every_s": 0.2}, "train": {"seed": 0}}),
                             FakeRec(tmp_path))
    assert ck.on and not ck.due(1)
    time.sleep(0.25)
    assert ck.due(2)


def test_a_torn_checkpoint_is_never_picked(tmp_path):
    root = tmp_path / "attempts" / "0" / "checkpoints"
    good, torn = root / "step-00000010", root / "step-00000020"
    for d in (good, torn):
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({"files": ["model.npz"]}))
    (good / "model.npz").write_bytes(b"x")  # the newer one lost its model file
    assert restart.latest_checkpoint(tmp_path, 0) == good / "manifest.json"
    assert restart.latest_checkpoint(tmp_path / "nowhere", 0) is None


# ------------------------------------------------------------------ the launcher's flags

@pytest.mark.parametrize("args, words", [
    (["--max-restarts", "-1"], "--max-restarts -1: must be >= 0"),
    (["--restart-ranks", "foo"], "--restart-ranks foo: choose same"),
    (["backend.step_timeout_s=0"], "backend.step_timeout_s=0"),
    (["backend.checkpoint_every=-1"], "backend.checkpoint_every=-1"),
    (["backend.checkpoint_every_s=-5"], "backend.checkpoint_every_s=-5"),
])
def test_bad_restart_flags_and_keys_are_one_line_exit_2(tmp_path, capsys, args, words):
    flags, keys = (args, []) if args[0].startswith("--") else ([], args)
    code = main(["-n", "4", "--run-dir", str(tmp_path / "r"), *flags, "backend=allreduce", *keys])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "invalid"


def test_survivors_of_a_dead_rank():
    events = [{"kind": "fault_injected", "rank": 3, "action": "kill"},
              {"kind": "step_timeout", "rank": 0, "stale_ranks": [2]},
              {"kind": "failure_detected", "rank": 1}]
    assert restart.dead_ranks(events) == {2, 3}


def test_ps_refuses_a_restart_with_the_survivors(tmp_path, capsys):
    code = main(["-n", "6", "--run-dir", str(tmp_path / "r"), "--max-restarts", "1", "--restart-ranks",
                 "survivors", "backend=ps", "backend.servers=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--restart-ranks survivors: backend=ps" in err[0], err


def test_elastic_recovery_runs_under_the_step_watchdog(monkeypatch):
    """Recovery's shrink waits on every live rank, and MPI never reports a hung one: the
    shrink must run inside the watchdog's collective context (as a step does), so that a
    rank hung meanwhile is fenced after step_timeout_s instead of holding it forever."""
    from contextlib import contextmanager

    from pslab.backends import elastic

    class Stop(Exception):
        pass

    class Tr:
        watched = False
        step, epoch, comm, rec = 7, 0, object(), None
        plan = elastic.Plan(None, [0, 1, 2], [[], [], []], [1, 1, 1])

        @contextmanager
        def collective(self, step):
            assert step == self.step
            self.watched = True
            try:
                yield
            finally:
                self.watched = False

    tr = Tr()

    def shrink(comm):
        raise Stop(tr.watched)

    monkeypatch.setattr(elastic, "shrink", shrink)
    with pytest.raises(Stop) as e:
        elastic.recover(tr, RuntimeError("a collective failed"))
    assert e.value.args == (True,) and tr.watched is False


def test_the_job_clock_stops_at_the_detection_that_ended_an_attempt(tmp_path):
    """Attempt 0: ranks start at t0, rank 2 is killed at t0+4, detected at t0+4.5; during
    the teardown rank 3's hazard fires at t0+6. Attempt 1 starts with the job's clock at
    4.5 s (not through the teardown) and only rank 2's fault spent: rank 3's is still due."""
    from pslab.config import load_config

    seen = []

    def run_attempt(cfg, ranks, overrides, adir):
        seen.append(read_job(tmp_path))
        if len(seen) > 1:
            return {"status": "succeeded"}
        t0 = time.time() - 10
        evs = [{"kind": "rank_started", "rank": r, "t": t0 + 0.1 * r} for r in range(4)]
        evs += [{"kind": "training_started", "rank": 0, "t": t0 + 1},
                {"kind": "fault_injected", "rank": 2, "t": t0 + 4, "action": "kill", "fault_id": "hazard-r2"},
                {"kind": "failure_detected", "rank": 1, "t": t0 + 4.5},
                {"kind": "aborting", "rank": 1, "t": t0 + 4.6},
                {"kind": "fault_injected", "rank": 3, "t": t0 + 6, "action": "kill", "fault_id": "hazard-r3"}]
        (adir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
        return {"status": "failed", "faults_injected": 2}

    ov = ["backend=allreduce", "model=lr", "data=synthetic"]
    restart.run_attempts(load_config(ov), 4, ov, tmp_path, run_attempt, 1, "same", lambda: False)
    assert len(seen) == 2 and seen[0]["clock_offset_s"] == 0
    assert seen[1]["fired"] == {"hazard-r2"} and seen[1]["clock_offset_s"] == pytest.approx(4.5, abs=1e-3)
