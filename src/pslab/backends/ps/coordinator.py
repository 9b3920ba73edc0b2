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

Failover (backend.heartbeat_timeout_s, backend.replication, backend.checkpoint_every):
- Detection: MPI's process-failed error (PEER_FAILED, how="ulfm"), or silence: every
  worker and server sends progress or heartbeats, and one silent for heartbeat_timeout_s
  (a hung rank) is declared dead (how="timeout"). Its late messages are ignored (fenced).
- Worker: a new membership generation without it goes to servers (no clock waits for it
  again) and workers; its unfinished rows (the rest of its stream after the rows it
  reported) are dealt to the survivors with `extend`, which also moves the epoch's end
  (every live worker pushes up to the new end, so BSP/SSP clocks stay whole).
- Server: R >= 2: its ring successors already hold its ranges (workers push to every
  replica), the new ring is published, workers re-route outstanding pulls and drop
  pushes the replicas acknowledged: nothing lost. R = 1 (or more failures than R - 1):
  the successors restore its ranges from the last checkpoint and take the re-sent pushes;
  what it acknowledged since that checkpoint is reported as lost_updates. Without
  checkpoints the run fails with a clear message.
- Backup instances (backend.backup_workers, SSP/ASP): a worker whose progress x
  backup_factor is behind the others' median gets a copy of its rest run by an idle
  worker; pushes carry batch ids, servers apply the first copy of each batch; when one
  copy ends the other is cancelled. In SSP the straggler is demoted (its clock no
  longer holds the others). BSP: not supported (every clock waits for every lane).
- The coordinator itself is a single point of failure: when it dies, servers and
  workers stop with an error naming it (ULFM error, or the idle timeout if it hangs);
  when it cannot go on it tells every rank to stop (`abort`) before it fails.
