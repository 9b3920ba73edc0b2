"""A server's control messages from the coordinator, dispatched by a table:

    membership   a new generation: dropped workers stop counting for the clocks; after
                 a server failure, ranges this server now leads are restored from the
                 checkpoint when no copy was left, and ranges it leads with a new (or
                 possibly behind) backup are sent to it as a snapshot (re-replication)
    checkpoint   the shard of the run's last clock (periodic ones are taken by the server)
    dump         the rows of the ranges it leads (run.save_model)
    stop         the final record: counts, per-range records and digests
    abort        the coordinator could not go on
    fenced       the coordinator declared this server dead (it was silent too long)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import protocol as P
from .membership import Membership
from .ranges import range_of


class Fenced(SystemExit):
    pass


class ServerControl:
    """Mixed into Server: everything here acts on the server's state."""

    @property
    def ckpt_root(self) -> Path:
        return Path(self.rec.run_dir) / "checkpoints"

    def on_ctrl(self, m: P.Msg) -> None:
        op = (m.meta or {}).get("op")
        handler = {"membership": self.on_membership, "checkpoint": self.on_checkpoint, "dump": self.on_dump,
                   "stop": self.on_stop, "abort": self.on_abort, "fenced": self.on_fenced}.get(op)
        if handler is None:
            raise ValueError(f"server {self.index}: unknown control message {m.meta}")
        handler(m)

    def on_abort(self, m: P.Msg) -> None:
        raise SystemExit(f"server {self.index}: the coordinator ended the run: {m.meta.get('reason')}")

    def on_fenced(self, m: P.Msg) -> None:
        self.rec.event("fenced", sync=True, reason=m.meta.get("reason"))
        raise Fenced(f"server {self.index}: fenced by the coordinator ({m.meta.get('reason')})")

    def on_checkpoint(self, m: P.Msg) -> None:
        self.checkpoint(int(m.meta["clock"]))

    def on_dump(self, m: P.Msg) -> None:
        keys, pos = self.rows_of(self.membership.primary_ranges(self.index))
        self.van.send(m.src, P.Msg(P.DATA, req=m.req, keys=keys, vals=self.table.W[pos],
                                   meta={"op": "dump", "server": self.index}), kind="dump", compress=False)

    def on_membership(self, m: P.Msg) -> None:
        new = Membership.from_meta(m.meta["membership"])
        if new.gen <= self.membership.gen:
            return
        self.membership = new
        self.primaries[new.gen] = new.primary_table
        fo = m.meta.get("failover") or {}
        lost = [int(r) for r in fo.get("lost", []) if new.ranges[int(r)][:1] == [self.index]]
        if lost:
            self.restore_lost(lost, fo)
            self.rclocks.next[lost] = self.clocks.applied  # BSP: they go on at this server's clock
        self.forwarder.members_changed()
        to: dict[int, list] = {}
        for r, targets in (fo.get("resync") or {}).items():
            if new.ranges[int(r)][:1] == [self.index]:
                for t in targets:
                    to.setdefault(int(t), []).append(int(r))
        for t, ranges in sorted(to.items()):
            self.forwarder.snapshot(t, ranges)
        # Dropped workers stop counting: no clock waits for them again. Pushes they made
        # before they were dropped stay in their clocks (real work, done once).
        self.clocks.set_workers(new.counted())
        if self.bsp:
            self.apply_complete_clocks()
        self.after_progress()
        future, self.future = self.future, []
        for f in future:
            self.handle(f)

    # ------------------------------------------------------------ restore

    def restore_lost(self, ranges: list[int], fo: dict) -> None:
        """Ranges with no copy left: back from the last complete checkpoint (or from their
        initial rows if there is none); what was acknowledged since is lost, and measured."""
        n = 0
        self.replica.clear(ranges)  # a backup still waiting for its snapshot may hold some rows
        if fo.get("manifest"):
            n = self.restore_from(ckpt.read_manifest(fo["manifest"]), ranges, fo.get("clock"))
        self.rec.event("restored_ranges", sync=True, dead_server=fo.get("server"), ranges=ranges, keys=n,
                       clock=fo.get("clock"), manifest=fo.get("manifest"))

    def restore_from(self, info: dict, ranges: list[int], clock) -> int:
        keys, W, S, logs = ckpt.load_ranges(info, ranges, self.membership.n_ranges)
        if len(keys):
            self.table.load(keys, W, S)
        self.log.load(logs)
        self.restored_keys += len(keys)
        self.rec.event("restored", clock=clock, keys=int(len(keys)), ranges=len(ranges), manifest=info["dir"])
        return int(len(keys))

    # ------------------------------------------------------------ the end

    def digests(self) -> dict[str, str]:
        """range -> digest of its rows and records, for every range held here: replicas of
        one range must give the same digest. Rows still at their initial values count as
        absent (a snapshot resets rows rather than deleting keys)."""
        keys = self.table.keys()
        n = len(keys)
        W, S = self.table.W[:n], self.table.S[:n]
        if n:
            w0 = self.model.init_rows(keys, W.dtype)
            live = ~((W == w0).all(1) & (S == self.opt.init_state(w0)).all(1))
        else:
            live = np.zeros(0, bool)
        rng = range_of(keys, self.membership.n_ranges)
        out = {}
        for r in self.membership.held_ranges(self.index):
            sel = np.flatnonzero((rng == r) & live)
            sel = sel[np.argsort(keys[sel], kind="stable")]
            h = hashlib.blake2b(digest_size=16)
            for a in (keys[sel], W[sel], S[sel], np.array(sorted(self.log.bids[r]), np.int64),
                      np.array([self.log.rows[r]], np.int64)):
                h.update(np.ascontiguousarray(a).tobytes())
            out[str(r)] = h.hexdigest()
        return out

    def on_stop(self, m: P.Msg) -> None:
        recs = self.clocks.records()
        d = Path(self.rec.run_dir) / "ps"
        d.mkdir(exist_ok=True)
        tmp = d / f".pulls-server-{self.index}.tmp.npz"
        np.savez(tmp, **recs)
        tmp.replace(d / f"pulls-server-{self.index}.npz")
        lead = self.membership.primary_ranges(self.index)
        info = {"lead_keys": int(len(self.rows_of(lead)[0])), "op": "final", "role": "server", "index": self.index, "acct": self.rec.acct.snapshot(),
                "compression": self.van.compression(), "keys": len(self.table), "table_bytes": self.table.nbytes,
                "updates": self.updates, "held_pulls": len(self.held), "dup_parts": self.dup_parts,
                "reroutes": self.reroutes, "restored_keys": self.restored_keys,
                "applied": self.log.export(lead), "digests": self.digests(),
                "rereplications": self.forwarder.rereplications, "gen": self.membership.gen, **self.clocks.stats()}
        self.van.send(m.src, P.Msg(P.CTRL, meta=info))
        self.stopped = True
