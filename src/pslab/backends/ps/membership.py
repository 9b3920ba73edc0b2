"""Who is in the job: the rank layout (fixed at launch) and the membership (data the
coordinator changes: failover drops dead workers, and hands a dead server's ranges to
their replicas by publishing a new generation of the replica map).

Layout: rank 0 is the coordinator, ranks 1..S the servers 0..S-1, the rest workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from . import ranges as RG


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


@dataclass(frozen=True)
class Membership:
    gen: int
    workers: list[int]                   # live worker indices
    servers: list[int]                   # live server indices
    ranges: list[list[int]]              # range -> [primary, backups...] (the replica map)
    replication: int = 1                 # the copies wanted of each range
    demoted: list[int] = field(default_factory=list)  # live workers whose clocks no longer count (backed up)

    @staticmethod
    def initial(layout: Layout, cfg_backend, hosts: dict | None = None) -> "Membership":
        """hosts: server index -> its host; a range's copies then go to different hosts
        whenever there are enough (a whole-host failure takes one copy, not all)."""
        servers = list(range(layout.servers))
        R = int(cfg_backend.get("replication", 1))
        n = int(cfg_backend.get("ranges", 64))
        return Membership(0, list(range(layout.workers)), servers, RG.initial_map(servers, n, R, hosts), R)

    def next(self, **changes) -> "Membership":
        """The next generation with some fields changed (workers, servers, ranges, demoted)."""
        return replace(self, gen=self.gen + 1, **changes)

    @property
    def n_ranges(self) -> int:
        return len(self.ranges)

    @cached_property
    def primary_table(self) -> np.ndarray:
        return RG.primaries(self.ranges)

    def primary_of(self, keys: np.ndarray) -> np.ndarray:
        return self.primary_table[RG.range_of(keys, self.n_ranges)]

    @cached_property
    def lead(self) -> dict[int, list[int]]:
        """server -> the ranges it is the primary of."""
        out: dict[int, list[int]] = {s: [] for s in self.servers}
        for r, reps in enumerate(self.ranges):
            if reps:
                out.setdefault(reps[0], []).append(r)
        return out

    def primary_ranges(self, server: int) -> list[int]:
        return self.lead.get(server, [])

    def held_ranges(self, server: int) -> list[int]:
        return [r for r, reps in enumerate(self.ranges) if server in reps]

    def to_meta(self) -> dict:
        return {"gen": self.gen, "workers": self.workers, "servers": self.servers, "ranges": self.ranges,
                "replication": self.replication, "demoted": self.demoted}

    @staticmethod
    def from_meta(m: dict) -> "Membership":
        return Membership(int(m["gen"]), [int(w) for w in m["workers"]], [int(s) for s in m["servers"]],
                          [[int(s) for s in reps] for reps in m["ranges"]], int(m["replication"]),
                          [int(w) for w in m.get("demoted", [])])

    def counted(self) -> list[int]:
        """The workers the clock rules wait for: live and not demoted."""
        return [w for w in self.workers if w not in self.demoted]
