"""Clock bookkeeping on a server: BSP, SSP(s) and ASP, and the staleness actually served.

A worker's clock is the number of pushes this server has received from it (every worker
pushes to every server once per clock, empty if it has no keys there, so each server sees
every clock). A pull made at clock c is answered when the server's `progress` has
reached c - s:
    BSP  s = 0, progress = clocks whose summed update has been applied;
    SSP  s,     progress = the slowest live worker's clock (pushes apply on arrival);
    ASP  always answered; progress as in SSP, only to measure staleness.
The staleness of an answered pull is c - progress (clocks of updates it may miss).
While a checkpoint cut at clock k is pending (SSP/ASP hold back pushes of clocks >= k),
`cap` = k keeps progress from passing it: the held pushes are not applied yet.
The live workers are data: failover calls set_workers() to stop waiting for the dead.
"""
from __future__ import annotations

import numpy as np

MODES = ("bsp", "ssp", "asp")


class Clocks:
    def __init__(self, mode: str, staleness: int, workers, start_clock: int = 0):
        if mode not in MODES:
            raise ValueError(f"backend.consistency={mode!r}: choose bsp, ssp or asp")
        self.mode = mode
        self.s = 0 if mode == "bsp" else int(staleness)
        if self.s < 0:
            raise ValueError(f"backend.staleness={staleness}: must be >= 0")
        self.workers = set(int(w) for w in workers)
        self.pushed = {w: int(start_clock) for w in self.workers}   # clock reached per worker
        self.applied = int(start_clock)                              # BSP: clocks applied
        self.cap: int | None = None                                  # SSP/ASP: a pending cut
        # per-pull records: worker, clock, progress when served, seconds held
        self._rec: list[tuple] = []

    # -- membership
    def set_workers(self, workers) -> None:
        new = set(int(w) for w in workers)
        for w in new - self.workers:
            self.pushed[w] = self.min_clock()
        self.workers = new

    # -- pushes
    def on_push(self, worker: int, clock: int) -> None:
        expect = self.pushed.get(worker)
        if expect is None:
            raise ValueError(f"push from worker {worker}, which is not a live member")
        if clock != expect:
            raise ValueError(f"worker {worker} pushed clock {clock}, expected {expect} (lost or repeated push)")
        self.pushed[worker] = clock + 1

    def min_clock(self) -> int:
        return min((self.pushed[w] for w in self.workers), default=self.applied)

    def progress(self) -> int:
        if self.mode == "bsp":
            return self.applied
        return self.min_clock() if self.cap is None else min(self.cap, self.min_clock())

    # -- pulls
    def ready(self, clock: int) -> bool:
        """May a pull made at `clock` be answered now? clock < 0: a snapshot (coordinator)."""
        return clock < 0 or self.mode == "asp" or self.progress() >= clock - self.s

    def served(self, worker: int, clock: int, held_s: float) -> int:
        """Record an answered pull; returns its staleness."""
        p = self.progress()
        self._rec.append((worker, clock, p, held_s))
        return max(0, clock - p)

    def records(self) -> dict[str, np.ndarray]:
        r = np.array(self._rec, np.float64).reshape(-1, 4)
        clock, prog = r[:, 1].astype(np.int64), r[:, 2].astype(np.int64)
        return {"worker": r[:, 0].astype(np.int64), "clock": clock, "progress": prog,
                "staleness": np.maximum(0, clock - prog), "held_s": r[:, 3]}

    def stats(self) -> dict:
        st = self.records()["staleness"]
        return {"pulls": int(len(st)), "staleness_max": int(st.max()) if len(st) else 0,
                "staleness_mean": float(st.mean()) if len(st) else 0.0,
                "staleness_sum": float(st.sum())}
