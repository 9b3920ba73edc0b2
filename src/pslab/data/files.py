"""Opening data files: plain or compressed (.gz, .bz2, .xz), with errors that name the file.

Text is read as UTF-8 with an optional byte-order mark (`utf-8-sig`: spreadsheet exports
start with one, and it would otherwise become part of the first column's name); the
readers take CRLF line ends as they are.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from contextlib import contextmanager
from pathlib import Path

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
SNIFF_BYTES = 8192
CONTROL_BYTES = frozenset(range(32)) - {9, 10, 11, 12, 13} | {127}
# What a damaged or truncated compressed file raises while it is read (gzip: EOFError,
# BadGzipFile (an OSError) or zlib.error; bz2: OSError or EOFError; xz: LZMAError).
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


class DataError(ValueError):
    """Bad input data; the message names the file and line (or config key) at fault."""


def resolve(path: str | os.PathLike, key: str = "data.path") -> Path:
    if path is None or str(path) in ("", "None"):
        raise DataError(f"{key} is not set")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise DataError(f"{key}: no such file: {p}")
    if p.is_dir():
        raise DataError(f"{key}: {p} is a directory; name a data file")
    return p


def open_text(path: Path):
    opener = _OPENERS.get(Path(path).suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")


def open_binary(path: Path):
    opener = _OPENERS.get(Path(path).suffix.lower(), open)
    return opener(path, "rb")


def read_error(path: Path, e: BaseException) -> DataError:
    """One line for a file that cannot be read to its end."""
    compressed = Path(path).suffix.lower() in _OPENERS
    if isinstance(e, EOFError):
        what = "the compressed file ends early (truncated: copy or download it again)"
    elif compressed and not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
        what = f"damaged compressed data ({type(e).__name__}: {e})"
    else:
        what = f"cannot be read ({getattr(e, 'strerror', None) or e})"
    return DataError(f"{path}: {what}")


@contextmanager
def reading(path: Path):
    """Turn the errors of reading `path` into one DataError naming it."""
    try:
        yield
    except DataError:
        raise
    except READ_ERRORS as e:
        raise read_error(path, e) from None


def sniff(path: Path, key: str = "data.path") -> None:
    """Cheap checks on a data file's first bytes (decompressed): it is not empty and it
    is text, not binary (whose control bytes would end up on the terminal in an error)."""
    with reading(path):
        with open_binary(path) as f:
            head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise DataError(f"{key}: {path} is empty (no data rows)")
    # NUL bytes, or many control bytes, mean binary; any 8-bit text encoding passes
    # (non-UTF-8 bytes are read as U+FFFD, as before).
    controls = sum(head.count(bytes([c])) for c in CONTROL_BYTES)
    bad = head.find(b"\x00")
    if bad < 0 and controls > len(head) // 20:
        bad = next(i for i, c in enumerate(head) if c in CONTROL_BYTES)
    if bad >= 0:
        raise DataError(f"{key}: {path} is not a text file (binary data at byte {bad}); expected CSV, TSV or "
                        "LIBSVM text, plain or .gz/.bz2/.xz")
