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
from .files import DataError, reading, resolve, sniff
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


def _split(rows: Rows, test_fraction, path: Path) -> tuple[Rows, Rows]:
    f = float(test_fraction)
    cut = len(rows) - int(round(len(rows) * f))
    if cut == len(rows) or cut == 0:
        raise DataError(f"data.test_fraction={test_fraction:g} of the {len(rows)} rows of {path} leaves "
                        f"{'no test' if cut == len(rows) else 'no training'} rows: use more rows, another "
                        "fraction, or data.test_path=FILE")
    return rows.slice(0, cut), rows.slice(cut, len(rows))


def _read(cfg, path: Path) -> Rows:
    with reading(path):
        rows = _parse(cfg, path)
    if len(rows) == 0:
        raise DataError(f"{path}: no data rows")
    return rows


def _parse(cfg, path: Path) -> Rows:
    kind = cfg.format
    if kind == "criteo":
        return read_criteo(path, seed=int(cfg.get("hash_seed", 0)))
    if kind == "libsvm":
        return read_libsvm(path, zero_based=bool(cfg.get("zero_based", False)))
    if kind == "csv":
        cat = list(cfg.get("categorical") or [])
        num = list(cfg.get("numeric") or [])
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


def data_path(p, key: str = "data.path") -> Path:
    """The file a data.path / data.test_path setting names (`shipped:NAME` is in the
    package), checked to exist and to look like text (pslab.data.files.sniff)."""
    p = str(p)
    if p.startswith("shipped:"):
        return shipped(p[len("shipped:"):])
    path = resolve(p, key)
    sniff(path, key)
    return path


def load_dataset(cfg) -> Dataset:
    from ..config import ConfigError, check_data

    try:
        check_data(cfg)
    except ConfigError as e:
        raise DataError(str(e)) from None
    hash_bits = cfg.get("hash_bits")
    block_rows = int(cfg.get("block_rows", 1000))
    if cfg.format == "synthetic":
        args, test_args = block_args(cfg, block_rows)
        n_blocks = -(-int(cfg.rows) // block_rows)
        n_test_blocks = -(-int(cfg.test_rows) // block_rows)
        test = Rows.concat([make_block(n_blocks + j, **test_args) for j in range(n_test_blocks)])
        test = test.slice(0, min(len(test), int(cfg.test_rows)))
        return Dataset(lambda b: make_block(b, **args), n_blocks, n_blocks * block_rows, test,
                       hash_bits, block_rows)
    read = _read_cached if cfg.get("cache", True) else _read
    path = data_path(cfg.path)
    rows = read(cfg, path)
    if cfg.get("test_path"):
        train, test = rows, read(cfg, data_path(cfg.test_path, "data.test_path"))
    else:
        train, test = _split(rows, cfg.test_fraction, path)
    return Dataset.from_rows(train, test, hash_bits, block_rows)
