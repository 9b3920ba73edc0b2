"""Plain tables of runs, without pandas: lists of dicts that print well and render as
HTML in a notebook.

    t = table(runs, ["arm", "status", "test_auc", "wall_s", "compression.fp16"])
    t                       # in a notebook: an HTML table
    print(t)                # anywhere else: aligned text
    t.column("wall_s")      # a list
    group(runs, "arm")      # {arm: [runs]}
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable

import numpy as np


def get(run: dict, key, default=None):
    """run[key], where key may be dotted ("compression.fp16") or a function of the run."""
    if callable(key):
        try:
            return key(run)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return default
    cur = run
    for part in str(key).split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return default
    return cur


def group(runs: Iterable[dict], *keys) -> dict:
    """{value of keys (a tuple if several): [runs]}, in first-seen order."""
    out: dict = {}
    for r in runs:
        k = tuple(get(r, key) for key in keys)
        out.setdefault(k if len(keys) > 1 else k[0], []).append(r)
    return out


def where(runs: Iterable[dict], **conds) -> list[dict]:
    """Runs whose (dotted: use __ for .) fields equal the given values; a callable value
    is a predicate."""
    out = []
    for r in runs:
        ok = True
        for k, v in conds.items():
            val = get(r, k.replace("__", "."))
            if callable(v):
                ok = bool(v(val))
            else:
                ok = val == v
            if not ok:
                break
        if ok:
            out.append(r)
    return out


def median(values) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.median(vals)) if vals else None


def spread(values) -> tuple[float | None, float | None, float | None]:
    """(median, min, max) of the non-missing values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, None
    return float(np.median(vals)), float(min(vals)), float(max(vals))


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        a = abs(v)
        if a != 0 and (a >= 1e6 or a < 10 ** -digits):
            return f"{v:.{max(1, digits - 2)}e}"
        return f"{v:.{digits}g}" if a >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x, 3) for x in v[:6]) + (", ..." if len(v) > 6 else "") + "]"
    return str(v)


class Table(list):
    """A list of row dicts with fixed columns; prints aligned, renders as HTML."""

    def __init__(self, rows: Iterable[dict], columns: list[str], title: str = ""):
        super().__init__(rows)
        self.columns = list(columns)
        self.title = title

    def column(self, name: str) -> list:
        return [r.get(name) for r in self]

    def __str__(self) -> str:
        cells = [[fmt(r.get(c)) for c in self.columns] for r in self]
        width = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, width)))
        lines.append("  ".join("-" * w for w in width))
        for row in cells:
            lines.append("  ".join(x.rjust(w) if _numeric(x) else x.ljust(w) for x, w in zip(row, width)))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in self.columns) + "</tr>"
                       for r in self)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def table(runs: Iterable[dict], columns: list, sort=None, title: str = "") -> Table:
    """Rows of the given columns. A column is a field name (dotted for nested fields), or
    a (name, function-of-run) pair for a derived value."""
    names, getters = [], []
    for c in columns:
        if isinstance(c, tuple):
            names.append(c[0])
            getters.append(c[1])
        else:
            names.append(str(c))
            getters.append(c)
    rows = [{n: get(r, g) for n, g in zip(names, getters)} for r in runs]
    if sort is not None:
        keys = [sort] if isinstance(sort, str) else list(sort)
        rows.sort(key=lambda row: tuple(_sortable(row.get(k)) for k in keys))
    return Table(rows, names, title)


def aggregate(runs: Iterable[dict], by, metrics: dict[str, Callable | str], title: str = "",
              order: list | None = None) -> Table:
    """One row per group of `by` (a field or a list of fields): the number of runs, and the
    median of each metric (a field or a function of a run) over the group."""
    by = [by] if isinstance(by, str) else list(by)
    groups = group(runs, *by)
    rows = []
    for k, rs in groups.items():
        kk = k if isinstance(k, tuple) else (k,)
        row = dict(zip(by, kk))
        row["runs"] = len(rs)
        for name, m in metrics.items():
            row[name] = median(get(r, m) for r in rs)
        rows.append(row)
    if order is not None:
        pos = {v: i for i, v in enumerate(order)}
        rows.sort(key=lambda row: pos.get(row[by[0]], len(pos)))
    return Table(rows, by + ["runs"] + list(metrics), title)


def _sortable(v):
    if v is None:
        return (1, 0)
    if isinstance(v, (int, float, np.number)):
        return (0, float(v))
    return (0.5, str(v))
