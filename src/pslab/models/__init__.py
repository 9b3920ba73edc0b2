"""Models: LR and FM behind one interface, backend-agnostic.

A model sees a `Batch` re-indexed to its unique keys and the parameter rows for those
keys (shape u x dim), and returns the summed data log-loss and gradient rows for the same
keys. L2 and the step are the optimizer's business, so that summing per-rank gradients
(allreduce) or per-worker pushes (PS) is the same algorithm as one big batch.

`offset` is a constant added to every margin: the log-odds of the training base rate
(pslab.backends.common.Setup sets it, the same on every rank), so an untrained model
predicts the base rate and the bias key learns only the difference (XGBoost's
base_score). Started at 0 instead, the bias must first walk to e.g. -4.6 for 1%
positives, which a one-pass learner pays for with its first thousands of rows.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..data.hashing import uniform01
from ..data.rows import Batch


def logloss_terms(margin: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log-loss from the margin, stable for large |margin|."""
    return np.logaddexp(0.0, margin) - y * margin


class LR:
    name = "lr"
    dim = 1

    def __init__(self, seed: int = 0, offset: float = 0.0):
        self.seed = seed
        self.offset = float(offset)

    def init_rows(self, keys: np.ndarray, dtype=np.float32) -> np.ndarray:
        return np.zeros((len(keys), 1), dtype)

    def margin(self, batch: Batch, params: np.ndarray, X=None) -> np.ndarray:
        X = batch.csr() if X is None else X
        return X @ params[:, 0] + self.offset

    def loss_grad(self, batch: Batch, params: np.ndarray):
        X = batch.csr()
        m = X @ params[:, 0] + self.offset
        r = (expit(m) - batch.y).astype(params.dtype)
        grad = (X.T @ r).astype(params.dtype, copy=False).reshape(-1, 1)
        return float(logloss_terms(m, batch.y).sum()), grad


class FM:
    """Second-order factorization machine (Rendle 2010): row = [w, v_1..v_k].

    With instance_norm (the default) the pairwise term of a row is divided by its squared
    length |x|^2 (the number of keys of a one-hot row), as FFM (Juan et al. 2016) and
    xLearn do: a row of 40 keys has 780 pairs, and unnormalized their sum swings the
    margin as soon as the factors grow, which overfits a small log in one pass (Criteo
    sample: AUC 0.712 against LR's 0.743). The linear part is LR's, unchanged."""
    name = "fm"

    def __init__(self, k: int = 8, init_std: float = 0.01, seed: int = 0, offset: float = 0.0,
                 instance_norm: bool = True):
        if int(k) <= 0:
            raise ValueError(f"model.k={k}: must be a positive integer")
        self.offset = float(offset)
        self.k = int(k)
        self.dim = 1 + self.k
        self.init_std = float(init_std)
        self.seed = int(seed)
        self.instance_norm = bool(instance_norm)

    def init_rows(self, keys: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Deterministic per key, so every backend starts from the same model."""
        keys = np.asarray(keys, np.uint64)
        out = np.zeros((len(keys), self.dim), dtype)
        a = self.init_std * np.sqrt(3.0)  # uniform(-a, a) has std init_std
        for j in range(self.k):
            out[:, 1 + j] = (2 * uniform01(keys, self.seed * 1000 + j) - 1) * a
        return out

    def _parts(self, X, X2, params):
        """The margin, P = X @ params = [Xw, XV] and the pairwise term's row scale."""
        P = X @ params  # one sparse product gives [Xw, XV]
        # sum_f (X^2 V^2)_f = X^2 (sum_f V_f^2): one matvec instead of k. Sums over the k
        # factor columns are products with [0, 1, .., 1]: numpy's sum(1) over rows this
        # short, or any op on the strided V = params[:, 1:], is several times slower.
        f = np.ones(self.dim, params.dtype)
        f[0] = 0
        pair = 0.5 * ((P * P) @ f - X2 @ ((params * params) @ f))
        scale = None
        if self.instance_norm:
            # |x|^2 per row: the row's key count when one-hot (X2 is X then)
            n2 = np.diff(X.indptr) if X2 is X else X2 @ np.ones(X2.shape[1], params.dtype)
            scale = (1.0 / np.maximum(n2, 1e-12)).astype(params.dtype)
            pair *= scale
        return P[:, 0] + pair + self.offset, P, scale

    @staticmethod
    def _squared(X):
        return X if (X.data == 1).all() else X.multiply(X).tocsr()  # one-hot rows: X^2 = X

    def margin(self, batch: Batch, params: np.ndarray, X=None) -> np.ndarray:
        X = batch.csr() if X is None else X
        return self._parts(X, self._squared(X), params)[0]

    def loss_grad(self, batch: Batch, params: np.ndarray):
        X = batch.csr()
        X2 = self._squared(X)
        m, P, scale = self._parts(X, X2, params)
        r = (expit(m) - batch.y).astype(params.dtype)
        rs = r if scale is None else r * scale  # the pairwise term's residual
        R = scale_rows(rs, P)  # [., rs * XV]
        R[:, 0] = r
        grad = np.asarray(X.T @ R, dtype=params.dtype)  # X.T is CSC: no conversion needed
        # d/dv_jf of x_j v_jf (XV)_f - x_j^2 v_jf^2 / 2, summed over rows: the second part
        # is (X2.T rs)_j v_jf. Unnormalized one-hot rows: X2 = X, rs = r, and X2.T rs is the
        # w column just computed.
        if X2 is X and scale is None:
            c = grad[:, 0]
        else:
            c = np.asarray(X2.T @ rs, dtype=params.dtype)
        corr = scale_rows(c, params)
        corr[:, 0] = 0
        grad -= corr
        return float(logloss_terms(m, batch.y).sum()), grad


def scale_rows(c: np.ndarray, A: np.ndarray) -> np.ndarray:
    """c[:, None] * A for A of a few columns. numpy runs that broadcast one short row at
    a time; one flat multiply by c repeated per column is several times faster."""
    out = np.repeat(c.astype(A.dtype, copy=False), A.shape[1]).reshape(A.shape)
    out *= A
    return out


def make_model(cfg):
    name = cfg.name
    if name == "lr":
        return LR(seed=int(cfg.get("seed", 0)))
    if name == "fm":
        return FM(k=int(cfg.k), init_std=float(cfg.get("init_std", 0.01)), seed=int(cfg.get("seed", 0)),
                  instance_norm=bool(cfg.get("instance_norm", True)))
    raise ValueError(f"model={name!r}: unknown model (choose lr or fm)")
