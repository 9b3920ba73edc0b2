"""Emulated hosts: one job over K "hosts" on this machine, placed and launched as on a cluster.

    python -m pslab.launch -n 6 --hosts 2 backend=allreduce
    python -m pslab.launch -n 8 --hosts 2 backend=ps backend.servers=2 backend.replication=2 faults=kill_host

What a host gets (all of it made in <run dir>/hosts and removed or ended with the run):
- a line per rank in a hostfile read by Open MPI's `seq` mapper, so the placement is
  pslab's (`placement`: round robin over the hosts, as `--map-by node` would; with
  backend.coordinator_host=true rank 0 alone on the first host);
- its own PRTE daemon, started through the rsh agent below (Open MPI calls it as
  `AGENT [options] HOST COMMAND...`, as it would call ssh). Like ssh, the agent stays
  while the "remote" command runs as its child: it is the client end, not part of the
  host, so a whole-host failure kills what is under it and leaves it (silent, as an ssh
  session to a dead machine is);
- its own hostname (a UTS namespace, when root and `unshare` exist) and its own
  shared-memory backing directory (/dev/shm/<run>-<host>): without it, ranks of two
  emulated hosts that share /dev/shm segfaulted in the sm transport (BRIEF section 7).
  Traffic between hosts goes over TCP on loopback (btl_tcp_if_include lo): Open MPI
  uses shared memory only within a node, and every emulated host is a node of its own;
- PSLAB_HOST (its name) and PSLAB_RANK_HOSTS (every rank's host) in the environment of
  its ranks: a rank knows its host, and every rank the whole placement, without talking.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..observe import write_json_atomic

ENV_HOST = "PSLAB_HOST"
ENV_RANK_HOSTS = "PSLAB_RANK_HOSTS"
ENV_HOSTS_DIR = "PSLAB_HOSTS_DIR"

AGENT = r"""#!/bin/bash
# pslab's rsh agent for emulated hosts (pslab.launcher.hosts). Open MPI calls it as
#   AGENT [options] HOST COMMAND...
# and it runs COMMAND "on" HOST: here, as a child, with HOST's name, shared-memory
# directory and environment. Like an ssh client it stays until the command ends, and
# exits with its status; once the launcher has marked HOST dead (HOST.down, a whole-host
# failure) it stays silent instead, as an ssh session to a dead machine does, until the
# launcher ends the run (or the run's deadline).
while [[ "$1" == -* ]]; do shift; done
host=$1; shift
dir=$PSLAB_HOSTS_DIR
export PSLAB_HOST=$host
export OMPI_MCA_btl_sm_backing_directory=$PSLAB_HOSTS_SHM-$host
mkdir -p "$OMPI_MCA_btl_sm_backing_directory"
remote="echo \$\$ > $dir/$host.pid.tmp && mv $dir/$host.pid.tmp $dir/$host.pid; $*"
pre=()  # --hosts-netns: the host's own network namespace
for kv in $PSLAB_HOSTS_NETNS; do [ "${kv%%=*}" = "$host" ] && pre=(ip netns exec "${kv#*=}"); done
if [ "$PSLAB_HOSTS_UTS" = 1 ]; then
  "${pre[@]}" unshare --uts bash -c "hostname $host; $remote"
else
  "${pre[@]}" bash -c "$remote"
fi
rc=$?
if [ -e "$dir/$host.down" ]; then
  left=$(python3 -c "import time; print(max(1, int(${PSLAB_DEADLINE_AT:-0} - time.time() + 10)))" 2>/dev/null || echo 600)
  exec sleep "$left"
