"""Sparse example rows in CSR form with 64-bit feature keys.

`Rows` is what every reader produces and every backend consumes. A block of rows
(a few thousand) is the unit of data assignment; a minibatch is re-indexed to its
unique keys (`Batch`) before it reaches a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Rows:
    indptr: np.ndarray  # int64, n+1
    keys: np.ndarray  # uint64, nnz
    vals: np.ndarray  # float32, nnz
    y: np.ndarray  # float32 in {0, 1}, n

    def __post_init__(self):
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        self.keys = np.ascontiguousarray(self.keys, dtype=np.uint64)
        self.vals = np.ascontiguousarray(self.vals, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.float32)
        if len(self.indptr) != len(self.y) + 1 or self.indptr[-1] != len(self.keys):
            raise ValueError("Rows: indptr, keys and y disagree in length")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nnz(self) -> int:
        return len(self.keys)

    def slice(self, a: int, b: int) -> "Rows":
        lo, hi = self.indptr[a], self.indptr[b]
        return Rows(self.indptr[a : b + 1] - lo, self.keys[lo:hi], self.vals[lo:hi], self.y[a:b])

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rows.empty()
        offs = np.cumsum([0] + [p.nnz for p in parts])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offs)])
        return Rows(indptr, np.concatenate([p.keys for p in parts]),
                    np.concatenate([p.vals for p in parts]), np.concatenate([p.y for p in parts]))

    @staticmethod
    def empty() -> "Rows":
        return Rows(np.zeros(1, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.float32),
                    np.zeros(0, np.float32))

    def fold(self, hash_bits: int | None) -> "Rows":
        """The hashing trick: fold keys into [0, 2^hash_bits). Keys are already hashed
        (or small indices), so their low bits are well spread."""
        if hash_bits is None:
            return self
        mask = np.uint64((1 << int(hash_bits)) - 1)
        return Rows(self.indptr, self.keys & mask, self.vals, self.y)


@dataclass
class Batch:
    """A minibatch re-indexed to its unique keys: row i touches uniq[cols[j]] for
    j in indptr[i]:indptr[i+1]."""
    uniq: np.ndarray  # uint64, u
    indptr: np.ndarray
    cols: np.ndarray  # int32 positions into uniq
    vals: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def csr(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.vals, self.cols, self.indptr), shape=(len(self.y), len(self.uniq)))


class Deduper:
    """Finds a batch's unique keys. With folded keys (< 2^b) it uses a lookup table,
    several times faster than np.unique's sort; 64-bit keys fall back to np.unique.
    The order of the unique keys is unspecified (no result depends on it: a model sums
    each key's terms in row order whatever its column number)."""

    def __init__(self, hash_bits: int | None):
        self.table = np.empty(1 << int(hash_bits), np.int32) if hash_bits is not None else None

    def __call__(self, rows: Rows) -> Batch:
        uniq, cols = self.unique(rows.keys)
        return Batch(uniq, rows.indptr, cols, rows.vals, rows.y)

    def unique(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct keys, and per key its position among them (int32)."""
        if self.table is None or len(keys) == 0 or len(keys) >= 2**31:
            uniq, inv = np.unique(keys, return_inverse=True)
            return uniq, inv.reshape(-1).astype(np.int32)
        ki = keys.view(np.int64)
        pos = np.arange(len(keys), dtype=np.int32)
        # Each key's entry ends up holding the position of one of its occurrences (which
        # one does not matter): that occurrence represents the key. A fancy assignment is
        # twice as fast as np.put here, and raises on a key beyond the table (not folded).
        self.table[ki] = pos
        rep = np.take(self.table, ki, mode="wrap")  # in range: just checked; "wrap" is faster
        is_rep = rep == pos
        rank = np.cumsum(is_rep, dtype=np.int32) - 1
        # np.compress is ~3x faster than boolean indexing keys[is_rep]
        return np.compress(is_rep, keys), np.take(rank, rep)


def as_csr(rows: Rows, n_features: int) -> sp.csr_matrix:
    """Rows with folded keys as a scipy matrix (for scikit-learn baselines)."""
    return sp.csr_matrix((rows.vals, rows.keys.astype(np.int64), rows.indptr), shape=(len(rows), n_features))
