"""Exactly-once under a fault at every point of the PS protocol (slow: CI runs it after
`make test`). Each case launches a real run, kills or hangs a worker or a server at one
point inside a step, and asserts on the run's own counts: every planned row applied
exactly once in every key range (rows_applied == rows_applied_max == planned), nothing
acknowledged and then lost, in BSP, SSP and ASP."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

ROWS = 8000  # the Criteo sample's training rows
DEADLINE = 150
BASE = ("backend=ps", "model=lr", "data=criteo_sample", "faults=kill_one_worker")
MODES = {"bsp": (), "ssp": ("backend.consistency=ssp", "backend.staleness=2"), "asp": ("backend.consistency=asp",)}


def exactly_once(run):
    s = run.summary
    assert s["status"] == "succeeded", f"{s.get('reason')}\n{s.get('log_tail')}"
    assert s["faults_injected"] >= 1 and s["failures_detected"] >= 1
    assert (s["rows_applied"], s["rows_applied_max"], s["examples"]) == (ROWS, ROWS, ROWS), \
        "a batch lost or applied twice"
    assert s["lost_updates"] == 0


def event(action, role, index, step, point=None):
    at = f"step:{step}" + (f",point:{point}" if point else "")
    return f"{{action:{action},target:{{role:{role},index:{index}}},at:{{{at}}}}}"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("action", ["kill", "hang"])
@pytest.mark.parametrize("point", ["before_push", "mid_push", "after_push"])
def test_a_worker_dying_inside_its_push(launch, mode, action, point):
    run = launch(6, *BASE, "backend.servers=2", *MODES[mode], f"faults.events=[{event(action, 'worker', -1, 12, point)}]",
                 deadline=DEADLINE)
    exactly_once(run)
    assert run["rows_handed_over"] > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_a_worker_dying_as_it_takes_a_hand_over(launch, mode):
    # worker 2 dies at step 10; worker 0 dies the moment it is handed some of its batches
    evs = f"faults.events=[{event('kill', 'worker', 2, 10)},{event('kill', 'worker', 0, 1, 'handover')}]"
    run = launch(7, *BASE, "backend.servers=2", *MODES[mode], evs, deadline=DEADLINE)
    exactly_once(run)
    assert run["failures_detected"] == 2


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("point", ["before_forward", "mid_forward", "after_forward"])
def test_a_primary_dying_inside_a_forwarded_update(launch, mode, point):
    # 3 servers, R=3: a primary forwards each update to two backups (mid_forward: to one of them)
    run = launch(7, *BASE, "backend.servers=3", "backend.replication=3", *MODES[mode],
                 f"faults.events=[{event('kill', 'server', 0, 12, point)}]", deadline=DEADLINE)
    exactly_once(run)
    fo = run["failovers"]
    assert len(fo) == 1 and fo[0]["promoted"] and not fo[0]["lost"]
    assert run["replicas_identical"] is True  # the promoted primary re-synced its other backup


@pytest.mark.parametrize("mode", ["ssp", "asp"])
def test_checkpoint_kill_resume_reapplies_nothing_and_loses_nothing(launch, mode):
    first = launch(6, "backend=ps", "backend.servers=2", "model=lr", "data=criteo_sample", *MODES[mode],
                   "backend.checkpoint_every=6", "faults=kill_coordinator", "faults.events.0.at.progress=0.7",
                   deadline=DEADLINE)
    assert first["status"] == "failed" and first.dir.joinpath("checkpoints", "LATEST").exists()
    resumed = launch(6, "backend=ps", "backend.servers=2", "model=lr", "data=criteo_sample", *MODES[mode],
                     f"backend.resume_from={first.dir}", deadline=DEADLINE)
    s = resumed.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["start_clock"] > 0
    # the cut holds exactly the clocks before it: the resumed run applies the rest once
    assert (s["rows_applied"], s["rows_applied_max"]) == (ROWS, ROWS)
    assert s["duplicates_dropped"] == 0 and s["lost_updates"] == 0
