"""Held-out metrics (scikit-learn's implementations) and model evaluation by key lookup."""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .data import Deduper, Rows


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    # Imported here: scikit-learn takes seconds to import and only the evaluating rank needs it.
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    out = {"logloss": float(log_loss(y, p, labels=[0, 1])), "accuracy": float(((p > 0.5) == (y > 0.5)).mean())}
    out["auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
    return out


def predict(model, rows: Rows, fetch, hash_bits=None, chunk: int = 4096) -> np.ndarray:
    """Probabilities for rows; fetch(keys) returns parameter rows (init rows for keys
    never trained)."""
    dedupe = Deduper(hash_bits)
    out = np.empty(len(rows), np.float64)
    for a in range(0, len(rows), chunk):
        b = dedupe(rows.slice(a, min(len(rows), a + chunk)))
        out[a : a + len(b)] = expit(model.margin(b, fetch(b.uniq)))
    return out


def evaluate(model, rows: Rows, fetch, hash_bits=None) -> dict:
    return scores(rows.y, predict(model, rows, fetch, hash_bits))
