"""The coordinator's failover policy: what happens when a worker or a server is found dead.

- Detection (detector.FailureDetector): MPI's process-failed error (PEER_FAILED,
  how="ulfm"), or silence past backend.heartbeat_timeout_s (a hung rank, how="timeout").
  A rank declared dead is fenced: told to stop (if it ever runs again), and ignored.
- Worker: a new membership generation without it (no clock waits for it again), and every
  batch it was given that the servers did not acknowledge in full is dealt, whole and
  under its id, to the survivors (ledger.WorkLedger); the epoch's end moves so that they
  have the clocks to run them. The servers drop the batches that did land.
- Server: range by range (ranges.after_failure): a backup of a range it led is promoted,
  a spare server is added to every range left with fewer than R copies and the primary
  sends it a snapshot (re-replication while training goes on), and a range with no copy
  left is restored from the last complete checkpoint, or ends the run with a clear
  reason when there is none. The run survives any sequence of server failures that
  leaves a server alive, as long as a range's copies do not all die before it is
  re-replicated.
- The coordinator itself is a single point of failure: when it dies, servers and workers
  stop with an error naming it (ULFM error, or the idle timeout if it hangs).
- Each failure: a `failure_detected` and a `recovered` event (the first clock every live
  worker completes after it).
"""
from __future__ import annotations

import time

from . import protocol as P
from .ranges import after_failure


class Failover:
    """Mixed into Coordinator."""

    def check_heartbeats(self) -> None:
        if self.stopping:
            return  # stopped ranks fall silent by design; the final-records wait is bounded
        members = [self.layout.server_rank(s) for s in self.membership.servers] + \
                  [self.layout.worker_rank(w) for w in self.membership.workers]
        for r, _ in self.detector.silent(members):
            if r not in self.failed:
                self.on_failure(r, "timeout")

    def on_failure(self, rank: int, how: str) -> None:
        role, i = self.layout.role_of(rank)
        now = time.time()
        t_last = self.detector.last_heard(rank)
        self.failed.add(rank)
        info = {"rank": rank, "role": role, "index": i, "how": how, "t_detect": now, "t_last": t_last}
        self.rec.event("failure_detected", sync=True, target_role=role, target_index=i, failed_rank=rank,
                       peer=rank, how=how, detect_s=now - t_last, clock=self.min_clock(), gen=self.membership.gen)
        if role == "worker":
            self.worker_failed(i)
        else:
            self.server_failed(i)
        # Fence it: if it is only hung, it stops when it reads this (servers ignore it already).
        self.van.send(rank, P.Msg(P.CTRL, meta={"op": "fenced", "reason": f"declared dead by the coordinator "
                                                                         f"({how})"}))
        self.failure_log.append({k: v for k, v in info.items() if k not in ("t_detect", "t_last")} |
                                {"detect_s": now - t_last, "elapsed_s": now - self.t_start})
        info["clock"] = self.min_clock()
        self.pending_recovery.append(info)
        self.note_recoveries()  # e.g. every other worker had already finished the epoch

    def worker_failed(self, w: int) -> None:
        left = [x for x in self.membership.workers if x != w]
        if not left:
            raise SystemExit(f"coordinator: worker {w} (rank {self.layout.worker_rank(w)}) failed and no worker "
                             f"is left")
        self.publish(self.membership.next(workers=left, demoted=[d for d in self.membership.demoted if d != w]))
        self.done.pop(w, None)
        self.worker_clock.pop(w, None)
        orphans = self.backups.worker_failed(w, self.ledger.orphans(w))
        if orphans:
            self.hand_out(self.ledger.deal(orphans, left))

    def hand_out(self, extra: dict, copy_of: int | None = None) -> None:
        """More batches for some workers, and every live worker the epoch's new end."""
        self.end = self.ledger.end_for(self.worker_clock, self.end)
        for x in self.membership.workers:
            meta = {"op": "extend", "epoch": self.epoch, "end": self.end, "batches": extra.get(x, [])}
            if copy_of is not None:
                meta["copy_of"] = copy_of
            self.van.send(self.layout.worker_rank(x), P.Msg(P.CTRL, meta=meta))
        if copy_of is None:
            self.rec.event("rows_handed_over", rows=sum(self.plan.rows_of(v) for v in extra.values()),
                           batches={str(k): len(v) for k, v in extra.items()}, end=self.end)

    def server_failed(self, d: int) -> None:
        m = self.membership
        left = [x for x in m.servers if x != d]
        rank = self.layout.server_rank(d)
        if not left:
            raise SystemExit(f"coordinator: server {d} (rank {rank}) failed and no server is left")
        ranges, dec = after_failure(m.ranges, d, m.servers, m.replication, hosts=self.server_hosts,
                                    syncing=self.syncing)
        fo = {"server": d, "promoted": dec["promoted"], "added": {str(r): s for r, s in dec["added"].items()},
              "lost": dec["lost"], "resync": {str(r): v for r, v in dec["resync"].items()}}
        if dec["lost"]:
            last = self.manifests.latest
            if last is None:
                why = ("backend.checkpoint_every=0" if not self.every else "no checkpoint was complete yet")
                raise SystemExit(f"coordinator: server {d} (rank {rank}) failed and {len(dec['lost'])} key ranges "
                                 f"had no other copy (backend.replication={m.replication}, servers lost: "
                                 f"{sorted(self.servers_lost + [d])}); {why}, so their rows are gone and the run "
                                 f"cannot go on. Use backend.replication>=2, or backend.checkpoint_every>0 to "
                                 f"restore from checkpoints")
            fo.update(clock=last, manifest=str(self.ckpt_root / f"clock-{last:08d}"))
        self.servers_lost.append(d)
        new = m.next(servers=left, ranges=ranges)
        fo["gen"] = new.gen
        self.publish(new, fo)
        for r in list(self.syncing):
            self.syncing[r].discard(d)
        for r, targets in dec["resync"].items():  # a range's new primary sends every snapshot it needs
            self.syncing[r] = set(targets)
        self.failovers.append({**fo, "elapsed_s": time.time() - self.t_start, "min_clock": self.min_clock()})
        self.rec.event("server_failover", sync=True, **fo)

    def on_rereplicated(self, m: P.Msg) -> None:
        meta = m.meta
        self.rereplications.append({"time_s": round(float(meta["seconds"]), 4), "bytes": int(meta["bytes"]),
                                    "keys": int(meta["keys"]), "ranges": meta["ranges"], "from": meta["from"],
                                    "to": meta["to"], "elapsed_s": round(time.time() - self.t_start, 3)})
        self.rec.event("rereplicated", **self.rereplications[-1])
        for r in meta["ranges"]:
            self.syncing.get(int(r), set()).discard(int(meta["to"]))

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

    def publish(self, membership, failover: dict | None = None) -> None:
        """A new membership generation to every live server and worker."""
        self.membership = membership
        self.client.set_membership(membership)
        meta = {"op": "membership", "membership": membership.to_meta()}
        if failover:
            meta["failover"] = failover
        for s in membership.servers:  # servers first: they must know before workers re-route to them
            self.van.send(self.layout.server_rank(s), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        for w in membership.workers:
            self.van.send(self.layout.worker_rank(w), P.Msg(P.CTRL, meta=meta, gen=membership.gen))
        self.rec.event("membership", **membership.to_meta(), **({"failover": failover} if failover else {}))
