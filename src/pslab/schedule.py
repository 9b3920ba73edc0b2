"""Which rows go into which step: the block order of an epoch, blocks dealt into lanes
(one lane per rank or worker), and lanes read as continuous streams of rows.

Every backend builds its batches from these, so "the same global batch and the same
block assignment" means the same thing everywhere: step t takes the next B/L rows of
each of the L lanes (a Stream each). The local trainer with `backend.lanes=L` reproduces
an L-rank run.
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


def split_batch(batch: int, m: int) -> list[int]:
    """B rows a step over m lanes: B//m each, one more for the first B%m (a batch that does
    not divide, e.g. 256 over 6 ranks, still makes every step B rows)."""
    if batch < m:
        raise ValueError(f"train.batch_size={batch} is smaller than the {m} lanes (ranks/workers): "
                         "every lane needs at least one row a step")
    return [batch // m + (1 if i < batch % m else 0) for i in range(m)]


def lane_batch_size(batch_size: int, lanes: int) -> int:
    if batch_size % lanes:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by {lanes} lanes (ranks/workers)")
    return batch_size // lanes


class Stream:
    """One lane's rows: segments [block, first row, end row] read in order. Every backend
    reads its rows through one: the local trainer and a PS plan read and consume (`next`);
    elastic allreduce reads without consuming (`take`/`read`, then `commit` once the step's
    collective succeeded, so a failed step is simply redone) and hands a dead member's
    `unfinished` segments, which may begin part-way into a block, to another stream."""

    def __init__(self, data: Dataset, blocks=()):
        self.data = data
        self.segs: list[tuple[int, int, int]] = []
        self.i = 0      # current segment
        self.pos = 0    # rows of segment i already consumed
        self.left = 0
        self.add([(int(b), 0, data.block_len(int(b))) for b in blocks])

    def add(self, segs) -> None:
        for b, a, e in segs:
            if e > a:
                self.segs.append((int(b), int(a), int(e)))
                self.left += e - a

    def take(self, n: int) -> list[tuple[int, int, int]]:
        """The next n rows as segments, without consuming them."""
        out, i, pos = [], self.i, self.pos
        while n > 0 and i < len(self.segs):
            b, a, e = self.segs[i]
            k = min(n, e - a - pos)
            out.append((b, a + pos, a + pos + k))
            n -= k
            pos += k
            if a + pos >= e:
                i, pos = i + 1, 0
        return out

    def count(self, n: int) -> int:
        return min(n, self.left)

    def read(self, n: int) -> Rows:
        return read_segments(self.data, self.take(n))

    def commit(self, n: int) -> None:
        n = min(n, self.left)
        self.left -= n
        while n > 0:
            b, a, e = self.segs[self.i]
            k = min(n, e - a - self.pos)
            self.pos += k
            n -= k
            if a + self.pos >= e:
                self.i, self.pos = self.i + 1, 0

    def next(self, n: int) -> Rows:
        """Read and consume the next n rows."""
        rows = self.read(n)
        self.commit(len(rows))
        return rows

    def unfinished(self) -> list[tuple[int, int, int]]:
        if self.i >= len(self.segs):
            return []
        b, a, e = self.segs[self.i]
        return [(b, a + self.pos, e)] + self.segs[self.i + 1:]


def read_segments(data: Dataset, segs) -> Rows:
    """The rows of a list of segments [block, first row, end row], in order."""
    return Rows.concat([data.block(int(b)).slice(int(a), int(e)) for b, a, e in segs])
