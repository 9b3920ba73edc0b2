"""Parameter-server failover under MPI: every run goes through `python -m pslab.launch` in a
subprocess (the `launch` fixture) and the tests assert on summary.json and events.jsonl.

"Nothing lost, nothing doubled" is asserted on the run's own counts, never on AUC alone
(dropping 29% of the Criteo sample's rows moves its test AUC by 0.004, a doubled batch by
0.0003): rows_applied (each key range counts the rows it absorbed) must equal the planned
rows exactly, lost_updates is measured from what the servers acknowledged, and with R = 2
in BSP a server's death must leave the final weights equal to the fault-free run's.

Default set: a fault-free R=2 reference, a killed worker, a killed server with R=2, a
hung worker, the coordinator killed. The rest (hung server, R=1 restore, R=1 without
checkpoints, backup instances, two server failures, the fault-point matrix) are marked
slow and run in CI after the default set."""
from __future__ import annotations

import json

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.mpi

BASE = ("backend=ps", "backend.servers=2", "model=lr", "data=criteo_sample")
ROWS = 8000  # the Criteo sample's training rows: one epoch
DEADLINE = 150
HB = 5.0  # backend.heartbeat_timeout_s (the default)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The fault-free run with the same layout (R = 2)."""
    import subprocess
    import sys

    from conftest import ROOT, Run

    d = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.run([sys.executable, "-m", "pslab.launch", "-n", "6", "--run-dir", str(d), "--deadline",
                           str(DEADLINE), *BASE, "backend.replication=2", "run.save_model=true"], capture_output=True, text=True,
                          timeout=DEADLINE + 60, cwd=ROOT)
    run = Run(d, proc)
    assert run["status"] == "succeeded", run.summary.get("reason")
    return run


def ok(run):
    assert run["status"] == "succeeded", f"{run.summary.get('reason')}\n{run.summary.get('log_tail')}"
    return run


def exactly_once(run, rows: int = ROWS):
    """Every planned row applied once in every key range, none acknowledged and lost."""
    assert run["rows_applied"] == rows and run["rows_applied_max"] == rows, \
        (run["rows_applied"], run["rows_applied_max"], "lost or doubled batches?")
    assert run["examples"] == rows and run["lost_updates"] == 0


def fault(run) -> dict:
    f = run.events("fault_injected")
    assert len(f) >= 1 and run["faults_injected"] >= 1
    return f[0]


def detection(run, f) -> dict:
    det = [e for e in run.events("failure_detected") if e.get("failed_rank") == f["rank"]]
    assert det, "the failure was not detected"
    return det[0]


def pid_dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_recovered(run, f):
    rec = [e for e in run.events("recovered") if e.get("failed_rank") == f["rank"]]
    assert rec and rec[0]["t"] >= f["t"], "no recovery recorded after the fault"
    assert run["recovery_s"] and all(x is not None and x >= 0 for x in run["recovery_s"])
    assert run["recovery_s_reported"]


def test_kill_worker(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "faults=kill_one_worker", deadline=DEADLINE))
    f = fault(run)
    assert f["target_role"] == "worker" and f["action"] == "kill"
    d = detection(run, f)
    assert d["target_role"] == "worker" and d["how"] in ("ulfm", "timeout")
    assert run["failures_detected"] >= 1
    assert run["ranks_alive_end"] == 5
    assert run["killed_pids_dead"] and pid_dead(f["pid"])
    assert run["rows_handed_over"] > 0  # its unfinished batches went to the survivors
    exactly_once(run)
    assert abs(run["test_auc"] - reference["test_auc"]) <= 0.01
    assert_recovered(run, f)


