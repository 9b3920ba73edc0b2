"""The launcher's one entry to emulated hosts (--hosts K): checked before mpirun starts,
set up for mpirun, polled while the job runs (whole-host faults), torn down after it.
Without --hosts every method does nothing, so pslab.launch calls them unconditionally.

    python -m pslab.launch -n 6 --hosts 2 backend=allreduce
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import Invalid
from .hostfaults import HostFaults
from .hosts import EmulatedHosts, HostsError, check_hosts, placement
from .netns import Netns, NetnsError, check_netns


@dataclass(frozen=True)
class HostSpec:
    """--hosts K, and --hosts-netns with its link shaping."""
    k: int
    netns: bool = False
    link_delay_ms: float | None = None
    link_gbit: float | None = None


def spec_of(hosts) -> HostSpec | None:
    return hosts if isinstance(hosts, HostSpec) or hosts is None else HostSpec(int(hosts))


def coordinator_host(cfg) -> bool:
    return cfg.backend.name == "ps" and bool(cfg.backend.get("coordinator_host", False))


def check(cfg, n: int, hosts, hostfile: str | None) -> list[str] | None:
    """Every rank's host under --hosts K (None without), or Invalid naming the flag/key."""
    spec = spec_of(hosts)
    k = spec.k if spec else None
    try:
        check_hosts(k, n, hostfile)
        if spec is not None and spec.netns:
            check_netns(spec.link_delay_ms, spec.link_gbit)
        elif spec is not None and (spec.link_delay_ms or spec.link_gbit):
            raise HostsError("--link-delay-ms/--link-gbit shape each host's own link: add --hosts-netns")
        if k is None:
            if coordinator_host(cfg):
                raise HostsError("backend.coordinator_host=true: pslab places the coordinator on a host of its "
                                 "own over emulated hosts (--hosts K, K >= 2); with --hostfile, give rank 0 a "
                                 "host line of its own with slots=1 and leave this false")
            return None
        return placement(n, k, coordinator_host(cfg))
    except (HostsError, NetnsError) as e:
        raise Invalid(str(e)) from None


class Hosts:
    def __init__(self, cfg, run_dir: Path, n: int, hosts):
        spec = spec_of(hosts)
        self.emu = EmulatedHosts(run_dir, n, spec.k, coordinator_host(cfg)) if spec else None
        self.hostfile = str(self.emu.prepare()) if self.emu else None
        self.faults = HostFaults(run_dir, self.emu) if self.emu else None
        self.net = None
        if spec is not None and spec.netns:
            self.net = Netns(run_dir, self.emu.names, spec.link_delay_ms, spec.link_gbit)
            self.net.setup()  # torn down in teardown(), which run_job always calls

    def adapt(self, cmd: list, env: dict) -> tuple[list, dict]:
        if self.emu is None:
            return cmd, env
        cmd, env = self.emu.adapt(cmd, env)
        if self.net is not None:
            env.update(self.net.env())
        return cmd, env

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
        if self.net is not None:
            self.net.teardown()
