"""The coordinator (rank 0): the plan, the clocks, the membership and the run's result.

- Work: each epoch's blocks are dealt round-robin into one queue per live worker (the
  lanes of Setup.lanes, which backend=local with lanes=W reproduces) and sent with the
  epoch's clock range; the epoch is as many clocks as its longest lane needs.
- Clocks: workers report each clock (progress, also the heartbeat failover will use);
  the coordinator triggers evaluation on them and waits for every worker's `done`.
- Evaluation: pulls the rows of the test set's keys from the servers (a snapshot, not
  held by the clock rule) and scores them with the shared code. FM margins are not
  additive over servers, so pulling rows beats asking servers for partial margins.
- Checkpoints: servers write their shards at the same clocks on their own; the
  coordinator writes the manifest once all shards of a clock are on disk.
- End: final evaluation, model gathered from the servers (run.save_model), a final
  checkpoint, then `stop` to everyone and their final records (bounded wait).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..common import save_model
from . import checkpoint as ckpt
from . import protocol as P
from .client import KVClient
from .membership import Membership


class Plan:
    """Epochs as clock ranges: rows_per_clock[e][t] examples at clock t of epoch e."""

    def __init__(self, setup, n_workers: int, epochs: int):
        self.s, self.W = setup, n_workers
        self.b = setup.lane_batch(n_workers)
        self.lanes, self.rows, self.start = [], [], [0]
        for e in range(epochs):
            lanes = setup.lanes(e, n_workers)
            lane_rows = np.array([sum(setup.data.block_len(x) for x in lane) for lane in lanes])
            steps = int(max(-(-lane_rows // self.b))) if len(lane_rows) else 0
            t = np.arange(steps)[:, None] * self.b
            per_clock = np.clip(lane_rows[None, :] - t, 0, self.b).sum(1)
            self.lanes.append(lanes)
            self.rows.append(per_clock)
            self.start.append(self.start[-1] + steps)

    @property
    def total(self) -> int:
        return self.start[-1]

    def examples_before(self, clock: int) -> int:
        n = 0
        for e, r in enumerate(self.rows):
            n += int(r[: max(0, min(len(r), clock - self.start[e]))].sum())
        return n


class Coordinator:
    def __init__(self, cfg, layout, setup, van, rec, injector, plan: Plan, start_clock: int = 0,
                 resumed_from: str | None = None):
        self.cfg, self.layout, self.s, self.van, self.rec = cfg, layout, setup, van, rec
        self.injector, self.plan = injector, plan
        bc = cfg.backend
        self.membership = Membership.initial(layout, bc)
        self.client = KVClient(van, layout, self.membership, setup.model.dim, float(bc.request_timeout_s))
        self.idle_timeout = float(bc.idle_timeout_s)
        self.start_clock, self.resumed_from = start_clock, resumed_from
        stop_at = bc.get("stop_at_clock")
        self.end_clock = plan.total if stop_at is None else min(plan.total, int(stop_at))
        self.eval_every = int(cfg.train.eval_every)
        self.next_eval = (start_clock // self.eval_every + 1) * self.eval_every if self.eval_every else None
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.ckpt_root = Path(rec.run_dir) / "checkpoints"
        self.shards: dict[int, dict[int, str]] = {}      # clock -> server -> shard file
        self.manifests: list[int] = []
        self.worker_clock = {w: start_clock for w in self.membership.workers}
        self.done: set[int] = set()
        self.finals: dict[tuple, dict] = {}
        self.dumps: dict[int, P.Msg] = {}
        self.evals: list[dict] = []
        self.failures = 0
        self.test_keys = np.unique(setup.data.test.keys)
        self.t_start = time.time()
        self.eval_s = 0.0
        self.epoch = 0
        self.last_min_clock = start_clock

    # ------------------------------------------------------------ messages

    def handle(self, m: P.Msg) -> None:
        if m.cmd == P.PEER_FAILED:
            role, i = self.layout.role_of(m.src)
            self.failures += 1
            self.rec.event("failure_detected", sync=True, peer=m.src, peer_role=role, peer_index=i)
            raise SystemExit(f"coordinator: {role} {i} (rank {m.src}) died; PS failover is not enabled")
        if m.cmd == P.DATA:  # a model shard (gather_model)
            self.dumps[int(m.meta["server"])] = m
            return
        if m.cmd != P.CTRL:
            return
        meta = m.meta or {}
        op = meta.get("op")
        role, i = self.layout.role_of(m.src)
        if op == "progress":
            self.worker_clock[i] = max(self.worker_clock.get(i, 0), m.clock)
            self.on_clock()
        elif op == "done":
            self.worker_clock[i] = max(self.worker_clock.get(i, 0), int(meta["clock"]))
            self.done.add(i)
            self.on_clock()
        elif op == "ckpt_done":
            self.shards.setdefault(int(meta["clock"]), {})[int(meta["server"])] = meta["shard"]
            self.maybe_manifest(int(meta["clock"]))
        elif op == "final":
            self.finals[(meta["role"], int(meta["index"]))] = meta
        else:
            raise ValueError(f"coordinator: unknown message {meta} from rank {m.src}")

    def pump(self, timeout: float) -> None:
        self.client.pump(timeout)
        while self.client.inbox:
            self.handle(self.client.inbox.popleft())

    def min_clock(self) -> int:
        return min(self.worker_clock[w] for w in self.membership.workers)

    def on_clock(self) -> None:
        c = self.min_clock()
        while self.last_min_clock < c:
            self.last_min_clock += 1
            self.injector.on_step(self.last_min_clock)
        if self.next_eval is not None and c >= self.next_eval:
            self.evaluate(c)
            while self.next_eval <= c:
                self.next_eval += self.eval_every

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

    def model_rows(self, keys: np.ndarray) -> np.ndarray:
        return self.client.wait(self.client.pull(keys, clock=-1, compress=False))

    def evaluate(self, clock: int, final: bool = False) -> dict:
        t0 = time.time()
        try:
            return self._evaluate(clock, final)
        finally:
            self.eval_s += time.time() - t0

    def _evaluate(self, clock: int, final: bool) -> dict:
        rows = self.model_rows(self.test_keys)
        tk = self.test_keys
        res = self.s.evaluate(lambda k: rows[np.searchsorted(tk, k)])
        point = {"step": clock, "epoch": self.epoch, "examples": self.plan.examples_before(clock),
                 "elapsed_s": time.time() - self.t_start, **res}
        if not final or not self.evals or self.evals[-1]["step"] != clock:
            self.rec.shared_metric("eval", **point)
            self.evals.append(point)
        return res

    def gather_model(self, deadline: float) -> tuple[np.ndarray, np.ndarray]:
        for srv in self.membership.servers:
            self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "dump"}))
        self.dumps = {}
        self.wait_for(lambda: len(self.dumps) == len(self.membership.servers), "the model shards", deadline)
        got = self.dumps
        keys = np.concatenate([got[s].keys for s in sorted(got)])
        W = np.concatenate([got[s].vals for s in sorted(got)]) if keys.size else np.zeros((0, self.s.model.dim))
        return keys, W

    # ------------------------------------------------------------ checkpoints

    def maybe_manifest(self, clock: int) -> None:
        got = self.shards.get(clock, {})
        if set(got) >= set(self.membership.servers) and clock not in self.manifests:
            ckpt.write_manifest(self.ckpt_root, clock, {
                "shards": [got[s] for s in sorted(got)], "servers": sorted(got),
                "examples": self.plan.examples_before(clock), "consistency": str(self.cfg.backend.consistency),
                "model": self.cfg.model.name, "optim": self.cfg.optim.name, "workers": self.layout.workers,
                "time": time.time()})
            self.manifests.append(clock)
            self.rec.event("checkpoint", clock=clock, shards=len(got))

    def publish(self, membership: Membership) -> None:
        """A new membership generation to every live server and worker (failover: drop a
        dead worker from the clocks, hand a dead server's ring ranges to its successors)."""
        self.membership = membership
        self.client.set_membership(membership)
        self.worker_clock = {w: self.worker_clock.get(w, self.min_clock()) for w in membership.workers}
        meta = {"op": "membership", "membership": membership.to_meta()}
        for s in membership.servers:
            self.van.send(self.layout.server_rank(s), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        for w in membership.workers:
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        self.rec.event("membership", **membership.to_meta())

    # ------------------------------------------------------------ the run

    def assign(self, epoch: int, begin: int, end: int) -> None:
        lanes = self.plan.lanes[epoch]
        for j, w in enumerate(self.membership.workers):
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta={
                "op": "assign", "epoch": epoch, "blocks": [int(x) for x in lanes[j]],
                "clock_start": self.plan.start[epoch], "begin": begin, "end": end, "lane_batch": self.plan.b}))

    def run(self, deadline: float) -> dict:
        epochs = len(self.plan.lanes)
        clock = self.start_clock
        for e in range(epochs):
            c0, c1 = self.plan.start[e], self.plan.start[e + 1]
            begin, end = max(c0, clock), min(c1, self.end_clock)
            if begin >= end:
                continue
            self.epoch = e
            self.done = set()
            self.assign(e, begin, end)
            self.wait_for(lambda: self.done >= set(self.membership.workers), f"the workers to finish epoch {e}",
                          deadline)
            clock = end
            if not self.eval_every and end == c1:
                self.epoch = e + 1
                self.evaluate(clock)
        return self.finish(clock, deadline)

    def finish(self, clock: int, deadline: float) -> dict:
        train_s = time.time() - self.t_start - self.eval_s  # training only: no evaluation, no gathering
        final = self.evaluate(clock, final=True)
        if self.cfg.run.save_model:
            keys, W = self.gather_model(deadline)
            save_model(Path(self.rec.run_dir) / "model.npz", keys, W)
        if self.every:
            if clock % self.every:  # the run's end is always a checkpoint too
                for srv in self.membership.servers:
                    self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "checkpoint",
                                                                                    "clock": clock}))
            due = [c for c in range(self.start_clock + 1, clock + 1) if c % self.every == 0 or c == clock]
            self.wait_for(lambda: all(c in self.manifests for c in due), "checkpoint shards", deadline)
        others = [("server", s) for s in self.membership.servers] + [("worker", w) for w in self.membership.workers]
        for role, i in others:
            r = self.layout.server_rank(i) if role == "server" else self.layout.worker_rank(i)
            self.van.send(r, P.Msg(P.CTRL, meta={"op": "stop"}))
        try:
            self.wait_for(lambda: len(self.finals) >= len(others), "final records", min(deadline, time.time() + 10))
        except TimeoutError as e:
            self.rec.event("final_records_missing", error=str(e),
                           missing=[k for k in others if k not in self.finals])
        self.van.flush(5.0)
        return self.result(clock, final, train_s)

    def result(self, clock: int, final: dict, train_s: float) -> dict:
        fin = self.finals
        servers = [v for (role, _), v in sorted(fin.items()) if role == "server"]
        workers = [v for (role, _), v in sorted(fin.items()) if role == "worker"]
        pulls = sum(v["pulls"] for v in servers)
        by_role = {"coordinator": self.rec.acct.snapshot()["bytes_sent"],
                   "server": sum(v["acct"]["bytes_sent"] for v in servers),
                   "worker": sum(v["acct"]["bytes_sent"] for v in workers)}
        comp_parts = [v["compression"] for v in servers + workers] + [self.van.compression()]
        wire = sum(c["data_bytes"] for c in comp_parts)
        raw = sum(c["data_bytes_uncompressed"] for c in comp_parts)
        compression = {"data_bytes": wire, "data_bytes_uncompressed": raw,
                       "all": raw / wire if wire else None}
        for sw in ("fp16", "delta_keys", "key_cache", "kkt_filter"):
            if bool(self.cfg.backend.compression.get(sw, False)):
                without = sum(c.get(sw, c["data_bytes"]) for c in comp_parts)
                compression[sw] = without / wire if wire else None
        kkt_total = sum(v.get("kkt_total", 0) for v in workers)
        if kkt_total:
            compression["kkt_kept_fraction"] = sum(v.get("kkt_kept", 0) for v in workers) / kkt_total
        steps = [v["step_time_s"] for v in workers if v.get("step_time_s") is not None]
        examples = self.plan.examples_before(clock) - self.plan.examples_before(self.start_clock)
        return {
            "steps": clock, "examples": examples, "train_s": train_s, "eval_s": self.eval_s,
            "examples_per_s": examples / train_s if train_s > 0 else None,
            "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
            "workers": self.layout.workers, "servers": self.layout.servers,
            "consistency": str(self.cfg.backend.consistency),
            "staleness": int(self.cfg.backend.staleness) if str(self.cfg.backend.consistency) != "bsp" else 0,
            "ranks_alive_end": 1 + len(fin), "failures_detected": self.failures, "lost_updates": 0,
            "recovery_s": [],
            "step_time_s": float(np.median(steps)) if steps else None,
            "staleness_max": max((v["staleness_max"] for v in servers), default=0),
            "staleness_mean": sum(v["staleness_sum"] for v in servers) / pulls if pulls else 0.0,
            "pulls": pulls,
            "bytes_by_role": by_role,
            "bytes_by_kind": _sum_kinds([v["acct"] for v in servers + workers] + [self.rec.acct.snapshot()]),
            "wait_fraction_by_worker": {str(v["index"]): round(v["wait_fraction"], 4) for v in workers},
            "idle_s_by_worker": {str(v["index"]): round(v["idle_s"], 4) for v in workers},
            "compression": compression,
            "model_keys": sum(v["keys"] for v in servers),
            "keys_by_server": {str(v["index"]): v["keys"] for v in servers},
            "table_bytes_by_server": {str(v["index"]): v["table_bytes"] for v in servers},
            "checkpoints": self.manifests, "resumed_from": self.resumed_from, "start_clock": self.start_clock,
            "evals": len(self.evals),
        }


def _sum_kinds(accts: list[dict]) -> dict:
    out: dict[str, int] = {}
    for a in accts:
        for k, v in a.get("bytes_by_kind", {}).items():
            out[k] = out.get(k, 0) + int(v)
    return out
