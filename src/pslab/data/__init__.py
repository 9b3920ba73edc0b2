"""Data: every source becomes `Rows` (CSR, 64-bit keys) split into blocks of rows.

`load_dataset(cfg.data)` returns a `Dataset` whose train blocks are the unit of work
assignment (a backend hands block ids to ranks and can take them back) and whose test
set is held out (a second file, or the last fraction of the rows in file order).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from .ctr import read_criteo, read_table
from .files import DataError, resolve
from .libsvm import read_libsvm
from .rows import Batch, Deduper, Rows
from .synthetic import block_args, make_block

__all__ = ["Batch", "DataError", "Dataset", "Deduper", "Rows", "load_dataset", "shipped"]


def shipped(name: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("pslab.data") / "datasets" / name))


class Dataset:
    def __init__(self, train_block, n_blocks: int, n_train: int, test: Rows, hash_bits, block_rows: int):
        self._block = train_block
        self._cache: dict[int, Rows] = {}
        self.n_blocks = n_blocks
        self.n_train = n_train
        self.test = test.fold(hash_bits)
        self.hash_bits = None if hash_bits is None else int(hash_bits)
        self.block_rows = block_rows

    @property
    def n_features(self):
        """Size of the key space for a dense model, or None (64-bit keys)."""
        return None if self.hash_bits is None else 1 << self.hash_bits

    def block(self, b: int) -> Rows:
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} out of range [0, {self.n_blocks})")
        rows = self._cache.get(b)
        if rows is None:
            rows = self._cache[b] = self._block(b).fold(self.hash_bits)
        return rows

    def train_labels(self, b: int) -> np.ndarray:
        """Block b's labels, without keeping the block (a generated block is made anew)."""
        rows = self._cache.get(b)
        return (rows if rows is not None else self._block(b)).y

    def block_len(self, b: int) -> int:
        return min(self.block_rows, self.n_train - b * self.block_rows)

    @staticmethod
    def from_rows(train: Rows, test: Rows, hash_bits, block_rows: int) -> "Dataset":
        n = len(train)
        nb = max(1, -(-n // block_rows))
        return Dataset(lambda b: train.slice(b * block_rows, min(n, (b + 1) * block_rows)),
                       nb, n, test, hash_bits, block_rows)


def _split(rows: Rows, test_fraction, key: str) -> tuple[Rows, Rows]:
    f = float(test_fraction)
    if not 0 < f < 1:
        raise DataError(f"{key}={test_fraction}: must be in (0, 1)")
    cut = len(rows) - int(round(len(rows) * f))
    return rows.slice(0, cut), rows.slice(cut, len(rows))


def _read(cfg, path: Path) -> Rows:
    kind = cfg.format
    if kind == "criteo":
        return read_criteo(path, seed=int(cfg.get("hash_seed", 0)))
    if kind == "libsvm":
        return read_libsvm(path, zero_based=bool(cfg.get("zero_based", False)))
    if kind == "csv":
        cat = list(cfg.get("categorical") or [])
        num = list(cfg.get("numeric") or [])
        if not cat and not num:
            raise DataError("data.categorical and data.numeric are both empty: name some feature columns")
        if not cfg.get("label"):
            raise DataError("data.label is not set: name the label column")
        return read_table(path, None, cfg.label, cat, num, cfg.get("sep", ","), int(cfg.get("hash_seed", 0)))
    raise DataError(f"data.format={kind!r}: unknown (criteo, libsvm, csv, synthetic)")


def cache_dir() -> Path:
    return Path(os.environ.get("PSLAB_CACHE", Path.home() / ".cache" / "pslab"))


def _read_cached(cfg, path: Path) -> Rows:
    """Parsed files are cached as .npz keyed by the file (path, size, mtime) and every
    setting that changes the parse, so the ranks of later runs skip the text parsing.
    Written to a temporary name and renamed: ranks racing to fill it are harmless."""
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, "v": 1,
             **{k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
                for k, v in cfg.items() if k in ("format", "hash_seed", "zero_based", "label", "categorical",
                                                 "numeric", "sep")}}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cached = cache_dir() / f"{path.name}.{key}.npz"
    if cached.exists():
        try:
            z = np.load(cached)
            return Rows(z["indptr"], z["keys"], z["vals"], z["y"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry: parse again
    rows = _read(cfg, path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, indptr=rows.indptr, keys=rows.keys, vals=rows.vals, y=rows.y)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home is no reason to fail the run
    return rows


def _path(p) -> Path:
    p = str(p)
    return shipped(p[len("shipped:"):]) if p.startswith("shipped:") else resolve(p)


def load_dataset(cfg) -> Dataset:
    hash_bits = cfg.get("hash_bits")
    block_rows = int(cfg.get("block_rows", 1000))
    if block_rows <= 0:
        raise DataError(f"data.block_rows={block_rows}: must be > 0")
    if hash_bits is not None and not 1 <= int(hash_bits) <= 40:
        raise DataError(f"data.hash_bits={hash_bits}: must be between 1 and 40 (or null for 64-bit keys)")
    if cfg.format == "synthetic":
        args, test_args = block_args(cfg, block_rows)
        n_blocks = -(-int(cfg.rows) // block_rows)
        n_test_blocks = -(-int(cfg.test_rows) // block_rows)
        test = Rows.concat([make_block(n_blocks + j, **test_args) for j in range(n_test_blocks)])
        test = test.slice(0, min(len(test), int(cfg.test_rows)))
        return Dataset(lambda b: make_block(b, **args), n_blocks, n_blocks * block_rows, test,
                       hash_bits, block_rows)
    read = _read_cached if cfg.get("cache", True) else _read
    rows = read(cfg, _path(cfg.path))
    if cfg.get("test_path"):
        train, test = rows, read(cfg, _path(cfg.test_path))
    elif cfg.get("test_fraction"):
        train, test = _split(rows, cfg.test_fraction, "data.test_fraction")
    else:
        raise DataError("no held-out set: set data.test_path=... or data.test_fraction=F")
    return Dataset.from_rows(train, test, hash_bits, block_rows)
