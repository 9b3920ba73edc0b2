"""The key-value client (ps-lite's KVWorker + Customer): pull and push return a request id
at once; wait(id) blocks until every server involved has answered, with a timeout.

A request is split by the hash ring into one message per server, a *part*, each with its
own wire id (the header's req field). Replies are matched by (part id, server) and
scattered back into the caller's key order. Everything that is not a reply (control
messages from the coordinator) goes to `inbox` for the role's loop; `on_pump`, when set,
is called after every receive so a role can act on control messages (a new membership,
the coordinator's death) while it waits.

Replication (backend.replication = R): a pull goes to each key's owner, a push to all R
replicas of each key (owner + next R-1 servers on the ring), so a push that every server
acknowledged is on R servers; nothing is forwarded between servers.

Failover: set_membership(m, failover) re-routes what is outstanding at servers that left
the ring: pull parts are split again over the new owners and re-sent; push parts at a
dead server are dropped when its replicas already got theirs (R >= 2: the same push
message to the replica carried those keys), or re-sent to the new owners as `handover`
pushes (R = 1: after a checkpoint restore; the server applies them without counting a
clock). A wait that times out re-sends its missing parts once, with the same part ids:
servers answer a repeated push id without applying it again (idempotent), and a pull is
idempotent anyway; only a second timeout raises, naming the servers (RequestTimeout).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ...store import put_rows, take_rows
from . import protocol as P
from .hashring import group_by_server


class RequestTimeout(TimeoutError):
    def __init__(self, ts: int, kind: str, missing, timeout: float):
        super().__init__(f"{kind} request {ts}: no answer from server(s) {sorted(missing)} within {timeout:g} s")
        self.ts, self.missing = ts, set(missing)


@dataclass
class Part:
    ts: int                                     # the request it belongs to
    server: int
    msg: P.Msg                                  # as sent (kept for re-sending)
    pos: np.ndarray | None = None               # pull: positions of its keys in the request's `out`
    compress: bool = True


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
        self._rsplit_for = None
        self._rsplit: dict = {}
        self.on_pump = None                     # callable() run after each receive (control messages)
        self.on_ack = None                      # callable(server, clock, nkeys) for each push acknowledged
        self.resent = 0
        self.rerouted = 0

    def set_membership(self, m, failover: dict | None = None) -> None:
        """Adopt a new membership; re-route what is outstanding at servers that left."""
        old = self.membership
        self.membership = m
        self._split_for = self._rsplit_for = None
        gone = set(old.servers) - set(m.servers)
        if not gone:
            return
        handover = bool(failover and failover.get("mode") == "checkpoint")
        for pid in [pid for pid, p in self.parts.items() if p.server in gone]:
            p = self.parts.pop(pid)
            req = self.pending.get(p.ts)
            if req is None:
                continue
            req.waiting.discard(pid)
            keys = p.msg.keys
            if p.msg.cmd == P.PULL:
                if keys is not None and len(keys):
                    groups = self.split(keys, cache=False)
                    for s, (pos, k) in groups.items():
                        self._send(p.ts, s, P.Msg(P.PULL, clock=p.msg.clock, keys=k, gen=m.gen), pos=p.pos[pos],
                                   compress=p.compress)
                        self.rerouted += 1
            elif handover and keys is not None and len(keys):
                # R = 1: the new owners restored these ranges from a checkpoint; the push
                # the dead server may never have applied goes to them (once: a new part id).
                vals = p.msg.vals
                if p.msg.keep is not None:
                    keys, vals = keys[p.msg.keep], vals[p.msg.keep]
                for s, (pos, k) in self.split_push(keys, cache=False).items():
                    self._send(p.ts, s, P.Msg(P.PUSH, clock=p.msg.clock, keys=k, vals=vals[pos], rows=p.msg.rows,
                                              gen=m.gen, meta={"handover": 1}))
                    self.rerouted += 1
            # else: a push part at a dead server whose keys its replicas already got

    # ------------------------------------------------------------ routing

    def split(self, keys: np.ndarray, cache: bool = True) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """owner server -> (positions, keys). Cached for the same array: a push reuses its pull's."""
        if cache and keys is self._split_for:
            return self._split
        ring = self.membership.ring
        groups = group_by_server(ring.route(keys), ring.servers) if len(keys) else {}
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

    def split_push(self, keys: np.ndarray, cache: bool = True) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """server -> (positions, keys) of every key it holds a replica of (R = 1: the owner)."""
        ring = self.membership.ring
        if ring.replication <= 1:
            return self.split(keys, cache)
        if cache and keys is self._rsplit_for:
            return self._rsplit
        out = {}
        if len(keys):
            reps = ring.replicas(keys)
            own = self.split(keys, cache)
            for s in ring.servers:
                if s in own:  # the owner's share first, in the pull's order (the key cache reuses it)
                    pos_own = own[s][0]
                    extra = np.flatnonzero((reps[:, 1:] == s).any(1))
                else:
                    pos_own, extra = np.zeros(0, np.int64), np.flatnonzero((reps[:, 1:] == s).any(1))
                if not len(pos_own) and not len(extra):
                    continue
                if len(extra):
                    k_extra = keys[extra]
                    if self.van.delta:
                        o = np.argsort(k_extra, kind="stable")
                        extra, k_extra = extra[o], k_extra[o]
                    pos = np.concatenate([pos_own, extra]) if len(pos_own) else extra
                    if self.van.delta and len(pos_own):
                        o = np.argsort(keys[pos], kind="stable")
                        pos = pos[o]
                    out[s] = (pos, keys[pos])
                else:
                    out[s] = own[s]
        if cache:
            self._rsplit_for, self._rsplit = keys, out
        return out

    # ------------------------------------------------------------ requests

    def _new(self, req: Request) -> int:
        ts = self.next_ts
        self.next_ts += 1
        self.pending[ts] = req
        return ts

    def _send(self, ts: int, s: int, msg: P.Msg, pos=None, compress: bool = True) -> int:
        pid = self.next_part
        self.next_part += 1
        msg.req = pid
        self.parts[pid] = Part(ts, s, msg, pos, compress)
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

    def push(self, keys: np.ndarray, grad: np.ndarray, rows: int, clock: int, keep: np.ndarray | None = None,
             all_servers: bool = True, meta: dict | None = None) -> int:
        """Summed gradient rows for `keys` made from `rows` examples at `clock`. Every live
        server gets a push each clock (empty if none of its keys): that is its clock tick.
        keep: rows worth sending (KKT filter); the others stay home."""
        keys = np.asarray(keys, np.uint64)
        groups = self.split_push(keys) if len(keys) else {}
        targets = self.membership.servers if all_servers else list(groups)
        req = Request("push", set())
        ts = self._new(req)
        for s in targets:
            if s in groups:
                pos, k = groups[s]
                # Always filtered: the worker keeps each dropped row as a residual for its next
                # push, so sending it now as well would apply it twice.
                kp = None if keep is None else keep[pos]
                msg = P.Msg(P.PUSH, clock=clock, keys=k, vals=take_rows(grad, pos), rows=rows, keep=kp,
                            gen=self.membership.gen, meta=meta)
            else:
                msg = P.Msg(P.PUSH, clock=clock, rows=rows, gen=self.membership.gen, meta=meta)
            self._send(ts, s, msg)
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
            elif msg.cmd == P.PUSH_ACK and self.on_ack is not None and p.msg.keys is not None:
                n = len(p.msg.keys) if p.msg.keep is None else int(p.msg.keep.sum())
                self.on_ack(p.server, p.msg.clock, n)
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
