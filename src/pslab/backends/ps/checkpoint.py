"""Checkpoints: each server writes its shard (keys, W, S), the coordinator a manifest that
names the clock and the shards; everything is written under a temporary name and then
os.replace'd, so a reader sees a whole file or none. A manifest is written only once
every shard of its clock is on disk, so the newest manifest is always a usable state.

    <run dir>/checkpoints/clock-00000032/server-0.npz ...
    <run dir>/checkpoints/clock-00000032/manifest.json
    <run dir>/checkpoints/LATEST            (names the newest manifest)

Each shard holds the keys its server *owns* (not its replicas), so every key is in one
shard. Restoring reads the shards and keeps the keys the ring gives to the reader (as
owner or replica), so a run can resume with another number of servers, and a successor
can take over a dead server's ranges from the last checkpoint (failover with R = 1:
server.restore_ranges reads only the dead server's shard).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...observe import write_json_atomic, write_text_atomic


def clock_dir(root: Path, clock: int) -> Path:
    return Path(root) / f"clock-{int(clock):08d}"


def write_shard(root: Path, clock: int, server: int, keys: np.ndarray, W: np.ndarray, S: np.ndarray) -> Path:
    d = clock_dir(root, clock)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"server-{server}.npz"
    tmp = d / f".server-{server}.{os.getpid()}.tmp.npz"
    np.savez(tmp, keys=np.asarray(keys, np.uint64), W=W, S=S)
    os.replace(tmp, path)
    return path


def write_manifest(root: Path, clock: int, info: dict) -> Path:
    d = clock_dir(root, clock)
    d.mkdir(parents=True, exist_ok=True)
    missing = [s for s in info["shards"] if not (d / s).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint at clock {clock}: shards {missing} are not on disk")
    path = d / "manifest.json"
    write_json_atomic(path, {"clock": int(clock), **info})
    write_text_atomic(Path(root) / "LATEST", str(path.relative_to(root)) + "\n")
    return path


def find_manifest(path) -> Path:
    """A manifest from a manifest file, a checkpoints folder or a run folder (newest)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "manifest.json").exists():
        return p / "manifest.json"
    for root in (p, p / "checkpoints"):
        latest = root / "LATEST"
        if latest.exists():
            m = root / latest.read_text().strip()
            if m.exists():
                return m
        found = sorted(root.glob("clock-*/manifest.json"))
        if found:
            return found[-1]
    raise FileNotFoundError(f"backend.resume_from={path}: no checkpoint manifest found there")


def read_manifest(path) -> dict:
    m = find_manifest(path)
    info = json.loads(m.read_text())
    info["dir"] = str(m.parent)
    return info


def load_rows(info: dict, keep=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, W, S) of every shard of a manifest; keep(keys) -> bool mask selects rows."""
    parts = []
    for name in info["shards"]:
        z = np.load(Path(info["dir"]) / name)
        k, W, S = z["keys"], z["W"], z["S"]
        if keep is not None:
            m = keep(k)
            k, W, S = k[m], W[m], S[m]
        parts.append((k, W, S))
    if not parts:
        return np.zeros(0, np.uint64), None, None
    keys, W, S = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if len(parts) > 1:  # a key in two shards (replicas in an older layout): keep its first copy
        _, first = np.unique(keys, return_index=True)
        if len(first) < len(keys):
            first.sort()
            keys, W, S = keys[first], W[first], S[first]
    return keys, W, S
