"""The launcher's parts on their own, without MPI: summary.json from hand-made rank
records, the progress line, the sweeps' countdown, the rank watchdog, the signal guard."""
from __future__ import annotations

import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from pslab.config import load_config
from pslab.launcher import watchdog
from pslab.launcher.progress import Countdown, Progress, RunState
from pslab.launcher.signals import SignalGuard
from pslab.launcher.summary import count_failures, exit_code_for, one_line, summarize


def write_records(run_dir, rank: int, events=(), metrics=()) -> None:
    d = run_dir / "ranks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"rank-{rank}.events.jsonl", "a") as f:
        for e in events:
            f.write(json.dumps({"rank": rank, **e}) + "\n")
    with open(d / f"rank-{rank}.metrics.jsonl", "a") as f:
        for m in metrics:
            f.write(json.dumps({"rank": rank, **m}) + "\n")


# ------------------------------------------------------------------ summary.json


def test_status_and_exit_code_always_agree():
    assert [exit_code_for(s) for s in ("succeeded", "failed", "invalid")] == [0, 1, 2]
    assert exit_code_for("interrupted", signal.SIGINT) == 130 and exit_code_for("interrupted", signal.SIGTERM) == 143


def test_a_run_the_launcher_ended_after_rank_0_completed_succeeded_with_exit_code_0(tmp_path):
    cfg = load_config(["backend=allreduce", "faults=hang_one_worker"])
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed", "test_auc": 0.74, "examples": 8000}))
    write_records(tmp_path, 0, [{"kind": "rank_started", "pid": 1, "t": 1.0}])
    s = summarize(tmp_path, cfg, 4, -15, 12.0, note="ended by the launcher after rank 0 completed")
    assert (s["status"], s["exit_code"], s["mpirun_exit_code"]) == ("succeeded", 0, -15)
    assert "rank 0 completed" in s["note"] and "reason" not in s
    assert json.loads((tmp_path / "summary.json").read_text())["exit_code"] == 0


def test_an_interrupted_run_names_the_signal(tmp_path):
    cfg = load_config(["backend=allreduce"])
    s = summarize(tmp_path, cfg, 4, -15, 7.5, signum=signal.SIGTERM)
    assert (s["status"], s["exit_code"], s["signal"]) == ("interrupted", 143, "SIGTERM")
    assert "SIGTERM" in s["reason"]


def test_mpirun_failing_before_any_rank_is_explained_from_its_log(tmp_path):
    box = "-" * 60
    (tmp_path / "mpirun.log").write_text(f"mpirun -n 2 ...\n{box}\nOpen MPI was unable to open the hostfile:\n"
                                         f"    /x/hosts.txt\n{box}\n")
    s = summarize(tmp_path, load_config([]), 2, 250, 0.2)
    assert s["status"] == "failed" and s["exit_code"] == 1 and s["mpirun_exit_code"] == 250
    assert "before any rank started: Open MPI was unable to open the hostfile: /x/hosts.txt" in s["reason"]


def test_kill_coordinator_counts_the_failure_the_survivors_saw():
    """A dead PS coordinator records nothing; its survivors record peer_failed."""
    events = [{"kind": "fault_injected", "rank": 0, "action": "kill", "t": 1.0}] + \
             [{"kind": "peer_failed", "rank": r, "peer": 0, "peer_role": "coordinator", "t": 1.5} for r in (1, 2, 3)]
    assert count_failures(events) == 1
    events.append({"kind": "peer_failed", "rank": 1, "peer": 3, "t": 2.0})
    assert count_failures(events) == 2


def test_backup_workers_without_a_backup_or_a_reason_is_noted(tmp_path):
    cfg = load_config(["backend=ps", "backend.consistency=ssp", "backend.backup_workers=true", "faults=straggler"])
    write_records(tmp_path, 3, [{"kind": "fault_injected", "action": "slow", "factor": 3, "t": 1.0}])
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed"}))
    s = summarize(tmp_path, cfg, 5, 0, 10.0)
    assert "no backup instance was launched" in s["backup_note"] and "ssp" in s["backup_note"]
    write_records(tmp_path, 0, [{"kind": "backup_launched", "t": 2.0}])
    assert "backup_note" not in summarize(tmp_path, cfg, 5, 0, 10.0)


