"""Checkpoints: each server writes its shard (keys, W, S), the coordinator a manifest that
names the clock and the shards; everything is written under a temporary name and then
os.replace'd, so a reader sees a whole file or none. A manifest is written only once
every shard of its clock is on disk, so the newest manifest is always a usable state.

    <run dir>/checkpoints/clock-00000032/server-0.npz ...
    <run dir>/checkpoints/clock-00000032/manifest.json
    <run dir>/checkpoints/LATEST            (names the newest manifest)

Each shard holds the key ranges its server *leads* (not its backups), with the batches
each range absorbed, so every range is in exactly one shard of a clock. The manifest
lists each shard's ranges and is keyed by the ranges: it is written once the shards of
a clock cover every range, whoever wrote them. Restoring picks ranges, not servers:
a run can resume with another number of servers, and a range with no copy left comes
back from the shard that holds it, including ranges its last server had inherited.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...observe import write_json_atomic, write_text_atomic
from .ranges import in_ranges


def clock_dir(root: Path, clock: int) -> Path:
    return Path(root) / f"clock-{int(clock):08d}"


def write_shard(root: Path, clock: int, server: int, keys: np.ndarray, W: np.ndarray, S: np.ndarray,
                log: dict) -> Path:
    """One server's part of the cut: the rows of the ranges it leads and, per range, the
    batches they absorbed (applied.AppliedLog.export), so a restore drops re-sent ones."""
    d = clock_dir(root, clock)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"server-{server}.npz"
    tmp = d / f".server-{server}.{os.getpid()}.tmp.npz"
    np.savez(tmp, keys=np.asarray(keys, np.uint64), W=W, S=S, log=np.array(json.dumps(log)))
    os.replace(tmp, path)
    return path


def write_manifest(root: Path, clock: int, info: dict) -> Path:
    d = clock_dir(root, clock)
    d.mkdir(parents=True, exist_ok=True)
    missing = [s["file"] for s in info["shards"] if not (d / s["file"]).exists()]
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


def load_ranges(info: dict, ranges, n_ranges: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(keys, W, S, per-range records) of `ranges` from a manifest's shards (each range is
    in exactly one shard; the manifest says which). A checkpoint made with another number
    of ranges cannot be split by range: it is refused with the key to set."""
    if int(info.get("ranges", n_ranges)) != n_ranges:
        raise SystemExit(f"checkpoint {info.get('dir')} has {info.get('ranges')} key ranges; set "
                         f"backend.ranges={info.get('ranges')} to resume from it")
    want = set(int(r) for r in ranges)
    parts, logs = [], {}
    for sh in info["shards"]:
        if not want & set(sh["ranges"]):
            continue
        z = np.load(Path(info["dir"]) / sh["file"])
        k = z["keys"]
        m = in_ranges(k, want, n_ranges)
        parts.append((k[m], z["W"][m], z["S"][m]))
        logs.update({r: v for r, v in json.loads(str(z["log"])).items() if int(r) in want})
    if not parts:
        return np.zeros(0, np.uint64), None, None, logs
    keys, W, S = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return keys, W, S, logs


class Manifests:
    """The coordinator's side: shards reported per clock, and a manifest once the shards
    of a clock cover every range (whichever servers wrote them). A clock whose shards
    never cover every range (a server died before writing its own) gets no manifest and
    is skipped: the newest manifest is always a complete, consistent cut."""

    def __init__(self, root: Path, n_ranges: int, info: dict):
        self.root, self.n_ranges, self.info = Path(root), int(n_ranges), dict(info)
        self.shards: dict[int, dict[int, dict]] = {}     # clock -> server -> {file, ranges}
        self.written: list[int] = []

    def on_shard(self, clock: int, server: int, file: str, ranges: list[int], extra: dict) -> bool:
        """Record a shard; True when it completed the clock's manifest."""
        got = self.shards.setdefault(int(clock), {})
        got[int(server)] = {"file": file, "ranges": [int(r) for r in ranges]}
        covered = [r for sh in got.values() for r in sh["ranges"]]
        if clock in self.written or sorted(covered) != list(range(self.n_ranges)):
            return False
        write_manifest(self.root, clock, {"shards": [got[s] for s in sorted(got)], "ranges": self.n_ranges,
                                          **self.info, **extra})
        self.written.append(int(clock))
        return True

    @property
    def latest(self) -> int | None:
        return self.written[-1] if self.written else None
