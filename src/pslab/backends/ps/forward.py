"""Primary-backup replication of key ranges, both ends.

Forwarder (the primary's side): after each update it sends every backup of the touched
ranges the updated rows (W and the optimizer state S, so the backup needs no optimizer
arithmetic and ends bit-identical) and the batches each range absorbed. The pushes
behind the update are acknowledged to their workers once every live backup has
acknowledged the forward. A re-replication is a snapshot of whole ranges sent the same
way; MPI keeps one sender's messages in order, so the forwards that follow it reach the
new backup after it: snapshot plus catch-up, while training goes on.

Replica (the backup's side): installs forwards and snapshots from the range's primary
and acknowledges them. A forward from a server that is not (or no longer) the range's
primary is dropped: a late message from a dead primary must not overwrite the newer
state its successor sends.
"""
from __future__ import annotations

import time

import numpy as np

from . import protocol as P
from .ranges import in_ranges, range_of


class Forwarder:
    def __init__(self, server):
        self.s = server
        self.seq = 0
        self.pending: dict[int, dict] = {}      # seq -> {"wait": ranks, "msgs": pushes to ack, "snap": ...}
        self.rereplications: list[dict] = []

    def backups_of(self, ranges) -> dict[int, list[int]]:
        """backup server -> the ranges (of `ranges`, all primaried here) it backs up."""
        out: dict[int, list[int]] = {}
        m = self.s.membership
        for r in ranges:
            for t in m.ranges[r][1:]:
                out.setdefault(t, []).append(r)
        return out

    def forward(self, keys, entries: list[tuple], msgs: list[P.Msg], clock, clock_ranges=None) -> None:
        """Send one update to the backups; acknowledge `msgs` once they all hold it. A BSP
        clock (clock_ranges: the ranges it completed) goes to every backup of those ranges,
        also with nothing in it: a backup that takes over continues from that clock."""
        s = self.s
        mine = s.membership.primary_ranges(s.index)
        targets = self.backups_of(mine) if s.membership.replication > 1 else {}
        step = clock if clock is not None else (msgs[0].clock if msgs else 0)
        s.injector.point("before_forward", step)
        self.seq += 1
        wait = set()
        has_keys = keys is not None and len(keys)
        for i, (t, ranges) in enumerate(sorted(targets.items())):
            if s.layout.server_rank(t) in s.van.failed:
                continue  # known dead: the coordinator's next membership drops it
            log = [[b, n, [r for r in fr if r in ranges]] for b, n, fr in entries]
            log = [x for x in log if x[2]]
            meta = {"log": log}
            if clock_ranges is not None:
                meta["ranges"] = [r for r in clock_ranges if r in ranges]
            k = None
            if has_keys:
                sel = np.flatnonzero(in_ranges(keys, ranges, s.membership.n_ranges))
                k = keys[sel] if len(sel) else None
            if k is None and not log and not meta.get("ranges"):
                continue
            vals = None
            if k is not None:
                pos = s.table.slots(k, create=False)
                vals = np.hstack([s.table.W[pos], s.table.S[pos]])
            with s.rec.acct.timed("comm"):
                s.van.send(s.layout.server_rank(t), P.Msg(P.FWD, req=self.seq, clock=step, keys=k, vals=vals,
                                                          meta=meta, gen=s.membership.gen),
                           kind="forward", compress=False)
            wait.add(s.layout.server_rank(t))
            if i == 0:
                s.injector.point("mid_forward", step)
        s.injector.point("after_forward", step)
        if wait:
            self.pending[self.seq] = {"wait": wait, "msgs": msgs}
        else:
            self.ack(msgs)

    def snapshot(self, to: int, ranges: list[int]) -> None:
        """Re-replication: the whole of `ranges` to server `to` (rows and records)."""
        s = self.s
        keys, pos = s.rows_of(ranges)
        vals = np.hstack([s.table.W[pos], s.table.S[pos]]) if len(keys) else None
        self.seq += 1
        nbytes = s.van.send(s.layout.server_rank(to), P.Msg(
            P.FWD, req=self.seq, keys=keys if len(keys) else None, vals=vals, flags=P.F_SNAPSHOT,
            meta={"snapshot": s.log.export(ranges), "clocks": {str(r): int(s.rclocks.next[r]) for r in ranges}},
            gen=s.membership.gen), kind="rereplicate", compress=False)
        self.pending[self.seq] = {"wait": {s.layout.server_rank(to)}, "msgs": [],
                                  "snap": {"to": to, "ranges": ranges, "bytes": int(nbytes), "keys": int(len(keys)),
                                           "t0": time.time()}}

    def ack(self, msgs: list[P.Msg]) -> None:
        s = self.s
        with s.rec.acct.timed("comm"):
            for m in msgs:
                s.unacked.discard((m.src, m.req))
                s.van.send(m.src, P.Msg(P.PUSH_ACK, req=m.req, clock=m.clock, gen=s.membership.gen))

    def on_ack(self, m: P.Msg) -> None:
        p = self.pending.get(m.req)
        if p is not None:
            p["wait"].discard(m.src)
            self._settle(m.req)

    def _settle(self, seq: int) -> None:
        p = self.pending[seq]
        if p["wait"]:
            return
        del self.pending[seq]
        self.ack(p["msgs"])
        snap = p.get("snap")
        if snap is not None:
            done = {"to": snap["to"], "ranges": snap["ranges"], "bytes": snap["bytes"], "keys": snap["keys"],
                    "seconds": time.time() - snap["t0"], "from": self.s.index}
            self.rereplications.append(done)
            self.s.van.send(0, P.Msg(P.CTRL, meta={"op": "rereplicated", **done}))

    def peer_gone(self, rank: int) -> None:
        """A backup died: nothing more to wait for from it."""
        for seq in list(self.pending):
            if self.pending[seq].get("snap") is not None and rank in self.pending[seq]["wait"]:
                del self.pending[seq]  # a snapshot to it never completes
                continue
            if rank in self.pending[seq]["wait"]:
                self.pending[seq]["wait"].discard(rank)
                self._settle(seq)

    def members_changed(self) -> None:
        live = {self.s.layout.server_rank(x) for x in self.s.membership.servers}
        for seq in list(self.pending):
            snap = self.pending[seq].get("snap")
            if snap is not None and snap["to"] not in self.s.membership.servers:
                del self.pending[seq]  # its target died: no re-replication to report
                continue
            self.pending[seq]["wait"] &= live
            self._settle(seq)


