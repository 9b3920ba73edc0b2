"""Whole-host failures, executed by the launcher: every rank of one emulated host and its
daemon SIGKILLed (kill_host) or SIGSTOPped (hang_host) at one instant.

    python -m pslab.launch -n 8 --hosts 2 backend=ps backend.servers=2 backend.replication=2 faults=kill_host

The fault plan's trigger fires in a rank of the target host (pslab.faults.injector), which
records `host_fault_requested` and leaves <run dir>/hosts/request-<id>.json. The launcher
(which knows the process tree: the host's remote shell, its daemon, the ranks under it)
polls for requests every 0.1 s and executes each once:

1. marks the host down (its rsh agent, the ssh-client end, then stays silent);
2. for kill_host, takes a duplicate of each of the daemon's sockets (pidfd_getfd) and
   keeps them open until the run ends. Why: Open MPI 5.0.11's runtime ends the whole job
   the moment any daemon's connection closes (errmgr dvm: COMM_FAILED of a daemon aborts,
   whatever --with-ft or recovery settings say; measured here: the job ends within 0.1 s,
   mpirun exit code 0), and it has no heartbeat to notice a daemon that goes silent.
   A machine that loses power closes no connection: it goes silent. Holding the dead
   daemon's sockets is that silence; the daemon itself is really dead;
3. sends the signal to every process of the host (ranks, daemon, its shell) in one loop;
4. writes one `host_fault` record and a `fault_injected` record per rank (action kill or
   hang, the host, the shared host_fault_id and time) to <run dir>/hosts/events.jsonl,
   which summary.json merges with the ranks' records.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path

import psutil

from ..observe import write_json_atomic
from .procs import run_tag

SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 share the number
SIGNAL_OF = {"kill_host": signal.SIGKILL, "hang_host": signal.SIGSTOP}


def _rank_pids(run_dir: Path) -> dict[int, int]:
    """{pid: rank} from the ranks' rank_started records."""
    out = {}
    for p in (run_dir / "ranks").glob("rank-*.events.jsonl"):
        try:
            first = json.loads(p.open().readline())
        except (OSError, ValueError):
            continue
        if first.get("kind") == "rank_started" and first.get("pid"):
            out[int(first["pid"])] = int(first["rank"])
    return out


def _hold_sockets(pid: int, libc) -> list[int]:
    """Duplicates of every socket of process `pid` (kept open: the connections stay up)."""
    held = []
    try:
        pfd = os.pidfd_open(pid)
    except OSError:
        return held
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            got = libc.syscall(SYS_PIDFD_GETFD, pfd, int(fd), 0)
            if got >= 0:
                held.append(got)
    finally:
        os.close(pfd)
    return held


class HostFaults:
    """The launcher's side of kill_host / hang_host for one run."""

    def __init__(self, run_dir: Path, hosts):
        self.run_dir = Path(run_dir)
        self.hosts = hosts  # pslab.launcher.hosts.EmulatedHosts
        self.done: set[str] = set()
        self.held: list[int] = []
        self.agents: list[psutil.Process] = []  # the dead hosts' silent agents (ended in close())
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.log = self.hosts.dir / "events.jsonl"

    def poll(self) -> None:
        for req in sorted(self.hosts.dir.glob("request-*.json")):
            if req.name in self.done:
                continue
            self.done.add(req.name)
            try:
                spec = json.loads(req.read_text())
            except (OSError, ValueError):
                self.done.discard(req.name)  # half-written? (they are renamed into place) next time
                continue
            self.execute(spec)

    def _event(self, f, kind: str, t: float, **fields) -> None:
        f.write(json.dumps({"t": t, "kind": kind, "rank": fields.pop("rank", None), "role": "launcher",
                            **fields}) + "\n")

    def execute(self, spec: dict) -> None:
        host, action = spec["host"], spec["action"]
        if host in {json.loads(x)["host"] for x in self.done_hosts()}:
            return  # a host dies once
        sig = SIGNAL_OF[action]
        shell = self.hosts.shell_pid(host)
        procs = []
        if shell is not None:
            try:
                top = psutil.Process(shell)
                procs = [top] + top.children(recursive=True)
            except psutil.NoSuchProcess:
                procs = []
        tag = run_tag(self.run_dir)
        by_pid = _rank_pids(self.run_dir)
        ranks, daemons = [], []
        for p in procs:
            try:
                (ranks if tag in p.cmdline() else daemons).append(p)
            except psutil.Error:
                pass
        held = 0
        if action == "kill_host":
            self.hosts.down(host)
            try:
                self.agents.append(psutil.Process(shell).parent())
            except (psutil.Error, TypeError, ValueError):
                pass
            for d in daemons:
                got = _hold_sockets(d.pid, self.libc)
                self.held += got
                held += len(got)
        t = time.time()
        for p in ranks + daemons:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        fid = spec.get("fault_id")
        hid = f"{host}@{t:.6f}"
        with open(self.log, "a") as f:
            self._event(f, "host_fault", t, host=host, action=action, host_fault_id=hid, fault_id=fid,
                        requested_by=spec.get("rank"), trigger=spec.get("trigger"), step=spec.get("step"),
                        ranks=sorted(by_pid.get(p.pid, -1) for p in ranks), rank_pids=[p.pid for p in ranks],
                        daemon_pids=[p.pid for p in daemons], held_sockets=held)
            for p in ranks:
                r = by_pid.get(p.pid)
                self._event(f, "fault_injected", t, rank=r, action=action.split("_")[0], host=host,
                            host_fault_id=hid, fault_id=fid, trigger="host", step=spec.get("step"),
                            pid=p.pid, target_role=spec.get("roles", {}).get(str(r)), target_index=None,
                            elapsed=spec.get("elapsed"))
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(self.hosts.dir / f"done-{host}.json", {"host": host, "t": t, "action": action})

    def done_hosts(self) -> list[str]:
        return [p.read_text() for p in self.hosts.dir.glob("done-*.json")]

    def close(self) -> None:
        """After the job is gone: let the held connections close."""
        for fd in self.held:
            try:
                os.close(fd)
            except OSError:
                pass
        self.held = []
        # a silent agent outlives mpirun when mpirun exits by itself (an abort): its
        # command line names no run, so procs.end_group may not find it
        for a in self.agents:
            try:
                if a is not None and a.is_running():
                    a.kill()
            except psutil.Error:
                pass
        self.agents = []
