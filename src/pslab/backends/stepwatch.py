"""The step watchdog of the allreduce backends: a collective that does not return.

    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.step_timeout_s=10 \
        backend.checkpoint_every=10 faults=hang_one_worker
    python -m pslab.launch -n 4 backend=allreduce backend.elastic=true backend.step_timeout_s=10 \
        faults=hang_one_worker

MPI reports a dead rank, never a hung (SIGSTOPped, frozen) one: its peers wait in their
next collective forever. NCCL's answer is a watchdog thread that aborts the job when a
collective has not completed within a timeout; this is that, for pslab's ranks, with no
help from Open MPI (its experimental `mpi_ft_detector` is not used).

Each rank runs a thread that, every PERIOD_S,
- writes a heartbeat file `ranks/beat-<r>.json` (a counter, and whether the rank is
  inside a collective: temp + rename, so a reader sees a whole file);
- reads its peers' beats and notes, by its own clock, when each counter last moved (so
  the hosts' clocks need not agree); a peer whose counter has not moved for STALE_S is
  stale: its process is not running (SIGSTOPped, or its host froze);
- when this rank has been inside one collective for longer than backend.step_timeout_s,
  decides: a stale peer, or every live peer inside a collective too (a collective that
  hangs with nobody to blame), is a hang and `on_hang(step, waited_s, stale_ranks)` is
  called; a live peer outside any collective is working (rank 0 evaluating or writing a
  checkpoint, a straggler computing), and the wait goes on.
So a hang ends the wait after step_timeout_s (plus at most a period), and a long
evaluation on rank 0 is never taken for one. The classic backend aborts the job in
on_hang (the launcher's restart policy takes over); the elastic one fences the stale
rank (SIGKILL by pid, when it is on this host) so that ULFM reports it dead and the
survivors shrink, and aborts when it cannot (see allreduce.Trainer.on_hang).
The heartbeat files need the run dir on a filesystem every host shares, as the README
asks of every multi-host run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PERIOD_S = 0.5


def stale_after(timeout_s: float) -> float:
    """Seconds a peer's beat may stand still before it counts as not running: generous
    against a beat thread starved on an oversubscribed core, never above the timeout."""
    return min(5.0, max(1.5, timeout_s / 2))


class StepWatch(threading.Thread):
    def __init__(self, rec, timeout_s: float, on_hang, members: list[int], period_s: float = PERIOD_S):
        super().__init__(name="pslab-stepwatch", daemon=True)
        self.rec, self.timeout, self.on_hang, self.period = rec, float(timeout_s), on_hang, float(period_s)
        self.stale_s = stale_after(self.timeout)
        self.dir = Path(rec.run_dir) / "ranks"
        self.me = rec.rank
        self.members = set(members)       # world ranks still in the job (the trainer updates it)
        self.since = None                 # monotonic time this rank entered its current collective
        self.step = 0
        self.acted_at = None              # when on_hang last ran for the current collective
        self.beats = 0
        self.seen: dict[int, tuple] = {}  # peer -> (its counter, my monotonic time it last moved)
        self.done = threading.Event()

    # -- the main thread's side
    @contextmanager
    def collective(self, step: int):
        """Wrap a collective (or a sequence of them that must end together)."""
        self.step, self.since, self.acted_at = int(step), time.monotonic(), None
        try:
            yield
        finally:
            self.since = None

    def stop(self) -> None:
        self.done.set()

    # -- the thread
    def run(self) -> None:
        while not self.done.wait(self.period):
            try:
                self.beat()
                self.check(time.monotonic())
            except Exception as e:  # noqa: BLE001 - a watchdog must not die of a bad file
                try:
                    self.rec.event("stepwatch_error", error=f"{type(e).__name__}: {e}")
                except (ValueError, OSError):
                    return

    def beat(self) -> None:
        self.beats += 1
        since = self.since
        path = self.dir / f"beat-{self.me}.json"
        tmp = self.dir / f".beat-{self.me}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"n": self.beats, "in_collective": since is not None, "step": self.step}))
        os.replace(tmp, path)

    def peers(self, now: float) -> dict[int, dict]:
        """{peer: {"stale": bool, "in_collective": bool}} of the other members."""
        out = {}
        for r in sorted(self.members - {self.me}):
            try:
                b = json.loads((self.dir / f"beat-{r}.json").read_text())
            except (OSError, ValueError):
                b = None  # not written yet (starting), or being replaced: no news
            n = None if b is None else b.get("n")
            last = self.seen.get(r)
            if last is None or (n is not None and n != last[0]):
                self.seen[r] = last = (n, now)
            out[r] = {"stale": now - last[1] > self.stale_s, "in_collective": bool(b and b.get("in_collective"))}
        return out

    def check(self, now: float) -> None:
        since, acted = self.since, self.acted_at
        peers = self.peers(now)
        if since is None or now - since <= self.timeout:
            return
        if acted is not None and now - acted <= self.timeout:
            return  # on_hang ran (a fence): give ULFM a timeout's time to report the fenced rank
        stale = [r for r, p in peers.items() if p["stale"]]
        busy = [r for r, p in peers.items() if not p["stale"] and not p["in_collective"]]
        if busy and not stale:
            return  # a live peer is working outside the collective: waiting for it is no hang
        self.acted_at = now
        self.on_hang(self.step, round(now - since, 3), stale)


def rank_process(run_dir: Path, rank: int) -> dict | None:
    """A rank's rank_started record (pid, host, created), the first line of its events."""
    try:
        with open(Path(run_dir) / "ranks" / f"rank-{rank}.events.jsonl") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return first if first.get("kind") == "rank_started" else None


def fence(run_dir: Path, rank: int) -> str | None:
    """SIGKILL a hung rank of this run when it is on this host; None when done, else why not."""
    from ..launcher.watchdog import same_process

    p = rank_process(run_dir, rank)
    if p is None:
        return "no rank_started record"
    if p.get("host") != socket.gethostname():
        return f"on host {p.get('host')}, not this one: its pid means nothing here"
    if not same_process(p.get("pid"), p.get("created")):
        return None  # gone already
    try:
        os.kill(int(p["pid"]), signal.SIGKILL)
    except ProcessLookupError:
        return None
    except PermissionError as e:
        return f"cannot signal pid {p['pid']}: {e}"
    return None


def start(rec, timeout_s: float, on_hang, members: list[int]) -> StepWatch:
    w = StepWatch(rec, timeout_s, on_hang, members)
    w.start()
    return w
