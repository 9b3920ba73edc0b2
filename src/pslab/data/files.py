"""Opening data files: plain or compressed (.gz, .bz2, .xz), with errors that name the file."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
from pathlib import Path

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


class DataError(ValueError):
    """Bad input data; the message names the file and line (or config key) at fault."""


def resolve(path: str | os.PathLike, key: str = "data.path") -> Path:
    if path is None or str(path) in ("", "None"):
        raise DataError(f"{key} is not set")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise DataError(f"{key}: no such file: {p}")
    return p


def open_text(path: Path):
    opener = _OPENERS.get(Path(path).suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8", errors="replace", newline="")


def open_binary(path: Path):
    opener = _OPENERS.get(Path(path).suffix.lower(), open)
    return opener(path, "rb")
