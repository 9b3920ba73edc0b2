"""The job's processes: start mpirun, find a run's ranks, end them all.

Every process is ended by pid (mpirun's process group, its descendants, and the ranks
whose command line carries this run's `run.dir=`), never by name.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = None


def _libc_handle():
    """libc, loaded before the fork (the child must not import or allocate)."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc or None


def start_mpirun(cmd: list, env: dict, log) -> subprocess.Popen:
    """mpirun in a session of its own (the launcher ends its whole process group), with
    SIGTERM as its parent-death signal on Linux: if the launcher is SIGKILLed, mpirun
    still hears of it at once and tears the job down (the ranks' watchdogs are the
    fallback, e.g. for a rank mpirun cannot end)."""
    libc = _libc_handle()
    if libc is not None:
        # Orphans of the job (an emulated host's daemon whose agent died first) come back to
        # the launcher, not to init: a container's init may never reap them, and a dead
        # daemon would stay behind as a zombie. end_group reaps them (reap_orphans).
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)

    def die_with_launcher():
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_launcher if libc is not None else None)


def _alive(procs: list) -> list:
    """Processes not yet dead; a zombie is dead (its parent, or init, reaps it later)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(proc: subprocess.Popen, procs: list, timeout: float) -> bool:
    t_end = time.time() + timeout
    while True:
        if proc.poll() is not None and not _alive(procs):
            return True
        if time.time() >= t_end:
            return False
        time.sleep(0.02)


def run_tag(run_dir: Path) -> str:
    """The argument every process of a run carries (mpirun and each rank)."""
    return f"run.dir={run_dir}"


def run_processes(run_dir: Path | None) -> list[psutil.Process]:
    """Live processes of this run found by their command line (`run.dir=<run dir>` is
    unique to the run): also the ones mpirun left behind when it exited first (an
    MPI_Abort tears the ranks down after mpirun is gone, and they are then nobody's
    children)."""
    if run_dir is None:
        return []
    tag = run_tag(run_dir)
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and tag in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _job(proc: subprocess.Popen, run_dir: Path | None) -> list[psutil.Process]:
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    known = {p.pid for p in procs}
    return procs + [p for p in run_processes(run_dir) if p.pid not in known]


def end_group(proc: subprocess.Popen, run_dir: Path | None = None) -> None:
    """Kill mpirun and every process it started (its descendants, and the ranks of this
    run dir wherever they are). Stopped (SIGSTOPped, hung) processes cannot act on
    SIGTERM, so they get SIGKILL at once; the rest get SIGTERM, then SIGKILL whatever is
    left a second later. Then the orphans handed to the launcher are reaped."""
    try:
        _end_group(proc, run_dir)
    finally:
        reap_orphans(proc)


def _end_group(proc: subprocess.Popen, run_dir: Path | None) -> None:
    procs = _job(proc, run_dir)
    for p in procs:
        try:
            if p.status() == psutil.STATUS_STOPPED:
                p.kill()
        except psutil.NoSuchProcess:
            pass
    for sig, wait_s in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        if _wait_gone(proc, procs, 0.0):
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in _alive(procs):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if _wait_gone(proc, procs, wait_s):
            return
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def reap_orphans(proc: subprocess.Popen, settle_s: float = 2.0) -> None:
    """Reap the job's processes that were handed to the launcher (a subreaper) when their
    parent died: collect the dead (a killed host's daemon daemonized itself into a session
    of its own, so nothing but its death ties it to the job), kill and collect the living
    ones still in mpirun's session. Never mpirun itself (subprocess collects its status).
    Orphans arrive as their parents die, a little after the kills: poll until none came
    for a moment (at most settle_s)."""
    end = time.time() + settle_s
    quiet_rounds = 0
    while quiet_rounds < 3 and time.time() < end:
        try:
            kids = [p for p in psutil.Process().children() if p.pid != proc.pid]
        except psutil.Error:
            return
        reaped = 0
        for p in kids:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    if os.getsid(p.pid) != proc.pid:
                        continue  # not this job's: leave it alone
                    p.kill()
                os.waitpid(p.pid, 0)
                reaped += 1
            except (psutil.Error, ChildProcessError, ProcessLookupError, PermissionError):
                pass
        quiet_rounds = 0 if reaped else quiet_rounds + 1
        time.sleep(0.05)


def kill_now(proc: subprocess.Popen, run_dir: Path | None) -> None:
    """SIGKILL the whole job at once, no waiting (a second Ctrl-C)."""
    for p in _job(proc, run_dir):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def pid_alive(pid: int, run_dir: Path) -> bool:
    """Is this pid still a live process of this run (not a zombie, not a reused pid)?"""
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return run_tag(run_dir) in p.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ValueError):
        return False


def leftover_pids(events: list[dict], run_dir: Path) -> dict[int, int]:
    """{rank: pid} of ranks still alive (after the launcher ended the job)."""
    pids = {e.get("rank"): e.get("pid") for e in events if e.get("kind") == "rank_started" and e.get("pid")}
    return {r: pid for r, pid in pids.items() if pid_alive(pid, run_dir)}
