"""Which rows go into which step: the block order of an epoch, blocks dealt into lanes
(one lane per rank or worker), and lanes read as continuous streams of rows.

Every backend builds its batches from these, so "the same global batch and the same
block assignment" means the same thing everywhere: step t takes the next B/L rows of
each of the L lanes. The local trainer with `backend.lanes=L` reproduces an L-rank run.
"""
from __future__ import annotations

import numpy as np

from .data import Dataset, Rows


def block_order(n_blocks: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    if not shuffle:
        return list(range(n_blocks))
    return [int(b) for b in np.random.default_rng([seed, epoch]).permutation(n_blocks)]


def deal(order: list[int], lanes: int) -> list[list[int]]:
    """Round-robin: lane i gets order[i], order[i+L], ..."""
    return [order[i::lanes] for i in range(lanes)]


def lane_batch_size(batch_size: int, lanes: int) -> int:
    if batch_size % lanes:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by {lanes} lanes (ranks/workers)")
    return batch_size // lanes


class Lane:
    """A stream of rows over a list of blocks; remembers which blocks it has finished,
    so a failed rank's unfinished blocks can be handed to someone else."""

    def __init__(self, data: Dataset, blocks: list[int]):
        self.data = data
        self.pending = list(blocks)
        self.done: list[int] = []
        self._cur: Rows | None = None
        self._cur_id: int | None = None
        self._pos = 0

    def unfinished(self) -> list[int]:
        cur = [self._cur_id] if self._cur_id is not None else []
        return cur + list(self.pending)

    def rows_left(self) -> int:
        n = 0 if self._cur is None else len(self._cur) - self._pos
        return n + sum(self.data.block_len(b) for b in self.pending)

    def next(self, n: int) -> Rows:
        parts = []
        while n > 0:
            if self._cur is None:
                if not self.pending:
                    break
                self._cur_id = self.pending.pop(0)
                self._cur, self._pos = self.data.block(self._cur_id), 0
            take = min(n, len(self._cur) - self._pos)
            parts.append(self._cur.slice(self._pos, self._pos + take))
            self._pos += take
            n -= take
            if self._pos >= len(self._cur):
                self.done.append(self._cur_id)
                self._cur, self._cur_id = None, None
        return Rows.concat(parts)



def read_segments(data: Dataset, segs) -> Rows:
    """The rows of a list of segments [block, first row, end row], in order."""
    return Rows.concat([data.block(int(b)).slice(int(a), int(e)) for b, a, e in segs])
