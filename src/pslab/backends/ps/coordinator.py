"""The coordinator (rank 0): hands out the plan's batches, follows the clocks, evaluates,
and ends the run. Its parts, one job each:
    ledger.WorkLedger         the batches, who has them, what the servers acknowledged
    detector.FailureDetector  heartbeats on a thread of their own; silent ranks
    failover.Failover         what a dead worker or server changes (mixed in here)
    ranges.after_failure      the per-range decisions (promote, re-replicate, restore)
    checkpoint.Manifests      a manifest once a clock's shards cover every range
    backups.Backups           backup instances for stragglers
    report.result             the run's numbers, from the servers' and workers' own counts

- Work: each epoch's lanes go to the live workers as lists of batch ids; the epoch is as
  many clocks as the longest queue needs, and grows when batches are handed over.
- Clocks: workers report each clock, the batches they have taken and those every server
  acknowledged; evaluation runs when the slowest live worker passes train.eval_every.
- Evaluation pulls the rows of the test set's keys from the primaries (a snapshot, not
  held by the clock rule) and scores them with the shared code.
- End: final evaluation, model gathered (run.save_model), a final checkpoint, re-
  replications in flight finished, then `stop` to everyone and their final records.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..common import save_model
from . import protocol as P
from .backups import Backups
from .checkpoint import Manifests
from .client import KVClient
from .detector import FailureDetector
from .failover import Failover
from .ledger import WorkLedger
from .membership import Membership
from .report import result


class Coordinator(Failover):
    def __init__(self, cfg, layout, setup, van, hb_comm, rec, injector, plan, start_clock: int = 0,
                 resumed_from: str | None = None, rank_hosts: list[str] | None = None):
        self.cfg, self.layout, self.s, self.van, self.rec = cfg, layout, setup, van, rec
        self.injector, self.plan = injector, plan
        bc = cfg.backend
        # server index -> host: replicas on different hosts (failure domains), at start
        # and when a failover re-replicates
        self.server_hosts = ({i: rank_hosts[layout.server_rank(i)] for i in range(layout.servers)}
                             if rank_hosts and len(set(rank_hosts)) > 1 else None)
        self.membership = Membership.initial(layout, bc, self.server_hosts)
        self.client = KVClient(van, layout, self.membership, setup.model.dim, float(bc.request_timeout_s))
        self.client.on_pump = self.on_client_pump
        self.ledger = WorkLedger(plan)
        self.idle_timeout = float(bc.idle_timeout_s)
        self.hb_timeout = float(bc.heartbeat_timeout_s)
        self.detector = FailureDetector(hb_comm, self.hb_timeout, self.idle_timeout).start()
        self.start_clock, self.resumed_from = start_clock, resumed_from
        stop_at = bc.get("stop_at_clock")
        self.end_clock = plan.total if stop_at is None else min(plan.total, int(stop_at))
        self.eval_every = int(cfg.train.eval_every)
        self.next_eval = (start_clock // self.eval_every + 1) * self.eval_every if self.eval_every else None
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.ckpt_root = Path(rec.run_dir) / "checkpoints"
        self.manifests = Manifests(self.ckpt_root, self.membership.n_ranges, {
            "consistency": str(bc.consistency), "model": cfg.model.name, "optim": cfg.optim.name,
            "workers": layout.workers})
        self.worker_clock = {w: start_clock for w in self.membership.workers}
        self.done: dict[int, int] = {}                   # worker -> the epoch end it reported done at
        self.finals: dict[tuple, dict] = {}
        self.dumps: dict[int, P.Msg] = {}
        self.evals: list[dict] = []
        self.test_keys = np.unique(setup.data.test.keys)
        self.t_start = time.time()
        self.eval_s = 0.0
        self.epoch, self.end, self.shift = 0, 0, 0       # shift: clocks added to the plan by hand-overs
        self.last_min_clock = start_clock
        self.failed: set[int] = set()                    # ranks declared dead (killed, or hung and fenced)
        self.failure_log: list[dict] = []
        self.pending_recovery: list[dict] = []
        self.recovery_s: list[float] = []
        self.failovers: list[dict] = []
        self.servers_lost: list[int] = []
        self.rereplications: list[dict] = []
        self.syncing: dict[int, set] = {}                 # range -> backups waiting for its snapshot
        self.in_eval = self.eval_due = self.stopping = False
        self.backups = Backups(self, bool(bc.get("backup_workers", False)), float(bc.get("backup_factor", 2.0)),
                               int(bc.get("backup_min_rows", 0) or 0) or plan.b)
        self.ops = {"progress": self.on_progress, "done": self.on_done, "ckpt_done": self.on_ckpt_done,
                    "final": self.on_final, "rereplicated": self.on_rereplicated}

    # ------------------------------------------------------------ messages

    def is_member(self, rank: int) -> bool:
        role, i = self.layout.role_of(rank)
        return (role == "worker" and i in self.membership.workers) or (
            role == "server" and i in self.membership.servers)

    def handle(self, m: P.Msg) -> None:
        if m.cmd == P.PEER_FAILED:
            if m.src not in self.failed and self.is_member(m.src):
                self.on_failure(m.src, "ulfm")
            return
        self.detector.heard(m.src)
        if m.src in self.failed:
            return  # fenced: a rank declared dead (a hung one that woke up) is not heard again
        if m.cmd == P.DATA:  # a model shard (gather_model)
            self.dumps[int(m.meta["server"])] = m
            return
        op = (m.meta or {}).get("op") if m.cmd == P.CTRL else None
        if op not in self.ops:
            raise ValueError(f"coordinator: unexpected {P.CMD_NAMES.get(m.cmd, m.cmd)} {m.meta} from rank {m.src}")
        self.ops[op](m)

    def on_progress(self, m: P.Msg) -> None:
        i = self.layout.role_of(m.src)[1]
        self.worker_clock[i] = max(self.worker_clock.get(i, 0), m.clock)
        self.ledger.on_report(i, m.meta.get("taken") if m.meta.get("epoch") == self.epoch else None,
                              m.meta.get("acked"))
        self.on_clock()
        self.backups.check()

    def on_done(self, m: P.Msg) -> None:
        self.on_progress(m)
        if int(m.meta.get("epoch", self.epoch)) == self.epoch:
            self.done[self.layout.role_of(m.src)[1]] = int(m.meta["end"])

    def on_ckpt_done(self, m: P.Msg) -> None:
        meta = m.meta
        clock = int(meta["clock"])
        if self.manifests.on_shard(clock, int(meta["server"]), meta["shard"], meta["ranges"],
                                   {"examples": self.plan.examples_before(clock - self.shift), "time": time.time()}):
            self.rec.event("checkpoint", clock=clock, shards=len(self.manifests.shards[clock]))

    def on_final(self, m: P.Msg) -> None:
        self.finals[(m.meta["role"], int(m.meta["index"]))] = m.meta

    def on_client_pump(self) -> None:
        """After every receive, also inside a wait for pull replies (evaluation): control
        messages, failures, heartbeats."""
        while self.client.inbox:
            self.handle(self.client.inbox.popleft())
        self.check_heartbeats()

    def pump(self, timeout: float) -> None:
        self.client.pump(timeout)
        if self.eval_due and not self.in_eval:
            c = self.min_clock()
            self.evaluate(c)
            while self.next_eval <= c:
                self.next_eval += self.eval_every
            # Clocks that ticked during the evaluation set eval_due again for the point just
            # taken: only a point past it is due.
            self.eval_due = self.next_eval is not None and self.min_clock() >= self.next_eval

    def min_clock(self) -> int:
        live = self.membership.counted() or self.membership.workers
        return min((self.worker_clock.get(w, self.last_min_clock) for w in live), default=self.last_min_clock)

    def on_clock(self) -> None:
        c = self.min_clock()
        while self.last_min_clock < c:
            self.last_min_clock += 1
            self.injector.on_step(self.last_min_clock)
        self.note_recoveries()
        if self.next_eval is not None and c >= self.next_eval:
            self.eval_due = True

    def wait_for(self, cond, what: str, deadline: float) -> None:
        """Pump messages until cond() holds; a silence of idle_timeout or the run's
        deadline ends the run with a clear error instead of a hang."""
        last_heard = time.time()
        n_before = self.van.recv_bytes
        while not cond():
            self.pump(0.2)
            now = time.time()
            if self.van.recv_bytes != n_before:
                last_heard, n_before = now, self.van.recv_bytes
            if now - last_heard > self.idle_timeout:
                raise TimeoutError(f"coordinator: waiting for {what}: nothing heard for {self.idle_timeout:g} s")
            if now > deadline:
                raise TimeoutError(f"coordinator: waiting for {what}: run.deadline_s passed")

    # ------------------------------------------------------------ evaluation and model

    def evaluate(self, clock: int, final: bool = False) -> dict:
        t0 = time.time()
        self.in_eval = True
        try:
            rows = self.client.wait(self.client.pull(self.test_keys, clock=-1, compress=False))
            tk = self.test_keys
            res = self.s.evaluate(lambda k: rows[np.searchsorted(tk, k)])
            point = {"step": clock, "epoch": self.epoch, "examples": self.plan.examples_before(clock - self.shift),
                     "elapsed_s": time.time() - self.t_start, **res}
            if not final or not self.evals or self.evals[-1]["step"] != clock:
                self.rec.shared_metric("eval", **point)
                self.evals.append(point)
            return res
        finally:
            self.in_eval = False
            self.eval_s += time.time() - t0

    def gather_model(self, deadline: float) -> tuple[np.ndarray, np.ndarray]:
        self.dumps = {}
        for srv in self.membership.servers:
            self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "dump"}))
        self.wait_for(lambda: set(self.dumps) >= set(self.membership.servers), "the model shards", deadline)
        got = [self.dumps[s] for s in sorted(self.membership.servers) if self.dumps[s].keys is not None]
        if not got:
            return np.zeros(0, np.uint64), np.zeros((0, self.s.model.dim), np.float32)
        return np.concatenate([g.keys for g in got]), np.concatenate([g.vals for g in got])

    # ------------------------------------------------------------ the run

    def assign(self, epoch: int, begin: int, end: int) -> None:
        """The epoch's batches to the live workers; begin/end are the run's clocks (the
        plan's, moved on by the clocks earlier hand-overs added)."""
        live = list(self.membership.workers)
        queues = self.ledger.assign(epoch, begin - (self.plan.start[epoch] + self.shift), end - begin, live)
        self.backups.new_epoch()
        self.end = max(end, begin + max(len(q) for q in queues.values()))
        for w in live:
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta={
                "op": "assign", "epoch": epoch, "batches": queues[w], "begin": begin, "end": self.end}))

    def run(self, deadline: float) -> dict:
        clock = self.start_clock
        try:
            for e in range(len(self.plan.lanes)):
                c0, c1 = self.plan.start[e] + self.shift, self.plan.start[e + 1] + self.shift
                begin, end = max(c0, clock), min(c1, self.end_clock + self.shift)
                if begin >= end:
                    continue
                self.epoch = e
                self.done = {}
                self.assign(e, begin, end)
                self.wait_for(lambda: all(self.done.get(w) == self.end for w in self.membership.workers),
                              f"the workers to finish epoch {e}", deadline)
                self.note_recoveries(force=True)  # the epoch's last clock is done: so is any recovery in it
                self.shift += self.end - end
                clock = self.end
                if not self.eval_every and end == c1:
                    self.epoch = e + 1
                    self.evaluate(clock)
            self.ledger.queue = {}
            return self.finish(clock, deadline)
        finally:
            self.detector.stop()

    def finish(self, clock: int, deadline: float) -> dict:
        train_s = time.time() - self.t_start - self.eval_s  # training only: no evaluation, no gathering
        # An evaluation that fell due on the last clock is this final one. Left pending, the
        # pumps below would run it after `stop`, with no server left to answer its pulls.
        self.eval_due, self.next_eval = False, None
        final = self.evaluate(clock, final=True)
        if self.cfg.run.save_model:
            keys, W = self.gather_model(deadline)
            save_model(Path(self.rec.run_dir) / "model.npz", keys, W)
        self.wait_for(lambda: not any(self.syncing.values()), "re-replications", deadline)
        if self.every:
            # the run's end is always a checkpoint too (the periodic ones the servers took
            # themselves; one a server died in never completes, and is not waited for)
            if clock not in self.manifests.shards:
                for srv in self.membership.servers:
                    self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "checkpoint",
                                                                                    "clock": clock}))
            self.wait_for(lambda: clock in self.manifests.written, "the final checkpoint", deadline)
        others = [("server", s) for s in self.membership.servers] + [("worker", w) for w in self.membership.workers]
        self.stopping = True
        for role, i in others:
            rank = self.layout.server_rank(i) if role == "server" else self.layout.worker_rank(i)
            self.van.send(rank, P.Msg(P.CTRL, meta={"op": "stop"}))
        try:
            self.wait_for(lambda: all(k in self.finals for k in others), "final records",
                          min(deadline, time.time() + 10))
        except TimeoutError as e:
            self.rec.event("final_records_missing", error=str(e),
                           missing=[k for k in others if k not in self.finals])
        self.note_recoveries(force=True)
        self.van.flush(5.0)
        return result(self, clock, final, train_s)
