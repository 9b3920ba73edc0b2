"""Synthetic CTR rows: power-law feature popularity over a 64-bit key space and labels
from a hidden ground-truth LR (or FM) model. Seeded per block, so a rank can generate
just its own blocks without any file."""
from __future__ import annotations

import numpy as np

from .hashing import splitmix64, uniform01
from .rows import Rows

TRUTH_SALT = 0x5EED


def _normal(keys: np.ndarray, salt: int) -> np.ndarray:
    u1 = uniform01(keys, salt) + 1e-12
    u2 = uniform01(keys, salt + 1)
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def feature_keys(ranks: np.ndarray, seed: int) -> np.ndarray:
    """Popularity rank -> 64-bit key in [0, 2^63)."""
    return splitmix64(ranks.astype(np.uint64) ^ splitmix64(np.uint64(seed))) >> np.uint64(1)


def make_block(block: int, rows: int, nnz: int, n_keys: int, alpha: float, seed: int,
               truth: str = "lr", sigma: float = 0.5, bias: float = -1.5, k_true: int = 4) -> Rows:
    rng = np.random.default_rng([seed, block])
    u = rng.random((rows, nnz))
    # Bounded power law P(rank) ~ rank^-alpha by inverse CDF (alpha=1: log-uniform).
    if abs(alpha - 1.0) < 1e-9:
        r = np.floor(np.exp(u * np.log(n_keys + 1.0))) - 1
    else:
        a = 1.0 - alpha
        r = np.floor((1 + u * ((n_keys + 1.0) ** a - 1)) ** (1 / a)) - 1
    keys = feature_keys(np.clip(r, 0, n_keys - 1).astype(np.int64), seed)
    w = _normal(keys, TRUTH_SALT) * sigma
    margin = w.sum(axis=1) + bias
    if truth == "fm":
        v = np.stack([_normal(keys, TRUTH_SALT + 2 + 2 * j) for j in range(k_true)], axis=-1) * sigma
        s = v.sum(axis=1)
        margin += 0.5 * ((s * s).sum(-1) - (v * v).sum(axis=(1, 2)))
    y = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    return Rows(np.arange(rows + 1, dtype=np.int64) * nnz, keys.reshape(-1),
                np.ones(rows * nnz, np.float32), y)
