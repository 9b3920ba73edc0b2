"""Synthetic CTR rows: power-law feature popularity over a 64-bit key space and labels
from a hidden ground-truth LR (or FM) model. Seeded per block, so a rank can generate
just its own blocks without any file.

Knobs for the quality suite (all seeded, all in `conf/data/synthetic.yaml`):
- `positive_rate`: the hidden model's intercept is solved so that this share of rows is
  positive (1% and 0.1% are typical of ad clicks); null keeps `bias`.
- `alpha` < 1 and a large `n_keys` (2^24): heavy power-law tails, most keys seen once.
- `drift_keys` / `drift_bias`: the test rows come from a changed model: that share of
  keys get new hidden weights, and the intercept moves by drift_bias (a base-rate shift,
  e.g. -1.4 takes 1% positives to about 0.25%).
"""
from __future__ import annotations

import numpy as np

from .files import DataError
from .hashing import splitmix64, uniform01
from .libsvm import BIAS_KEY
from .rows import Rows

TRUTH_SALT = 0x5EED
DRIFT_SALT = 0xD21F7
SOLVE_BLOCK = 1 << 40  # block id of the sample the intercept is solved on (no real block has it)
SOLVE_ROWS = 1 << 15


def _normal(keys: np.ndarray, salt: int) -> np.ndarray:
    u1 = uniform01(keys, salt) + 1e-12
    u2 = uniform01(keys, salt + 1)
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def feature_keys(ranks: np.ndarray, seed: int) -> np.ndarray:
    """Popularity rank -> 64-bit key in [0, 2^63)."""
    return splitmix64(ranks.astype(np.uint64) ^ splitmix64(np.uint64(seed))) >> np.uint64(1)


def _keys(rng, rows: int, nnz: int, n_keys: int, alpha: float, seed: int) -> np.ndarray:
    u = rng.random((rows, nnz))
    # Bounded power law P(rank) ~ rank^-alpha by inverse CDF (alpha=1: log-uniform).
    if abs(alpha - 1.0) < 1e-9:
        r = np.floor(np.exp(u * np.log(n_keys + 1.0))) - 1
    else:
        a = 1.0 - alpha
        r = np.floor((1 + u * ((n_keys + 1.0) ** a - 1)) ** (1 / a)) - 1
    return feature_keys(np.clip(r, 0, n_keys - 1).astype(np.int64), seed)


def _margin(keys: np.ndarray, truth: str, sigma: float, k_true: int, drift_keys: float = 0.0) -> np.ndarray:
    """The hidden model's margin without its intercept, for keys of shape rows x nnz."""
    w = _normal(keys, TRUTH_SALT) * sigma
    if drift_keys > 0:
        # A drifted key's weight is drawn anew (same law): the test world is another model.
        moved = uniform01(keys, DRIFT_SALT) < drift_keys
        w = np.where(moved, _normal(keys, DRIFT_SALT + 1) * sigma, w)
    margin = w.sum(axis=1)
    if truth == "fm":
        v = np.stack([_normal(keys, TRUTH_SALT + 2 + 2 * j) for j in range(k_true)], axis=-1) * sigma
        s = v.sum(axis=1)
        margin += 0.5 * ((s * s).sum(-1) - (v * v).sum(axis=(1, 2)))
    return margin


def solve_bias(positive_rate: float, nnz: int, n_keys: int, alpha: float, seed: int, truth: str = "lr",
               sigma: float = 0.5, k_true: int = 4) -> float:
    """The intercept that makes `positive_rate` of the rows positive in expectation, found
    by bisection on a seeded sample of margins (the same on every rank)."""
    if not 0 < positive_rate < 1:
        raise DataError(f"data.positive_rate={positive_rate}: must be in (0, 1)")
    rng = np.random.default_rng([seed, SOLVE_BLOCK])
    m = _margin(_keys(rng, SOLVE_ROWS, nnz, n_keys, alpha, seed), truth, sigma, k_true)
    lo, hi = -60.0, 60.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1 / (1 + np.exp(-(m + mid)))) < positive_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_block(block: int, rows: int, nnz: int, n_keys: int, alpha: float, seed: int,
               truth: str = "lr", sigma: float = 0.5, bias: float = -1.5, k_true: int = 4,
               drift_keys: float = 0.0, drift_bias: float = 0.0) -> Rows:
    """`nnz` power-law keys a row, then the bias key (as every reader adds one)."""
    rng = np.random.default_rng([seed, block])
    keys = _keys(rng, rows, nnz, n_keys, alpha, seed)
    margin = _margin(keys, truth, sigma, k_true, drift_keys) + bias + drift_bias
    y = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    keys = np.concatenate([keys, np.full((rows, 1), BIAS_KEY, np.uint64)], axis=1)
    width = nnz + 1
    return Rows(np.arange(rows + 1, dtype=np.int64) * width, keys.reshape(-1),
                np.ones(rows * width, np.float32), y)


def block_args(cfg, block_rows: int) -> tuple[dict, dict]:
    """make_block's arguments for the train blocks and for the test blocks, from
    `cfg.data` of a synthetic set (the test blocks carry the drift, if any)."""
    def num(key, default, kind=float):
        v = cfg.get(key, default)
        try:
            return kind(default if v is None else v)
        except (TypeError, ValueError):
            raise DataError(f"data.{key}={v!r}: not a number") from None

    truth = str(cfg.get("truth", "lr"))
    if truth not in ("lr", "fm"):
        raise DataError(f"data.truth={truth!r}: must be lr or fm")
    alpha, n_keys, nnz = num("alpha", 1.0), num("n_keys", 1 << 22, int), num("nnz", 39, int)
    if alpha < 0 or n_keys < 1 or nnz < 1:  # alpha 0: uniform popularity (the scalability experiment's)
        raise DataError(f"data.alpha={alpha}, data.n_keys={n_keys}, data.nnz={nnz}: alpha must be >= 0, "
                        f"n_keys and nnz >= 1")
    args = dict(rows=block_rows, nnz=nnz, n_keys=n_keys, alpha=alpha, seed=num("seed", 0, int), truth=truth,
                bias=num("bias", -1.5))
    if cfg.get("positive_rate") is not None:
        args["bias"] = solve_bias(num("positive_rate", None), nnz, n_keys, alpha, args["seed"], truth)
    drift_keys = num("drift_keys", 0.0)
    if not 0 <= drift_keys <= 1:
        raise DataError(f"data.drift_keys={drift_keys}: must be in [0, 1]")
    return args, dict(args, drift_keys=drift_keys, drift_bias=num("drift_bias", 0.0))
