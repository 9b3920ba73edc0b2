"""Ending a job from outside: SIGINT / SIGTERM / SIGHUP to the launcher, a second Ctrl-C,
a SIGKILLed launcher, and ranks that outlive both the launcher and mpirun. Each case runs
`backend=allreduce faults=hang_one_worker` (one rank SIGSTOPped, the others blocked in a
collective: nothing ends by itself before the deadline) and asserts that no process
whose command line names the run is left. Timeouts are generous (a shared 2-core
machine); the only timing asserted is the issue's bound for a SIGKILLed launcher
(deadline + 10 s)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from pslab.launcher.mpi import find_mpirun, mpirun_command
from pslab.launcher.procs import run_processes

pytestmark = pytest.mark.mpi
HUNG = ["backend=allreduce", "faults=hang_one_worker"]


def wait_for(what, timeout: float, step: float = 0.2):
    t_end = time.time() + timeout
    while time.time() < t_end:
        got = what()
        if got:
            return got
        time.sleep(step)
    return what()


def hung_rank(run_dir: Path) -> int | None:
    """The pid of the rank the plan SIGSTOPped, once it is stopped."""
    for p in (run_dir / "ranks").glob("rank-*.events.jsonl"):
        for line in p.read_text().splitlines():
            e = json.loads(line) if line.strip().endswith("}") else {}
            if e.get("kind") == "fault_injected" and e.get("action") == "hang":
                try:
                    if psutil.Process(e["pid"]).status() == psutil.STATUS_STOPPED:
                        return e["pid"]
                except psutil.NoSuchProcess:
                    return None
    return None


def start_hung_run(tmp_path: Path, deadline: float = 120, extra=()) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pslab.launch", "-n", "4", "--run-dir", str(run_dir),
                             "--deadline", str(deadline), *extra, *HUNG], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait_for(lambda: hung_rank(run_dir), timeout=90):
        proc.kill()
        cleanup(run_dir)
        pytest.fail(f"the hang fault did not fire:\n{proc.communicate(timeout=30)[0]}")
    return proc, run_dir


def cleanup(run_dir: Path) -> None:
    """A failed test must not leave its run behind (by pid, found by the run's own tag)."""
    for p in run_processes(run_dir):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def left(run_dir: Path, timeout: float) -> list:
    """Processes of the run still there after `timeout` seconds (zombies do not count)."""
    return wait_for(lambda: not run_processes(run_dir), timeout) or run_processes(run_dir)


def running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)],
                         ids=lambda s: s.name)
def test_a_signal_ends_the_whole_job_with_an_interrupted_summary(tmp_path, sig):
    proc, run_dir = start_hung_run(tmp_path, extra=["--quiet"])
    try:
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 128 + sig, out
        assert left(run_dir, 5) is True
        s = summary(run_dir)
        assert s["status"] == "interrupted" and s["signal"] == sig.name and s["exit_code"] == 128 + sig
        assert sig.name in s["reason"] and s["faults_injected"] == 1
        assert "Traceback" not in out
        assert "ex/s" not in out and "run dir:" not in out  # --quiet: no progress
        assert "interrupted: allreduce/lr n=4" in out
    finally:
        cleanup(run_dir)


def test_a_second_ctrl_c_kills_the_job_at_once(tmp_path):
    proc, run_dir = start_hung_run(tmp_path, extra=["--quiet"])
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130, out
        assert left(run_dir, 10) is True
        assert "SIGINT again: killing the job now" in out and "Traceback" not in out
    finally:
        cleanup(run_dir)


def test_nothing_outlives_a_sigkilled_launcher(tmp_path):
    deadline = 30
    t0 = time.time()
    proc, run_dir = start_hung_run(tmp_path, deadline=deadline)
    try:
        proc.kill()
        proc.communicate(timeout=30)
        # the bound: gone within the deadline plus 10 s of the launch
        assert left(run_dir, max(1.0, t0 + deadline + 10 - time.time())) is True
    finally:
        cleanup(run_dir)


@pytest.mark.slow
def test_ranks_end_themselves_when_launcher_and_mpirun_are_gone(tmp_path):
    """SIGKILL the launcher and mpirun together: no one is left to end the ranks but their
    watchdogs (and the kernel's SIGHUP to an orphaned process group with a stopped member)."""
    proc, run_dir = start_hung_run(tmp_path)
    try:
        mpirun = psutil.Process(proc.pid).children()
        proc.kill()
        for p in mpirun:
            p.kill()
        proc.communicate(timeout=30)
        assert left(run_dir, 30) is True
    finally:
        cleanup(run_dir)


def test_ranks_enforce_the_deadline_without_a_launcher(tmp_path):
    """mpirun run by hand (no launcher): the ranks' watchdogs end the job once
    run.deadline_s has passed (plus their grace), the SIGSTOPped rank included, and
    mpirun exits with them."""
    run_dir = tmp_path / "run"
    cmd, env = mpirun_command(find_mpirun(), 4, [*HUNG, "run.deadline_s=6"], run_dir, None)
    env = {k: v for k, v in env.items() if not k.startswith("PSLAB_LAUNCHER") and k != "PSLAB_DEADLINE_AT"}
    with open(tmp_path / "mpirun.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=90)
            assert left(run_dir, 10) is True
            events = [json.loads(x) for p in (run_dir / "ranks").glob("rank-*.events.jsonl")
                      for x in p.read_text().splitlines() if x.strip()]
            dogs = [e for e in events if e["kind"] == "watchdog"]
            assert dogs and all("deadline passed" in e["reason"] for e in dogs), dogs
            assert any(e["kind"] == "fault_injected" and e["action"] == "hang" for e in events)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            cleanup(run_dir)


@pytest.mark.slow
def test_sigint_ends_the_job_on_every_host(tmp_path):
    """Two emulated hosts (--hosts 2: one PRTE daemon each, started through the rsh agent
    pslab ships): SIGINT to the launcher leaves no rank and no daemon of the run."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pslab.launch", "-n", "4", "--quiet", "--hosts", "2",
                             "--run-dir", str(run_dir), "--deadline", "120", *HUNG], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: hung_rank(run_dir), timeout=90), "the hang fault did not fire"
        daemons = [p for p in psutil.Process(proc.pid).children(recursive=True) if "prted" in " ".join(p.cmdline())]
        assert len(daemons) >= 2
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130 and summary(run_dir)["status"] == "interrupted", out
        assert left(run_dir, 10) is True
        assert wait_for(lambda: not any(running(p) for p in daemons), 10)
        assert summary(run_dir)["hosts"] == {"host0": [0, 2], "host1": [1, 3]}
    finally:
        cleanup(run_dir)
        if proc.poll() is None:
            proc.kill()
