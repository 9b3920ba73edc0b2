"""Failure detection that tells slow from dead.

Every server and worker runs a Heartbeat: a thread of its own that sends a tiny message
to the coordinator every heartbeat_timeout_s / 4 on a communicator of its own (MPI is
initialised with MPI_THREAD_MULTIPLE), so a rank that is only busy (a long step, a long
checkpoint write, a blocking wait) keeps beating, while a SIGSTOPped or dead one falls
silent. The coordinator's FailureDetector receives the beats on its own thread too, so a
long evaluation does not make everyone look silent, and names the ranks silent for
longer than the timeout. Before a rank's first beat (it is still loading its data) the
longer start-up timeout applies.

The timeouts are checked against each other at start-up (check_timeouts): a request
must be allowed to outlast the detection of a dead server, or a worker would give up on
a request that failover was about to re-route.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from mpi4py import MPI

HB_TAG = 7002


def check_timeouts(bc) -> None:
    hb, req, idle = (float(bc.get(k)) for k in ("heartbeat_timeout_s", "request_timeout_s", "idle_timeout_s"))
    if hb <= 0:
        raise SystemExit(f"backend.heartbeat_timeout_s={hb:g}: must be > 0")
    if req < 2 * hb:
        raise SystemExit(f"backend.request_timeout_s={req:g} must be at least twice backend.heartbeat_timeout_s="
                         f"{hb:g}: a request must outlast the detection of a dead server, or workers give up "
                         f"on requests that failover would re-route")
    if idle < 2 * hb:
        raise SystemExit(f"backend.idle_timeout_s={idle:g} must be at least twice backend.heartbeat_timeout_s={hb:g}")


class Heartbeat:
    """A rank's beat to the coordinator, from its own thread."""

    def __init__(self, comm, period_s: float):
        self.comm, self.period = comm, float(period_s)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pslab-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def _run(self) -> None:
        beat = np.zeros(1, np.int64)
        pending = []
        while not self.stop_ev.wait(self.period):
            try:
                beat[0] += 1
                pending = [r for r in pending if not r.Test()]
                if len(pending) < 4:  # a coordinator that stopped reading gets no pile-up
                    pending.append(self.comm.Isend([beat.copy(), MPI.INT64_T], 0, HB_TAG))
            except MPI.Exception:
                return  # the coordinator is gone: the main loop finds out and ends the rank

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(timeout=2 * self.period + 1)


class FailureDetector:
    """The coordinator's view: when each rank was last heard (its beats and its messages)."""

    def __init__(self, comm, hb_timeout: float, startup_timeout: float):
        self.comm = comm
        self.hb_timeout, self.startup_timeout = float(hb_timeout), float(startup_timeout)
        self.t0 = time.time()
        self.last: dict[int, float] = {}
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pslab-detector", daemon=True)

    def start(self) -> "FailureDetector":
        self.thread.start()
        return self

    def _run(self) -> None:
        buf = np.zeros(1, np.int64)
        st = MPI.Status()
        while not self.stop_ev.is_set():
            try:
                while self.comm.Iprobe(MPI.ANY_SOURCE, HB_TAG, st):
                    self.comm.Recv([buf, MPI.INT64_T], st.Get_source(), HB_TAG)
                    self.last[st.Get_source()] = time.time()
            except MPI.Exception:
                try:  # ULFM: a beating rank died; acknowledge it so ANY_SOURCE works again
                    self.comm.Ack_failed()
                except MPI.Exception:
                    pass
            self.stop_ev.wait(0.02)

    def heard(self, rank: int) -> None:
        self.last[rank] = time.time()

    def silent(self, ranks) -> list[tuple[int, float]]:
        """(rank, seconds since last heard) of the ranks past their timeout."""
        now, out = time.time(), []
        for r in ranks:
            t = self.last.get(r)
            limit = self.hb_timeout if t is not None else self.startup_timeout
            since = now - (t if t is not None else self.t0)
            if since > limit:
                out.append((r, since))
        return out

    def last_heard(self, rank: int) -> float:
        return self.last.get(rank, self.t0)

    def stop(self) -> None:
        self.stop_ev.set()
        self.thread.join(timeout=2)
