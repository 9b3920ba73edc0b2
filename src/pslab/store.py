"""Parameter tables: rows of parameters and optimizer state addressed by key.

`DenseTable` holds every key of a folded key space [0, 2^b) (one replica per rank, the
allreduce design). `SparseTable` grows with the keys actually seen and accepts any
64-bit key (the PS servers' store, and the local trainer without folding). Both expose
`slots(keys)` into their W (params) and S (optimizer state) arrays, so update code is
the same for both. `KeyIndex` is a vectorized open-addressing hash map: no Python loop
per key, the loop runs over probe rounds.
"""
from __future__ import annotations

import numpy as np

from .data.hashing import splitmix64

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


class KeyIndex:
    """uint64 key -> int64 slot, slots handed out densely in insertion order."""

    def __init__(self, capacity: int = 1 << 10):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.tkeys = np.full(cap, EMPTY, np.uint64)
        self.tvals = np.full(cap, -1, np.int64)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.tkeys.nbytes + self.tvals.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (splitmix64(keys) & np.uint64(len(self.tkeys) - 1)).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, np.uint64)
        out = np.full(len(keys), -1, np.int64)
        if self.n == 0 or len(keys) == 0:
            return out
        mask = len(self.tkeys) - 1
        pos = self._home(keys)
        active = np.arange(len(keys))
        while len(active):
            p = pos[active]
            k = self.tkeys[p]
            hit = k == keys[active]
            out[active[hit]] = self.tvals[p[hit]]
            go_on = ~hit & (k != EMPTY)
            active = active[go_on]
            pos[active] = (p[go_on] + 1) & mask
        return out

    def _place(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Insert keys known to be absent and distinct."""
        mask = len(self.tkeys) - 1
        pos = self._home(keys)
        active = np.arange(len(keys))
        while len(active):
            p = pos[active]
            free = self.tkeys[p] == EMPTY
            # Several new keys may want the same free slot: the first of each wins.
            cand = active[free]
            _, first = np.unique(p[free], return_index=True)
            win = cand[first]
            self.tkeys[pos[win]] = keys[win]
            self.tvals[pos[win]] = vals[win]
            placed = np.zeros(len(keys), bool)
            placed[win] = True
            active = active[~placed[active]]
            pos[active] = (pos[active] + 1) & mask

    def _grow(self, need: int) -> None:
        cap = len(self.tkeys)
        if need * 2 <= cap:
            return
        while need * 2 > cap:
            cap *= 2
        used = self.tkeys != EMPTY
        old_k, old_v = self.tkeys[used], self.tvals[used]
        self.tkeys = np.full(cap, EMPTY, np.uint64)
        self.tvals = np.full(cap, -1, np.int64)
        self._place(old_k, old_v)

    def insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of `keys` (distinct), adding the missing ones. Returns (slots, is_new)."""
        keys = np.asarray(keys, np.uint64)
        if (keys == EMPTY).any():
            raise ValueError("key 2^64-1 is reserved by KeyIndex")
        slots = self.lookup(keys)
        new = slots < 0
        m = int(new.sum())
        if m:
            self._grow(self.n + m)
            ids = np.arange(self.n, self.n + m, dtype=np.int64)
            self._place(keys[new], ids)
            slots[new] = ids
            self.n += m
        return slots, new

    def keys_by_slot(self) -> np.ndarray:
        used = self.tkeys != EMPTY
        out = np.empty(self.n, np.uint64)
        out[self.tvals[used]] = self.tkeys[used]
        return out


class DenseTable:
    """Every key of [0, n) held in full: the classic one-replica-per-rank model."""

    def __init__(self, n: int, model, optimizer, dtype=np.float32):
        self.n = int(n)
        self.model, self.opt = model, optimizer
        self.W = model.init_rows(np.arange(self.n, dtype=np.uint64), dtype)
        self.S = optimizer.init_state(self.W)

    def slots(self, keys: np.ndarray, create: bool = True) -> np.ndarray:
        if len(keys) and int(keys.max()) >= self.n:
            raise ValueError(f"key {int(keys.max())} outside the dense model of {self.n} rows: "
                             "a dense backend needs folded keys (set data.hash_bits=b)")
        return np.asarray(keys, np.uint64).view(np.int64)

    def gather(self, keys: np.ndarray) -> np.ndarray:
        return take_rows(self.W, self.slots(keys))

    def keys(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.uint64)

    @property
    def nbytes(self) -> int:
        return self.W.nbytes + self.S.nbytes


class SparseTable:
    """Rows only for keys seen, any 64-bit key. Unseen keys read as their init rows."""

    def __init__(self, model, optimizer, dtype=np.float32, capacity: int = 1 << 12):
        self.model, self.opt, self.dtype = model, optimizer, dtype
        self.index = KeyIndex(capacity)
        w0 = model.init_rows(np.zeros(0, np.uint64), dtype)
        self.W = np.zeros((capacity, w0.shape[1]), dtype)
        self.S = np.zeros((capacity, optimizer.init_state(w0).shape[1]), dtype)

    def __len__(self) -> int:
        return self.index.n

    def _reserve(self, n: int) -> None:
        if n <= len(self.W):
            return
        cap = max(n, 2 * len(self.W))
        for name in ("W", "S"):
            old = getattr(self, name)
            new = np.zeros((cap, old.shape[1]), old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def slots(self, keys: np.ndarray, create: bool = True) -> np.ndarray:
        if not create:
            return self.index.lookup(keys)
        s, new = self.index.insert(keys)
        if new.any():
            self._reserve(self.index.n)
            w0 = self.model.init_rows(np.asarray(keys, np.uint64)[new], self.dtype)
            self.W[s[new]] = w0
            self.S[s[new]] = self.opt.init_state(w0)
        return s

    def gather(self, keys: np.ndarray) -> np.ndarray:
        """Rows for keys without inserting: unseen keys get their init rows."""
        s = self.index.lookup(keys)
        out = self.W[np.maximum(s, 0)] if len(self.W) else np.zeros((len(keys), 0))
        miss = s < 0
        if miss.any():
            out[miss] = self.model.init_rows(np.asarray(keys, np.uint64)[miss], self.dtype)
        return out

    def keys(self) -> np.ndarray:
        return self.index.keys_by_slot()

    def load(self, keys: np.ndarray, W: np.ndarray, S: np.ndarray) -> None:
        """Set rows (checkpoint restore, replica sync)."""
        s = self.slots(np.asarray(keys, np.uint64))
        self.W[s] = W
        self.S[s] = S

    @property
    def nbytes(self) -> int:
        n = self.index.n
        return self.index.nbytes + self.W[:n].nbytes + self.S[:n].nbytes


def make_table(n_features, model, optimizer, dtype=np.float32):
    return SparseTable(model, optimizer, dtype) if n_features is None else DenseTable(n_features, model, optimizer, dtype)


def take_rows(A: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.take(A, s, axis=0)


def put_rows(A: np.ndarray, s: np.ndarray, V: np.ndarray) -> None:
    """A[s] = V for distinct row indices s. Row-wise fancy assignment is several times
    slower in numpy than assigning through flat element indices."""
    d = A.shape[1]
    if d == 0:
        return
    if d == 1:
        np.put(A.reshape(-1), s, V.reshape(-1))
        return
    flat = (s[:, None] * d + np.arange(d)).reshape(-1)
    A.reshape(-1)[flat] = V.reshape(-1)


def apply_gradient(table, keys: np.ndarray, g: np.ndarray) -> None:
    """One optimizer step on the rows of `keys` (distinct) with gradient rows g."""
    s = table.slots(keys, create=True)
    w, st = take_rows(table.W, s), take_rows(table.S, s)
    table.opt.update(w, st, g)
    put_rows(table.W, s, w)
    put_rows(table.S, s, st)