def test_kill_server_r2_loses_nothing(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "run.save_model=true", "faults=kill_one_server",
                    deadline=DEADLINE))
    f = fault(run)
    assert f["target_role"] == "server"
    d = detection(run, f)
    assert d["target_role"] == "server"
    exactly_once(run)
    fo = run["failovers"]
    assert len(fo) == 1 and fo[0]["promoted"] and not fo[0]["lost"]
    assert run["killed_pids_dead"]
    # BSP: the backups held exactly the dead server's state, so the run ends with the
    # fault-free model, weight for weight.
    (k, W), (k0, W0) = run.model(), reference.model()
    assert (k == k0).all() and np.array_equal(W, W0)
    assert_recovered(run, f)


def test_hang_worker_detected_by_timeout_and_fenced(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "faults=hang_one_worker", deadline=DEADLINE))
    f = fault(run)
    d = detection(run, f)
    assert d["how"] == "timeout"
    # found within the configured timeout (+ one heartbeat period and scheduling slack)
    assert d["t"] - f["t"] <= HB + HB / 4 + 3.0
    exactly_once(run)
    assert abs(run["test_auc"] - reference["test_auc"]) <= 0.01
    assert run["ranks_alive_end"] == 5 and run["killed_pids_dead"]
    assert_recovered(run, f)


def test_kill_coordinator_fails_cleanly(launch):
    run = launch(6, *BASE, "faults=kill_coordinator", deadline=DEADLINE)
    assert run["status"] == "failed"
    assert "coordinator" in run["reason"]
    assert run["wall_s"] < DEADLINE / 2  # well before the deadline
    assert run["killed_pids_dead"] and not run["rank_pids_alive"]


@pytest.mark.slow
def test_hang_server_r2(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "faults=hang_one_server", deadline=DEADLINE))
    f = fault(run)
    d = detection(run, f)
    assert d["how"] == "timeout" and d["target_role"] == "server"
    assert d["t"] - f["t"] <= HB + HB / 4 + 3.0
    exactly_once(run)
    assert run["test_auc"] == pytest.approx(reference["test_auc"], abs=1e-6)
    assert_recovered(run, f)


@pytest.mark.slow
def test_kill_server_r1_restores_from_checkpoint(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=1", "backend.checkpoint_every=5", "faults=kill_one_server",
                    deadline=DEADLINE))
    f = fault(run)
    detection(run, f)
    fo = run["failovers"]
    assert len(fo) == 1 and fo[0]["lost"] and fo[0]["manifest"]
    # what the dead server acknowledged after the checkpoint is gone, and counted
    assert run["lost_updates"] > 0 and run["rows_applied"] == ROWS - run["lost_updates"]
    assert run["rows_applied_max"] == ROWS  # the ranges that kept their server lost nothing
    assert [e for e in run.events("restored_ranges") if e["keys"] > 0]
    assert abs(run["test_auc"] - reference["test_auc"]) <= 0.01
    assert_recovered(run, f)


@pytest.mark.slow
def test_kill_server_r1_without_checkpoints_fails_clearly(launch):
    run = launch(6, *BASE, "backend.replication=1", "faults=kill_one_server", deadline=DEADLINE)
    assert run["status"] == "failed"
    assert "checkpoint_every" in run["reason"] and "replication" in run["reason"] and "no other copy" in run["reason"]
    assert run["wall_s"] < DEADLINE / 2


@pytest.mark.slow
def test_backup_instance_for_a_straggler_asp(launch):
    common = (*BASE, "backend.consistency=asp", "faults=straggler")
    off = ok(launch(6, *common, deadline=DEADLINE))
    on = ok(launch(6, *common, "backend.backup_workers=true", deadline=DEADLINE))
    assert on["backups_launched"] >= 1 and on.events("backup_launched")
    assert sum(on["backup_wins"].values()) >= 1
    exactly_once(on)  # both copies pushed under the same batch ids: each applied once
    assert on["duplicates_dropped"] > 0
    exactly_once(off)
    assert abs(on["test_auc"] - off["test_auc"]) <= 0.01


@pytest.mark.slow
def test_backup_workers_ignored_in_bsp(launch):
    run = ok(launch(5, "backend=ps", "backend.servers=1", "backend.backup_workers=true", "faults=straggler",
                    deadline=DEADLINE))
    assert run["backups_launched"] == 0 and run.events("backup_unsupported")


