"""A network stack per emulated host (--hosts K --hosts-netns; root only).

    python -m pslab.launch -n 6 --hosts 2 --hosts-netns backend=allreduce

Each host gets a network namespace of its own (`pslab<tag>h<i>`), a veth pair whose host
end joins a bridge the run makes (`pslab<tag>b`), an address in a /24 the run picks
(10.X.Y.0, not in use on this machine), and a default route through the bridge (the
daemons reach mpirun at this machine's own addresses). Ranks talk TCP over the veths
(btl_tcp_if_include pslab0), so traffic between hosts crosses the bridge and stays in
what the run made. --link-delay-ms / --link-gbit shape each host's link with tc netem
(refused with a clear error when the kernel has no netem). Everything is deleted after
the run (deleting the namespaces and the bridge takes the veths with them).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

IFACE = "pslab0"  # the veth end inside every host's namespace


class NetnsError(ValueError):
    pass


def _ip(*args, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p


def check_netns(delay_ms: float | None, gbit: float | None) -> None:
    """Before anything starts: root, `ip`, and (for link shaping) `tc`."""
    if os.geteuid() != 0:
        raise NetnsError("--hosts-netns: network namespaces need root (run without it for hosts on loopback)")
    if shutil.which("ip") is None:
        raise NetnsError("--hosts-netns: the `ip` tool (iproute2) is not installed")
    for flag, v in (("--link-delay-ms", delay_ms), ("--link-gbit", gbit)):
        if v is not None and not v > 0:
            raise NetnsError(f"{flag} {v:g}: must be > 0")
    if (delay_ms or gbit) and shutil.which("tc") is None:
        raise NetnsError("--link-delay-ms/--link-gbit: the `tc` tool (iproute2) is not installed")
    if delay_ms or gbit:
        netem_works()


def netem_works() -> None:
    """Try netem on the loopback of a scratch namespace (nothing of this machine's is
    touched): a kernel without the sch_netem qdisc refuses it."""
    scratch = f"pslabnetem{os.getpid()}"
    _ip("netns", "add", scratch)
    try:
        _ip("-n", scratch, "link", "set", "lo", "up")
        p = subprocess.run(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise NetnsError(f"--link-delay-ms/--link-gbit: tc netem is not available here ({p.stderr.strip()}); "
                             "this kernel lacks the netem qdisc (sch_netem)")
    finally:
        _ip("netns", "del", scratch, check=False)


class Netns:
    def __init__(self, run_dir, names: list[str], delay_ms: float | None = None, gbit: float | None = None):
        self.tag = hashlib.sha1(str(run_dir).encode()).hexdigest()[:6]
        self.names, self.delay_ms, self.gbit = names, delay_ms, gbit
        self.bridge = f"pslab{self.tag}b"
        self.ns = {h: f"pslab{self.tag}h{i}" for i, h in enumerate(names)}
        self.veth = {h: f"pslab{self.tag}v{i}" for i, h in enumerate(names)}
        self.subnet = self._free_subnet()
        self.made: list[tuple[str, str]] = []  # ("netns"|"link", name), deleted in reverse

    def _free_subnet(self) -> str:
        used = _ip("-o", "-4", "addr", "show").stdout
        h = int(self.tag, 16)
        for k in range(256):
            a, b = 100 + (h + k) % 100, (h // 100 + k) % 256
            if f" 10.{a}.{b}." not in used:
                return f"10.{a}.{b}"
        raise NetnsError("--hosts-netns: no free 10.x.y.0/24 for the run's bridge")

    def setup(self) -> None:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, h in enumerate(self.names):
                ns, v = self.ns[h], self.veth[h]
                _ip("netns", "add", ns)
                self.made.append(("netns", ns))
                _ip("link", "add", v, "type", "veth", "peer", "name", IFACE, "netns", ns)
                _ip("link", "set", v, "master", self.bridge)
                _ip("link", "set", v, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.subnet}.{10 + i}/24", "dev", IFACE)
                _ip("-n", ns, "link", "set", IFACE, "up")
                _ip("-n", ns, "route", "add", "default", "via", f"{self.subnet}.1")
                if self.delay_ms or self.gbit:
                    self._shape(v)
        except Exception:
            self.teardown()
            raise

    def _shape(self, dev: str) -> None:
        args = ["tc", "qdisc", "add", "dev", dev, "root", "netem"]
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
        if self.gbit:
            args += ["rate", f"{self.gbit:g}gbit"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise NetnsError(f"--link-delay-ms/--link-gbit: tc netem failed ({p.stderr.strip()}); this kernel "
                             "may lack the netem qdisc (sch_netem)")

    def env(self) -> dict[str, str]:
        return {"PSLAB_HOSTS_NETNS": " ".join(f"{h}={self.ns[h]}" for h in self.names),
                "OMPI_MCA_btl_tcp_if_include": IFACE}

    def teardown(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self.made = []
