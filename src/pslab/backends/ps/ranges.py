"""Key ranges and the replica map: which server holds which keys, and who orders their updates.

The key space is cut into `backend.ranges` fixed ranges by a hash of the key (a key's
range never changes). The replica map gives each range an ordered list of servers: the
first is the range's *primary* (it takes the workers' pushes and pulls, applies them in
its own order and forwards the result to the others), the rest are its *backups*
(OSDI'14's "replication after aggregation", in primary-backup form). The coordinator
owns the map and changes it only when a server dies (ReplicaMap.after_failure): the
next live replica is promoted, a spare server is added to restore R copies (it receives
a snapshot from the primary and then every forwarded update: re-replication while
training goes on), and a range with no copy left is restored from the last checkpoint.

Because a primary changes only when it dies, a push sent under an older map reaches a
server that still is the primary of every range it was meant for.

Routing must not loop over keys in Python: a key's range is the top bits of a Fibonacci
multiply of the key (it spreads 64-bit hashes and small folded keys alike), and the
primary of each range is one table lookup, so routing a batch is a multiply, a shift and
a gather.
"""
from __future__ import annotations

import numpy as np

_FIB = np.uint64(0x9E3779B97F4A7C15)
RANGE_BITS = 32


def range_of(keys: np.ndarray, n_ranges: int) -> np.ndarray:
    """The range (0..n_ranges-1) of each key, as int64."""
    with np.errstate(over="ignore"):
        p = np.asarray(keys, np.uint64) * _FIB
    p >>= np.uint64(64 - RANGE_BITS)
    return (p.view(np.int64) * int(n_ranges)) >> RANGE_BITS


def in_ranges(keys: np.ndarray, ranges, n_ranges: int) -> np.ndarray:
    """A bool per key: is its range one of `ranges`? (a lookup, not np.isin's passes)."""
    mask = np.zeros(int(n_ranges), bool)
    mask[list(ranges)] = True
    return mask[range_of(keys, n_ranges)]


def initial_map(servers: list[int], n_ranges: int, replication: int, hosts: dict | None = None) -> list[list[int]]:
    """Range r -> [primary, backups...]: primaries dealt round-robin, backups the next
    servers after it (on other hosts first, when `hosts` names each server's host)."""
    servers = sorted(servers)
    R = max(1, min(int(replication), len(servers)))
    out = []
    for r in range(n_ranges):
        i = r % len(servers)
        order = servers[i:] + servers[:i]
        out.append(_spread(order, R, hosts))
    return out


def _spread(order: list[int], R: int, hosts: dict | None) -> list[int]:
    """The first R servers of `order`, preferring ones on hosts not used yet."""
    if not hosts:
        return order[:R]
    chosen, used = [], set()
    for s in order:
        if len(chosen) < R and hosts.get(s) not in used:
            chosen.append(s)
            used.add(hosts.get(s))
    for s in order:
        if len(chosen) < R and s not in chosen:
            chosen.append(s)
    return chosen


def after_failure(rmap: list[list[int]], dead: int, live: list[int], replication: int,
                  hosts: dict | None = None, syncing: dict | None = None) -> tuple[list[list[int]], dict]:
    """The map without `dead`, decided range by range:
    - promoted: `dead` was the primary and a backup is left (the backup takes over);
    - added: a live server not holding the range joins to restore R copies (re-replication);
    - lost: no copy left (restore from a checkpoint, or the run cannot go on). A backup
      still waiting for its snapshot (`syncing`: range -> servers) is no copy: if only
      such backups are left, the range is lost, and one of them restores it.
    Returns (new map, {"promoted": [r..], "added": {r: server}, "lost": [r..], "resync": {r: [servers]}}).
    `resync`: the backups that must be sent a fresh snapshot (the new one, and, after a
    promotion, the others, which may have seen one forward more than the new primary)."""
    live = sorted(s for s in live if s != dead)
    load = {s: 0 for s in live}
    for reps in rmap:
        for s in reps:
            if s in load:
                load[s] += 1
    out, promoted, added, lost, resync = [], [], {}, [], {}
    for r, reps in enumerate(rmap):
        if dead not in reps:
            out.append(list(reps))
            continue
        left = [s for s in reps if s != dead]
        waiting = set((syncing or {}).get(r, ())) - {dead}
        if not [s for s in left if s not in waiting]:
            lost.append(r)
            # restored from a checkpoint by a server that holds the range (or the least
            # loaded live one), which then re-replicates it to the others
            s = left[0] if left else (min(live, key=lambda x: (load[x], x)) if live else None)
            if s is None:
                out.append([])
                continue
            if not left:
                load[s] += 1
            left = [s] + [x for x in left if x != s]
            if len(left) > 1:
                resync[r] = list(left[1:])
        elif reps[0] == dead:
            promoted.append(r)
            resync[r] = list(left[1:])
        want = max(1, min(int(replication), len(live)))
        spare = [s for s in live if s not in left]
        if len(left) < want and spare:
            used = {(hosts or {}).get(s) for s in left}
            spare.sort(key=lambda x: ((hosts or {}).get(x) in used if hosts else False, load[x], x))
            s = spare[0]
            left.append(s)
            load[s] += 1
            added[r] = s
            resync.setdefault(r, []).append(s)
        out.append(left)
    return out, {"promoted": promoted, "added": added, "lost": lost,
                 "resync": {r: v for r, v in resync.items() if v}}


def primaries(rmap: list[list[int]]) -> np.ndarray:
    """Range -> primary server (int16; -1 for a range with no server)."""
    return np.array([reps[0] if reps else -1 for reps in rmap], np.int16)


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