@pytest.mark.slow
@pytest.mark.parametrize("servers,steps", [(3, (10, 25)), (4, (15, 15))], ids=["3-servers-apart", "4-servers-at-once"])
def test_two_server_kills_r2_without_checkpoints(launch, servers, steps):
    # servers 0 and 2: one after the other (3 servers), or at once (4 servers, where they
    # share no range: ranges sit on neighbours 0-1, 1-2, 2-3, 3-0)
    ev = (f"faults.events=[{{action:kill,target:{{role:server,index:0}},at:{{step:{steps[0]}}}}},"
          f"{{action:kill,target:{{role:server,index:2}},at:{{step:{steps[1]}}}}}]")
    run = ok(launch(4 + servers, "backend=ps", f"backend.servers={servers}", "backend.replication=2", "model=lr",
                    "data=criteo_sample", "faults=kill_one_server", ev, deadline=DEADLINE))
    assert run["failures_detected"] == 2 and len(run["failovers"]) == 2
    exactly_once(run)
    assert len(run["rereplications"]) >= 2  # the ranges got their second copy back
    assert all(r["bytes"] > 0 and r["time_s"] >= 0 for r in run["rereplications"])


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", [True, False])
def test_two_kills_of_the_same_range_at_once(launch, checkpoints):
    # (step 17: two clocks after the checkpoint at 15, whose updates are then lost)
    ev = ("faults.events=[{action:kill,target:{role:server,index:0},at:{step:17}},"
          "{action:kill,target:{role:server,index:1},at:{step:17}}]")
    extra = ("backend.checkpoint_every=5",) if checkpoints else ()
    run = launch(8, "backend=ps", "backend.servers=4", "backend.replication=2", "model=lr", "data=criteo_sample",
                 "faults=kill_one_server", ev, *extra, deadline=DEADLINE)
    if checkpoints:
        ok(run)
        assert run["lost_updates"] > 0 and run["rows_applied"] == ROWS - run["lost_updates"]
        assert any(f["lost"] for f in run["failovers"])
    else:
        assert run["status"] == "failed" and "no other copy" in run["reason"]
        assert run["wall_s"] < DEADLINE / 2


@pytest.mark.slow
def test_a_straggler_whose_step_outlasts_the_heartbeat_timeout_is_not_fenced(launch):
    # heartbeat timeout 1 s; from step 28 on, worker 0's steps take 1000x as long (seconds
    # each): its heartbeat thread beats through them, so it is slow, not dead
    slow = "faults.events=[{action:slow,target:{role:worker,index:0},at:{step:28},factor:1000}]"
    run = ok(launch(5, "backend=ps", "backend.servers=1", "model=lr", "data=criteo_sample", "faults=straggler", slow,
                    "backend.heartbeat_timeout_s=1", "backend.request_timeout_s=60", "train.log_every=1",
                    deadline=DEADLINE))
    recs = [json.loads(x) for x in (run.dir / "ranks" / "rank-2.metrics.jsonl").read_text().splitlines()]
    t = sorted(r["t"] for r in recs if r.get("kind") == "step")
    assert max(np.diff(t)) >= 3 * 1.0  # one step of worker 0 took longer than three heartbeat timeouts
    assert run["failures_detected"] == 0 and not run.events("fenced") and not run.events("failure_detected")
    exactly_once(run)


@pytest.mark.slow
def test_backup_workers_under_ssp_say_why_none_started(launch):
    run = ok(launch(6, "backend=ps", "backend.servers=1", "backend.consistency=ssp", "backend.staleness=2",
                    "backend.backup_workers=true", "faults=straggler", deadline=DEADLINE))
    (e,) = run.events("backup_not_launched")[:1]
    assert "staleness" in e["reason"] and run["backups_launched"] == 0
    assert "staleness" in run["backup_note"]
    exactly_once(run)
