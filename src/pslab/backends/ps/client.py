"""The key-value client (ps-lite's KVWorker + Customer): pull and push return a request id
at once; wait(id) blocks until every server involved has answered, with a timeout.

A request is split by the replica map into one message per server, a *part*, each with
its own wire id (the header's req field). Pulls and pushes go to each key range's
primary only (the primary forwards updates to the backups, forward.py). A push sends a
part to every live server, empty where the batch has no keys there: it is the server's
clock tick, and the part tells each range the server leads that this batch reached it
(exactly-once counts every range). Replies are matched by (part id, server) and
scattered back into the caller's key order. Everything that is not a reply (control
messages from the coordinator) goes to `inbox` for the role's loop; `on_pump`, when set,
is called after every receive so a role can act on control messages while it waits.

Failover: set_membership(m) re-routes what is outstanding at servers that left: pull
parts are split again over the new primaries; a push part is re-sent, with its batch id
and the ranges it was meant for, to the servers that now lead those ranges (F_REROUTE:
no clock tick). A range's new primary holds every batch the old one had forwarded, so
it drops a re-sent batch it already has; a range restored from a checkpoint drops what
the checkpoint holds. A wait that times out re-sends its missing parts once, with the
same part ids (the server answers a repeated id without applying it again); only a
second timeout raises, naming the servers (RequestTimeout).

Acknowledged pushes are remembered per batch with the ranges they covered (`acked`), so
the run can measure what was acknowledged and then lost (summary.json's lost_updates).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ...store import put_rows, take_rows
from . import protocol as P
from .ranges import group_by_server


class RequestTimeout(TimeoutError):
    def __init__(self, ts: int, kind: str, missing, timeout: float):
        super().__init__(f"{kind} request {ts}: no answer from server(s) {sorted(missing)} within {timeout:g} s "
                         f"(lost some servers?)")
        self.ts, self.missing = ts, set(missing)


@dataclass
class Part:
    ts: int                                     # the request it belongs to
    server: int
    msg: P.Msg                                  # as sent (kept for re-sending)
    pos: np.ndarray | None = None               # pull: positions of its keys in the request's `out`
    compress: bool = True
    ranges: list | None = None                  # push: the ranges it covers


@dataclass
class Request:
    kind: str                                   # "pull" or "push"
    waiting: set                                # part ids yet to be answered
    out: np.ndarray | None = None               # pull: rows in the caller's key order


class KVClient:
    def __init__(self, van, layout, membership, dim: int, timeout: float):
        self.van, self.layout, self.dim, self.timeout = van, layout, int(dim), float(timeout)
        self.membership = membership
        self.pending: dict[int, Request] = {}
        self.parts: dict[int, Part] = {}
        self.inbox: deque = deque()
        self.next_ts = 1
        self.next_part = 1
        self._split_for = None                  # the key array the last split was made for
        self._split: dict = {}
        self.on_pump = None                     # callable() run after each receive (control messages)
        self.acked: dict[int, set] = {}         # batch id -> ranges that acknowledged it
        self.resent = 0
        self.rerouted = 0

    def set_membership(self, m) -> None:
        """Adopt a new membership; re-route what is outstanding at servers that left."""
        old = self.membership
        self.membership = m
        self._split_for = None
        gone = set(old.servers) - set(m.servers)
        if not gone:
            return
        for pid in [pid for pid, p in self.parts.items() if p.server in gone]:
            p = self.parts.pop(pid)
            req = self.pending.get(p.ts)
            if req is None:
                continue
            req.waiting.discard(pid)
            if p.msg.cmd == P.PULL:
                keys = p.msg.keys
                if keys is not None and len(keys):
                    for s, (pos, k) in self.split(keys, cache=False).items():
                        self._send(p.ts, s, P.Msg(P.PULL, clock=p.msg.clock, keys=k, gen=m.gen), pos=p.pos[pos],
                                   compress=p.compress)
                        self.rerouted += 1
            else:
                self._reroute_push(p)

    def _reroute_push(self, p: Part) -> None:
        """A push part whose server died: to the new primaries of the ranges it covered."""
        m, msg = self.membership, p.msg
        keys, vals = msg.keys, msg.vals
        if keys is not None and msg.keep is not None:
            keys, vals = keys[msg.keep], vals[msg.keep]
        lead: dict[int, list] = {}
        for r in p.ranges:
            if m.ranges[r]:
                lead.setdefault(m.ranges[r][0], []).append(r)
        owner = m.primary_of(keys) if keys is not None and len(keys) else np.zeros(0, np.int16)
        for s, ranges in sorted(lead.items()):
            pos = np.flatnonzero(owner == s)
            k = keys[pos] if len(pos) else None
            v = take_rows(vals, pos) if len(pos) else None
            self._send(p.ts, s, P.Msg(P.PUSH, clock=msg.clock, keys=k, vals=v, rows=msg.rows, gen=m.gen,
                                      batch=msg.batch, div=msg.div, flags=P.F_REROUTE, meta={"ranges": ranges}),
                       ranges=ranges)
            self.rerouted += 1

    # ------------------------------------------------------------ routing

    def split(self, keys: np.ndarray, cache: bool = True) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """primary server -> (positions, keys). Cached for the same array: a push reuses its pull's."""
        if cache and keys is self._split_for:
            return self._split
        m = self.membership
        groups = group_by_server(m.primary_of(keys), m.servers) if len(keys) else {}
        out = {}
        for s, pos in groups.items():
            k = np.take(keys, pos)
            if self.van.delta:  # delta coding wants each server's list sorted
                o = np.argsort(k, kind="stable")
                pos, k = pos[o], k[o]
            out[s] = (pos, k)
        if cache:
            self._split_for, self._split = keys, out
        return out

    # ------------------------------------------------------------ requests

    def _new(self, req: Request) -> int:
        ts = self.next_ts
        self.next_ts += 1
        self.pending[ts] = req
        return ts

    def _send(self, ts: int, s: int, msg: P.Msg, pos=None, compress: bool = True, ranges=None) -> int:
        pid = self.next_part
        self.next_part += 1
        msg.req = pid
        self.parts[pid] = Part(ts, s, msg, pos, compress, ranges)
        self.pending[ts].waiting.add(pid)
        self.van.send(self.layout.server_rank(s), msg, compress=compress)
        return pid

    def pull(self, keys: np.ndarray, clock: int, compress: bool = True) -> int:
        """Rows of `keys` as of `clock` (the consistency model decides when servers answer);
        clock < 0 asks for a snapshot now (the coordinator's evaluation)."""
        keys = np.asarray(keys, np.uint64)
        groups = self.split(keys)
        req = Request("pull", set(), out=np.empty((len(keys), self.dim), np.float32))
        ts = self._new(req)
        for s, (pos, k) in groups.items():
            self._send(ts, s, P.Msg(P.PULL, clock=clock, keys=k, gen=self.membership.gen), pos=pos, compress=compress)
        return ts

    def push(self, keys: np.ndarray, grad: np.ndarray | None, rows: int, clock: int, keep: np.ndarray | None = None,
             batch: int = -1, div: int = 0, between=None) -> int:
        """Summed gradient rows for `keys` of batch `batch` (`rows` examples) at `clock`,
        to be divided by `div` where applied. keep: rows worth sending (KKT filter); the
        others stay home. between(): called after the first server's part is sent (a
        fault point: a push half sent)."""
        keys = np.asarray(keys, np.uint64)
        m = self.membership
        groups = self.split(keys) if len(keys) else {}
        req = Request("push", set())
        ts = self._new(req)
        for i, s in enumerate(m.servers):
            if s in groups:
                pos, k = groups[s]
                # Always filtered: the worker keeps each dropped row as a residual for its next
                # push, so sending it now as well would apply it twice.
                kp = None if keep is None else keep[pos]
                msg = P.Msg(P.PUSH, clock=clock, keys=k, vals=take_rows(grad, pos), rows=rows, keep=kp, gen=m.gen,
                            batch=batch, div=div)
            else:
                msg = P.Msg(P.PUSH, clock=clock, rows=rows, gen=m.gen, batch=batch, div=div)
            self._send(ts, s, msg, ranges=m.primary_ranges(s))
            if i == 0 and between is not None:
                between()
        return ts

    # ------------------------------------------------------------ completion

    def handle(self, msg: P.Msg) -> None:
        if msg.cmd in (P.PULL_REPLY, P.PUSH_ACK):
            p = self.parts.get(msg.req)
            if p is None or self.layout.server_rank(p.server) != msg.src:
                return  # a late answer to a part already re-routed or given up on
            del self.parts[msg.req]
            req = self.pending.get(p.ts)
            if req is None:
                return
            if msg.cmd == P.PULL_REPLY and p.pos is not None and len(p.pos):
                put_rows(req.out, p.pos, msg.vals)
            elif msg.cmd == P.PUSH_ACK and p.msg.batch >= 0:
                self.acked.setdefault(p.msg.batch, set()).update(p.ranges)
            req.waiting.discard(msg.req)
        else:
            self.inbox.append(msg)

    def pump(self, timeout: float) -> None:
        for m in self.van.recv(timeout):
            self.handle(m)
        if self.on_pump is not None:
            self.on_pump()

    def done(self, ts: int) -> bool:
        req = self.pending.get(ts)
        return req is None or not req.waiting

    def missing_servers(self, ts: int) -> set:
        req = self.pending.get(ts)
        return set() if req is None else {self.parts[p].server for p in req.waiting if p in self.parts}

    def resend(self, ts: int) -> None:
        """Send the unanswered parts of ts again, with the same part ids (idempotent)."""
        req = self.pending.get(ts)
        for pid in list(req.waiting if req else ()):
            p = self.parts.get(pid)
            if p is not None and p.server in self.membership.servers:
                self.van.send(self.layout.server_rank(p.server), p.msg, compress=p.compress)
                self.resent += 1

    def wait(self, ts: int, timeout: float | None = None):
        """Block until request ts is answered; a pull returns its rows. After `timeout`
        without an answer the missing parts are sent once more; a second timeout raises."""
        timeout = self.timeout if timeout is None else timeout
        req = self.pending.get(ts)
        if req is None:
            return None
        for attempt in (0, 1):
            deadline = time.perf_counter() + timeout
            while req.waiting:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.pump(min(left, 0.05))
            if not req.waiting:
                break
            if attempt == 0:
                self.resend(ts)
            else:
                raise RequestTimeout(ts, req.kind, self.missing_servers(ts), 2 * timeout)
        del self.pending[ts]
        return req.out
