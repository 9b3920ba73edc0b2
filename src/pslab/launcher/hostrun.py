"""The launcher's one entry to emulated hosts (--hosts K): checked before mpirun starts,
set up for mpirun, polled while the job runs (whole-host faults), torn down after it.
Without --hosts every method does nothing, so pslab.launch calls them unconditionally.

    python -m pslab.launch -n 6 --hosts 2 backend=allreduce
"""
from __future__ import annotations

from pathlib import Path

from .checks import Invalid
from .hostfaults import HostFaults
from .hosts import EmulatedHosts, HostsError, check_hosts, placement


def coordinator_host(cfg) -> bool:
    return cfg.backend.name == "ps" and bool(cfg.backend.get("coordinator_host", False))


def check(cfg, n: int, k: int | None, hostfile: str | None) -> list[str] | None:
    """Every rank's host under --hosts K (None without), or Invalid naming the flag/key."""
    try:
        check_hosts(k, n, hostfile)
        if k is None:
            if coordinator_host(cfg):
                raise HostsError("backend.coordinator_host=true: pslab places the coordinator on a host of its "
                                 "own over emulated hosts (--hosts K, K >= 2); with --hostfile, give rank 0 a "
                                 "host line of its own with slots=1 and leave this false")
            return None
        return placement(n, k, coordinator_host(cfg))
    except HostsError as e:
        raise Invalid(str(e)) from None


class Hosts:
    def __init__(self, cfg, run_dir: Path, n: int, k: int | None):
        self.emu = EmulatedHosts(run_dir, n, k, coordinator_host(cfg)) if k else None
        self.hostfile = str(self.emu.prepare()) if self.emu else None
        self.faults = HostFaults(run_dir, self.emu) if self.emu else None

    def adapt(self, cmd: list, env: dict) -> tuple[list, dict]:
        return self.emu.adapt(cmd, env) if self.emu else (cmd, env)

    def tick(self) -> None:
        if self.faults is not None:
            self.faults.poll()

    def teardown(self) -> None:
        """After procs.end_group: no process of the run is left, so the held connections
        may close and the hosts' directories go."""
        if self.faults is not None:
            self.faults.close()
        if self.emu is not None:
            self.emu.teardown()
