"""In every rank: end the job when nobody else will.

The launcher ends the job at its deadline, on a signal, or once rank 0 is done. When the
launcher itself is gone (SIGKILLed, its terminal's session closed) or never was (mpirun
run by hand), nothing would: a hung rank blocks the others' collectives and
MPI_Finalize forever, and they would train or spin on as orphans. So each rank runs a
thread that, once a second, checks

- the deadline: the launcher's (PSLAB_DEADLINE_AT, absolute), else run.deadline_s from
  the rank's start, plus GRACE_S for the launcher to act first;
- its parent, the MPI daemon that started it (mpirun, or prted on another host): a rank
  re-parented (to init) has lost it;
- the launcher (PSLAB_LAUNCHER_PID), when it is the parent of this rank's mpirun: gone
  once mpirun is re-parented. Watching the process tree needs no pid-reuse guard.

When one fails, the rank records a `watchdog` event, SIGKILLs the other ranks of the run
on its host (a SIGSTOPped rank cannot end itself; each is found by the pid and start time
in its `rank_started` record, so a reused pid is never hit), then itself. Only the
watchdog thread does this; it makes no MPI call.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil

ENV_PID = "PSLAB_LAUNCHER_PID"
ENV_DEADLINE = "PSLAB_DEADLINE_AT"
GRACE_S = 4.0    # after the deadline, the launcher's turn (it ends the job 1.5 s before)
PERIOD_S = 1.0
# Start times are compared loosely: each process computes them from the boot time, which
# Linux gives in whole seconds, recomputed from a wall clock that NTP may adjust. A pid
# reused that soon after a rank of a running job started is not a risk.
CREATED_TOLERANCE_S = 1.5


def launcher_env(deadline_at: float) -> dict[str, str]:
    """What the launcher puts in mpirun's environment (every rank inherits it)."""
    return {ENV_PID: str(os.getpid()), ENV_DEADLINE: repr(float(deadline_at))}


def same_process(pid: int, created: float) -> bool:
    """Is `pid` still the live process that started at `created`?"""
    try:
        p = psutil.Process(int(pid))
        return abs(p.create_time() - float(created)) < CREATED_TOLERANCE_S and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, TypeError):
        return False


def parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


class Watchdog(threading.Thread):
    def __init__(self, rec, deadline_s: float, env=os.environ):
        super().__init__(name="pslab-watchdog", daemon=True)
        self.rec = rec
        self.host = os.environ.get("PSLAB_HOST") or socket.gethostname()  # an emulated host's own name
        self.deadline_at = float(env.get(ENV_DEADLINE) or (time.time() + float(deadline_s)))
        self.parent = os.getppid()
        launcher = int(env[ENV_PID]) if env.get(ENV_PID) else None
        # on another host (or under a hand-made mpirun) mpirun's parent is not the launcher
        self.launcher = launcher if launcher is not None and parent_of(self.parent) == launcher else None
        self.done = threading.Event()

    def reason(self, now: float) -> str | None:
        if now > self.deadline_at + GRACE_S:
            return f"deadline passed {now - self.deadline_at:.1f} s ago and the job is still running"
        if os.getppid() != self.parent:
            return f"mpirun (parent pid {self.parent}) is gone"
        if self.launcher is not None and parent_of(self.parent) != self.launcher:
            return f"the launcher (pid {self.launcher}) is gone"
        return None

    def run(self) -> None:
        while not self.done.wait(PERIOD_S):
            why = self.reason(time.time())
            if why:
                self.end_job(why)

    def stop(self) -> None:
        self.done.set()

    def end_job(self, why: str) -> None:
        try:
            self.rec.event("watchdog", sync=True, reason=why, action="SIGKILL the run's ranks on this host")
        except (ValueError, OSError):
            pass  # the recorder is closed: this rank is past its records; end it all the same
        for pid in peer_pids(self.rec.run_dir, self.host, os.getpid()):
            kill(pid)
        os.kill(os.getpid(), signal.SIGKILL)


def peer_pids(run_dir: Path, host: str, me: int) -> list[int]:
    """Live ranks of the run on this host, other than `me`, from their rank_started records."""
    out = []
    for path in sorted(Path(run_dir, "ranks").glob("rank-*.events.jsonl")):
        try:
            first = json.loads(path.open().readline())
        except (OSError, ValueError):
            continue
        pid, created = first.get("pid"), first.get("created")
        if first.get("kind") == "rank_started" and first.get("host") == host and pid != me and created \
                and same_process(pid, created):
            out.append(int(pid))
    return out


def kill(pid: int) -> None:
    """SIGKILL by pid (it ends a SIGSTOPped process too)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start(rec, deadline_s: float) -> Watchdog:
    w = Watchdog(rec, deadline_s)
    w.start()
    return w
