"""A worker: takes an epoch's blocks from the coordinator and runs its clocks.

Per clock: the next lane_batch rows of its lane; pull the rows of the batch's unique keys
(answered when the consistency rule allows); the shared model code computes the summed
gradient; push it with the number of rows behind it. A worker whose lane ran dry still
pushes (empty) until the epoch's last clock: BSP's servers count on one push per worker
per clock, and SSP's on every live worker's clock moving.
"""
from __future__ import annotations

import time

import numpy as np

from ...schedule import Lane
from ...store import KeyIndex
from . import protocol as P
from .client import KVClient
from .membership import Membership


class Worker:
    def __init__(self, cfg, index: int, layout, setup, van, rec, injector, membership: Membership | None = None):
        self.cfg, self.index, self.layout, self.s, self.van, self.rec = cfg, index, layout, setup, van, rec
        self.injector = injector
        bc = cfg.backend
        self.membership = membership or Membership.initial(layout, bc)
        self.client = KVClient(van, layout, self.membership, setup.model.dim, float(bc.request_timeout_s))
        self.idle_timeout = float(bc.idle_timeout_s)
        self.max_inflight = max(1, int(bc.get("max_inflight_pushes", 2)))
        self.kkt = bool(bc.compression.kkt_filter)
        if self.kkt and not hasattr(setup.opt, "kkt_zero"):
            raise SystemExit(f"backend.compression.kkt_filter=true needs an L1 optimizer with a KKT rule "
                             f"(optim=ftrl); got optim={setup.opt.name}")
        self.log_every = max(1, int(cfg.train.log_every))
        self.examples, self.clock, self.step_times = 0, 0, []
        self.kkt_kept, self.kkt_total = 0, 0
        self.kkt_index, self.kkt_resid = KeyIndex(), np.zeros((0, setup.model.dim), np.float32)
        self.t_busy = 0.0
        self.stopped = False

    # ------------------------------------------------------------ control

    def next_order(self, deadline: float) -> P.Msg:
        """The coordinator's next instruction (assign / stop), waiting at most idle_timeout."""
        limit = time.time() + self.idle_timeout
        while True:
            while self.client.inbox:
                m = self.client.inbox.popleft()
                if m.cmd == P.PEER_FAILED:
                    self.rec.event("peer_failed", sync=True, peer=m.src, peer_role=self.layout.role_of(m.src)[0])
                    if m.src == 0:
                        raise SystemExit(f"worker {self.index}: the coordinator (rank 0) died")
                    continue
                op = (m.meta or {}).get("op")
                if op == "membership":
                    self.membership = Membership.from_meta(m.meta["membership"])
                    self.client.set_membership(self.membership)
                    continue
                return m
            now = time.time()
            if now > limit or now > deadline:
                raise TimeoutError(f"worker {self.index}: no instruction from the coordinator for "
                                   f"{self.idle_timeout:g} s")
            with self.rec.acct.timed("idle"):
                self.client.pump(0.5)

    def run(self, deadline: float) -> None:
        while not self.stopped:
            m = self.next_order(deadline)
            op = m.meta.get("op")
            if op == "assign":
                self.run_epoch(m.meta, deadline)
            elif op == "stop":
                self.stop(m.src)
            else:
                raise ValueError(f"worker {self.index}: unknown instruction {m.meta}")
        self.van.flush(5.0)

    # ------------------------------------------------------------ training

    def run_epoch(self, a: dict, deadline: float) -> None:
        s, client = self.s, self.client
        lane = Lane(s.data, [int(x) for x in a["blocks"]])
        b = int(a["lane_batch"])
        for _ in range(int(a["begin"]) - int(a["clock_start"])):  # resuming mid-epoch: skip what is done
            lane.next(b)
        pushes: list[int] = []
        t_epoch = time.perf_counter()
        loss_sum = 0.0
        for clock in range(int(a["begin"]), int(a["end"])):
            t0 = time.perf_counter()
            rows = lane.next(b)
            if len(rows):
                pulled = {}

                def fetch(keys, clock=clock):
                    with self.rec.acct.timed("wait"):
                        pulled["w"] = client.wait(client.pull(keys, clock))
                    return pulled["w"]

                sec = self.rec.acct.seconds
                waited, t1 = sec["wait"], time.perf_counter()
                keys, loss, grad = s.gradient(rows, fetch)  # the shared model code; fetch pulls
                keep = self.kkt_keep(keys, pulled["w"], grad, len(rows)) if self.kkt else None
                sec["compute"] += time.perf_counter() - t1 - (sec["wait"] - waited)  # the pull is not compute
                loss_sum += loss
                with self.rec.acct.timed("comm"):
                    pushes.append(client.push(keys, grad, len(rows), clock, keep))
            else:
                loss = 0.0
                with self.rec.acct.timed("comm"):
                    pushes.append(client.push(np.zeros(0, np.uint64), None, 0, clock))
            with self.rec.acct.timed("wait"):
                while len(pushes) > self.max_inflight:  # bound the pushes in flight
                    client.wait(pushes.pop(0))
            dt = time.perf_counter() - t0
            self.step_times.append(dt)
            self.clock = clock + 1
            self.examples += len(rows)
            self.injector.on_step(self.clock)
            self.injector.slow_down(dt)
            self.van.send(0, P.Msg(P.CTRL, clock=self.clock, rows=len(rows),
                                   meta={"op": "progress", "loss": loss, "rows": len(rows)} if len(rows) else
                                   {"op": "progress"}))
            if self.clock % self.log_every == 0:
                self.rec.metric("step", step=self.clock, epoch=int(a["epoch"]), examples=self.examples,
                                loss=loss / max(1, len(rows)), **self.rec.acct.snapshot())
            if time.time() > deadline:
                raise TimeoutError(f"worker {self.index}: run.deadline_s passed")
        with self.rec.acct.timed("wait"):
            for ts in pushes:  # every push acknowledged before saying done
                client.wait(ts)
        self.t_busy += time.perf_counter() - t_epoch
        self.van.send(0, P.Msg(P.CTRL, clock=self.clock, meta={"op": "done", "epoch": int(a["epoch"]),
                                                              "clock": self.clock, "examples": self.examples,
                                                              "loss_sum": loss_sum}))

    def kkt_keep(self, keys: np.ndarray, w: np.ndarray, grad: np.ndarray, rows: int) -> np.ndarray:
        """Rows worth pushing (OSDI'14's KKT filter): not those whose weights are 0 and whose
        (batch-mean) gradient lies inside the L1 ball, as FTRL leaves such weights at 0.
        Dropping them outright would also drop their share of FTRL's z, which adds up
        over steps until a weight does leave 0; so a dropped gradient is kept here as a
        residual and added to the key's next gradient (error feedback), and goes out once
        the sum matters. `grad` is updated in place to include the residuals."""
        slots, _ = self.kkt_index.insert(keys)
        if self.kkt_index.n > len(self.kkt_resid):
            grown = np.zeros((max(self.kkt_index.n, 2 * len(self.kkt_resid)), grad.shape[1]), np.float32)
            grown[: len(self.kkt_resid)] = self.kkt_resid
            self.kkt_resid = grown
        grad += self.kkt_resid[slots]
        drop = self.s.opt.kkt_zero(w, grad / rows).all(axis=1)
        self.kkt_resid[slots] = np.where(drop[:, None], grad, 0.0)
        self.kkt_total += len(drop)
        self.kkt_kept += int((~drop).sum())
        return ~drop

    def stop(self, src: int) -> None:
        sec = self.rec.acct.seconds
        busy = max(self.t_busy, 1e-9)
        info = {"op": "final", "role": "worker", "index": self.index, "acct": self.rec.acct.snapshot(),
                "compression": self.van.compression(), "clock": self.clock, "examples": self.examples,
                "step_time_s": float(np.median(self.step_times)) if self.step_times else None,
                "wait_fraction": sec.get("wait", 0.0) / busy, "busy_s": self.t_busy,
                "idle_s": sec.get("idle", 0.0), "kkt_kept": self.kkt_kept, "kkt_total": self.kkt_total}
        self.van.send(src, P.Msg(P.CTRL, meta=info))
        self.stopped = True
