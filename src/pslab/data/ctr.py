"""Readers for raw CTR logs: Criteo's TSV (label, I1..I13, C1..C26) and generic
CSV/TSV click logs with a label column and named categorical and numeric columns.

Each feature becomes a 64-bit key: hash(seed, field name, token). Categorical tokens
are the raw values; numeric values are bucketed (floor(log(x)^2) for x > 2, the Criteo
competition winners' trick) so one weight covers a range of counts; a missing value is
a token of its own per field. Every row also carries a bias key.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .files import DataError, open_text
from .hashing import hash_strings
from .rows import Rows

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label"] + CRITEO_INT + CRITEO_CAT
BIAS_TOKEN = "__bias__"


def bucket(x: float) -> str:
    if x > 2:
        return "b%d" % int(math.floor(math.log(x) ** 2))
    return "v%d" % int(math.floor(x))


def parse_label(s: str, where: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise DataError(f"{where}: label {s!r} is not a number") from None
    if v in (0.0, 1.0):
        return v
    if v == -1.0:
        return 0.0
    raise DataError(f"{where}: label {s!r} is not 0/1 (or -1/+1)")


def read_table(path: Path, columns: list[str] | None, label: str, categorical: list[str],
               numeric: list[str], sep: str, seed: int) -> Rows:
    """Read a delimited file. columns=None means the first line is a header."""
    fields = [(c, "cat") for c in categorical] + [(c, "num") for c in numeric]
    tokens: list[list[str]] = [[] for _ in fields]
    labels: list[float] = []
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_NONE)
        first = 1
        if columns is None:
            try:
                columns = next(reader)
            except StopIteration:
                raise DataError(f"{path}: empty file") from None
            first = 2
        index = {c: i for i, c in enumerate(columns)}
        for name in [label] + [c for c, _ in fields]:
            if name not in index:
                hint = next((f"; is data.sep={s!r} meant?" for s in (",", "\t", ";", "|")
                             if len(columns) == 1 and s != sep and s in columns[0]), "")
                raise DataError(f"{path}: no column {name!r} (columns: {', '.join(map(repr, columns))}{hint})")
        li = index[label]
        pos = [index[c] for c, _ in fields]
        width = len(columns)
        for lineno, rec in enumerate(reader, start=first):
            if not rec:
                continue
            where = f"{path}:{lineno}"
            if len(rec) != width:
                raise DataError(f"{where}: expected {width} fields separated by {sep!r}, found {len(rec)}")
            labels.append(parse_label(rec[li], where))
            for j, ((name, kind), p) in enumerate(zip(fields, pos)):
                v = rec[p].strip()
                if v == "":
                    tokens[j].append("\x00missing")
                elif kind == "cat":
                    tokens[j].append(v)
                else:
                    try:
                        tokens[j].append(bucket(float(v)))
                    except ValueError:
                        raise DataError(f"{where}: column {name!r} value {v!r} is not a number") from None
    n = len(labels)
    if n == 0:
        raise DataError(f"{path}: no data rows")
    # Field-aware keys: the field name is part of the hashed string.
    cols = [hash_strings(np.char.add(f"{name}\x1f", np.asarray(tok, dtype=str)), seed)
            for (name, _), tok in zip(fields, tokens)]
    cols.append(hash_strings(np.full(n, BIAS_TOKEN), seed))
    keys = np.stack(cols, axis=1).reshape(-1)
    width = len(cols)
    return Rows(np.arange(n + 1, dtype=np.int64) * width, keys, np.ones(len(keys), np.float32),
                np.asarray(labels, np.float32))


def read_criteo(path: Path, seed: int = 0) -> Rows:
    return read_table(path, CRITEO_COLUMNS, "label", CRITEO_CAT, CRITEO_INT, "\t", seed)
