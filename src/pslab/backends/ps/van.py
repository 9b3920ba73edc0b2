"""The transport (ps-lite's Van): protocol messages over MPI point-to-point, nothing else.

- Only uppercase (buffer) mpi4py calls: Isend of byte buffers, Improbe then a receive
  into a buffer sized from the probe: a blocking matched Recv for a message below the
  eager limit (it is already here whole), Irecv otherwise (and, for a large message,
  Irecv of its pieces straight into one payload buffer). Sends are non-blocking; their
  buffers stay referenced until MPI says they are done.
- Nothing blocks without a deadline: receiving is polling (Improbe), first yielding the
  core between probes, then sleeping in doubling steps up to `max_sleep_s`, because on
  an oversubscribed machine a spinning rank steals the core a computing rank needs.
- Bytes are counted where they are sent (rec.acct.sent), with the size each message
  would have had without each compression switch, for the run's measured factors.
- A peer that MPI reports dead (ULFM: MPI_ERR_PROC_FAILED on a probe or a request)
  becomes a PEER_FAILED message for the role to act on; the van itself decides nothing.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np
from mpi4py import MPI

from . import protocol as P

DATA_KINDS = ("pull", "pull_reply", "push")  # the traffic the compression switches act on
HOT_S = 50e-6                                 # polling without yielding, at the start of a wait
SMALL_RECV = 2048                             # bytes: well below any BTL's eager limit (sm: 4 KiB)


class Van:
    def __init__(self, comm, rec, fp16: bool = False, delta_keys: bool = False, key_cache: bool = False,
                 kkt_filter: bool = False, chunk_bytes: int = P.CHUNK_BYTES, spin_s: float = 1e-3,
                 max_sleep_s: float = 5e-4):
        self.comm, self.rec = comm, rec
        self.rank = comm.Get_rank()
        self.fp16, self.delta, self.key_cache = fp16, delta_keys, key_cache
        self.switches = [name for name, on in (("fp16", fp16), ("delta_keys", delta_keys),
                                               ("key_cache", key_cache), ("kkt_filter", kkt_filter)) if on]
        self.chunk_bytes = int(chunk_bytes)
        self.spin_s, self.max_sleep_s = spin_s, max_sleep_s
        self.sending: list[tuple] = []           # (request, buffer, dest) until MPI is done with it
        self.send_caches: dict[int, P.SendCache] = {}
        self.recv_cache = P.RecvCache() if key_cache else None
        self.status = MPI.Status()
        self.failed: set[int] = set()
        self.data_wire = 0
        self.data_raw = 0
        self.data_without: dict[str, int] = defaultdict(int)
        self.recv_bytes = 0

    # ------------------------------------------------------------ sending

    def send(self, dest: int, msg: P.Msg, kind: str | None = None, compress: bool = True) -> int:
        """Queue msg for dest (non-blocking); returns the bytes put on the wire."""
        if dest in self.failed:
            return 0
        kind = kind or P.CMD_NAMES[msg.cmd]
        cache = None
        if compress and self.key_cache and msg.keys is not None:
            cache = self.send_caches.setdefault(dest, P.SendCache())
        bufs, sizes = P.encode(msg, fp16=compress and self.fp16, delta=compress and self.delta, cache=cache,
                               chunk_bytes=self.chunk_bytes)
        for b in bufs:
            try:
                req = self.comm.Isend([b, MPI.BYTE], dest, P.TAG)
                # A small message is usually copied out at once (eager): then there is
                # nothing to keep, and later polls have no send to test.
                if not req.Test():
                    self.sending.append((req, b, dest))
            except MPI.Exception as e:  # ULFM: the peer is known dead
                self._failure(e, [])
                return 0
        self.rec.acct.sent(kind, sizes.wire, len(bufs))
        if kind in DATA_KINDS:
            self.data_wire += sizes.wire
            self.data_raw += sizes.raw
            for sw in self.switches:
                self.data_without[sw] += sizes.without.get(sw, sizes.wire)
        if len(self.sending) > 16:
            self._progress_sends()
        return sizes.wire

    def _progress_sends(self) -> None:
        if not self.sending:
            return
        try:
            done = MPI.Request.Testsome([s[0] for s in self.sending])
        except MPI.Exception:
            # Some request failed (a dead peer): test them one by one and drop the failed.
            keep = []
            for s in self.sending:
                try:
                    if not s[0].Test():
                        keep.append(s)
                except MPI.Exception as e:
                    self._failure(e, [])
            self.sending = keep
            return
        if done:
            gone = set(done)
            self.sending = [s for i, s in enumerate(self.sending) if i not in gone]

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until MPI is done with every queued send."""
        deadline = time.perf_counter() + timeout
        while self.sending and time.perf_counter() < deadline:
            self._progress_sends()
            if self.sending:
                time.sleep(1e-4)
        return not self.sending

    # ------------------------------------------------------------ receiving

    def poll(self) -> list[P.Msg]:
        """Every message that has arrived, without waiting for more."""
        out: list[P.Msg] = []
        while True:
            try:
                m = self.comm.Improbe(MPI.ANY_SOURCE, P.TAG, self.status)
            except MPI.Exception as e:
                if not self._failure(e, out):
                    raise
                continue
            if m is None:
                break
            src, n = self.status.Get_source(), self.status.Get_count(MPI.BYTE)
            buf = np.empty(n, np.uint8)
            try:
                if n <= SMALL_RECV:
                    # Below every transport's eager limit the probed message is here whole:
                    # a blocking receive cannot wait, and costs less than Irecv + Test.
                    m.Recv([buf, MPI.BYTE])
                elif not self._complete([m.Irecv([buf, MPI.BYTE])], src, out):
                    continue
            except MPI.Exception as e:  # the sender died mid-message (ULFM)
                if self._failure(e, out):
                    continue
                raise
            h = P.header_of(buf)
            pieces = h[P.H_NCHUNKS]
            if pieces == 0:
                self.recv_bytes += n
                out.append(P.decode(h, buf, src, self.recv_cache, P.HEADER_BYTES))
                continue
            # The pieces are the next messages from src on this tag: receive them now,
            # straight into one payload buffer.
            payload = np.empty(P.payload_size(h), np.uint8)
            bounds = P.piece_bounds(h[P.H_KBYTES], h[P.H_VBYTES], h[P.H_MBYTES], h[P.H_CHUNK])
            reqs = [self.comm.Irecv([payload[a:b], MPI.BYTE], src, P.TAG) for a, b in bounds]
            if not self._complete(reqs, src, out):
                continue
            self.recv_bytes += n + len(payload)
            out.append(P.decode(h, payload, src, self.recv_cache))
        if self.sending:
            self._progress_sends()
        return out

    def _complete(self, reqs: list, src: int, out: list, timeout: float = 30.0) -> bool:
        """Bounded wait for receives whose messages are here or streaming in."""
        deadline = time.perf_counter() + timeout
        statuses = [MPI.Status() for _ in reqs]
        while True:
            try:
                if MPI.Request.Testall(reqs, statuses):
                    return True
            except MPI.Exception as e:
                if self._failure(e, out):
                    return False
                if e.Get_error_class() != MPI.ERR_IN_STATUS:
                    raise
                # Testall names no culprit (ERR_IN_STATUS): the sender died mid-message;
                # the statuses carry the real error class (ULFM: process failed).
                classes = [MPI.Get_error_class(st.Get_error()) for st in statuses]
                bad = [c for c in classes if c not in (MPI.SUCCESS, MPI.ERR_PENDING)]
                if bad and self._failure_class(bad[0], out):
                    return False
                raise
            if time.perf_counter() > deadline:
                raise TimeoutError(f"rank {self.rank}: a message from rank {src} did not finish arriving "
                                   f"within {timeout:g} s")
            os.sched_yield()

    def recv(self, timeout: float) -> list[P.Msg]:
        """Messages as soon as there are some, or [] after `timeout` seconds. Polls flat out
        for HOT_S (a reply to a small request is usually back by then), then polls while
        yielding the core until spin_s, then sleeps in doubling steps up to max_sleep_s,
        so a waiting rank leaves the cores to busy ones on an oversubscribed machine."""
        t = time.perf_counter()
        deadline, hot_until, spin_until = t + timeout, t + HOT_S, t + self.spin_s
        pause = 5e-5
        while True:
            out = self.poll()
            if out:
                return out
            now = time.perf_counter()
            if now >= deadline:
                return []
            if now < hot_until:
                continue
            if now < spin_until:
                os.sched_yield()
            else:
                time.sleep(min(pause, deadline - now))
                pause = min(2 * pause, self.max_sleep_s)

    # ------------------------------------------------------------ failures

    def _failure(self, e: MPI.Exception, out: list) -> bool:
        """Turn ULFM's 'process failed' into PEER_FAILED notices; False if it is not that."""
        return self._failure_class(e.Get_error_class(), out)

    def _failure_class(self, cls: int, out: list) -> bool:
        if cls not in (MPI.ERR_PROC_FAILED, getattr(MPI, "ERR_PROC_FAILED_PENDING", -1),
                                       getattr(MPI, "ERR_REVOKED", -1)):
            return False
        try:
            self.comm.Ack_failed()
            group = self.comm.Get_failed()
            ranks = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), self.comm.Get_group())
        except MPI.Exception:
            ranks = []
        for r in ranks:
            if r not in self.failed:
                self.failed.add(r)
                self.send_caches.pop(r, None)
                if self.recv_cache is not None:
                    self.recv_cache.forget(r)
                out.append(P.Msg(cmd=P.PEER_FAILED, src=r))
        return True

    # ------------------------------------------------------------ accounting

    def compression(self) -> dict:
        """Measured factors over the data path: bytes without a switch / bytes with all."""
        out = {"data_bytes": self.data_wire, "data_bytes_uncompressed": self.data_raw}
        for sw in self.switches:
            out[sw] = self.data_without[sw]
        return out
