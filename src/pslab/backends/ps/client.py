"""The key-value client (ps-lite's KVWorker + Customer): pull and push return a request id
at once; wait(id) blocks until every server involved has answered, with a timeout.

A request is split by the hash ring into one message per server. Replies are matched by
(request id, server) and scattered back into the caller's key order. Everything that is
not a reply (control messages from the coordinator) goes to `inbox` for the role's loop.
A wait that times out names the servers that did not answer: failover re-routes those.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from . import protocol as P
from .hashring import group_by_server


class RequestTimeout(TimeoutError):
    def __init__(self, ts: int, kind: str, missing, timeout: float):
        super().__init__(f"{kind} request {ts}: no answer from server(s) {sorted(missing)} within {timeout:g} s")
        self.ts, self.missing = ts, set(missing)


@dataclass
class Request:
    kind: str                                   # "pull" or "push"
    waiting: set                                # server indices yet to answer
    out: np.ndarray | None = None               # pull: rows in the caller's key order
    pos: dict = field(default_factory=dict)     # server -> positions of its keys in `out`
    t0: float = 0.0


class KVClient:
    def __init__(self, van, layout, membership, dim: int, timeout: float):
        self.van, self.layout, self.dim, self.timeout = van, layout, int(dim), float(timeout)
        self.membership = membership
        self.pending: dict[int, Request] = {}
        self.inbox: deque = deque()
        self.next_ts = 1
        self._split_for = None                  # the key array the last split was made for
        self._split: dict = {}

    def set_membership(self, m) -> None:
        self.membership = m
        self._split_for = None

    # ------------------------------------------------------------ routing

    def split(self, keys: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """server -> (positions, keys). Cached for the same array: a push reuses its pull's."""
        if keys is self._split_for:
            return self._split
        ring = self.membership.ring
        groups = group_by_server(ring.route(keys), ring.servers) if len(keys) else {}
        out = {}
        for s, pos in groups.items():
            k = keys[pos]
            if self.van.delta:  # delta coding wants each server's list sorted
                o = np.argsort(k, kind="stable")
                pos, k = pos[o], k[o]
            out[s] = (pos, k)
        self._split_for, self._split = keys, out
        return out

    # ------------------------------------------------------------ requests

    def _new(self, req: Request) -> int:
        ts = self.next_ts
        self.next_ts += 1
        req.t0 = time.perf_counter()
        self.pending[ts] = req
        return ts

    def pull(self, keys: np.ndarray, clock: int, compress: bool = True) -> int:
        """Rows of `keys` as of `clock` (the consistency model decides when servers answer);
        clock < 0 asks for a snapshot now (the coordinator's evaluation)."""
        keys = np.asarray(keys, np.uint64)
        groups = self.split(keys)
        req = Request("pull", set(groups), out=np.empty((len(keys), self.dim), np.float32),
                      pos={s: g[0] for s, g in groups.items()})
        ts = self._new(req)
        for s, (_, k) in groups.items():
            self.van.send(self.layout.server_rank(s),
                          P.Msg(P.PULL, req=ts, clock=clock, keys=k, gen=self.membership.gen), compress=compress)
        return ts

    def push(self, keys: np.ndarray, grad: np.ndarray, rows: int, clock: int, keep: np.ndarray | None = None,
             all_servers: bool = True) -> int:
        """Summed gradient rows for `keys` made from `rows` examples at `clock`. Every live
        server gets a push each clock (empty if none of its keys): that is its clock tick.
        keep: rows worth sending (KKT filter); the others stay home."""
        keys = np.asarray(keys, np.uint64)
        groups = self.split(keys) if len(keys) else {}
        targets = self.membership.servers if all_servers else list(groups)
        req = Request("push", set(targets))
        ts = self._new(req)
        for s in targets:
            if s in groups:
                pos, k = groups[s]
                kp = None if keep is None else keep[pos]
                # Filter only when the rows left out outweigh the bit mask that names them.
                if kp is not None and (len(kp) - int(kp.sum())) * grad.shape[1] * 2 <= len(kp) // 8:
                    kp = None
                msg = P.Msg(P.PUSH, req=ts, clock=clock, keys=k, vals=grad[pos], rows=rows, keep=kp,
                            gen=self.membership.gen)
            else:
                msg = P.Msg(P.PUSH, req=ts, clock=clock, rows=rows, gen=self.membership.gen)
            self.van.send(self.layout.server_rank(s), msg)
        return ts

    # ------------------------------------------------------------ completion

    def handle(self, msg: P.Msg) -> None:
        if msg.cmd in (P.PULL_REPLY, P.PUSH_ACK):
            req = self.pending.get(msg.req)
            s = self.layout.role_of(msg.src)[1]
            if req is None or s not in req.waiting:
                return  # a late answer to a request already given up on
            if msg.cmd == P.PULL_REPLY and len(req.pos[s]):
                req.out[req.pos[s]] = msg.vals
            req.waiting.discard(s)
        else:
            self.inbox.append(msg)

    def pump(self, timeout: float) -> None:
        for m in self.van.recv(timeout):
            self.handle(m)

    def done(self, ts: int) -> bool:
        req = self.pending.get(ts)
        return req is None or not req.waiting

    def wait(self, ts: int, timeout: float | None = None):
        """Block until request ts is answered; a pull returns its rows."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.perf_counter() + timeout
        req = self.pending.get(ts)
        if req is None:
            return None
        while req.waiting:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RequestTimeout(ts, req.kind, req.waiting, timeout)
            self.pump(min(left, 0.05))
        del self.pending[ts]
        return req.out

    def outstanding(self) -> list[int]:
        return list(self.pending)
