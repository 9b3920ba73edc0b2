"""Who is in the job: the rank layout (fixed at launch) and the membership (data the
coordinator changes: failover drops dead workers, and moves a dead server's keys to its
ring successors by publishing a new generation).

Layout: rank 0 is the coordinator, ranks 1..S the servers 0..S-1, the rest workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hashring import HashRing


@dataclass(frozen=True)
class Layout:
    size: int
    servers: int

    @property
    def workers(self) -> int:
        return self.size - 1 - self.servers

    def check(self) -> None:
        if self.servers < 1:
            raise SystemExit(f"backend.servers={self.servers}: the PS needs at least one server")
        if self.workers < 1:
            raise SystemExit(f"backend=ps with {self.servers} server(s) needs at least {self.servers + 2} ranks "
                             f"(a coordinator, the servers and at least one worker); got -n {self.size}")

    def role_of(self, rank: int) -> tuple[str, int]:
        if rank == 0:
            return "coordinator", 0
        if rank <= self.servers:
            return "server", rank - 1
        return "worker", rank - 1 - self.servers

    def server_rank(self, i: int) -> int:
        return 1 + i

    def worker_rank(self, j: int) -> int:
        return 1 + self.servers + j


@dataclass
class Membership:
    gen: int
    workers: list[int]                   # live worker indices
    servers: list[int]                   # live server indices (the ring's members)
    virtual_nodes: int = 1024
    replication: int = 1
    demoted: list[int] = field(default_factory=list)  # live workers whose clocks no longer count (backed up)
    _ring: HashRing | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def initial(layout: Layout, cfg_backend) -> "Membership":
        return Membership(0, list(range(layout.workers)), list(range(layout.servers)),
                          int(cfg_backend.get("virtual_nodes", 1024)), int(cfg_backend.get("replication", 1)))

    @property
    def ring(self) -> HashRing:
        if self._ring is None:
            self._ring = HashRing(self.servers, self.virtual_nodes, self.replication)
        return self._ring

    def to_meta(self) -> dict:
        return {"gen": self.gen, "workers": self.workers, "servers": self.servers,
                "virtual_nodes": self.virtual_nodes, "replication": self.replication, "demoted": self.demoted}

    @staticmethod
    def from_meta(m: dict) -> "Membership":
        return Membership(int(m["gen"]), [int(w) for w in m["workers"]], [int(s) for s in m["servers"]],
                          int(m["virtual_nodes"]), int(m["replication"]), [int(w) for w in m.get("demoted", [])])

    def counted(self) -> list[int]:
        """The workers the clock rules wait for: live and not demoted."""
        return [w for w in self.workers if w not in self.demoted]
