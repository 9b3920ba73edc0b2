"""A worker: runs the batches the coordinator gives it, one per clock.

Per clock: the next batch of its queue (ledger.Plan: fixed ids, rows and divisor, built
here from the same config as on the coordinator, so an assignment is a list of ids);
pull the rows of the batch's unique keys (answered when the consistency rule allows);
the shared model code computes the summed gradient; push it, with the batch id, to every
live server. A worker whose queue ran dry still pushes (empty) until the epoch's last
clock: BSP's servers count on one push per worker per clock, and SSP's on every live
worker's clock moving.

Reports (after every clock, to the coordinator): its clock, how many batches it has
taken, and the batches whose pushes every server acknowledged since the last report;
"done" is only what the servers acknowledged. Its heartbeat comes from a thread of its
own (detector.Heartbeat), so a long step is not mistaken for a hang.

Orders from the coordinator:
- `membership`: a new worker set or replica map; outstanding requests at servers that
  left are re-routed (client.set_membership);
- `extend`: more batches for this epoch (a dead worker's, or a straggler's as a backup
  copy, under their own ids) and a later end clock, also after this worker said `done`;
- `cancel`: drop what is left of a backup task (the other copy finished first);
- `fenced`: the coordinator declared this worker dead (it was silent too long): it stops
  at once, and servers ignore what it still sends.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from ...optim import divisor
from ...schedule import read_segments
from ...store import KeyIndex
from . import protocol as P
from .client import KVClient
from .ledger import Plan
from .membership import Membership


class Fenced(Exception):
    pass


class Worker:
    def __init__(self, cfg, index: int, layout, setup, van, rec, injector, membership: Membership | None = None):
        self.cfg, self.index, self.layout, self.s, self.van, self.rec = cfg, index, layout, setup, van, rec
        self.injector = injector
        bc = cfg.backend
        self.plan = Plan(setup, layout.workers, int(cfg.train.epochs), str(bc.consistency) == "bsp")
        self.membership = membership or Membership.initial(layout, bc)
        self.client = KVClient(van, layout, self.membership, setup.model.dim, float(bc.request_timeout_s))
        self.client.on_pump = self.control
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
        self.orders: deque = deque()
        # epoch state
        self.epoch, self.end = None, 0
        self.queue: deque = deque()                         # (batch id, task) to run this epoch
        self.taken = 0
        self.pushes: list[tuple[int, int]] = []             # (request, batch id) not yet acknowledged
        self.newly_acked: list[int] = []
        self.loss_sum = 0.0

    # ------------------------------------------------------------ control

    def to_coordinator(self, msg: P.Msg) -> None:
        self.van.send(0, msg)

    def control(self) -> None:
        """Act on control messages (called after every receive, also inside waits)."""
        while self.client.inbox:
            m = self.client.inbox.popleft()
            if m.cmd == P.PEER_FAILED:
                role = self.layout.role_of(m.src)[0]
                self.rec.event("peer_failed", sync=True, peer=m.src, peer_role=role)
                if m.src == 0:
                    raise SystemExit(f"worker {self.index}: the coordinator (rank 0) died; the run cannot go on "
                                     f"(the coordinator is a single point of failure)")
                continue
            if m.src != 0:
                continue  # only the coordinator gives orders
            op = (m.meta or {}).get("op")
            handler = {"membership": self.on_membership, "extend": self.on_extend, "cancel": self.on_cancel,
                       "abort": self.on_abort, "fenced": self.on_fenced}.get(op)
            if handler is not None:
                handler(m.meta)
            else:
                self.orders.append(m)  # assign / stop: the run loop's

    def on_abort(self, meta: dict) -> None:
        raise SystemExit(f"worker {self.index}: the coordinator ended the run: {meta.get('reason')}")

    def on_fenced(self, meta: dict) -> None:
        raise Fenced(meta.get("reason", "declared dead by the coordinator"))

    def on_membership(self, meta: dict) -> None:
        new = Membership.from_meta(meta["membership"])
        if new.gen > self.membership.gen:
            self.membership = new
            self.client.set_membership(new)

    def on_extend(self, a: dict) -> None:
        if a.get("epoch") != self.epoch:
            return
        bids = [int(b) for b in a.get("batches") or []]
        if bids:
            self.injector.point("handover", self.clock)
        task = int(a["copy_of"]) if a.get("copy_of") is not None else self.index
        self.queue.extend((b, task) for b in bids)
        self.end = max(self.end, int(a["end"]))

    def on_cancel(self, a: dict) -> None:
        if a.get("epoch") != self.epoch:
            return
        owner = int(a["owner"])
        before = len(self.queue)
        self.queue = deque(x for x in self.queue if x[1] != owner)
        self.rec.event("backup_cancelled", owner=owner, batches_dropped=before - len(self.queue))

    def next_order(self, deadline: float) -> P.Msg | None:
        """The coordinator's next instruction (assign / stop), waiting at most idle_timeout;
        None when an `extend` gave the current epoch more clocks."""
        limit = time.time() + self.idle_timeout
        while True:
            self.control()
            if self.orders:
                return self.orders.popleft()
            if self.epoch is not None and self.clock < self.end:
                return None
            now = time.time()
            if now > limit or now > deadline:
                raise TimeoutError(f"worker {self.index}: no instruction from the coordinator for "
                                   f"{self.idle_timeout:g} s")
            with self.rec.acct.timed("idle"):
                self.client.pump(0.2)

    def run(self, deadline: float) -> None:
        try:
            while not self.stopped:
                m = self.next_order(deadline)
                if m is None:
                    self.train(deadline)
                    continue
                op = m.meta.get("op")
                if op == "assign":
                    self.start_epoch(m.meta)
                    self.train(deadline)
                elif op == "stop":
                    self.stop(m.src)
                else:
                    raise ValueError(f"worker {self.index}: unknown instruction {m.meta}")
        except Fenced as e:
            self.rec.event("fenced", sync=True, reason=str(e), clock=self.clock)
            return
        self.van.flush(5.0)

    # ------------------------------------------------------------ training

    def start_epoch(self, a: dict) -> None:
        self.epoch = int(a["epoch"])
        self.queue = deque((int(b), self.index) for b in a["batches"])
        self.taken = 0
        self.clock = int(a["begin"])
        self.end = int(a["end"])
        self.pushes = []
        self.loss_sum = 0.0

    def settle(self, keep: int) -> None:
        """Wait until at most `keep` pushes are unacknowledged; note the batches done."""
        while self.pushes and (len(self.pushes) > keep or self.client.done(self.pushes[0][0])):
            ts, bid = self.pushes.pop(0)
            self.client.wait(ts)
            if bid >= 0:
                self.newly_acked.append(bid)

    def report(self, op: str, **extra) -> None:
        meta = {"op": op, "taken": self.taken, "acked": self.newly_acked, "epoch": self.epoch, **extra}
        self.newly_acked = []
        self.to_coordinator(P.Msg(P.CTRL, clock=self.clock, meta=meta))

    def train(self, deadline: float) -> None:
        s, client = self.s, self.client
        t_epoch = time.perf_counter()
        while self.clock < self.end:
            clock = self.clock
            t0 = time.perf_counter()
            bid = -1
            if self.queue:
                bid, _ = self.queue.popleft()
                self.taken += 1
            batch = self.plan.batches.get(bid)
            loss, n = 0.0, 0
            if batch is not None:
                rows = read_segments(s.data, batch["segs"])
                n = len(rows)
                pulled = {}

                def fetch(keys, clock=clock):
                    with self.rec.acct.timed("wait"):
                        pulled["w"] = client.wait(client.pull(keys, clock))
                    return pulled["w"]

                sec = self.rec.acct.seconds
                waited, t1 = sec["wait"], time.perf_counter()
                keys, loss, grad = s.gradient(rows, fetch)  # the shared model code; fetch pulls
                keep = self.kkt_keep(keys, pulled["w"], grad, n) if self.kkt else None
                sec["compute"] += time.perf_counter() - t1 - (sec["wait"] - waited)  # the pull is not compute
                self.loss_sum += loss
            else:
                keys, grad, keep = np.zeros(0, np.uint64), None, None
            self.injector.point("before_push", clock)
            with self.rec.acct.timed("comm"):
                ts = client.push(keys, grad, n, clock, keep, batch=bid, div=batch["div"] if batch else 0,
                                 between=lambda c=clock: self.injector.point("mid_push", c))
            self.pushes.append((ts, bid))
            self.injector.point("after_push", clock)
            with self.rec.acct.timed("wait"):
                self.settle(self.max_inflight)  # bound the pushes in flight
            dt = time.perf_counter() - t0
            self.step_times.append(dt)
            self.clock = clock + 1
            self.examples += n
            self.injector.on_step(self.clock)
            self.injector.slow_down(dt)
            self.report("progress", **({"loss": loss, "rows": n} if n else {}))
            if self.clock % self.log_every == 0:
                self.rec.metric("step", step=self.clock, epoch=self.epoch, examples=self.examples,
                                loss=loss / max(1, n), **self.rec.acct.snapshot())
            if time.time() > deadline:
                raise TimeoutError(f"worker {self.index}: run.deadline_s passed")
            self.control()
        with self.rec.acct.timed("wait"):
            self.settle(0)  # every push acknowledged before saying done
        self.t_busy += time.perf_counter() - t_epoch
        self.report("done", end=self.end, examples=self.examples, loss_sum=self.loss_sum)

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
        drop = self.s.opt.kkt_zero(w, grad / divisor(self.s.opt, rows)).all(axis=1)
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
                "idle_s": sec.get("idle", 0.0), "kkt_kept": self.kkt_kept, "kkt_total": self.kkt_total,
                "acked": {str(b): sorted(r) for b, r in self.client.acked.items()},
                "resent": self.client.resent, "rerouted": self.client.rerouted}
        self.van.send(src, P.Msg(P.CTRL, meta=info))
        self.stopped = True
