"""A server: the rows of the key ranges it holds (store.SparseTable, rows only for keys
seen, any 64-bit key), the optimizer applied here, the clock rules of consistency.py.

For the ranges it is the *primary* of, a server takes the workers' pushes and pulls:
- push:  each part names its batch; the ranges that absorbed that batch already drop
         it (applied.AppliedLog: exactly-once). BSP holds a clock's pushes until every
         live worker has sent its own (empty pushes included), sums them in worker order
         and divides by the clock's rows from the plan (the push's `div`): one update,
         as in synchronous allreduce. SSP/ASP apply each push as it arrives.
         The update (the new rows, not the gradient) and the batches it absorbed are
         then forwarded to the ranges' backups, and the pushes are acknowledged once
         every live backup has acknowledged the forward: an acknowledged push is on
         every live replica, and replicas are bit-identical in every consistency mode.
- pull:  answered when the clock rule allows (else held and retried after each push),
         with the rows for the keys; unseen keys read as their initial rows.
For the ranges it backs up, it installs what the primary forwards (forward.py) and
acknowledges it. Control from the coordinator: membership (failover, re-replication),
checkpoint, dump, stop (server_ctrl.py).

Checkpoints are consistent cuts: the shard of clock c holds exactly the pushes of clocks
< c. BSP takes it between applying clock c - 1 and clock c; SSP/ASP hold back pushes of
clocks >= c (the pulls that would need them wait too) until every live worker has
pushed clock c - 1, take the shard, then apply what was held.
"""
from __future__ import annotations

import time

import numpy as np

from ...models import make_model
from ...optim import divisor, make_optimizer
from ...store import SparseTable, apply_gradient
from . import checkpoint as ckpt
from . import protocol as P
from .applied import AppliedLog
from .consistency import Clocks
from .forward import Forwarder, Replica
from .membership import Membership
from .rangeclocks import Part, RangeClocks
from .ranges import in_ranges
from .server_ctrl import ServerControl


