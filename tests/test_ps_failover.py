"""Parameter-server failover under MPI (issue 5, PS side): every run goes through
`python -m pslab.launch` in a subprocess (the `launch` fixture) and the tests assert on
summary.json and events.jsonl.

Default set (~2 min on 2 busy cores): a fault-free R=2 reference, a killed worker, a
killed server with R=2 (nothing lost: in BSP the replica holds exactly the dead server's
state, so the model ends *identical* to the fault-free run), a hung worker, the
coordinator killed. The rest (hung server, R=1 restore, R=1 without checkpoints, backup
instances) are marked slow."""
from __future__ import annotations

import psutil
import pytest

pytestmark = pytest.mark.mpi

BASE = ("backend=ps", "backend.servers=2", "model=lr", "data=criteo_sample")
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
                           str(DEADLINE), *BASE, "backend.replication=2"], capture_output=True, text=True,
                          timeout=DEADLINE + 60, cwd=ROOT)
    run = Run(d, proc)
    assert run["status"] == "succeeded", run.summary.get("reason")
    return run


def ok(run):
    assert run["status"] == "succeeded", f"{run.summary.get('reason')}\n{run.summary.get('log_tail')}"
    return run


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
    assert run["rows_handed_over"] > 0  # its unfinished rows went to the survivors
    assert run["examples"] >= reference["examples"]  # nothing skipped
    assert abs(run["test_auc"] - reference["test_auc"]) <= 0.01
    assert_recovered(run, f)


def test_kill_server_r2_loses_nothing(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "faults=kill_one_server", deadline=DEADLINE))
    f = fault(run)
    assert f["target_role"] == "server"
    d = detection(run, f)
    assert d["target_role"] == "server"
    assert run["lost_updates"] == 0
    fo = run["failovers"]
    assert len(fo) == 1 and fo[0]["mode"] == "replica"
    assert run["killed_pids_dead"]
    # BSP: the replica applied exactly the dead server's updates, so the run ends with the
    # fault-free model (same AUC to the last digit), which is "no update lost", measured.
    assert run["test_auc"] == pytest.approx(reference["test_auc"], abs=1e-6)
    assert_recovered(run, f)


def test_hang_worker_detected_by_timeout_and_fenced(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=2", "faults=hang_one_worker", deadline=DEADLINE))
    f = fault(run)
    d = detection(run, f)
    assert d["how"] == "timeout"
    # found within the configured timeout (+ one heartbeat period and scheduling slack)
    assert d["t"] - f["t"] <= HB + HB / 4 + 3.0
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
    assert run["lost_updates"] == 0
    assert run["test_auc"] == pytest.approx(reference["test_auc"], abs=1e-6)
    assert_recovered(run, f)


@pytest.mark.slow
def test_kill_server_r1_restores_from_checkpoint(launch, reference):
    run = ok(launch(6, *BASE, "backend.replication=1", "backend.checkpoint_every=5", "faults=kill_one_server",
                    deadline=DEADLINE))
    f = fault(run)
    detection(run, f)
    fo = run["failovers"]
    assert len(fo) == 1 and fo[0]["mode"] == "checkpoint" and fo[0]["manifest"]
    assert run["lost_updates"] > 0
    assert [e for e in run.events("restored_ranges") if e["keys"] > 0]
    assert abs(run["test_auc"] - reference["test_auc"]) <= 0.01
    assert_recovered(run, f)


@pytest.mark.slow
def test_kill_server_r1_without_checkpoints_fails_clearly(launch):
    run = launch(6, *BASE, "backend.replication=1", "faults=kill_one_server", deadline=DEADLINE)
    assert run["status"] == "failed"
    assert "checkpoint_every" in run["reason"] and "replication" in run["reason"]
    assert run["wall_s"] < DEADLINE / 2


@pytest.mark.slow
def test_backup_instance_for_a_straggler_asp(launch):
    common = (*BASE, "backend.consistency=asp", "faults=straggler")
    off = ok(launch(6, *common, deadline=DEADLINE))
    on = ok(launch(6, *common, "backend.backup_workers=true", deadline=DEADLINE))
    assert on["backups_launched"] >= 1 and on.events("backup_launched")
    assert sum(on["backup_wins"].values()) >= 1
    assert on["examples"] == off["examples"]
    assert abs(on["test_auc"] - off["test_auc"]) <= 0.01


@pytest.mark.slow
def test_backup_workers_ignored_in_bsp(launch):
    run = ok(launch(5, "backend=ps", "backend.servers=1", "backend.backup_workers=true", "faults=straggler",
                    deadline=DEADLINE))
    assert run["backups_launched"] == 0 and run.events("backup_unsupported")
