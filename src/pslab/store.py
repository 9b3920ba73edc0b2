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

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


class KeyIndex:
    """uint64 key -> int64 slot, slots handed out densely in insertion order.

    Linear probing with each entry's key and slot side by side (16 bytes), so a probe
    costs one cache miss, not two. A lookup is one gather over all keys at their home
    entries (most are found there: the table is at most half full), then rounds over
    the shrinking set of keys still probing.
    """

    # The home is the top bits of a multiply, after folding the high half of the key into
    # the low one (so keys differing only in high bits still spread). The multiplier is
    # not the hash ring's (hashring._FIB): a server holds the keys whose ring positions
    # fall in its ranges, and homes taken from the same bits would crowd into part of
    # the table.
    _MUL = np.uint64(0xD6E8FEB86659FD93)
    _SCALAR_TAIL = 32   # keys left probing when a Python loop beats numpy rounds

    def __init__(self, capacity: int = 1 << 10):
        self._alloc(1 << max(4, int(capacity - 1).bit_length()))
        self.n = 0

    def _alloc(self, cap: int) -> None:
        self.table = np.full((cap, 2), EMPTY, np.uint64)      # (key, slot); empty: (EMPTY, -1)
        self.entries = self.table.view("V16").reshape(cap)     # one item per entry, for np.take
        self.tkeys = self.table[:, 0]
        self.tslots = self.table[:, 1].view(np.int64)
        self.mask = cap - 1
        self.shift = np.uint64(64 - (cap.bit_length() - 1))

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        x = keys >> np.uint64(32)
        x ^= keys
        x *= self._MUL
        x >>= self.shift
        return x.view(np.int64)

    def _find(self, keys: np.ndarray, ends: bool = False):
        """Slots of keys (-1 if absent); with ends, also per key the empty entry where its
        probe ended (meaningful for the absent ones: where insert can place them)."""
        h = self._home(keys)
        e = np.take(self.entries, h).view(np.uint64).reshape(-1, 2)
        k = e[:, 0]
        found = k == keys
        out = np.where(found, e[:, 1].view(np.int64), -1)
        act = np.flatnonzero(~(found | (k == EMPTY)))  # home taken by another key: probe on
        p, kk = h[act], keys[act]
        end = h if ends else None
        while len(act) > self._SCALAR_TAIL:
            p += 1
            p &= self.mask
            e = np.take(self.entries, p).view(np.uint64).reshape(-1, 2)
            k = e[:, 0]
            hit = k == kk
            out[act[hit]] = e[hit, 1].view(np.int64)
            empty = k == EMPTY
            if ends:
                end[act[empty]] = p[empty]
            go = ~(hit | empty)
            act, p, kk = act[go], p[go], kk[go]
        # The last few keys still probing: a vectorized round costs ~10 us of numpy calls
        # whatever its size, a scalar probe well under one.
        tk, ts, mask, empty_key = self.tkeys, self.tslots, self.mask, int(EMPTY)
        for i, q, key in zip(act.tolist(), p.tolist(), kk.tolist()):
            while True:
                q = (q + 1) & mask
                k = int(tk[q])
                if k == key:
                    out[i] = ts[q]
                    break
                if k == empty_key:
                    if ends:
                        end[i] = q
                    break
        return out, end

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(keys, np.uint64)
        if self.n == 0 or len(keys) == 0:
            return np.full(len(keys), -1, np.int64)
        return self._find(keys)[0]

    def _place(self, keys: np.ndarray, vals: np.ndarray, pos: np.ndarray) -> None:
        """Insert keys known to be absent and distinct, probing from pos (their homes, or
        any entry their probe sequence reaches through occupied entries only)."""
        act, p = np.arange(len(keys)), pos.copy()
        while len(act):
            free = self.tkeys[p] == EMPTY
            fa, fp = act[free], p[free]
            # Several keys may want one free entry: all write, one write stands, and
            # reading back names the winner (keys are distinct). No sort needed. Written
            # in reverse, numpy's last write is the earliest key (not guaranteed, but what
            # it does): a batch's first keys, often its most frequent, stay nearest home.
            self.tkeys[fp[::-1]] = keys[fa[::-1]]
            won = self.tkeys[fp] == keys[fa]
            self.tslots[fp[won]] = vals[fa[won]]
            go = ~free
            go[np.flatnonzero(free)[~won]] = True
            act, p = act[go], p[go]
            p += 1
            p &= self.mask

    def _grow(self, need: int) -> bool:
        """Keep the table at most half full; True if it was rebuilt (homes changed)."""
        cap = len(self.table)
        if need * 2 <= cap:
            return False
        while need * 2 > cap:
            cap *= 2
        used = self.tkeys != EMPTY
        old_k, old_s = self.tkeys[used], self.tslots[used]
        self._alloc(cap)
        self._place(old_k, old_s, self._home(old_k))
        return True

    def insert(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of `keys` (distinct), adding the missing ones. Returns (slots, is_new)."""
        keys = np.ascontiguousarray(keys, np.uint64)
        if (keys == EMPTY).any():
            raise ValueError("key 2^64-1 is reserved by KeyIndex")
        if self.n == 0:
            slots, end = np.full(len(keys), -1, np.int64), None
        else:
            slots, end = self._find(keys, ends=True)
        new = slots < 0
        miss = np.flatnonzero(new)
        m = len(miss)
        if m:
            kn = keys[miss]
            # Placing starts where the lookup's probe ended (no probing twice), unless
            # growing the table moved everything.
            at = self._home(kn) if self._grow(self.n + m) or end is None else end[miss]
            ids = np.arange(self.n, self.n + m, dtype=np.int64)
            self._place(kn, ids, at)
            slots[miss] = ids
            self.n += m
        return slots, new

    def keys_by_slot(self) -> np.ndarray:
        used = self.tkeys != EMPTY
        out = np.empty(self.n, np.uint64)
        out[self.tslots[used]] = self.tkeys[used]
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
        out = take_rows(self.W, np.maximum(s, 0)) if len(self.W) else np.zeros((len(keys), 0))
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


def _records(A: np.ndarray) -> np.ndarray:
    """A C-contiguous n x d array as n opaque records of d values (a view): np.take and
    np.put then move each row with one memcpy instead of d element copies."""
    return A.view(np.dtype((np.void, A.shape[1] * A.itemsize))).reshape(-1)


def take_rows(A: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A[s] for row indices that table.slots() has checked. mode="wrap" skips numpy's own
    bounds check, whose code path is ~20% slower for one-value rows (LR)."""
    return np.take(A, s, axis=0, mode="wrap")


def put_rows(A: np.ndarray, s: np.ndarray, V: np.ndarray) -> None:
    """A[s] = V for distinct row indices s (rows of a C-contiguous table). The fastest
    numpy route depends on the row width: for single values a flat fancy assignment
    (twice np.put's speed), for wider rows np.put of whole rows as records, one memcpy
    per row (about 4x a flat fancy assignment of d values per row, 5x A[s] = V)."""
    d = A.shape[1]
    if d == 0:
        return
    if not A.flags.c_contiguous:
        A[s] = V
    elif d == 1:
        A.reshape(-1)[s] = V.reshape(-1)
    else:
        np.put(_records(A), s, _records(np.ascontiguousarray(V, A.dtype)))


def apply_gradient(table, keys: np.ndarray, g: np.ndarray) -> None:
    """One optimizer step on the rows of `keys` (distinct) with gradient rows g."""
    s = table.slots(keys, create=True)
    w, st = take_rows(table.W, s), take_rows(table.S, s)
    table.opt.update(w, st, g)
    put_rows(table.W, s, w)
    put_rows(table.S, s, st)