class Server(ServerControl):
    def __init__(self, cfg, index: int, layout, van, rec, injector, start_clock: int = 0, restore: dict | None = None,
                 membership: Membership | None = None):
        self.cfg, self.index, self.layout, self.van, self.rec, self.injector = cfg, index, layout, van, rec, injector
        bc = cfg.backend
        self.model, self.opt = make_model(cfg.model), make_optimizer(cfg.optim)
        self.table = SparseTable(self.model, self.opt)
        self.membership = membership or Membership.initial(layout, bc)
        self.primaries = {self.membership.gen: self.membership.primary_table}  # gen -> range -> primary
        self.log = AppliedLog(self.membership.n_ranges)
        self.clocks = Clocks(str(bc.consistency), int(bc.staleness), self.membership.counted(), start_clock)
        self.bsp = self.clocks.mode == "bsp"
        self.rclocks = RangeClocks(self.membership.n_ranges, start_clock)  # BSP: clocks per range
        self.pending_bids: set = set()                          # (batch, range) received, not yet applied
        self.held: list[tuple[P.Msg, float]] = []               # pulls waiting for the clock rule
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.cut = (start_clock // self.every + 1) * self.every if self.every else None
        self.held_pushes: list[tuple] = []                      # SSP/ASP: pushes after a pending cut
        self.last_progress = start_clock
        self.log_every = max(1, int(cfg.train.log_every))
        self.stopped = False
        self.updates = 0
        self.dup_parts = 0
        self.reroutes = 0
        self.future: list[P.Msg] = []                           # messages of a newer generation
        self.seen: dict[tuple, None] = {}                       # (rank, part id) of recent pushes
        self.unacked: set = set()                               # ... of those not acknowledged yet
        self.forwarder = Forwarder(self)
        self.replica = Replica(self)
        self.restored_keys = 0
        if restore is not None:
            self.restore_from(restore, self.membership.held_ranges(index), start_clock)

    # ------------------------------------------------------------ dispatch

    def handle(self, m: P.Msg) -> None:
        if m.cmd in (P.PUSH, P.PULL, P.FWD) and m.gen > self.membership.gen:
            self.future.append(m)  # sent under a membership this server has not received yet
            return
        handler = {P.PUSH: self.on_push, P.PULL: self.on_pull, P.CTRL: self.on_ctrl, P.FWD: self.replica.on_forward,
                   P.FWD_ACK: self.forwarder.on_ack, P.PEER_FAILED: self.on_peer_failed}.get(m.cmd)
        if handler is None:
            raise ValueError(f"server {self.index}: unexpected {P.CMD_NAMES.get(m.cmd, m.cmd)} from rank {m.src}")
        handler(m)

    def on_peer_failed(self, m: P.Msg) -> None:
        self.rec.event("peer_failed", sync=True, peer=m.src, peer_role=self.layout.role_of(m.src)[0])
        if m.src == 0:
            raise SystemExit(f"server {self.index}: the coordinator (rank 0) died; the run cannot go on")
        self.forwarder.peer_gone(m.src)

    def worker_of(self, m: P.Msg) -> int:
        role, i = self.layout.role_of(m.src)
        if role != "worker":
            raise ValueError(f"server {self.index}: a {role} (rank {m.src}) sent {P.CMD_NAMES[m.cmd]}")
        return i

    def covered(self, m: P.Msg) -> list[int]:
        """The ranges a push part was meant for: this server's under the sender's generation
        (a re-routed part names its own)."""
        if m.flags & P.F_REROUTE:
            return [int(r) for r in m.meta["ranges"]]
        table = self.primaries.get(m.gen)
        if table is None:
            raise ValueError(f"server {self.index}: a push of generation {m.gen}, which this server never saw")
        return np.flatnonzero(table == self.index).tolist()

    # ------------------------------------------------------------ push

    def on_push(self, m: P.Msg) -> None:
        w = self.worker_of(m)
        demoted = w in self.membership.demoted and w in self.membership.workers
        if w not in self.clocks.workers and not demoted:
            return  # fenced: a worker the coordinator dropped (its late messages are ignored)
        if (m.src, m.req) in self.seen:  # a part re-sent after a timeout: it is here already
            if (m.src, m.req) not in self.unacked:
                self.forwarder.ack([m])
            return
        self.seen[(m.src, m.req)] = None
        if len(self.seen) > 1 << 16:
            del self.seen[next(iter(self.seen))]
        self.unacked.add((m.src, m.req))
        ranges = self.covered(m)
        if m.batch >= 0:
            fresh = [r for r in self.log.fresh(m.batch, ranges) if (m.batch, r) not in self.pending_bids]
            if len(fresh) < len(ranges):
                self.dup_parts += 1
            self.pending_bids.update((m.batch, r) for r in fresh)
        else:
            fresh = []  # an empty tick: no batch behind it
        reroute = bool(m.flags & P.F_REROUTE)
        self.reroutes += reroute
        if not (reroute or demoted):
            self.clocks.on_push(w, m.clock)  # a clock tick (a re-routed part or a demoted straggler's is none)
        if self.bsp:
            part = Part(m, w, set(fresh), set(ranges))
            if self.rclocks.is_late(part):  # its ranges passed its clock (restored from a checkpoint)
                self.apply([(m, fresh)], [m])
            else:
                self.rclocks.add(part)
            self.apply_complete_clocks()
        elif self.cut is not None and m.clock >= self.cut:
            self.held_pushes.append((m, fresh))  # after the pending cut: applied once it is taken
        else:
            self.apply([(m, fresh)], [m])
        self.after_progress()

    def apply(self, parts: list[tuple], acks: list[P.Msg], clock: int | None = None,
              ranges: list[int] | None = None) -> None:
        """One update from push parts [(msg, ranges to apply)]: their gradient rows in those
        ranges, each part divided by its div (optim.divisor: the adaptive optimizers' batch,
        SGD's planned rows; parts that share one are summed first, so a fault-free BSP clock
        is exactly sum / rows), then forwarded to the backups (BSP:
        with the clock and its ranges); `acks` are acknowledged once the backups hold it."""
        by_div: dict[int, list] = {}
        n = self.membership.n_ranges
        for m, use in parts:
            if not use or m.keys is None or not len(m.keys) or m.div <= 0:
                continue
            keys, vals = m.keys, m.vals
            if len(use) < len(self.covered(m)):  # some of its ranges dropped it, or apply later
                keep = in_ranges(keys, use, n)
                keys, vals = keys[keep], vals[keep]
            if len(keys):
                by_div.setdefault(divisor(self.opt, m.div), []).append((keys, vals))
        touched = []
        with self.rec.acct.timed("compute"):
            for div, kv in sorted(by_div.items()):
                keys, g = _sum_rows(kv)
                apply_gradient(self.table, keys, g / div)
                self.updates += len(keys)
                touched.append(keys)
        entries = []
        for m, use in parts:
            if m.batch >= 0 and use:
                use = sorted(use)
                self.log.record(m.batch, m.rows, use)
                self.pending_bids.difference_update((m.batch, r) for r in use)
                entries.append((m.batch, m.rows, use))
        keys = np.unique(np.concatenate(touched)) if len(touched) > 1 else (touched[0] if touched else None)
        self.forwarder.forward(keys, entries, acks, clock, ranges)

    def apply_complete_clocks(self) -> None:
        """BSP: apply every complete clock, oldest first, for the ranges at that clock
        (rangeclocks.py); a checkpoint due at clock c is taken once every range this server
        leads has applied clock c - 1, before any applies clock c."""
        lead = self.membership.primary_ranges(self.index)
        while True:
            got = self.rclocks.ready(lead, self.clocks.workers)
            if got is None:
                break
            c, rc, parts = got
            need = set(rc)
            finished = self.rclocks.done(c, rc)
            self.apply([(p.msg, p.fresh & need) for p in sorted(parts, key=lambda p: p.worker)],
                       [p.msg for p in finished], clock=c, ranges=rc)
            self.clocks.applied = self.rclocks.applied(lead)
            if self.cut is not None and self.clocks.applied >= self.cut:
                self.checkpoint(self.clocks.applied)

    def after_progress(self) -> None:
        """Held pulls that may now go, the SSP/ASP cut, and the per-clock duties (faults, logs)."""
        while not self.bsp and self.cut is not None and self.clocks.min_clock() >= self.cut:
            self.checkpoint(self.cut)  # every live worker has pushed the clocks before the cut
            held, self.held_pushes = self.held_pushes, []
            for part in held:
                if part[0].clock >= self.cut:
                    self.held_pushes.append(part)
                else:
                    self.apply([part], [part[0]])
        self.clocks.cap = self.cut if not self.bsp else None
        self.serve_held()
        p = self.clocks.progress()
        while self.last_progress < p:
            self.last_progress += 1
            c = self.last_progress
            self.injector.on_step(c)
            if c % self.log_every == 0:
                self.rec.metric("step", step=c, keys=len(self.table), updates=self.updates,
                                **self.rec.acct.snapshot())

    # ------------------------------------------------------------ pull

    def on_pull(self, m: P.Msg) -> None:
        if m.clock >= 0 and self.worker_of(m) not in self.clocks.workers:
            if self.worker_of(m) in self.membership.demoted and self.worker_of(m) in self.membership.workers:
                self.answer(m, 0.0, count=False)  # a demoted straggler reads what there is
            return  # else fenced
        if self.clocks.ready(m.clock):
            self.answer(m, 0.0)
        else:
            self.held.append((m, time.perf_counter()))

    def serve_held(self) -> None:
        if not self.held:
            return
        still = []
        for m, t in self.held:
            if self.clocks.ready(m.clock):
                self.answer(m, time.perf_counter() - t)
            else:
                still.append((m, t))
        self.held = still

    def answer(self, m: P.Msg, held_s: float, count: bool = True) -> None:
        with self.rec.acct.timed("compute"):
            rows = self.table.gather(m.keys) if m.keys is not None else np.zeros((0, self.model.dim), np.float32)
        if m.clock >= 0 and count:
            self.clocks.served(self.worker_of(m), m.clock, held_s)
        with self.rec.acct.timed("comm"):
            # Snapshots (clock < 0: the coordinator's evaluation) travel uncompressed.
            self.van.send(m.src, P.Msg(P.PULL_REPLY, req=m.req, clock=m.clock, vals=rows, gen=self.membership.gen),
                          compress=m.clock >= 0)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self, clock: int) -> None:
        """This server's shard of the cut at `clock`: the ranges it is primary of, with
        their rows and their applied-batch records."""
        ranges = self.membership.primary_ranges(self.index)
        keys, pos = self.rows_of(ranges)
        t0 = time.perf_counter()
        with self.rec.acct.timed("checkpoint"):
            path = ckpt.write_shard(self.ckpt_root, clock, self.index, keys, self.table.W[pos], self.table.S[pos],
                                    self.log.export(ranges))
        # the checkpoint's cost, for the job's goodput (launcher/ettr.py)
        self.rec.event("shard_written", clock=clock, seconds=round(time.perf_counter() - t0, 6))
        self.cut = clock + self.every
        self.van.send(0, P.Msg(P.CTRL, clock=clock, meta={"op": "ckpt_done", "clock": clock, "server": self.index,
                                                         "shard": path.name, "keys": int(len(keys)),
                                                         "ranges": ranges}))

    def rows_of(self, ranges) -> tuple[np.ndarray, np.ndarray]:
        """(keys, table positions) of the keys this server holds in `ranges`."""
        keys = self.table.keys()
        pos = np.flatnonzero(in_ranges(keys, ranges, self.membership.n_ranges))
        return keys[pos], pos

    # ------------------------------------------------------------ loop

    def serve(self, idle_timeout: float, deadline: float, early: list | None = None) -> None:
        for m in early or []:  # what arrived together with the start message
            self.handle(m)
        last = time.time()
        while not self.stopped:
            with self.rec.acct.timed("idle"):
                msgs = self.van.recv(0.5)
            now = time.time()
            if msgs:
                last = now
            for m in msgs:
                self.handle(m)
            if now - last > idle_timeout:
                raise TimeoutError(f"server {self.index}: no message for {idle_timeout:g} s (is the coordinator alive?)")
            if now > deadline:
                raise TimeoutError(f"server {self.index}: run.deadline_s passed")
        self.van.flush(5.0)


def _sum_rows(kv: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(keys, summed rows) of several (distinct keys, rows) parts, in part order."""
    if len(kv) == 1:
        return kv[0]
    keys, inv = np.unique(np.concatenate([k for k, _ in kv]), return_inverse=True)
    g = np.zeros((len(keys), kv[0][1].shape[1]), np.float32)
    o = 0
    for k, v in kv:  # keys are distinct within a part: fancy += is safe
        g[inv[o:o + len(k)]] += v
        o += len(k)
    return keys, g
