"""Per-rank records: each rank appends JSON lines to its own files under
`<run dir>/ranks/`, and only rank 0 writes the run's shared `metrics.jsonl` and
`result.json`. The launcher merges the per-rank events into `events.jsonl` and writes
`summary.json`, also when ranks were killed and never wrote a final record.
"""
from __future__ import annotations

import json
import os
import resource
import socket
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import psutil

ABORT_MARKER = "ABORTING.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file under a temporary name, then rename: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, default=json_default))


def read_json(path):
    """A JSON file, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path) -> list[dict]:
    """Records of a JSON-lines file, skipping a last line cut short by a kill."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a rank killed mid-write leaves half a line
    except FileNotFoundError:
        pass
    return out


def json_default(o):
    """numpy scalars and arrays as plain JSON."""
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Accounting:
    """Bytes sent (counted at the call sites) and where the time goes."""

    def __init__(self):
        self.bytes_sent = defaultdict(int)
        self.msgs_sent = defaultdict(int)
        self.seconds = defaultdict(float)

    def sent(self, kind: str, nbytes: int, msgs: int = 1) -> None:
        self.bytes_sent[kind] += int(nbytes)
        self.msgs_sent[kind] += msgs

    @contextmanager
    def timed(self, what: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] += time.perf_counter() - t

    def move(self, src: str, dst: str, seconds: float) -> None:
        """Re-file time already counted under src (e.g. a collective's idle part, known
        only once the other ranks' times arrive)."""
        if seconds:
            self.seconds[src] -= seconds
            self.seconds[dst] += seconds

    def snapshot(self) -> dict:
        return {"bytes_sent": sum(self.bytes_sent.values()), "bytes_by_kind": dict(self.bytes_sent),
                "msgs_sent": sum(self.msgs_sent.values()), "seconds": dict(self.seconds),
                "peak_rss_bytes": peak_rss_bytes()}


class Recorder:
    def __init__(self, run_dir, rank: int, role: str, index: int | None = None):
        self.run_dir = Path(run_dir)
        self.rank, self.role, self.index = rank, role, index
        self.t0 = time.time()
        d = self.run_dir / "ranks"
        d.mkdir(parents=True, exist_ok=True)
        self._events = open(d / f"rank-{rank}.events.jsonl", "a", buffering=1)
        self._metrics = open(d / f"rank-{rank}.metrics.jsonl", "a", buffering=1)
        self._shared = open(self.run_dir / "metrics.jsonl", "a", buffering=1) if rank == 0 else None
        self.acct = Accounting()
        # pid, host and start time let the launcher and the other ranks' watchdogs find
        # this process again, and never hit another that reused its pid
        self.event("rank_started", pid=os.getpid(), host=os.environ.get("PSLAB_HOST") or socket.gethostname(),
                   created=psutil.Process().create_time())

    def _line(self, f, kind: str, fields: dict, sync: bool = False) -> None:
        rec = {"t": time.time(), "elapsed": time.time() - self.t0, "rank": self.rank, "role": self.role,
               "kind": kind, **fields}
        if self.index is not None:
            rec.setdefault("index", self.index)
        f.write(json.dumps(rec, default=json_default) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())

    def event(self, kind: str, sync: bool = False, **fields) -> None:
        """Faults, failures, recoveries. sync=True survives a SIGKILL right after."""
        self._line(self._events, kind, fields, sync)

    def metric(self, kind: str, **fields) -> None:
        self._line(self._metrics, kind, fields)

    def shared_metric(self, kind: str, **fields) -> None:
        """A point of the run's time series (rank 0 only)."""
        if self._shared is not None:
            self._line(self._shared, kind, fields)

    def final(self, **fields) -> None:
        rec = {"rank": self.rank, "role": self.role, "index": self.index, "pid": os.getpid(),
               "wall_s": time.time() - self.t0, **self.acct.snapshot(), **fields}
        write_json_atomic(self.run_dir / "ranks" / f"rank-{self.rank}.json", rec)

    def aborting(self, reason: str) -> None:
        """Say the job is being aborted, before calling MPI_Abort: under ULFM an abort
        from one rank does not always end mpirun promptly, and the launcher ends the
        job once it sees this marker. The first rank to say so wins."""
        self.event("aborting", sync=True, reason=reason)
        path = self.run_dir / ABORT_MARKER
        if not path.exists():
            write_json_atomic(path, {"t": time.time(), "rank": self.rank, "role": self.role, "reason": reason})

    def result(self, **fields) -> None:
        """The run's outcome as rank 0 saw it; its presence means training completed."""
        write_json_atomic(self.run_dir / "result.json", {"t": time.time(), **fields})

    def close(self) -> None:
        for f in (self._events, self._metrics, self._shared):
            if f is not None:
                f.close()