- Each failure: a `failure_detected` and a `recovered` event (the first clock every
  live worker completes after it); recovery_s, failures, failovers in the result.
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
        try:
            self.b = setup.lane_batch(n_workers)
        except ValueError:
            # train.batch_size not divisible by the workers (e.g. 256 over 3): each lane
            # takes the floor, so the global batch is a little smaller than configured.
            self.b = max(1, int(setup.cfg.train.batch_size) // n_workers)
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
        self.client.on_pump = self.on_client_pump
        self.idle_timeout = float(bc.idle_timeout_s)
        self.start_clock, self.resumed_from = start_clock, resumed_from
        stop_at = bc.get("stop_at_clock")
        self.end_clock = plan.total if stop_at is None else min(plan.total, int(stop_at))
        self.eval_every = int(cfg.train.eval_every)
        self.next_eval = (start_clock // self.eval_every + 1) * self.eval_every if self.eval_every else None
        self.every = int(bc.get("checkpoint_every", 0) or 0)
        self.ckpt_root = Path(rec.run_dir) / "checkpoints"
        self.shards: dict[int, dict[int, tuple]] = {}    # clock -> server -> (shard file, gen)
        self.gens: dict[int, list[int]] = {0: list(self.membership.servers)}  # gen -> its servers
        self.manifests: list[int] = []
        self.worker_clock = {w: start_clock for w in self.membership.workers}
        self.done: dict[int, int] = {}                   # worker -> the epoch end it reported done at
        self.finals: dict[tuple, dict] = {}
        self.dumps: dict[int, P.Msg] = {}
        self.evals: list[dict] = []
        self.failures = 0
        self.test_keys = np.unique(setup.data.test.keys)
        self.t_start = time.time()
        self.eval_s = 0.0
        self.epoch = 0
        self.last_min_clock = start_clock
        # failover
        self.hb_timeout = float(bc.get("heartbeat_timeout_s", 5))
        self.replication = int(bc.get("replication", 1))
        self.t_started = time.time()
        self.last_heard: dict[int, float] = {}
        self.failed: set[int] = set()                    # ranks declared dead (killed, or hung and fenced)
        self.failure_log: list[dict] = []
        self.pending_recovery: list[dict] = []
        self.recovery_s: list[float] = []
        self.server_failures = 0
        self.failovers: list[dict] = []
        self.in_eval = False
        self.eval_due = False
        self.stopping = False                            # `stop` sent: silence is expected from here
        # the epoch's work, for handing a dead worker's rows (and a straggler's) to others
        self.end = 0                                      # the current epoch's end clock
        self.shift = 0                                    # clocks added to the plan by extensions
        self.assigned: dict[int, list] = {}               # worker -> its stream's segments this epoch
        self.consumed: dict[int, int] = {}                # worker -> rows it reported taken
        self.handed_over_rows = 0
        # backup instances
        self.backup_on = bool(bc.get("backup_workers", False))
        self.backup_factor = float(bc.get("backup_factor", 2.0))
        self.backup_min_rows = int(bc.get("backup_min_rows", 0) or 0) or plan.b
        self.backups: dict[int, dict] = {}                # straggler -> {backup, pos, rows, base}
        self.backups_launched = 0
        self.backup_wins = {"backup": 0, "straggler": 0}
        if self.backup_on and str(bc.consistency) == "bsp":
            rec.event("backup_unsupported", reason="backup instances need SSP or ASP: in BSP every clock waits "
                      "for every lane, so a copy of a lane cannot run ahead of it")
            self.backup_on = False

    # ------------------------------------------------------------ messages

    def rank_of(self, role: str, i: int) -> int:
        return self.layout.server_rank(i) if role == "server" else self.layout.worker_rank(i)

    def is_member(self, rank: int) -> bool:
        role, i = self.layout.role_of(rank)
        return (role == "worker" and i in self.membership.workers) or (
            role == "server" and i in self.membership.servers)

    def handle(self, m: P.Msg) -> None:
        if m.cmd == P.PEER_FAILED:
            if m.src not in self.failed and self.is_member(m.src):
                self.on_failure(m.src, "ulfm")
            return
        self.last_heard[m.src] = time.time()
        if m.src in self.failed:
            return  # fenced: a rank declared dead (a hung one that woke up) is not heard again
        if m.cmd == P.DATA:  # a model shard (gather_model)
            self.dumps[int(m.meta["server"])] = m
            return
        if m.cmd != P.CTRL:
            return
        meta = m.meta or {}
        op = meta.get("op")
        role, i = self.layout.role_of(m.src)
        if op == "hb":
            pass  # heard (last_heard above): that is all a heartbeat says
        elif op == "progress":
            self.worker_clock[i] = max(self.worker_clock.get(i, 0), m.clock)
            if "consumed" in meta:
                self.consumed[i] = max(self.consumed.get(i, 0), int(meta["consumed"]))
            self.on_clock()
            self.check_backups(i)
        elif op == "done":
            self.worker_clock[i] = max(self.worker_clock.get(i, 0), int(meta["clock"]))
            if "consumed" in meta:
                self.consumed[i] = max(self.consumed.get(i, 0), int(meta["consumed"]))
            if int(meta.get("epoch", self.epoch)) == self.epoch:
                self.done[i] = int(meta.get("end", self.end))
            self.on_clock()
            self.check_backups(i)
        elif op == "ckpt_done":
            self.shards.setdefault(int(meta["clock"]), {})[int(meta["server"])] = (meta["shard"],
                                                                                    int(meta.get("gen", 0)))
            self.maybe_manifest(int(meta["clock"]))
        elif op == "final":
            self.finals[(meta["role"], int(meta["index"]))] = meta
        else:
            raise ValueError(f"coordinator: unknown message {meta} from rank {m.src}")

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
        return min((self.worker_clock[w] for w in self.counted()), default=self.last_min_clock)

    def counted(self) -> list[int]:
        return self.membership.counted() or self.membership.workers

    def on_clock(self) -> None:
        c = self.min_clock()
        while self.last_min_clock < c:
            self.last_min_clock += 1
            self.injector.on_step(self.last_min_clock)
        self.note_recoveries()
        if self.next_eval is not None and c >= self.next_eval:
            self.eval_due = True

    def note_recoveries(self, force: bool = False) -> None:
        """A failure is recovered at the first clock every live worker completes after it."""
        if not self.pending_recovery:
            return
        c, now, keep = self.min_clock(), time.time(), []
        for p in self.pending_recovery:
            if force or c > p["clock"]:
                rs = now - p["t_detect"]
                self.recovery_s.append(rs)
                self.rec.event("recovered", sync=True, failed_rank=p["rank"], target_role=p["role"],
                               target_index=p["index"], recovery_s=rs, since_last_heard_s=now - p["t_last"],
                               clock=c, how=p["how"])
            else:
                keep.append(p)
        self.pending_recovery = keep

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

    # ------------------------------------------------------------ failures

    def check_heartbeats(self) -> None:
        if self.stopping:
            return  # stopped ranks fall silent by design; the final-records wait is bounded
        now = time.time()
        members = [self.layout.server_rank(s) for s in self.membership.servers] + \
                  [self.layout.worker_rank(w) for w in self.membership.workers]
        for r in members:
            heard = self.last_heard.get(r)
            # Before a rank's first word (it is loading its data) the idle timeout applies.
            silent, limit = (now - heard, self.hb_timeout) if heard else (now - self.t_started, self.idle_timeout)
            if silent > limit and r not in self.failed:
                self.on_failure(r, "timeout")

    def on_failure(self, rank: int, how: str) -> None:
        role, i = self.layout.role_of(rank)
        now = time.time()
        t_last = self.last_heard.get(rank, self.t_started)
        self.failed.add(rank)
        self.failures += 1
        info = {"rank": rank, "role": role, "index": i, "how": how, "t_detect": now, "t_last": t_last}
        self.rec.event("failure_detected", sync=True, target_role=role, target_index=i, failed_rank=rank,
                       peer=rank, how=how, detect_s=now - t_last, clock=self.min_clock(), gen=self.membership.gen)
        if role == "coordinator":
            raise SystemExit("coordinator: reported dead by MPI")
        if role == "worker":
            self.worker_failed(i)
        else:
            self.server_failed(i)
        self.failure_log.append({k: v for k, v in info.items() if k not in ("t_detect", "t_last")} |
                                {"detect_s": now - t_last, "elapsed_s": now - self.t_start})
        info["clock"] = self.min_clock()
        self.pending_recovery.append(info)
        if not self.membership.workers:
            raise SystemExit("coordinator: every worker has failed; the run cannot go on")
        self.note_recoveries()  # e.g. every other worker had already finished the epoch

    def worker_failed(self, w: int) -> None:
        left = [x for x in self.membership.workers if x != w]
        if not left:
            raise SystemExit(f"coordinator: worker {w} (rank {self.layout.worker_rank(w)}) failed and no worker "
                             f"is left")
        m = Membership(self.membership.gen + 1, left, list(self.membership.servers), self.membership.virtual_nodes,
                       self.membership.replication, [d for d in self.membership.demoted if d != w])
        self.publish(m)
        # Fence it: if it is only slow or hung, it stops when it reads this; servers
        # ignore it already (it is out of the membership).
        self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta={"op": "fenced", "gen": m.gen,
                                                                     "reason": "declared dead by the coordinator"}))
        self.done.pop(w, None)
        if w not in self.assigned:
            return
        # Its unfinished rows go to the survivors; a backup copy covers the rest of a straggler.
        orphan = []
        b = self.backups.pop(w, None)
        if b is not None:  # w was a straggler with a backup running: the backup has its rows
            self.rec.event("backup_result", owner=w, winner="backup", reason="the straggler failed")
            self.backup_wins["backup"] += 1
        elif any(v["backup"] == w for v in self.backups.values()):
            owner = next(o for o, v in self.backups.items() if v["backup"] == w)
            del self.backups[owner]  # the backup died: the straggler carries on with its own copy
            self.rec.event("backup_result", owner=owner, winner="straggler", reason="the backup failed")
            self.backup_wins["straggler"] += 1
        else:
            orphan = skip_rows(self.assigned[w], self.consumed.get(w, 0))
        self.assigned.pop(w, None)
        rows = seg_rows(orphan)
        if rows:
            self.handed_over_rows += rows
            self.hand_out(orphan)

    def hand_out(self, orphan: list) -> None:
        """Deal rows to the live workers (those with the least left first) and extend
        the epoch so that they have the clocks for them."""
        live = sorted(self.membership.workers, key=lambda x: self.rows_left(x))
        total = seg_rows(orphan)
        share = -(-total // len(live))
        extra = {}
        rest = orphan
        for x in live:
            mine, rest = take_rows(rest, share)
            if mine:
                extra[x] = mine
        self.extend(extra)
        self.rec.event("rows_handed_over", rows=total, to={str(k): seg_rows(v) for k, v in extra.items()},
                       end=self.end)

    def progress_of(self, w: int) -> float:
        total = seg_rows(self.assigned.get(w, []))
        return min(1.0, self.consumed.get(w, 0) / total) if total else 1.0

    def rows_left(self, w: int) -> int:
        return seg_rows(self.assigned.get(w, [])) - self.consumed.get(w, 0)

    def extend(self, extra: dict, owner: int | None = None, pos: int | None = None) -> None:
        """Give workers more rows of this epoch and every live worker the new end clock."""
        b = self.plan.b
        new_end = self.end
        for x, segs in extra.items():
            r, e = self.rows_left(x), seg_rows(segs)
            wc = self.worker_clock.get(x, 0)
            new_end = max(new_end, wc + -(-(r + e) // b), max(self.end, wc) + -(-e // b))
        self.end = new_end
        for x in self.membership.workers:
            segs = extra.get(x, [])
            meta = {"op": "extend", "epoch": self.epoch, "end": new_end, "segments": segs}
            if owner is not None and segs:
                meta.update(owner=owner, pos=pos)
            self.van.send(self.layout.worker_rank(x), P.Msg(P.CTRL, meta=meta))
            if segs:
                self.assigned.setdefault(x, []).extend([list(s) for s in segs])

    def server_failed(self, d: int) -> None:
        left = [x for x in self.membership.servers if x != d]
        rank = self.layout.server_rank(d)
        if not left:
            raise SystemExit(f"coordinator: server {d} (rank {rank}) failed and no server is left")
        self.server_failures += 1
        if self.replication >= 2 and self.server_failures <= self.replication - 1:
            fo = {"server": d, "mode": "replica"}
        elif self.every > 0:
            last = self.manifests[-1] if self.manifests else None
            fo = {"server": d, "mode": "checkpoint", "clock": last if last is not None else 0,
                  "manifest": str(ckpt.clock_dir(self.ckpt_root, last)) if last is not None else None}
        else:
            why = (f"backend.replication={self.replication}" if self.replication < 2 else
                   f"{self.server_failures} server failures with backend.replication={self.replication}")
            raise SystemExit(f"coordinator: server {d} (rank {rank}) failed; with {why} and no checkpoints "
                             f"(backend.checkpoint_every=0) its key ranges are lost, so the run cannot go on. "
                             f"Use backend.replication>=2, or backend.checkpoint_every>0 to restore from "
                             f"checkpoints")
        m = Membership(self.membership.gen + 1, list(self.membership.workers), left,
                       self.membership.virtual_nodes, self.membership.replication, list(self.membership.demoted))
        fo["gen"] = m.gen
        self.publish(m, fo)
        self.failovers.append({**fo, "elapsed_s": time.time() - self.t_start, "min_clock": self.min_clock()})
        self.rec.event("server_failover", sync=True, **fo)

    # ------------------------------------------------------------ backup instances

    def check_backups(self, i: int) -> None:
        """Backup instances (SSP/ASP): an idle worker takes a copy of a straggler's rest;
        the first copy to finish wins, the other is cancelled."""
        if not self.backup_on or not self.assigned:
            return
        # a task finished?
        for owner, bk in list(self.backups.items()):
            straggler_done = self.rows_left(owner) <= 0
            backup_done = self.consumed.get(bk["backup"], 0) - bk["base"] >= bk["rows"]
            if straggler_done or backup_done:
                winner = "straggler" if straggler_done and not backup_done else "backup"
                loser = self.layout.worker_rank(bk["backup"] if winner == "straggler" else owner)
                self.van.send(loser, P.Msg(P.CTRL, meta={"op": "cancel", "owner": owner, "epoch": self.epoch}))
                self.backup_wins[winner] += 1
                self.rec.event("backup_result", owner=owner, backup=bk["backup"], winner=winner,
                               seconds=time.time() - bk["t"])
                # both streams count as finished from here
                self.consumed[owner] = seg_rows(self.assigned.get(owner, []))
                self.consumed[bk["backup"]] = seg_rows(self.assigned.get(bk["backup"], []))
                bk["closed"] = True
                del self.backups[owner]
        live = self.membership.workers
        if len(live) < 2:
            return
        busy = set(self.backups) | {v["backup"] for v in self.backups.values()}
        idle = [x for x in live if x not in busy and self.rows_left(x) <= 0 and x in self.assigned]
        if not idle:
            return
        for s in sorted(live, key=self.rows_left, reverse=True):
            if s in busy or s in self.membership.demoted:
                continue
            # A straggler: its progress (fraction of its rows done) times backup_factor is
            # still behind the median progress of the others, and it has rows worth copying.
            left = self.rows_left(s)
            others = sorted(self.progress_of(x) for x in live if x != s)
            median = others[len(others) // 2] if others else 0.0
            if left < self.backup_min_rows or self.progress_of(s) * self.backup_factor >= median:
                return
            x = max(idle, key=lambda y: self.worker_clock.get(y, 0))
            pos = self.consumed.get(s, 0)
            segs = skip_rows(self.assigned[s], pos)
            self.backups[s] = {"backup": x, "pos": pos, "rows": seg_rows(segs), "t": time.time(),
                               "base": self.consumed.get(x, 0)}
            self.backups_launched += 1
            self.rec.event("backup_launched", sync=True, straggler=s, backup=x, rows=seg_rows(segs), pos=pos,
                           straggler_clock=self.worker_clock.get(s), backup_clock=self.worker_clock.get(x))
            if str(self.cfg.backend.consistency) == "ssp" and s not in self.membership.demoted:
                # SSP: the straggler's clock stops holding the others back (its rows are
                # covered by the copy); it goes on as an ASP worker until its copy ends.
                m = Membership(self.membership.gen + 1, list(live), list(self.membership.servers),
                               self.membership.virtual_nodes, self.membership.replication,
                               list(self.membership.demoted) + [s])
                self.publish(m)
            self.extend({x: segs}, owner=s, pos=pos)
            return

    # ------------------------------------------------------------ evaluation and model

    def model_rows(self, keys: np.ndarray) -> np.ndarray:
        return self.client.wait(self.client.pull(keys, clock=-1, compress=False))

    def evaluate(self, clock: int, final: bool = False) -> dict:
        t0 = time.time()
        self.in_eval = True
        try:
            return self._evaluate(clock, final)
        finally:
            self.in_eval = False
            self.eval_s += time.time() - t0

    def _evaluate(self, clock: int, final: bool) -> dict:
        rows = self.model_rows(self.test_keys)
        tk = self.test_keys
        res = self.s.evaluate(lambda k: rows[np.searchsorted(tk, k)])
        point = {"step": clock, "epoch": self.epoch, "examples": self.plan.examples_before(clock - self.shift),
                 "elapsed_s": time.time() - self.t_start, **res}
        if not final or not self.evals or self.evals[-1]["step"] != clock:
            self.rec.shared_metric("eval", **point)
            self.evals.append(point)
        return res

    def gather_model(self, deadline: float) -> tuple[np.ndarray, np.ndarray]:
        self.dumps = {}
        for srv in self.membership.servers:
            self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "dump"}))
        self.wait_for(lambda: set(self.dumps) >= set(self.membership.servers), "the model shards", deadline)
        got = {s: self.dumps[s] for s in self.membership.servers}
        keys = np.concatenate([got[s].keys for s in sorted(got)])
        W = np.concatenate([got[s].vals for s in sorted(got)]) if keys.size else np.zeros((0, self.s.model.dim))
        return keys, W

    # ------------------------------------------------------------ checkpoints

    def maybe_manifest(self, clock: int) -> None:
        """A manifest once every server of one membership generation wrote its shard of
        the clock (each shard holds the keys its server owned in that generation)."""
        got = self.shards.get(clock, {})
        if clock in self.manifests:
            return
        for gen, servers in self.gens.items():
            mine = {s: f for s, (f, g) in got.items() if g == gen}
            if servers and set(mine) >= set(servers):
                ckpt.write_manifest(self.ckpt_root, clock, {
                    "shards": [mine[s] for s in sorted(servers)], "servers": sorted(servers), "gen": gen,
                    "examples": self.plan.examples_before(clock - self.shift),
                    "consistency": str(self.cfg.backend.consistency),
                    "model": self.cfg.model.name, "optim": self.cfg.optim.name, "workers": self.layout.workers,
                    "time": time.time()})
                self.manifests.append(clock)
                self.rec.event("checkpoint", clock=clock, shards=len(servers), gen=gen)
                return

    def publish(self, membership: Membership, failover: dict | None = None) -> None:
        """A new membership generation to every live server and worker (failover: drop a
        dead worker from the clocks, hand a dead server's ring ranges to its successors)."""
        self.membership = membership
        self.gens[membership.gen] = list(membership.servers)
        self.client.set_membership(membership, failover)
        self.worker_clock = {w: self.worker_clock.get(w, self.min_clock()) for w in membership.workers}
        meta = {"op": "membership", "membership": membership.to_meta()}
        if failover:
            meta["failover"] = failover
        for s in membership.servers:  # servers first: they must know before workers re-route to them
            self.van.send(self.layout.server_rank(s), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        for w in membership.workers:
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        self.rec.event("membership", **membership.to_meta(), **({"failover": failover} if failover else {}))

    # ------------------------------------------------------------ the run

    def assign(self, epoch: int, begin: int, end: int) -> None:
        """The epoch's lanes to the live workers (a dead worker's lane is dealt to them too)."""
        lanes = self.plan.lanes[epoch]
        live = list(self.membership.workers)
        segs = {w: [] for w in live}
        for j, lane in enumerate(lanes):
            segs[live[j % len(live)]] += [[int(x), 0, self.s.data.block_len(int(x))] for x in lane]
        self.assigned = {w: [list(s) for s in v] for w, v in segs.items()}
        skip = (begin - (self.plan.start[epoch] + self.shift)) * self.plan.b
        self.consumed = {w: min(skip, seg_rows(v)) for w, v in segs.items()}
        if len(live) < len(lanes):  # fewer workers than lanes: the epoch needs more clocks
            end = max(end, begin + max(-(-self.rows_left(w) // self.plan.b) for w in live))
        self.end = end
        self.backups = {}
        for w in live:
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta={
                "op": "assign", "epoch": epoch, "blocks": [], "segments": segs[w],
                "clock_start": self.plan.start[epoch] + self.shift, "begin": begin, "end": end,
                "lane_batch": self.plan.b}))

    def run(self, deadline: float) -> dict:
        epochs = len(self.plan.lanes)
        clock = self.start_clock
        for e in range(epochs):
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
        self.assigned = {}
        return self.finish(clock, deadline)

    def finish(self, clock: int, deadline: float) -> dict:
        train_s = time.time() - self.t_start - self.eval_s  # training only: no evaluation, no gathering
        # An evaluation that fell due on the last clock is this final one. Left pending, the
        # pumps below would run it after `stop`, with no server left to answer its pulls.
        self.eval_due, self.next_eval = False, None
        final = self.evaluate(clock, final=True)
        if self.cfg.run.save_model:
            keys, W = self.gather_model(deadline)
            save_model(Path(self.rec.run_dir) / "model.npz", keys, W)
        if self.every:
            if clock % self.every or self.server_failures:  # the run's end is always a checkpoint too
                for srv in self.membership.servers:
                    self.van.send(self.layout.server_rank(srv), P.Msg(P.CTRL, meta={"op": "checkpoint",
                                                                                    "clock": clock}))
            if self.server_failures:  # clocks a server died in have no full set of shards
                due = [clock]
            else:
                due = [c for c in range(self.start_clock + 1, clock + 1) if c % self.every == 0 or c == clock]
            self.wait_for(lambda: all(c in self.manifests for c in due), "checkpoint shards", deadline)
        others = [("server", s) for s in self.membership.servers] + [("worker", w) for w in self.membership.workers]
        self.stopping = True
        for role, i in others:
            self.van.send(self.rank_of(role, i), P.Msg(P.CTRL, meta={"op": "stop"}))
        try:
            self.wait_for(lambda: all(k in self.finals for k in others), "final records",
                          min(deadline, time.time() + 10))
        except TimeoutError as e:
            self.rec.event("final_records_missing", error=str(e),
                           missing=[k for k in others if k not in self.finals])
        self.note_recoveries(force=True)
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
        examples = self.plan.examples_before(clock - self.shift) - self.plan.examples_before(self.start_clock)
        return {
            "steps": clock, "examples": examples, "train_s": train_s, "eval_s": self.eval_s,
            "examples_per_s": examples / train_s if train_s > 0 else None,
            "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
            "workers": self.layout.workers, "servers": self.layout.servers,
            "consistency": str(self.cfg.backend.consistency),
            "staleness": int(self.cfg.backend.staleness) if str(self.cfg.backend.consistency) != "bsp" else 0,
            "ranks_alive_end": 1 + len(fin), "failures_detected": self.failures,
            # lost_updates (R = 1 server failover): key-updates a dead server acknowledged at
            # clocks >= the checkpoint its ranges were restored from, summed over the live
            # workers (exact in BSP; in SSP/ASP the checkpoint may already hold a few of them).
            # With R >= 2 every acknowledged push is on every replica: 0.
            "lost_updates": sum(int(v.get("lost_updates", 0)) for v in workers),
            "lost_updates_definition": "key-updates acknowledged by a dead server at clocks >= the checkpoint "
                                       "its ranges were restored from (R=1); 0 when replicas took over (R>=2)",
            "recovery_s": [round(x, 4) for x in self.recovery_s],
            "failures": self.failure_log, "failovers": self.failovers,
            "rows_handed_over": self.handed_over_rows, "clocks_added": self.shift,
            "backups_launched": self.backups_launched, "backup_wins": self.backup_wins,
            "replication": self.replication, "heartbeat_timeout_s": self.hb_timeout,
            "retried_parts": sum(int(v.get("resent", 0)) for v in workers),
            "rerouted_parts": sum(int(v.get("rerouted", 0)) for v in workers),
            "duplicate_pushes_dropped": sum(int(v.get("dup_pushes", 0)) for v in servers),
            "duplicate_batches_dropped": sum(int(v.get("dup_batches", 0)) for v in servers),
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


# ---------------------------------------------------------------- segments: [block, first row, end row]

def seg_rows(segs) -> int:
    return sum(e - a for _, a, e in segs)


def take_rows(segs, n: int) -> tuple[list, list]:
    """(the first n rows of segs, the rest), as segments."""
    head, rest = [], []
    for i, (b, a, e) in enumerate(segs):
        if n <= 0:
            rest = [list(x) for x in segs[i:]]
            break
        t = min(n, e - a)
        head.append([b, a, a + t])
        n -= t
        if a + t < e:
            rest = [[b, a + t, e]] + [list(x) for x in segs[i + 1:]]
            break
    return head, rest


def skip_rows(segs, n: int) -> list:
    return take_rows(segs, n)[1]
