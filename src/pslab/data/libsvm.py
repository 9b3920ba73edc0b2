"""LIBSVM / SVMlight text through scikit-learn's loader, with errors that name the line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import DataError, open_binary, open_text
from .rows import Rows

# The bias key is the top key but one (2^64-1 is reserved by the key index): folded into
# 2^b keys it becomes 2^b - 2, so keep feature indices below that.
BIAS_KEY = np.uint64(0xFFFFFFFFFFFFFFFE)


def _find_bad_line(path: Path, zero_based: bool) -> str:
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            parts = body.split()
            try:
                float(parts[0])
            except ValueError:
                return f"{path}:{lineno}: label {parts[0]!r} is not a number"
            for tok in parts[1:]:
                if tok.startswith("qid:"):
                    continue
                idx, sep, val = tok.partition(":")
                try:
                    i = int(idx)
                    float(val)
                except ValueError:
                    return f"{path}:{lineno}: malformed feature {tok!r} (want index:value)"
                if not sep:
                    return f"{path}:{lineno}: malformed feature {tok!r} (want index:value)"
                if i < 0 or (i == 0 and not zero_based):
                    return f"{path}:{lineno}: feature index {i} is invalid with zero_based={zero_based}"
    return f"{path}: could not be parsed as LIBSVM"


def read_libsvm(path: Path, zero_based: bool = False) -> Rows:
    from sklearn.datasets import load_svmlight_file  # slow to import; only this reader needs it

    try:
        with open_binary(path) as f:
            X, y = load_svmlight_file(f, zero_based=bool(zero_based), dtype=np.float32)
    except ValueError:
        raise DataError(_find_bad_line(path, zero_based)) from None
    labels = np.where(y > 0, 1.0, 0.0).astype(np.float32)
    bad = ~np.isin(y, [-1.0, 0.0, 1.0])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i + 1}: label {y[i]} is not 0/1 (or -1/+1)")
    X = X.tocsr()
    X.sort_indices()
    n = X.shape[0]
    counts = np.diff(X.indptr) + 1
    indptr = np.concatenate([[0], np.cumsum(counts)])
    keys = np.empty(indptr[-1], np.uint64)
    vals = np.empty(indptr[-1], np.float32)
    last = indptr[1:] - 1  # the bias goes last in each row
    mask = np.ones(indptr[-1], bool)
    mask[last] = False
    keys[mask] = X.indices.astype(np.uint64)
    vals[mask] = X.data
    keys[last] = BIAS_KEY
    vals[last] = 1.0
    return Rows(indptr, keys, vals, labels)
