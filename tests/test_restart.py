"""Checkpoint-restart under mpirun: the launcher's --max-restarts relaunches a failed job
from its latest checkpoint, the step watchdog ends a hung collective, and every summary
carries ETTR. Each test runs the launcher in a subprocess with a deadline and asserts on
the records (summary.json, events.jsonl), never on stdout.

    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 faults=kill_one_worker
"""
from __future__ import annotations

import json

import psutil
import pytest

pytestmark = pytest.mark.mpi

AR = ("backend=allreduce", "model=lr", "data=criteo_sample")
DEADLINE = 240


def attempt_events(run, i: int, kind: str) -> list[dict]:
    return [e for e in run.events(kind) if e.get("attempt") == i]


def assert_all_gone(run):
    """No process of any attempt outlived the job (a SIGSTOPped rank included)."""
    pids = [e["pid"] for e in run.events("rank_started")]
    assert pids and not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                         and any(str(run.dir) in a for a in psutil.Process(p).cmdline())]


def test_kill_restart_resumes_at_the_checkpoint_and_ends_with_the_fault_free_model(launch):
    base = launch(4, *AR, deadline=DEADLINE)
    assert base["status"] == "succeeded" and base["attempts"] == 1
    assert base["ettr"] > 0.9 and base["restart_s"] == base["redone_s"] == 0
    run = launch(4, "--max-restarts", "2", *AR, "backend.checkpoint_every=10", "faults=kill_one_worker",
                 deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 2 and [a["status"] for a in s["attempt_list"]] == ["failed", "succeeded"]
    # the second attempt started from the checkpoint of step 10, not from 0
    assert s["attempt_list"][1]["start_step"] == 10 and s["start_step"] == 10
    assert s["attempt_list"][1]["resume_from"].endswith("attempts/0/checkpoints/step-00000010/manifest.json")
    assert {e["step"] for e in attempt_events(run, 1, "resume")} == {10}
    # same ranks, same data position, no random stream: the very same model
    assert s["model_digest"] == base["model_digest"] and abs(s["test_auc"] - base["test_auc"]) < 1e-9
    assert s["rows_applied"] == s["rows_planned"] == base["rows_applied"]
    # the kill fired in attempt 0 only, and the killed rank is gone
    assert [f["attempt"] for f in s["injected"]] == [0] and s["faults_injected"] == 1
    assert not attempt_events(run, 1, "fault_injected")
    assert s["killed_pids_dead"] and s["rank_pids_alive"] == []
    # goodput: redone work since step 10, a restart, and the parts add up to the job's wall
    assert 0 < s["ettr"] < 1 and s["restart_s"] > 0 and s["redone_s"] > 0 and s["checkpoint_s"] > 0
    parts = sum(s[k] for k in ("productive_s", "checkpoint_s", "redone_s", "detect_s", "restart_s", "pause_s"))
    assert parts == pytest.approx(s["job_wall_s"], abs=0.02)
    for name in ("events.jsonl", "metrics.jsonl", "result.json", "job.json"):
        assert (run.dir / name).exists(), name
    for i in (0, 1):
        assert json.loads((run.dir / "attempts" / str(i) / "summary.json").read_text())["status"] == \
            ("failed", "succeeded")[i]
    assert_all_gone(run)


@pytest.mark.slow
def test_hang_is_ended_by_the_step_watchdog_within_its_timeout_and_restarted(launch):
    run = launch(4, "--max-restarts", "2", *AR, "backend.checkpoint_every=10", "backend.step_timeout_s=10",
                 "faults=hang_one_worker", deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 2 and s["attempt_list"][1]["start_step"] == 10
    hang = attempt_events(run, 0, "fault_injected")[0]
    timeouts = attempt_events(run, 0, "step_timeout")
    assert timeouts and 3 in timeouts[0]["stale_ranks"]
    first = min(e["t"] for e in timeouts)
    # the watchdog acted step_timeout_s after its rank entered step 17's collective (a little
    # before the hung rank, done with step 16, recorded its fault), and not much later
    assert 10 - 1 <= first - hang["t"] <= 10 + 3
    assert s["attempt_list"][0]["t_end"] - hang["t"] <= 10 + 10  # and the attempt was over a few s after
    assert 10 - 1 <= s["detect_s"] <= 10 + 3
    assert s["killed_pids_dead"] and s["rank_pids_alive"] == []
    assert_all_gone(run)


@pytest.mark.slow
def test_restart_with_the_survivors_splits_the_batch_over_three(launch):
    run = launch(4, "--max-restarts", "1", "--restart-ranks", "survivors", *AR, "backend.checkpoint_every=10",
                 "faults=kill_one_worker", deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert [a["ranks"] for a in s["attempt_list"]] == [4, 3] and s["ranks_alive_end"] == 3
    assert s["attempt_list"][1]["start_step"] == 10
    assert s["rows_applied"] == s["rows_planned"] == 8000  # every row once: 256 = 86 + 85 + 85 a step
    assert s["test_auc"] > 0.73


@pytest.mark.slow
def test_ps_coordinator_death_is_survived_by_a_restart(launch):
    run = launch(6, "--max-restarts", "1", "backend=ps", "backend.servers=2", "backend.checkpoint_every=10",
                 "model=lr", "data=criteo_sample", "faults=kill_coordinator", deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 2 and s["attempt_list"][1]["start_step"] == 10
    assert s["rows_applied"] == s["rows_applied_max"] == s["rows_planned"]
    assert s["lost_updates"] == 0 and 0 < s["ettr"] < 1
    assert not attempt_events(run, 1, "fault_injected")


@pytest.mark.slow
def test_elastic_fences_a_hung_rank_and_shrinks(launch):
    run = launch(4, *AR, "backend.elastic=true", "backend.step_timeout_s=6", "faults=hang_one_worker",
                 deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 1 and s["ranks_alive_end"] == 3 and s["rows_applied"] == s["rows_planned"]
    assert {3} == {r for e in run.events("fenced") for r in e["ranks"]}
    assert s["killed_pids_dead"] and 6 <= s["detect_s"] <= 9 and s["pause_s"] > 0
    assert 0 < s["ettr"] < 1


@pytest.mark.slow
def test_elastic_survives_a_kill_and_a_hang_at_the_same_step(launch):
    """Rank 1 killed and rank 2 SIGSTOPped at the same step: the next collective waits on
    rank 2, which MPI never reports; the step watchdog fences both stale ranks and one
    shrink takes them out, and the job goes on with two ranks, well before its deadline.
    (A hang that starts during the shrink itself: test_restart_parts, recovery is watched.)"""
    ev = ("faults.events=[{action:kill,target:{role:worker,index:1},at:{step:20}},"
          "{action:hang,target:{role:worker,index:2},at:{step:20}}]")
    run = launch(4, *AR, "backend.elastic=true", "backend.step_timeout_s=6", ev, deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 1 and s["ranks_alive_end"] == 2 and s["rows_applied"] == s["rows_planned"]
    assert 2 in {r for e in run.events("fenced") for r in e["ranks"]}
    assert s["wall_s"] < DEADLINE / 2
    assert_all_gone(run)


@pytest.mark.slow
@pytest.mark.parametrize("n, args", [(1, ("backend=local",)),
                                     (4, AR + ("backend.elastic=true",)),
                                     (5, ("backend=ps", "backend.servers=2"))])
def test_fault_free_runs_report_ettr_above_point_nine(launch, n, args):
    run = launch(n, *args, deadline=DEADLINE)
    assert run["status"] == "succeeded" and run["attempts"] == 1
    assert run["ettr"] > 0.9 and run["startup_s"] > 0 and run["job_wall_s"] > 0


@pytest.mark.slow
def test_elastic_job_survives_the_death_of_rank_zero_by_a_restart(launch):
    run = launch(4, "--max-restarts", "1", *AR, "backend.elastic=true", "backend.checkpoint_every=10",
                 "faults=kill_coordinator", deadline=DEADLINE)
    s = run.summary
    assert s["status"] == "succeeded", s.get("reason")
    assert s["attempts"] == 2 and s["attempt_list"][1]["start_step"] == 10
    assert "world rank 0" in s["attempt_list"][0]["reason"]
    assert s["rows_applied"] == s["rows_planned"] and s["faults_injected"] == 1