def test_messages_reach_the_terminal_as_one_printable_line():
    assert one_line("a\n  b\x00c\x1b[2J") == "a b\\x00c\\x1b[2J"
    assert len(one_line("x" * 5000, 100)) == 100


# ------------------------------------------------------------------ progress


def hung_allreduce_records(run_dir, t0: float) -> None:
    for r in range(4):
        write_records(run_dir, r, [{"kind": "rank_started", "pid": os.getpid(), "host": socket.gethostname(),
                                    "created": psutil.Process().create_time(), "t": t0 + 1},
                                   {"kind": "plan", "planned_steps": 312, "t": t0 + 2}],
                      [{"kind": "step", "step": 20, "epoch": 0, "examples": 5120, "loss": 0.5, "bytes_sent": 10**6,
                        "t": t0 + 3},
                       {"kind": "step", "step": 40, "epoch": 0, "examples": 10240, "loss": 0.4, "bytes_sent": 2 * 10**6,
                        "t": t0 + 4}])
    write_records(run_dir, 3, [{"kind": "fault_injected", "action": "hang", "t": t0 + 4.5}])


def test_the_progress_line_says_what_the_ranks_recorded(tmp_path):
    t0 = 1000.0
    hung_allreduce_records(tmp_path, t0)
    state = RunState(tmp_path, 4, "allreduce", 1, t0)
    state.poll()
    line = state.line(t0 + 6)
    for part in ("[pslab] 0:06", "epoch 1/1 step 40/312", "ex/s", "loss 0.4000", "sent 8.0 MB", "ranks 4/4",
                 "last: hang rank 3 @4s"):
        assert part in line, line
    assert "1.7k ex/s" in line  # (10240 - 5120) examples from the first record (t0+3) to now (t0+6)
    stalled = state.line(t0 + 30)
    assert "no step for 26s" in stalled and "0 ex/s" in stalled  # nothing new for 10 s: the rate falls to 0


def test_ps_workers_examples_add_up(tmp_path):
    t0 = 1000.0
    for r, ex in ((2, 1000), (3, 3000)):
        write_records(tmp_path, r, metrics=[{"kind": "step", "step": 5, "epoch": 0, "examples": ex, "t": t0 + 1}])
    write_records(tmp_path, 1, metrics=[{"kind": "step", "step": 5, "bytes_sent": 700, "t": t0 + 1}])  # a server
    state = RunState(tmp_path, 4, "ps", 1, t0)
    state.poll()
    assert state.examples() == 4000 and "sent 700 B" in state.line(t0 + 2)


def test_progress_redraws_in_place_on_a_terminal_and_prints_lines_when_piped(tmp_path):
    t0 = time.time() - 5
    hung_allreduce_records(tmp_path, t0)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        view = Progress(RunState(tmp_path, 4, "allreduce", 1, t0), stream)
        for k in range(3):
            view.tick(time.time() + 10 * (k + 1))
        view.close()
    # three ticks, then close() shows the final state once more (a run shorter than one
    # interval shows at least that line)
    assert tty.getvalue().count("\r") == 4 and tty.getvalue().count("\x1b[K") == 4
    assert tty.getvalue().endswith("\n") and tty.getvalue().count("\n") == 1
    assert pipe.getvalue().count("\n") == 4 and "\r" not in pipe.getvalue()
    assert all("ex/s" in line for line in pipe.getvalue().splitlines())
    short = io.StringIO()
    Progress(RunState(tmp_path, 4, "allreduce", 1, t0), short).close()
    assert short.getvalue().count("\n") == 1 and "ex/s" in short.getvalue()


def test_the_sweep_countdown():
    c = Countdown(3)
    assert c.tick().startswith("1/3, ETA ")
    c.tick()
    assert c.tick() == "3/3, done"


# ------------------------------------------------------------------ the ranks' watchdog