fi
exit $rc
"""


class HostsError(ValueError):
    pass


def host_names(k: int) -> list[str]:
    return [f"host{i}" for i in range(k)]


def placement(n: int, k: int, coordinator_host: bool = False) -> list[str]:
    """The host of every rank: round robin over the k hosts (Open MPI's --map-by node),
    so that consecutive ranks (the PS servers 1..S, an allreduce's neighbours) land on
    different hosts; with coordinator_host, rank 0 alone on host0 and the others round
    robin over the rest."""
    names = host_names(k)
    if coordinator_host:
        if k < 2:
            raise HostsError(f"backend.coordinator_host=true needs --hosts 2 or more (got --hosts {k})")
        return [names[0]] + [names[1 + (r - 1) % (k - 1)] for r in range(1, n)]
    return [names[r % k] for r in range(n)]


def ranks_by_host(rank_hosts: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r, h in enumerate(rank_hosts):
        out.setdefault(h, []).append(r)
    return out


def rank_hosts_from_env(env=os.environ) -> list[str] | None:
    """Every rank's host, as the launcher placed them (None: no emulated hosts)."""
    v = env.get(ENV_RANK_HOSTS)
    return v.split(",") if v else None


def my_host(env=os.environ) -> str:
    """This rank's host: its emulated host, else the machine's name."""
    import socket

    return env.get(ENV_HOST) or socket.gethostname()


def check_hosts(k: int | None, n: int, hostfile: str | None) -> None:
    if k is None:
        return
    if hostfile is not None:
        raise HostsError("--hosts and --hostfile: pick one (--hosts K emulates K hosts here; --hostfile names "
                         "real ones)")
    if k < 1:
        raise HostsError(f"--hosts {k}: the number of emulated hosts must be >= 1")
    if k > n:
        raise HostsError(f"--hosts {k}: more hosts than ranks (-n {n}); a host holds at least one rank")


class EmulatedHosts:
    """The hosts of one run: files, the mpirun flags and environment, teardown."""

    def __init__(self, run_dir: Path, n: int, k: int, coordinator_host: bool = False):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "hosts"
        self.names = host_names(k)
        self.rank_hosts = placement(n, k, coordinator_host)
        tag = hashlib.sha1(str(self.run_dir).encode()).hexdigest()[:10]
        self.shm = f"/dev/shm/pslab-{tag}"
        self.uts = os.geteuid() == 0 and shutil.which("unshare") is not None

    def prepare(self) -> Path:
        """Write the hostfile, the agent and placement.json; returns the hostfile."""
        self.dir.mkdir(parents=True, exist_ok=True)
        agent = self.dir / "agent.sh"
        agent.write_text(AGENT)
        agent.chmod(0o755)
        hostfile = self.dir / "hostfile"
        # the seq mapper: line i is rank i's host
        hostfile.write_text("".join(f"{h}\n" for h in self.rank_hosts))
        write_json_atomic(self.dir / "placement.json", {"hosts": ranks_by_host(self.rank_hosts),
                                                         "rank_hosts": self.rank_hosts, "uts": self.uts})
        return hostfile

    def adapt(self, cmd: list, env: dict) -> tuple[list, dict]:
        """mpirun's command and environment for these hosts."""
        cmd = list(cmd)
        i = cmd.index("--hostfile") + 2
        cmd[i:i] = ["--map-by", "seq"]
        env = dict(env)
        env.update({
            "PRTE_MCA_plm_ssh_agent": str(self.dir / "agent.sh"),
            # inter-host traffic on loopback TCP; the daemons' own channel stays at its
            # default (oob_tcp_if_include lo is refused)
            "OMPI_MCA_btl_tcp_if_include": "lo",
            ENV_HOSTS_DIR: str(self.dir),
            "PSLAB_HOSTS_SHM": self.shm,
            "PSLAB_HOSTS_UTS": "1" if self.uts else "0",
            ENV_RANK_HOSTS: ",".join(self.rank_hosts),
        })
        return cmd, env

    def down(self, host: str) -> None:
        """Mark a host dead: its agent stays silent when its command ends."""
        (self.dir / f"{host}.down").touch()

    def shell_pid(self, host: str) -> int | None:
        try:
            return int((self.dir / f"{host}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def teardown(self) -> None:
        """After the job is gone: the hosts' shared-memory directories (and any stopped
        process of a host is the job's, ended by procs.end_group before this)."""
        for h in self.names:
            shutil.rmtree(f"{self.shm}-{h}", ignore_errors=True)


def record_hosts(run_dir: Path, events: list[dict]) -> dict[str, list[int]] | None:
    """{host: [ranks]} from the ranks' own rank_started records (emulated or real)."""
    seen: dict[int, str] = {}
    for e in events:
        if e.get("kind") == "rank_started" and e.get("host") is not None and isinstance(e.get("rank"), int):
            seen.setdefault(e["rank"], e["host"])
    if not seen:
        try:
            return json.loads((Path(run_dir) / "hosts" / "placement.json").read_text())["hosts"]
        except (OSError, ValueError, KeyError):
            return None
    out: dict[str, list[int]] = {}
    for r in sorted(seen):
        out.setdefault(seen[r], []).append(r)
    return out


__all__ = ["EmulatedHosts", "HostsError", "placement", "ranks_by_host", "rank_hosts_from_env", "my_host",
           "check_hosts", "record_hosts", "host_fields"]


def host_fields(run_dir: Path, events: list[dict]) -> dict:
    """summary.json's hosts: {host: [ranks]} (every run: one host, emulated or real ones),
    whether they were emulated, and the whole-host faults with the ranks each took."""
    emulated = (Path(run_dir) / "hosts" / "placement.json").exists()
    faults = [{k: e.get(k) for k in ("host", "action", "host_fault_id", "t", "ranks", "daemon_pids",
                                     "held_sockets", "requested_by", "trigger", "step")}
              for e in events if e.get("kind") == "host_fault"]
    return {"hosts": record_hosts(run_dir, events), "hosts_emulated": emulated, "host_faults": faults}
