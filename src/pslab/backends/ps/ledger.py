"""The work ledger: every batch of the run with a fixed id, who has it, and what the
servers acknowledged.

Plan: each epoch's blocks are dealt into W lanes (Setup.lanes, which backend=local with
lanes=W reproduces), and each lane is cut into batches of the lane batch size; batch k
of every lane belongs to the epoch's clock k. A batch id is (epoch, lane, k) packed in
one int64 (batch_id) and never changes: a handed-over batch, and both copies of a backup
instance, push under the same id, so the servers can drop a batch they already applied.

WorkLedger (the coordinator's): each live worker's queue of batches this epoch in the
order it runs them, how many it has taken (its reports), and which batches it reported
acknowledged by every server, which is what "done" means. When a worker dies, every
batch it was given and did not report acknowledged goes to the survivors, whole and with
its id: the servers drop the ones that did land, so nothing is lost and nothing applied
twice, wherever in its push the worker died.
"""
from __future__ import annotations

import numpy as np

from ...schedule import Stream


def batch_id(epoch: int, lane: int, k: int) -> int:
    return (int(epoch) << 40) | (int(lane) << 24) | int(k)


class Plan:
    """Epochs as clock ranges, and every batch: id -> {segs, rows, clock, div}."""

    def __init__(self, setup, n_workers: int, epochs: int, bsp: bool = True):
        self.s, self.W = setup, n_workers
        try:
            self.b = setup.lane_batch(n_workers)
        except ValueError:
            # train.batch_size not divisible by the workers (e.g. 256 over 3): each lane
            # takes the floor, so the global batch is a little smaller than configured.
            self.b = max(1, int(setup.cfg.train.batch_size) // n_workers)
        self.start = [0]
        self.batches: dict[int, dict] = {}
        self.lanes: list[list[list[int]]] = []          # epoch -> lane -> its batch ids
        self.rows: list[np.ndarray] = []                 # epoch -> rows at each clock
        for e in range(epochs):
            lanes = [_cut(setup.data, lane, self.b) for lane in setup.lanes(e, n_workers)]
            steps = max((len(x) for x in lanes), default=0)
            per_clock = np.zeros(steps, np.int64)
            for lane in lanes:
                for k, segs in enumerate(lane):
                    per_clock[k] += _rows(segs)
            ids = []
            for j, lane in enumerate(lanes):
                ids.append([])
                for k, segs in enumerate(lane):
                    bid = batch_id(e, j, k)
                    n = _rows(segs)
                    # BSP divides a clock's summed gradient by the clock's rows, from the plan,
                    # so every server divides every batch alike, also one re-dealt later.
                    self.batches[bid] = {"segs": segs, "rows": n, "clock": self.start[-1] + k,
                                         "div": int(per_clock[k]) if bsp else n}
                    ids[-1].append(bid)
            self.lanes.append(ids)
            self.rows.append(per_clock)
            self.start.append(self.start[-1] + steps)

    @property
    def total(self) -> int:
        return self.start[-1]

    @property
    def total_rows(self) -> int:
        return int(sum(r.sum() for r in self.rows))

    def examples_before(self, clock: int) -> int:
        n = 0
        for e, r in enumerate(self.rows):
            n += int(r[: max(0, min(len(r), clock - self.start[e]))].sum())
        return n

    def rows_of(self, bids) -> int:
        return sum(self.batches[b]["rows"] for b in bids)


def _cut(data, blocks: list[int], b: int) -> list[list]:
    """A lane's blocks as batches of b rows, each a list of segments [block, first, end]."""
    lane, out = Stream(data, blocks), []
    while lane.left:
        segs = lane.take(b)
        lane.commit(b)
        out.append([list(x) for x in segs])
    return out


def _rows(segs) -> int:
    return sum(e - a for _, a, e in segs)


class WorkLedger:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.queue: dict[int, list[int]] = {}     # worker -> batch ids given this epoch, in order
        self.taken: dict[int, int] = {}           # worker -> how many of its queue it has started
        self.acked: set[int] = set()              # batches every server acknowledged
        self.handed_over = 0                      # rows of batches re-dealt after a failure

    def assign(self, epoch: int, skip: int, n: int, workers: list[int]) -> dict[int, list[int]]:
        """The epoch's lanes over the live workers (a lane per worker; with fewer workers
        than lanes, some take several, interleaved by clock): n clocks' batches after the
        first `skip` (done already: a resumed run; n short of the epoch: a run told to stop
        early)."""
        lanes = self.plan.lanes[epoch]
        mine: dict[int, list[list[int]]] = {w: [] for w in workers}
        for j, lane in enumerate(lanes):
            mine[workers[j % len(workers)]].append(lane[skip:skip + n])
        self.queue = {w: _interleave(ls) for w, ls in mine.items()}
        self.taken = {w: 0 for w in workers}
        return self.queue

    def on_report(self, w: int, taken: int | None, acked) -> None:
        if taken is not None and w in self.taken:
            self.taken[w] = max(self.taken[w], int(taken))
        self.acked.update(int(b) for b in acked or ())

    def left(self, w: int) -> int:
        """Batches w has not started."""
        return len(self.queue.get(w, ())) - self.taken.get(w, 0)

    def unacked(self, w: int) -> list[int]:
        return [b for b in self.queue.get(w, ()) if b not in self.acked]

    def progress_of(self, w: int) -> float:
        q = self.queue.get(w, ())
        return min(1.0, self.taken.get(w, 0) / len(q)) if q else 1.0

    def orphans(self, dead: int) -> list[int]:
        """A dead worker's batches that no server acknowledged in full (none, if a backup
        copy of its work is running: that copy carries the same ids)."""
        bids = self.unacked(dead)
        self.queue.pop(dead, None)
        self.taken.pop(dead, None)
        return bids

    def deal(self, bids: list[int], live: list[int]) -> dict[int, list[int]]:
        """Whole batches to the live workers, those with the least left first."""
        out: dict[int, list[int]] = {}
        order = sorted(live, key=lambda x: (self.left(x), x))
        for i, b in enumerate(bids):
            w = order[i % len(order)]
            out.setdefault(w, []).append(b)
        for w, extra in out.items():
            self.queue[w] = self.queue.get(w, []) + extra
        self.handed_over += self.plan.rows_of(bids)
        return out

    def end_for(self, clocks: dict[int, int], end: int) -> int:
        """The epoch's end clock once every live worker has run what it was given: one
        batch per clock (a worker that runs out pushes empty ticks)."""
        return max([end] + [clocks.get(w, 0) + self.left(w) for w in self.queue])


def _interleave(lanes: list[list[int]]) -> list[int]:
    out = []
    for k in range(max((len(x) for x in lanes), default=0)):
        out += [x[k] for x in lanes if k < len(x)]
    return out
