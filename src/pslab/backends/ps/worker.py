"""A worker: takes an epoch's blocks from the coordinator and runs its clocks.

Per clock: the next lane_batch rows of its stream; pull the rows of the batch's unique
keys (answered when the consistency rule allows); the shared model code computes the
summed gradient; push it with the number of rows behind it. A worker whose stream ran
dry still pushes (empty) until the epoch's last clock: BSP's servers count on one push
per worker per clock, and SSP's on every live worker's clock moving.

Failover (the coordinator decides, the worker follows):
- progress after every clock, and heartbeats whenever it has said nothing to the
  coordinator for heartbeat_timeout_s / 4 (also while it waits), so a hung worker is
  found by its silence;
- `membership`: a new ring or worker set; outstanding requests at servers that left are
  re-routed (client.set_membership); acknowledged pushes to a server whose ranges came
  back from a checkpoint (R = 1) are counted as lost_updates;
- `extend`: more rows for this epoch (a dead worker's unfinished rows, or a straggler's
  as a backup copy) and a later end clock, also after this worker said `done`;
- `cancel`: drop the rest of a backup task (the other copy finished first);
- `fenced`: the coordinator declared this worker dead (it was too slow to answer): it
  stops at once, and servers ignore what it still sends.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque

import numpy as np

from ...data import Rows
from ...store import KeyIndex
from . import protocol as P
from .client import KVClient
from .membership import Membership


class Fenced(Exception):
    pass


class Stream:
    """Rows over a list of segments (block, first row, end row): a lane of whole blocks,
    plus pieces of other lanes handed over later."""

    def __init__(self, data, segments=()):
        self.data = data
        self.segs: deque = deque([int(b), int(a), int(e)] for b, a, e in segments)

    @staticmethod
    def of_blocks(data, blocks) -> list:
        return [[int(b), 0, data.block_len(int(b))] for b in blocks]

    def add(self, segments) -> None:
        self.segs.extend([int(b), int(a), int(e)] for b, a, e in segments)

    def clear(self) -> None:
        self.segs.clear()

    def rows_left(self) -> int:
        return sum(e - a for _, a, e in self.segs)

    def next(self, n: int, take_rows: bool = True) -> Rows | int:
        parts, got = [], 0
        while n > 0 and self.segs:
            seg = self.segs[0]
            take = min(n, seg[2] - seg[1])
            if take_rows:
                parts.append(self.data.block(seg[0]).slice(seg[1], seg[1] + take))
            seg[1] += take
            n -= take
            got += take
            if seg[1] >= seg[2]:
                self.segs.popleft()
        return Rows.concat(parts) if take_rows else got


class Worker:
    def __init__(self, cfg, index: int, layout, setup, van, rec, injector, membership: Membership | None = None):
        self.cfg, self.index, self.layout, self.s, self.van, self.rec = cfg, index, layout, setup, van, rec
        self.injector = injector
        bc = cfg.backend
        self.membership = membership or Membership.initial(layout, bc)
        self.client = KVClient(van, layout, self.membership, setup.model.dim, float(bc.request_timeout_s))
        self.client.on_pump = self.control
        self.client.on_ack = self.on_ack
        self.idle_timeout = float(bc.idle_timeout_s)
        self.hb_every = max(0.1, float(bc.get("heartbeat_timeout_s", 5)) / 4)
        self.backups = bool(bc.get("backup_workers", False))
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
        self.last_sent = time.time()
        # epoch state
        self.epoch, self.end, self.b = None, 0, 1
        self.stream: Stream | None = None
        self.consumed = 0                                   # rows taken from the stream this epoch
        self.tag_owner, self.tag_base = index, 0            # batch ids (backup instances)
        self.pushes: list[int] = []
        self.loss_sum = 0.0
        # failover accounting
        self.acked: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))  # server -> clock -> keys
        self.lost_updates = 0

    # ------------------------------------------------------------ control

    def to_coordinator(self, msg: P.Msg) -> None:
        self.van.send(0, msg)
        self.last_sent = time.time()

    def on_ack(self, server: int, clock: int, nkeys: int) -> None:
        self.acked[server][clock] += nkeys

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
            if op == "membership":
                self.on_membership(m.meta)
            elif op == "extend":
                self.on_extend(m.meta)
            elif op == "cancel":
                if int(m.meta["owner"]) in (self.tag_owner, self.index) and m.meta.get("epoch") == self.epoch:
                    dropped = self.stream.rows_left() if self.stream is not None else 0
                    if self.stream is not None:
                        self.stream.clear()
                    self.rec.event("backup_cancelled", owner=int(m.meta["owner"]), rows_dropped=dropped)
            elif op == "abort":
                raise SystemExit(f"worker {self.index}: the coordinator ended the run: {m.meta.get('reason')}")
            elif op == "fenced":
                raise Fenced(m.meta.get("reason", "declared dead by the coordinator"))
            elif op == "hb":
                pass
            else:
                self.orders.append(m)
        if time.time() - self.last_sent >= self.hb_every:
            self.to_coordinator(P.Msg(P.CTRL, clock=self.clock, meta={"op": "hb", "consumed": self.consumed}))

    def on_membership(self, meta: dict) -> None:
        new = Membership.from_meta(meta["membership"])
        if new.gen <= self.membership.gen:
            return
        fo = meta.get("failover")
        if fo and fo.get("mode") == "checkpoint":
            # R = 1: what the dead server acknowledged at clocks >= the checkpoint is gone.
            dead, c0 = int(fo["server"]), int(fo.get("clock") or 0)
            lost = sum(n for c, n in self.acked.get(dead, {}).items() if c >= c0)
            self.lost_updates += lost
        self.membership = new
        self.client.set_membership(new, fo)

    def on_extend(self, a: dict) -> None:
        if a.get("epoch") != self.epoch or self.stream is None:
            return
        segs = a.get("segments") or []
        if segs and a.get("owner") is not None and self.stream.rows_left() == 0:
            # a backup copy: batch ids follow the straggler's stream, so both copies' batches match
            self.tag_owner, self.tag_base = int(a["owner"]), int(a["pos"]) - self.consumed
        self.stream.add(segs)
        self.end = max(self.end, int(a["end"]))

    def next_order(self, deadline: float) -> P.Msg | None:
        """The coordinator's next instruction (assign / stop), waiting at most idle_timeout;
        None when an `extend` gave the current epoch more clocks."""
        limit = time.time() + self.idle_timeout
        while True:
            self.control()
            if self.orders:
                return self.orders.popleft()
            if self.stream is not None and self.clock < self.end:
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
        self.b = int(a["lane_batch"])
        self.stream = Stream(self.s.data, a.get("segments") or Stream.of_blocks(self.s.data, a["blocks"]))
        self.consumed = 0
        self.tag_owner, self.tag_base = self.index, 0
        skip = (int(a["begin"]) - int(a["clock_start"])) * self.b  # resuming mid-epoch: skip what is done
        if skip:
            self.consumed += self.stream.next(skip, take_rows=False)
        self.clock = int(a["begin"])
        self.end = int(a["end"])
        self.pushes = []
        self.loss_sum = 0.0

    def train(self, deadline: float) -> None:
        s, client, b = self.s, self.client, self.b
        t_epoch = time.perf_counter()
        while self.clock < self.end:
            clock = self.clock
            t0 = time.perf_counter()
            pos = self.consumed
            rows = self.stream.next(b)
            self.consumed += len(rows)
            meta = None
            if self.backups and len(rows):
                meta = {"batch": [self.tag_owner, self.epoch, (self.tag_base + pos) // b]}
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
                self.loss_sum += loss
                with self.rec.acct.timed("comm"):
                    self.pushes.append(client.push(keys, grad, len(rows), clock, keep, meta=meta))
            else:
                loss = 0.0
                with self.rec.acct.timed("comm"):
                    self.pushes.append(client.push(np.zeros(0, np.uint64), None, 0, clock))
            with self.rec.acct.timed("wait"):
                while len(self.pushes) > self.max_inflight:  # bound the pushes in flight
                    client.wait(self.pushes.pop(0))
            dt = time.perf_counter() - t0
            self.step_times.append(dt)
            self.clock = clock + 1
            self.examples += len(rows)
            self.injector.on_step(self.clock)
            self.injector.slow_down(dt)
            pm = {"op": "progress", "consumed": self.consumed}
            if len(rows):
                pm.update(loss=loss, rows=len(rows))
            self.to_coordinator(P.Msg(P.CTRL, clock=self.clock, rows=len(rows), meta=pm))
            if self.clock % self.log_every == 0:
                self.rec.metric("step", step=self.clock, epoch=self.epoch, examples=self.examples,
                                loss=loss / max(1, len(rows)), **self.rec.acct.snapshot())
            if time.time() > deadline:
                raise TimeoutError(f"worker {self.index}: run.deadline_s passed")
            self.control()
        with self.rec.acct.timed("wait"):
            while self.pushes:  # every push acknowledged before saying done
                client.wait(self.pushes.pop(0))
        self.t_busy += time.perf_counter() - t_epoch
        self.to_coordinator(P.Msg(P.CTRL, clock=self.clock, meta={
            "op": "done", "epoch": self.epoch, "clock": self.clock, "end": self.end, "examples": self.examples,
            "loss_sum": self.loss_sum, "consumed": self.consumed}))

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
                "idle_s": sec.get("idle", 0.0), "kkt_kept": self.kkt_kept, "kkt_total": self.kkt_total,
                "lost_updates": self.lost_updates, "resent": self.client.resent, "rerouted": self.client.rerouted}
        self.van.send(src, P.Msg(P.CTRL, meta=info))
        self.stopped = True