class Replica:
    def __init__(self, server):
        self.s = server

    def on_forward(self, m: P.Msg) -> None:
        s = self.s
        src = s.layout.role_of(m.src)[1]
        meta = m.meta or {}
        snap = meta.get("snapshot")
        ranges = [int(r) for r in snap] if snap is not None else sorted({r for _, _, rr in meta["log"] for r in rr} |
                                                                       set(meta.get("ranges", ())))
        if m.keys is not None and len(m.keys):
            present = np.bincount(range_of(m.keys, s.membership.n_ranges), minlength=s.membership.n_ranges)
            ranges = sorted(set(ranges) | set(np.flatnonzero(present).tolist()))
        table = s.membership.ranges
        if any(not table[r] or table[r][0] != src or s.index not in table[r] for r in ranges):
            s.rec.event("stale_forward_dropped", sender=src, ranges=ranges, gen=m.gen)
            return
        dim = s.table.W.shape[1]
        with s.rec.acct.timed("compute"):
            if snap is not None:
                self.clear(ranges)
                s.log.load(snap)
                for r, c in meta["clocks"].items():
                    s.rclocks.next[int(r)] = int(c)
            else:
                for b, n, rr in meta["log"]:
                    s.log.record(int(b), int(n), rr)
                for r in meta.get("ranges", ()):  # a BSP clock of these ranges, applied
                    s.rclocks.next[r] = max(int(s.rclocks.next[r]), m.clock + 1)
            if m.keys is not None and len(m.keys):
                s.table.load(m.keys, m.vals[:, :dim], m.vals[:, dim:])
        s.van.send(m.src, P.Msg(P.FWD_ACK, req=m.req, gen=s.membership.gen))

    def clear(self, ranges: list[int]) -> None:
        """Rows of `ranges` back to their initial values (a snapshot replaces the range
        whole; a key at its initial row is the same as a key never seen)."""
        s = self.s
        keys, pos = s.rows_of(ranges)
        if len(keys):
            w0 = s.model.init_rows(keys, s.table.W.dtype)
            s.table.W[pos] = w0
            s.table.S[pos] = s.opt.init_state(w0)
