"""A server: one shard of the model in a store.SparseTable (rows only for keys seen, any
64-bit key), the optimizer applied here, and the consistency rules of consistency.py.

- push:  BSP holds the pushes of a clock until every live worker has sent its own (empty
         pushes included), sums them in worker order (deterministic), divides by the
         clock's total rows and applies one update per key: one big batch, as in
         synchronous allreduce. SSP/ASP apply each push as it arrives (divided by its own
         rows). Every push is acknowledged on receipt.
- pull:  answered when the clock rule allows (else held and retried after each push),
         with the rows for the keys; unseen keys read as their initial rows and are not
         stored (memory grows with the keys trained, not with the keys asked about).
- control from the coordinator: membership, checkpoint, dump (the whole shard), stop.
Checkpoints are taken when progress reaches a multiple of backend.checkpoint_every, the
same clock on every server without any message (exact in BSP).

Failover (see coordinator.py for the whole story):
- heartbeats to the coordinator every heartbeat_timeout_s / 4, so a hung server is found;
- replication R: the table holds the keys this server owns *and* those it replicates
  (workers push to every replica); pulls, dumps and checkpoint shards cover only the
  keys it owns, so nothing is counted twice;
- a push part id already applied from a worker is acknowledged and not applied again (a
  retried push is idempotent); a push naming a batch already applied (backup instances:
  two copies of one batch) ticks the clock but is not applied;
- a new membership drops dead workers from the clocks (pushes they made before count),
  and may make this server the owner of a dead server's ranges: with R >= 2 it already
  holds them; with R = 1 it restores them from the checkpoint named in the message and
  takes the re-sent (`handover`) pushes, which add to a clock without ticking it;
- messages of a newer membership generation than this server knows wait for it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ...models import make_model
from ...optim import make_optimizer
from ...store import SparseTable, apply_gradient
from . import checkpoint as ckpt
from . import protocol as P
from .consistency import Clocks
from .membership import Membership


class Server:
    def __init__(self, cfg, index: int, layout, van, rec, injector, start_clock: int = 0, restore: dict | None = None,
                 membership: Membership | None = None):
        self.cfg, self.index, self.layout, self.van, self.rec, self.injector = cfg, index, layout, van, rec, injector
        bc = cfg.backend
        self.model, self.opt = make_model(cfg.model), make_optimizer(cfg.optim)
        self.table = SparseTable(self.model, self.opt)
        self.membership = membership or Membership.initial(layout, bc)
        self.clocks = Clocks(str(bc.consistency), int(bc.staleness), self.membership.counted(), start_clock)
        self.bsp = self.clocks.mode == "bsp"
        self.pending_clocks: dict[int, dict[int, P.Msg]] = {}   # BSP: clock -> worker -> push
        self.held: list[tuple[P.Msg, float]] = []               # pulls waiting for the clock rule
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.ckpt_root = Path(rec.run_dir) / "checkpoints"
        self.last_progress = start_clock
        self.log_every = max(1, int(cfg.train.log_every))
        self.stopped = False
        self.updates = 0
        self.hb_every = max(0.1, float(bc.get("heartbeat_timeout_s", 5)) / 4)
        self.last_hb = 0.0
        self.seen: dict[int, dict] = {}                         # worker -> recent push part ids applied
        self.batches: set = set()                               # backup instances: batch ids applied
        self.dup_pushes = 0
        self.dup_batches = 0
        self.handovers = 0
        self.future: list[P.Msg] = []                           # requests of a newer generation
        self.clock_rows: dict[int, int] = {}                    # BSP: rows behind each applied clock
        self.extra: dict[int, list] = {}                        # BSP: handover parts of pending clocks
        self.restored_keys = 0
        if restore is not None:
            keys, W, S = ckpt.load_rows(restore, keep=self.holds)
            if len(keys):
                self.table.load(keys, W, S)
            rec.event("restored", clock=start_clock, keys=int(len(keys)), manifest=restore["dir"])

    # ------------------------------------------------------------ dispatch

    def holds(self, keys: np.ndarray) -> np.ndarray:
        """Keys this server keeps a copy of (owner or replica) under its membership."""
        ring = self.membership.ring
        if ring.replication <= 1:
            return ring.route(keys) == self.index
        return (ring.replicas(keys) == self.index).any(1)

    def owned(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys this server owns (the rest are replicas), and their positions in table order."""
        keys = self.table.keys()
        if self.membership.ring.replication <= 1 or len(self.membership.servers) == 1:
            return keys, np.arange(len(keys))
        own = np.flatnonzero(self.membership.ring.route(keys) == self.index)
        return keys[own], own

    def handle(self, m: P.Msg) -> None:
        if m.cmd in (P.PUSH, P.PULL) and m.gen > self.membership.gen:
            self.future.append(m)  # sent under a membership this server has not received yet
            return
        if m.cmd == P.PUSH:
            self.on_push(m)
        elif m.cmd == P.PULL:
            self.on_pull(m)
        elif m.cmd == P.CTRL:
            self.on_ctrl(m)
        elif m.cmd == P.PEER_FAILED:
            self.rec.event("peer_failed", sync=True, peer=m.src, peer_role=self.layout.role_of(m.src)[0])
            if m.src == 0:
                raise SystemExit(f"server {self.index}: the coordinator (rank 0) died; the run cannot go on")

    def worker_of(self, m: P.Msg) -> int:
        role, i = self.layout.role_of(m.src)
        if role != "worker":
            raise ValueError(f"server {self.index}: a {role} (rank {m.src}) sent {P.CMD_NAMES[m.cmd]}")
        return i

    # ------------------------------------------------------------ push

    def ack(self, m: P.Msg) -> None:
        with self.rec.acct.timed("comm"):
            self.van.send(m.src, P.Msg(P.PUSH_ACK, req=m.req, clock=m.clock, gen=self.membership.gen))

    def on_push(self, m: P.Msg) -> None:
        w = self.worker_of(m)
        demoted = w in self.membership.demoted and w in self.membership.workers
        if w not in self.clocks.workers and not demoted:
            return  # fenced: a worker the coordinator dropped (its late messages are ignored)
        seen = self.seen.setdefault(w, {})
        if m.req in seen:
            self.dup_pushes += 1  # a retried push: applied once already
            self.ack(m)
            return
        seen[m.req] = True
        if len(seen) > 4096:
            del seen[next(iter(seen))]
        meta = m.meta or {}
        batch = meta.get("batch")
        if batch is not None:
            bid = tuple(batch)
            if bid in self.batches:  # a backup copy of a batch another copy delivered first
                self.dup_batches += 1
                m = P.Msg(P.PUSH, req=m.req, clock=m.clock, rows=0, src=m.src, gen=m.gen, meta=m.meta)
            else:
                self.batches.add(bid)
        if meta.get("handover") or demoted:
            # (a demoted straggler's push: applied, its clock no longer counted)
            if m.rows:
                self.on_handover(m)
            self.ack(m)
            return
        self.clocks.on_push(w, m.clock)
        with self.rec.acct.timed("compute"):
            if self.bsp:
                self.pending_clocks.setdefault(m.clock, {})[w] = m
                self.apply_complete_clocks()
            elif m.keys is not None and len(m.keys) and m.rows > 0:
                apply_gradient(self.table, m.keys, m.vals / m.rows)
                self.updates += len(m.keys)
        self.ack(m)
        self.after_progress()

    def on_handover(self, m: P.Msg) -> None:
        """R = 1 failover: the part of a worker's clock-c push that went to a dead server,
        re-sent here (its new owner). It adds to clock c without ticking it."""
        self.handovers += 1
        if m.keys is None or not len(m.keys):
            return
        with self.rec.acct.timed("compute"):
            if self.bsp and m.clock >= self.clocks.applied:
                self.extra.setdefault(m.clock, []).append(m)
                self.apply_complete_clocks()
            else:
                rows = self.clock_rows.get(m.clock, m.rows) if self.bsp else m.rows
                if rows > 0:
                    apply_gradient(self.table, m.keys, m.vals / rows)
                    self.updates += len(m.keys)

    def apply_complete_clocks(self) -> None:
        """BSP: apply every clock whose pushes are all in, in clock order."""
        while True:
            c = self.clocks.applied
            got = self.pending_clocks.get(c)
            if got is None or not self.clocks.workers <= set(got):
                return
            del self.pending_clocks[c]
            parts = [got[w] for w in sorted(got) if got[w].keys is not None and len(got[w].keys) and got[w].rows]
            rows = sum(got[w].rows for w in got)
            parts += [x for x in self.extra.pop(c, []) if x.keys is not None and len(x.keys)]
            self.clock_rows[c] = rows
            self.clock_rows.pop(c - 64, None)
            if parts and rows > 0:
                if len(parts) == 1:
                    keys, g = parts[0].keys, parts[0].vals
                else:
                    keys, inv = np.unique(np.concatenate([p.keys for p in parts]), return_inverse=True)
                    g = np.zeros((len(keys), parts[0].vals.shape[1]), np.float32)
                    o = 0
                    for p in parts:  # keys are distinct within a push: fancy += is safe
                        g[inv[o:o + len(p.keys)]] += p.vals
                        o += len(p.keys)
                apply_gradient(self.table, keys, g / rows)
                self.updates += len(keys)
            self.clocks.applied = c + 1

    def after_progress(self) -> None:
        """Held pulls that may now go, and the per-clock duties (faults, checkpoints, logs)."""
        self.serve_held()
        p = self.clocks.progress()
        while self.last_progress < p:
            self.last_progress += 1
            c = self.last_progress
            self.injector.on_step(c)
            if self.every and c % self.every == 0:
                self.checkpoint(c)
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

    # ------------------------------------------------------------ control

    def on_ctrl(self, m: P.Msg) -> None:
        op = (m.meta or {}).get("op")
        if op == "membership":
            old = self.membership
            self.membership = Membership.from_meta(m.meta["membership"])
            fo = m.meta.get("failover")
            if fo and fo.get("mode") == "checkpoint":
                self.restore_ranges(old, fo)
            # Dropped workers stop counting: no clock waits for them again. Pushes they
            # made before they were dropped stay in their clocks (real work, done once).
            self.clocks.set_workers(self.membership.counted())
            if self.bsp:
                self.apply_complete_clocks()
            self.after_progress()
            future, self.future = self.future, []
            for f in future:
                self.handle(f)
        elif op == "hb":
            pass
        elif op == "abort":
            raise SystemExit(f"server {self.index}: the coordinator ended the run: {m.meta.get('reason')}")
        elif op == "checkpoint":
            self.checkpoint(int(m.meta["clock"]))
        elif op == "dump":
            keys, own = self.owned()
            self.van.send(m.src, P.Msg(P.DATA, req=m.req, keys=keys, vals=self.table.W[own],
                                       meta={"op": "dump", "server": self.index}), kind="dump", compress=False)
        elif op == "stop":
            self.stop(m.src)
        else:
            raise ValueError(f"server {self.index}: unknown control message {m.meta}")

    def checkpoint(self, clock: int) -> None:
        keys, own = self.owned()  # the keys this server owns: every key is in exactly one shard
        n = len(own)
        with self.rec.acct.timed("checkpoint"):
            path = ckpt.write_shard(self.ckpt_root, clock, self.index, keys, self.table.W[own],
                                    self.table.S[own])
        self.van.send(0, P.Msg(P.CTRL, clock=clock, meta={"op": "ckpt_done", "clock": clock, "server": self.index,
                                                         "shard": path.name, "keys": n, "updates": self.updates,
                                                         "gen": self.membership.gen}))

    def restore_ranges(self, old: Membership, fo: dict) -> None:
        """R = 1 failover: the keys the dead server owned that this server now holds come
        back from its shard of the last checkpoint (or start afresh if there was none)."""
        dead = int(fo["server"])
        n = 0
        if fo.get("manifest"):
            info = ckpt.read_manifest(fo["manifest"])
            info["shards"] = [sh for sh in info["shards"] if sh == f"server-{dead}.npz"]
            keys, W, S = ckpt.load_rows(info, keep=lambda k: (old.ring.route(k) == dead) & self.holds(k))
            if keys is not None and len(keys):
                self.table.load(keys, W, S)
                n = len(keys)
        self.restored_keys += n
        self.rec.event("restored_ranges", sync=True, dead_server=dead, keys=n, clock=fo.get("clock"),
                       manifest=fo.get("manifest"))

    def stop(self, src: int) -> None:
        recs = self.clocks.records()
        d = Path(self.rec.run_dir) / "ps"
        d.mkdir(exist_ok=True)
        tmp = d / f".pulls-server-{self.index}.tmp.npz"
        np.savez(tmp, **recs)
        tmp.replace(d / f"pulls-server-{self.index}.npz")
        info = {"op": "final", "role": "server", "index": self.index, "acct": self.rec.acct.snapshot(),
                "compression": self.van.compression(), "keys": len(self.table), "table_bytes": self.table.nbytes,
                "updates": self.updates, "held_pulls": len(self.held), "dup_pushes": self.dup_pushes,
                "dup_batches": self.dup_batches, "handovers": self.handovers, "restored_keys": self.restored_keys,
                **self.clocks.stats()}
        self.van.send(src, P.Msg(P.CTRL, meta=info))
        self.stopped = True

    # ------------------------------------------------------------ loop

    def serve(self, idle_timeout: float, deadline: float, early: list | None = None) -> None:
        for m in early or []:  # what arrived together with the start message
            self.handle(m)
        last = time.time()
        while not self.stopped:
            with self.rec.acct.timed("idle"):
                msgs = self.van.recv(min(0.5, self.hb_every))
            now = time.time()
            if now - self.last_hb >= self.hb_every:
                self.last_hb = now
                self.van.send(0, P.Msg(P.CTRL, meta={"op": "hb", "updates": self.updates}))
            if msgs:
                last = now
            for m in msgs:
                self.handle(m)
            if now - last > idle_timeout:
                raise TimeoutError(f"server {self.index}: no message for {idle_timeout:g} s (is the coordinator alive?)")
            if now > deadline:
                raise TimeoutError(f"server {self.index}: run.deadline_s passed")
        self.van.flush(5.0)
