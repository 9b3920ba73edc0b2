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
        self.clocks = Clocks(str(bc.consistency), int(bc.staleness), self.membership.workers, start_clock)
        self.bsp = self.clocks.mode == "bsp"
        self.pending_clocks: dict[int, dict[int, P.Msg]] = {}   # BSP: clock -> worker -> push
        self.held: list[tuple[P.Msg, float]] = []               # pulls waiting for the clock rule
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.ckpt_root = Path(rec.run_dir) / "checkpoints"
        self.last_progress = start_clock
        self.log_every = max(1, int(cfg.train.log_every))
        self.stopped = False
        self.updates = 0
        if restore is not None:
            mine = lambda k: self.membership.ring.route(k) == self.index  # noqa: E731
            keys, W, S = ckpt.load_rows(restore, keep=mine)
            if len(keys):
                self.table.load(keys, W, S)
            rec.event("restored", clock=start_clock, keys=int(len(keys)), manifest=restore["dir"])

    # ------------------------------------------------------------ dispatch

    def handle(self, m: P.Msg) -> None:
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

    def on_push(self, m: P.Msg) -> None:
        w = self.worker_of(m)
        if w not in self.clocks.workers:
            return  # fenced: a worker the coordinator dropped (its late messages are ignored)
        self.clocks.on_push(w, m.clock)
        with self.rec.acct.timed("compute"):
            if self.bsp:
                self.pending_clocks.setdefault(m.clock, {})[w] = m
                self.apply_complete_clocks()
            elif m.keys is not None and len(m.keys):
                apply_gradient(self.table, m.keys, m.vals / m.rows)
                self.updates += len(m.keys)
        with self.rec.acct.timed("comm"):
            self.van.send(m.src, P.Msg(P.PUSH_ACK, req=m.req, clock=m.clock, gen=self.membership.gen))
        self.after_progress()

    def apply_complete_clocks(self) -> None:
        """BSP: apply every clock whose pushes are all in, in clock order."""
        while True:
            c = self.clocks.applied
            got = self.pending_clocks.get(c)
            if got is None or not self.clocks.workers <= set(got):
                return
            del self.pending_clocks[c]
            parts = [got[w] for w in sorted(got) if got[w].keys is not None and len(got[w].keys)]
            rows = sum(got[w].rows for w in got)
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
            return
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

    def answer(self, m: P.Msg, held_s: float) -> None:
        with self.rec.acct.timed("compute"):
            rows = self.table.gather(m.keys) if m.keys is not None else np.zeros((0, self.model.dim), np.float32)
        if m.clock >= 0:
            self.clocks.served(self.worker_of(m), m.clock, held_s)
        with self.rec.acct.timed("comm"):
            # Snapshots (clock < 0: the coordinator's evaluation) travel uncompressed.
            self.van.send(m.src, P.Msg(P.PULL_REPLY, req=m.req, clock=m.clock, vals=rows, gen=self.membership.gen),
                          compress=m.clock >= 0)

    # ------------------------------------------------------------ control

    def on_ctrl(self, m: P.Msg) -> None:
        op = (m.meta or {}).get("op")
        if op == "membership":
            self.membership = Membership.from_meta(m.meta["membership"])
            self.clocks.set_workers(self.membership.workers)
            for c in list(self.pending_clocks):  # pushes of dropped workers no longer count
                for w in [w for w in self.pending_clocks[c] if w not in self.clocks.workers]:
                    del self.pending_clocks[c][w]
            if self.bsp:
                self.apply_complete_clocks()
            self.after_progress()
        elif op == "checkpoint":
            self.checkpoint(int(m.meta["clock"]))
        elif op == "dump":
            keys = self.table.keys()
            n = len(keys)
            self.van.send(m.src, P.Msg(P.DATA, req=m.req, keys=keys, vals=self.table.W[:n],
                                       meta={"op": "dump", "server": self.index}), kind="dump", compress=False)
        elif op == "stop":
            self.stop(m.src)
        else:
            raise ValueError(f"server {self.index}: unknown control message {m.meta}")

    def checkpoint(self, clock: int) -> None:
        n = len(self.table)
        with self.rec.acct.timed("checkpoint"):
            path = ckpt.write_shard(self.ckpt_root, clock, self.index, self.table.keys(), self.table.W[:n],
                                    self.table.S[:n])
        self.van.send(0, P.Msg(P.CTRL, clock=clock, meta={"op": "ckpt_done", "clock": clock, "server": self.index,
                                                         "shard": path.name, "keys": n}))

    def stop(self, src: int) -> None:
        recs = self.clocks.records()
        d = Path(self.rec.run_dir) / "ps"
        d.mkdir(exist_ok=True)
        tmp = d / f".pulls-server-{self.index}.tmp.npz"
        np.savez(tmp, **recs)
        tmp.replace(d / f"pulls-server-{self.index}.npz")
        info = {"op": "final", "role": "server", "index": self.index, "acct": self.rec.acct.snapshot(),
                "compression": self.van.compression(), "keys": len(self.table), "table_bytes": self.table.nbytes,
                "updates": self.updates, "held_pulls": len(self.held), **self.clocks.stats()}
        self.van.send(src, P.Msg(P.CTRL, meta=info))
        self.stopped = True

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
