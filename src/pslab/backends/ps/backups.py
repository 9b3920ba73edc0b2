"""Backup instances for stragglers (backend.backup_workers, SSP/ASP; KunPeng's idea).

A worker whose progress (the share of its batches it has started) times backup_factor
is still behind the others' median, with at least backup_min_rows left, gets a copy of
the batches it has not started run by an idle worker. Both copies push under the same
batch ids, so the servers apply each batch once, whichever copy comes first; once every
batch of the task is acknowledged, both are told to drop what is left of it. In SSP the
straggler is demoted (its clock no longer holds the others back). BSP is not supported:
every clock waits for every lane, so a copy of a lane cannot run ahead of it.
"""
from __future__ import annotations

import time

from . import protocol as P


class Backups:
    def __init__(self, coord, enabled: bool, factor: float, min_rows: int):
        self.c = coord
        self.enabled, self.factor, self.min_rows = enabled, float(factor), int(min_rows)
        self.tasks: dict[int, dict] = {}          # straggler -> {backup, batches, t}
        self.launched = 0
        self.wins = {"backup": 0, "straggler": 0}
        self.reason_logged = None                 # the epoch a missing backup was explained in
        if enabled and str(coord.cfg.backend.consistency) == "bsp":
            coord.rec.event("backup_unsupported", reason="backup instances need SSP or ASP: in BSP every clock "
                            "waits for every lane, so a copy of a lane cannot run ahead of it")
            self.enabled = False

    def new_epoch(self) -> None:
        self.tasks = {}

    def worker_failed(self, w: int, orphans: list[int]) -> list[int]:
        """A dead worker's batches that still need a worker (a running copy covers some)."""
        c = self.c
        if w in self.tasks:  # the straggler died: its copy carries on
            t = self.tasks.pop(w)
            covered = set(t["batches"])
            c.rec.event("backup_result", owner=w, winner="backup", reason="the straggler failed")
            self.wins["backup"] += 1
            return [b for b in orphans if b not in covered]
        for owner, t in list(self.tasks.items()):
            if t["backup"] == w:  # the backup died: the straggler carries on with its own copy
                del self.tasks[owner]
                c.rec.event("backup_result", owner=owner, winner="straggler", reason="the backup failed")
                self.wins["straggler"] += 1
                mine = set(t["batches"])
                return [b for b in orphans if b not in mine]
        return orphans

    def check(self) -> None:
        if not self.enabled or not self.c.ledger.queue:
            return
        c, led = self.c, self.c.ledger
        for owner, t in list(self.tasks.items()):
            if all(b in led.acked for b in t["batches"]):
                winner = "straggler" if led.left(owner) == 0 else "backup"
                for x in (owner, t["backup"]):
                    c.van.send(c.layout.worker_rank(x), P.Msg(P.CTRL, meta={"op": "cancel", "owner": owner,
                                                                            "epoch": c.epoch}))
                self.wins[winner] += 1
                c.rec.event("backup_result", owner=owner, backup=t["backup"], winner=winner,
                            seconds=time.time() - t["t"])
                del self.tasks[owner]
        live = c.membership.workers
        busy = set(self.tasks) | {t["backup"] for t in self.tasks.values()}
        idle = [x for x in live if x not in busy and led.left(x) == 0 and x in led.queue]
        if len(live) < 2:
            return
        for s in sorted(live, key=led.left, reverse=True):
            if s in busy or s in c.membership.demoted:
                continue
            others = sorted(led.progress_of(x) for x in live if x != s)
            median = others[len(others) // 2] if others else 0.0
            rows_left = c.plan.rows_of(led.queue[s][led.taken.get(s, 0):])
            if rows_left < self.min_rows or led.progress_of(s) * self.factor >= median:
                return
            if not idle:
                self.no_idle_worker(s, median)
                return
            x = max(idle, key=lambda y: c.worker_clock.get(y, 0))
            copy = list(led.queue[s][led.taken.get(s, 0):])
            self.tasks[s] = {"backup": x, "batches": copy, "t": time.time()}
            led.queue[x] = led.queue.get(x, []) + copy
            self.launched += 1
            c.rec.event("backup_launched", sync=True, straggler=s, backup=x, batches=len(copy), rows=rows_left,
                        straggler_clock=c.worker_clock.get(s), backup_clock=c.worker_clock.get(x))
            if str(c.cfg.backend.consistency) == "ssp" and s not in c.membership.demoted:
                # SSP: the straggler's clock stops holding the others back (its batches are
                # covered by the copy); it goes on as an ASP worker until its copy ends.
                c.publish(c.membership.next(demoted=list(c.membership.demoted) + [s]))
            c.hand_out({x: copy}, copy_of=s)
            return

    def no_idle_worker(self, straggler: int, median: float) -> None:
        """A straggler with no idle worker to copy it: say why, once an epoch."""
        c = self.c
        if self.reason_logged == c.epoch:
            return
        self.reason_logged = c.epoch
        why = "no worker has run out of batches"
        if str(c.cfg.backend.consistency) == "ssp":
            why += (f": under SSP the staleness bound (backend.staleness={int(c.cfg.backend.staleness)}) holds the "
                    f"other workers back until the straggler catches up, so none runs dry before it; use "
                    f"backend.consistency=asp for backup instances to start")
        c.rec.event("backup_not_launched", straggler=straggler, progress=round(c.ledger.progress_of(straggler), 4),
                    median_progress=round(median, 4), reason=why)
