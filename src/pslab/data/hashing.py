"""Stable 64-bit hashing (never Python's salted hash()): splitmix64 for integers,
blake2b for strings, so a key means the same on every rank and every run."""
from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x) -> np.ndarray:
    """Vectorized splitmix64 finalizer: a bijection on uint64 with good avalanche."""
    z = np.asarray(x, dtype=np.uint64) + _GOLD
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_str(s: str, seed: int = 0) -> int:
    h = hashlib.blake2b(s.encode("utf-8", "surrogateescape"), digest_size=8,
                        key=int(seed).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little")


def hash_strings(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hash an array of strings to uint64, hashing each distinct value once."""
    uniq, inv = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    hashed = np.fromiter((hash_str(u, seed) for u in uniq), dtype=np.uint64, count=len(uniq))
    return hashed[inv.reshape(-1)]


def uniform01(keys: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) derived from keys (per-key random init)."""
    h = splitmix64(np.asarray(keys, dtype=np.uint64) ^ splitmix64(np.uint64(salt)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
