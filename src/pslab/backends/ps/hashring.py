"""Consistent hashing with virtual nodes: which server owns a key, and where its replicas live.

Each server puts `virtual_nodes` points on a ring of 2^RING_BITS positions; a key belongs
to the first point at or after its own position (clockwise). Removing a server deletes
only its points, so only its keys move (to the next points: its successors), and adding
one takes keys only from the segments its new points split. Replicas of a key live on
the next distinct servers clockwise, the servers that inherit it when its owner dies.

Routing must not loop over keys in Python. A key's position is its top RING_BITS bits
after a Fibonacci multiply (one multiply spreads both 64-bit hashes and small folded
keys); `np.searchsorted` of every position against the sorted points, done once per ring,
gives a table position -> owner, so routing a batch is one multiply, one shift and one
gather (~2 ms for 1M keys, against ~40 ms for a searchsorted per key).
"""
from __future__ import annotations

import numpy as np

from ...data.hashing import splitmix64

RING_BITS = 18
_FIB = np.uint64(0x9E3779B97F4A7C15)


def positions(keys: np.ndarray) -> np.ndarray:
    """Ring positions as int64 (numpy indexes faster with its own index type than with
    uint64, which it would convert first)."""
    with np.errstate(over="ignore"):
        p = np.asarray(keys, np.uint64) * _FIB
    p >>= np.uint64(64 - RING_BITS)
    return p.view(np.int64)


class HashRing:
    def __init__(self, servers, virtual_nodes: int = 1024, replication: int = 1):
        self.servers = sorted(int(s) for s in servers)
        if not self.servers:
            raise ValueError("a hash ring needs at least one server")
        self.virtual_nodes = int(virtual_nodes)
        self.replication = max(1, min(int(replication), len(self.servers)))
        sid = np.repeat(np.array(self.servers, np.uint64), self.virtual_nodes)
        vn = np.tile(np.arange(self.virtual_nodes, dtype=np.uint64), len(self.servers))
        # A point depends only on (server, vnode): the same server lands on the same
        # points in every ring it belongs to, which is what keeps the hashing consistent.
        pos = (splitmix64(splitmix64(sid) ^ vn) >> np.uint64(64 - RING_BITS)).astype(np.int64)
        # Sorted by position, ties by server id: a key goes to the first point at or after
        # it, so of two points on one position the lower id owns it and the other is its
        # successor, which is exactly who owns it once the lower id leaves the ring.
        order = np.lexsort((sid, pos))
        self.points, self.owners = pos[order], sid[order].astype(np.int64)
        # succ[p, r]: the r-th distinct server clockwise from point p (r = 0 is the owner).
        self.succ = self._successors()
        slot = np.searchsorted(self.points, np.arange(1 << RING_BITS), side="left") % len(self.points)
        self.slot_of_pos = slot.astype(np.int32)
        self.table = self.owners[slot].astype(np.int16)

    def _successors(self) -> np.ndarray:
        n, r = len(self.points), self.replication
        out = np.full((n, r), -1, np.int64)
        out[:, 0] = self.owners
        # Walk clockwise, one step per round, for the points still short of replicas.
        # Rounds are bounded by the ring size; each round is vectorized over points.
        filled = np.ones(n, np.int64)
        step = 1
        while (filled < r).any() and step < n:
            nxt = self.owners[(np.arange(n) + step) % n]
            need = np.flatnonzero(filled < r)
            cand = nxt[need]
            seen = (out[need] == cand[:, None]).any(1)
            new = need[~seen]
            out[new, filled[new]] = nxt[new]
            filled[new] += 1
            step += 1
        return out

    def route(self, keys: np.ndarray) -> np.ndarray:
        """Owner server id per key (int16), vectorized."""
        return np.take(self.table, positions(keys))

    def replicas(self, keys: np.ndarray) -> np.ndarray:
        """(n, R) server ids: owner first, then the next distinct servers on the ring."""
        return np.take(self.succ, np.take(self.slot_of_pos, positions(keys)), axis=0)

    def without(self, server: int) -> "HashRing":
        return HashRing([s for s in self.servers if s != server], self.virtual_nodes, self.replication)


def group_by_server(owner: np.ndarray, servers) -> dict[int, np.ndarray]:
    """Positions of the keys of each server, in key order. Up to a few servers one
    comparison pass per server is several times faster than a stable sort of the ids."""
    if len(servers) <= 8:
        out = {}
        for s in servers:
            pos = np.flatnonzero(owner == s)
            if len(pos):
                out[s] = pos
        return out
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner.astype(np.int64), minlength=max(servers) + 1)
    ends = np.cumsum(counts)
    return {s: order[ends[s] - counts[s]:ends[s]] for s in servers if counts[s]}