class FakeRec:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.events = []

    def event(self, kind, sync=False, **fields):
        self.events.append({"kind": kind, **fields})


# A launcher -> mpirun -> rank tree of three small processes; the rank prints what its
# watchdog says, the test kills one of the others.
TREE = """
import os, subprocess, sys, time
role = sys.argv[1]
if role == "launcher":
    env = dict(os.environ, PSLAB_LAUNCHER_PID=str(os.getpid()), PSLAB_DEADLINE_AT=str(time.time() + 600))
    subprocess.Popen([sys.executable, __file__, "mpirun"], env=env).wait()
elif role == "mpirun":
    subprocess.Popen([sys.executable, __file__, "rank"]).wait()
else:
    from pslab.launcher import watchdog
    dog = watchdog.Watchdog(None, 600)
    print("watching", dog.launcher, dog.parent, flush=True)
    while not dog.reason(time.time()):
        time.sleep(0.1)
    print(dog.reason(time.time()), flush=True)
"""


def lines_of(proc) -> queue.Queue:
    """proc's output lines, read by a thread, so that a test waits for one with a timeout."""
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout], daemon=True).start()
    return q


@pytest.mark.parametrize("victim", ["launcher", "mpirun"])
def test_the_watchdog_sees_the_launcher_or_mpirun_go(tmp_path, victim):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    launcher = subprocess.Popen([sys.executable, str(script), "launcher"], stdout=subprocess.PIPE, text=True)
    out = lines_of(launcher)
    tree = []
    try:
        first = out.get(timeout=60).split()
        tree = [launcher.pid, *(p.pid for p in psutil.Process(launcher.pid).children(recursive=True))]
        mpirun = int(first[2])
        assert first == ["watching", str(launcher.pid), str(mpirun)]
        os.kill(launcher.pid if victim == "launcher" else mpirun, signal.SIGKILL)
        said = out.get(timeout=30)
        assert said.startswith("the launcher" if victim == "launcher" else "mpirun") and "is gone" in said
    finally:
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait(timeout=10)


def test_the_watchdog_enforces_the_deadline(tmp_path):
    dog = watchdog.Watchdog(FakeRec(tmp_path), 100, {})  # no launcher: run.deadline_s from now
    assert dog.launcher is None and dog.reason(time.time()) is None
    assert "deadline passed" in dog.reason(time.time() + 100 + watchdog.GRACE_S + 1)
    at = time.time() + 5
    dog = watchdog.Watchdog(FakeRec(tmp_path), 100, {watchdog.ENV_DEADLINE: repr(at)})  # the launcher's wins
    assert dog.reason(at + watchdog.GRACE_S - 1) is None and dog.reason(at + watchdog.GRACE_S + 1)


def test_the_watchdog_kills_its_peers_by_pid_a_stopped_one_too(tmp_path):
    peers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        os.kill(peers[0].pid, signal.SIGSTOP)
        for r, p in enumerate(peers, start=1):
            write_records(tmp_path, r, [{"kind": "rank_started", "pid": p.pid, "host": socket.gethostname(),
                                         "created": psutil.Process(p.pid).create_time()}])
        # a record whose pid is alive but was reused by another process: never hit
        bystander = subprocess.Popen(["sleep", "60"])
        write_records(tmp_path, 3, [{"kind": "rank_started", "pid": bystander.pid, "host": socket.gethostname(),
                                     "created": 12345.0}])
        # the watchdog SIGKILLs itself last: run it in a process of its own
        code = ("import sys; from pathlib import Path; from pslab.launcher import watchdog\n"
                "class R:\n    run_dir = Path(sys.argv[1])\n    def event(self, *a, **k): pass\n"
                "watchdog.Watchdog(R(), 100).end_job('test')\n")
        child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
        assert child.returncode == -signal.SIGKILL
        for p in peers:
            assert p.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for p in [*peers, bystander]:
            p.kill()
            p.wait(timeout=10)


# ------------------------------------------------------------------ signals


def test_the_signal_guard_notes_a_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
