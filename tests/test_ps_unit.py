"""Parameter-server parts without MPI: routing, codecs, clock rules, checkpoints, and the
real server's storage and update code against a 20-line reference server (the oracle)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pslab.backends.ps import checkpoint as ckpt
from pslab.backends.ps import protocol as P
from pslab.backends.ps.consistency import Clocks
from pslab.backends.ps import ranges as RG
from pslab.backends.ps.ranges import after_failure, group_by_server, initial_map, range_of
from pslab.backends.ps.membership import Layout
from pslab.config import load_config
from pslab.models import make_model
from pslab.observe import Recorder
from pslab.optim import divisor, make_optimizer

RNG = np.random.default_rng(0)
KEYS64 = RNG.integers(0, 2**64 - 2, 200_000, dtype=np.uint64)
KEYS_FOLDED = np.arange(1 << 18, dtype=np.uint64)


# ---------------------------------------------------------------- key ranges and the replica map

@pytest.mark.parametrize("n_ranges", [16, 64])
@pytest.mark.parametrize("keys", [KEYS64, KEYS_FOLDED], ids=["64bit", "folded"])
def test_ranges_spread_keys_within_10_percent(n_ranges, keys):
    counts = np.bincount(range_of(keys, n_ranges), minlength=n_ranges)
    assert len(counts) == n_ranges and np.abs(counts / counts.mean() - 1).max() <= 0.10, counts


@pytest.mark.parametrize("servers,R", [(3, 2), (4, 3), (5, 1)])
def test_initial_map_balances_primaries_and_keeps_copies_on_distinct_servers(servers, R):
    rmap = initial_map(list(range(servers)), 60, R)
    assert all(len(reps) == R and len(set(reps)) == R for reps in rmap)
    lead = np.bincount([reps[0] for reps in rmap], minlength=servers)
    assert lead.max() - lead.min() <= 1


def test_initial_map_puts_copies_on_other_hosts_first():
    hosts = {0: "a", 1: "a", 2: "b", 3: "b"}
    rmap = initial_map([0, 1, 2, 3], 16, 2, hosts)
    assert all(hosts[a] != hosts[b] for a, b in rmap)


def test_after_failure_promotes_rereplicates_and_names_lost_ranges():
    rmap = [[0, 1], [1, 2], [2, 0], [0, 2]]
    new, dec = after_failure(rmap, 0, [0, 1, 2], 2)
    assert dec["promoted"] == [0, 3] and not dec["lost"]
    assert new[0][0] == 1 and new[3][0] == 2 and new[1] == [1, 2]    # backups took over; others untouched
    assert all(len(reps) == 2 and 0 not in reps for reps in new)    # R copies again
    assert set(dec["added"]) == {0, 2, 3} and dec["resync"][0] == [dec["added"][0]]
    # both copies of a range gone at once: lost (restored by a live server from a checkpoint)
    new2, dec2 = after_failure([[0, 1], [2, 3]], 0, [0, 2, 3], 2)
    new3, dec3 = after_failure(new2, 1, [2, 3], 2)
    assert not dec2["lost"] and dec2["promoted"] == [0]
    assert dec3["lost"] == [] or all(new3[r] for r in dec3["lost"])
    lost_map, dec4 = after_failure([[0], [1]], 0, [0, 1], 1)
    assert dec4["lost"] == [0] and lost_map[0] == [1] and lost_map[1] == [1]


@pytest.mark.parametrize("servers", [3, 12])  # a pass per server up to 8, a stable sort beyond
def test_group_by_server_is_a_partition(servers):
    owner = RG.primaries(initial_map(list(range(servers)), 64, 1))[range_of(KEYS64[:1000], 64)]
    g = group_by_server(owner, list(range(servers)))
    allpos = np.sort(np.concatenate(list(g.values())))
    assert (allpos == np.arange(1000)).all()
    assert all((np.diff(pos) > 0).all() for pos in g.values())  # each in key order
    for s, pos in g.items():
        assert (owner[pos] == s).all()


# ---------------------------------------------------------------- codecs

def test_varint_known_values():
    assert P.varint_encode(np.array([1, 127, 128, 300], np.uint64)).tolist() == [1, 127, 0x80, 1, 0xAC, 2]
    big = np.array([0, 2**63, 2**64 - 1], np.uint64)
    assert (P.varint_decode(P.varint_encode(big), 3) == big).all()


@pytest.mark.parametrize("keys", [
    np.sort(RNG.choice(1 << 18, 5000, replace=False)).astype(np.uint64),   # dense: uint32 or varint gaps
    np.sort(RNG.choice(1 << 40, 5000, replace=False)).astype(np.uint64),   # sparse: varint gaps
    np.unique(KEYS64[:5000]),                                              # 64-bit: raw wins
    np.array([0, 2**64 - 2], np.uint64), np.array([7], np.uint64), np.zeros(0, np.uint64)])
def test_key_codecs_round_trip(keys):
    for delta in (False, True):
        codec, b = P.encode_keys(keys, delta)
        assert (P.decode_keys(codec, b, len(keys)) == keys).all()
        assert len(b) <= 8 * len(keys)


def test_delta_keys_compress_folded_keys():
    keys = np.sort(RNG.choice(1 << 18, 10_000, replace=False)).astype(np.uint64)
    codec, b = P.encode_keys(keys, True)
    assert codec in (P.K_DELTA32, P.K_VARINT) and len(b) < 0.3 * 8 * len(keys)


def test_message_round_trip_with_every_switch_and_pieces():
    send, recv = P.SendCache(), P.RecvCache()
    keys = np.sort(RNG.choice(1 << 20, 3000, replace=False)).astype(np.uint64)
    vals = RNG.standard_normal((3000, 9)).astype(np.float32)
    pull = P.Msg(P.PULL, req=5, clock=3, keys=keys, gen=2)
    bufs, sz = P.encode(pull, delta=True, cache=send)
    assert len(bufs) == 1  # small: header and payload in one message
    m = P.decode_buffers(bufs, 4, recv)
    assert (m.cmd, m.req, m.clock, m.gen, m.src) == (P.PULL, 5, 3, 2, 4) and (m.keys == keys).all()
    assert sz.wire < sz.raw
    keep = RNG.random(3000) < 0.5
    push = P.Msg(P.PUSH, req=6, clock=3, keys=keys, vals=vals, rows=77, keep=keep)
    bufs, sz = P.encode(push, fp16=True, delta=True, cache=send, chunk_bytes=4096, inline_max=1000)
    assert len(bufs) > 3 and len(bufs[0]) == P.HEADER_BYTES and all(len(b) <= 4096 for b in bufs)
    assert sum(len(b) for b in bufs) == sz.wire
    m = P.decode_buffers(bufs, 4, recv)
    assert m.rows == 77 and (m.keys == keys[keep]).all()
    np.testing.assert_allclose(m.vals, vals[keep], rtol=1e-3, atol=1e-4)  # fp16
    for switch in ("fp16", "key_cache", "kkt_filter"):
        assert sz.without[switch] > sz.wire, switch
    assert P.piece_bounds(10, 0, 5, 4) == [(0, 4), (4, 8), (8, 10), (10, 14), (14, 15)]
    big = P.Msg(P.PULL_REPLY, vals=np.array([[1e6], [2.0]], np.float32))  # beyond float16's range
    assert P.decode_buffers(P.encode(big, fp16=True)[0], 0).vals[0, 0] == 1e6
    ctrl = P.Msg(P.CTRL, meta={"op": "assign", "blocks": [3, 1]})
    assert P.decode_buffers(P.encode(ctrl)[0], 0).meta == ctrl.meta


def test_plain_fast_path_encodes_exactly_as_the_general_path(monkeypatch):
    keys = np.arange(100, dtype=np.uint64) * np.uint64(7919)
    vals = np.random.default_rng(0).random((100, 9), dtype=np.float32)
    msgs = [P.Msg(P.PUSH, req=1, clock=3, keys=keys, vals=vals, rows=5, gen=2), P.Msg(P.PULL, req=2, keys=keys),
            P.Msg(P.PULL_REPLY, req=2, vals=vals), P.Msg(P.PUSH_ACK, req=7),
            P.Msg(P.PUSH, keys=keys[:0], vals=vals[:0])]
    fast = [P.encode(m) for m in msgs]
    monkeypatch.setattr(P, "_encode_plain", lambda *a: None)
    for m, (bufs, sizes) in zip(msgs, fast):
        gbufs, gsizes = P.encode(m)
        assert [bytes(b) for b in bufs] == [bytes(b) for b in gbufs]
        assert (sizes.wire, sizes.raw, sizes.without) == (gsizes.wire, gsizes.raw, gsizes.without)
        back = P.decode_buffers(bufs, src=1)
        assert back.cmd == m.cmd and back.req == m.req and back.rows == m.rows and back.gen == m.gen
        if m.keys is not None:
            np.testing.assert_array_equal(back.keys, m.keys)
        if m.vals is not None:
            np.testing.assert_array_equal(back.vals, m.vals)


def test_decoded_arrays_view_the_received_buffer_even_unaligned():
    keys = np.array([3, 5, 1000], np.uint64)  # delta + varint: 10 key bytes, values start unaligned
    vals = np.arange(6, dtype=np.float32).reshape(3, 2)
    bufs, _ = P.encode(P.Msg(P.PUSH, keys=keys, vals=vals, meta={"x": 1}), delta=True)
    m = P.decode_buffers(bufs, 0)
    assert (m.keys == keys).all() and (m.vals == vals).all() and m.meta == {"x": 1}
    assert int(P.header_of(bufs[0])[P.H_KBYTES]) % 4  # the case that matters: misaligned floats
    plain = P.decode_buffers(P.encode(P.Msg(P.PUSH, keys=keys, vals=vals))[0], 0)
    assert not plain.keys.flags.owndata and (plain.vals == vals).all()


def test_key_caches_evict_in_step():
    send, recv = P.SendCache(slots=2), P.RecvCache(slots=2)
    lists = [np.arange(i, i + 10, dtype=np.uint64) for i in range(4)]
    for k in lists:
        P.decode_buffers(P.encode(P.Msg(P.PULL, keys=k), cache=send)[0], 1, recv)
    # the two newest are cached on both ends, the older ones on neither
    assert [send.find(k)[0] is not None for k in lists] == [False, False, True, True]
    assert sorted(recv.by_src[1]) == [2, 3]
    for k in lists[::-1]:  # newest first: hits, then misses that store again
        bufs = P.encode(P.Msg(P.PUSH, keys=k, vals=np.ones((10, 1), np.float32)), cache=send)[0]
        assert (P.decode_buffers(bufs, 1, recv).keys == k).all()
    codecs = []
    for k in lists[::-1]:
        bufs = P.encode(P.Msg(P.PUSH, keys=k, vals=np.ones((10, 1), np.float32)), cache=send)[0]
        codecs.append(int(P.header_of(bufs[0])[P.H_KCODEC]) & 15)
        assert (P.decode_buffers(bufs, 1, recv).keys == k).all()
    assert codecs[:1] == [P.K_RAW]  # list 3 was pushed out by 1 and 0


# ---------------------------------------------------------------- clock rules

def test_bsp_ssp_asp_rules():
    bsp = Clocks("bsp", 5, [0, 1])
    assert bsp.s == 0 and bsp.ready(0) and not bsp.ready(1)
    bsp.applied = 1
    assert bsp.ready(1) and not bsp.ready(2)
    ssp = Clocks("ssp", 2, [0, 1])
    for c in range(4):
        ssp.on_push(0, c)
    assert ssp.min_clock() == 0 and ssp.ready(2) and not ssp.ready(3)
    ssp.on_push(1, 0)
    assert ssp.ready(3) and ssp.served(0, 3, 0.0) == 2
    ssp.set_workers([0])  # failover drops worker 1: nobody waits for it any more
    assert ssp.ready(6) and not ssp.ready(7)
    with pytest.raises(ValueError):
        ssp.on_push(0, 9)  # a lost push is an error, not a silent gap
    asp = Clocks("asp", 0, [0, 1])
    assert asp.ready(100)
    assert ssp.records()["staleness"].tolist() == [2]
    assert Clocks("ssp", 1, [0]).ready(-1)  # snapshots are never held


def test_layout_roles():
    lay = Layout(6, 2)
    assert [lay.role_of(r) for r in range(6)] == [("coordinator", 0), ("server", 0), ("server", 1),
                                                  ("worker", 0), ("worker", 1), ("worker", 2)]
    assert lay.worker_rank(1) == 4 and lay.server_rank(1) == 2
    with pytest.raises(SystemExit):
        Layout(3, 2).check()


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_manifest_needs_every_range_and_restores_by_range(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    keys = np.arange(100, dtype=np.uint64)
    W, S = RNG.standard_normal((100, 2)).astype(np.float32), RNG.random((100, 4)).astype(np.float32)
    rng = range_of(keys, 4)
    lead = {0: [0, 1], 1: [2, 3]}
    man = ckpt.Manifests(root, 4, {"model": "lr"})
    for s in (0, 1):
        sel = np.isin(rng, lead[s])
        ckpt.write_shard(root, 8, s, keys[sel], W[sel], S[sel], {str(r): [10 + r, [r, 99]] for r in lead[s]})
    assert not man.on_shard(8, 0, "server-0.npz", lead[0], {})      # half the ranges: no manifest yet
    assert man.on_shard(8, 1, "server-1.npz", lead[1], {}) and man.latest == 8
    assert not list(root.rglob(".*tmp*"))
    with pytest.raises(FileNotFoundError):
        ckpt.write_manifest(root, 9, {"shards": [{"file": "server-0.npz", "ranges": [0]}]})
    info = ckpt.read_manifest(tmp_path / "run")  # a run dir finds its newest manifest
    assert info["clock"] == 8
    k, w, s, logs = ckpt.load_ranges(info, [0, 1, 2, 3], 4)
    o = np.argsort(k)
    assert (k[o] == keys).all() and (w[o] == W).all() and (s[o] == S).all()
    k2, _, _, logs2 = ckpt.load_ranges(info, [3], 4)  # one range: its rows and its record only
    assert (range_of(k2, 4) == 3).all() and len(k2) == int((rng == 3).sum()) and list(logs2) == ["3"]
    assert logs2["3"] == [13, [3, 99]]
    with pytest.raises(SystemExit, match="backend.ranges=4"):
        ckpt.load_ranges(info, [0], 8)


# ---------------------------------------------------------------- the server against an oracle

class RefServer:
    """The oracle: a dict key -> (row, state), one optimizer step per key."""

    def __init__(self, model, opt):
        self.model, self.opt, self.rows = model, opt, {}

    def pull(self, keys):
        return np.array([self.rows[k][0] if k in self.rows else self.model.init_rows(np.array([k], np.uint64))[0]
                         for k in keys.tolist()], np.float32).reshape(len(keys), -1)

    def push(self, pushes):
        """pushes: [(keys, summed grads, rows)] applied as one update (BSP) or one each."""
        total, rows = {}, sum(p[2] for p in pushes)
        for keys, g, _ in pushes:
            for k, gk in zip(keys.tolist(), g):
                total[k] = total.get(k, 0) + gk
        for k, g in total.items():
            if k not in self.rows:
                w0 = self.model.init_rows(np.array([k], np.uint64))
                self.rows[k] = (w0[0], self.opt.init_state(w0)[0])
            w, st = self.rows[k][0][None].copy(), self.rows[k][1][None].copy()
            self.opt.update(w, st, (g / divisor(self.opt, rows))[None].astype(np.float32))
            self.rows[k] = (w[0], st[0])


class FakeVan:
    def __init__(self):
        self.out = []
        self.failed = set()

    def send(self, dest, msg, kind=None, compress=True):
        self.out.append((dest, msg))
        return 0

    def compression(self):
        return {"data_bytes": 0, "data_bytes_uncompressed": 0}

    def flush(self, timeout):
        return True


class NoFaults:
    def on_step(self, step):
        pass

    def point(self, name, step):
        pass


def make_server(tmp_path, *overrides, workers=2):
    from pslab.backends.ps.server import Server

    cfg = load_config(["backend=ps", *overrides])
    rec = Recorder(tmp_path, 1, "server", 0)
    van = FakeVan()
    return Server(cfg, 0, Layout(2 + workers, 1), van, rec, NoFaults()), van, cfg


def replies(van, req):
    return [m for _, m in van.out if m.cmd == P.PULL_REPLY and m.req == req]


@pytest.mark.parametrize("model", ["lr", "fm"])
@pytest.mark.parametrize("optim", ["sgd", "adagrad", "ftrl"])
def test_server_matches_reference_bsp(tmp_path, model, optim):
    srv, van, cfg = make_server(tmp_path, f"model={model}", f"optim={optim}", "data.hash_bits=null")
    ref = RefServer(make_model(cfg.model), make_optimizer(cfg.optim))
    rng = np.random.default_rng(1)
    req = 0
    for clock in range(4):
        pushes = []
        for w in (1, 0):  # out of worker order on purpose: the server sums in worker order
            keys = np.unique(rng.integers(0, 2**64 - 2, 50, dtype=np.uint64)[: 40 + clock] if w else
                             np.concatenate([rng.integers(0, 2**64 - 2, 30, dtype=np.uint64),
                                             pushes[0][0][:10] if pushes else []]).astype(np.uint64))
            g = rng.standard_normal((len(keys), srv.model.dim)).astype(np.float32)
            rows = 64 - w
            srv.handle(P.Msg(P.PUSH, req=(req := req + 1), clock=clock, keys=keys, vals=g, rows=rows, src=2 + w,
                             batch=10 * clock + w, div=127))
            pushes.append((keys, g, rows))
        ref.push(pushes)
        probe = np.concatenate([pushes[0][0], pushes[1][0], np.array([12345], np.uint64)])
        srv.handle(P.Msg(P.PULL, req=(req := req + 1), clock=clock + 1, keys=probe, src=2))
        (rep,) = replies(van, req)
        np.testing.assert_allclose(rep.vals, ref.pull(probe), rtol=1e-5, atol=1e-6)
    assert len(srv.table) == len(ref.rows)  # pulls of unseen keys store nothing
    acks = [m for _, m in van.out if m.cmd == P.PUSH_ACK]
    assert len(acks) == 8


def test_server_ssp_holds_pulls_until_the_slowest_is_within_s(tmp_path):
    srv, van, cfg = make_server(tmp_path, "backend.consistency=ssp", "backend.staleness=1")
    ref = RefServer(make_model(cfg.model), make_optimizer(cfg.optim))
    keys = np.arange(5, dtype=np.uint64)
    g = np.ones((5, 1), np.float32)
    for c in range(3):  # worker 0 runs ahead: clocks 0, 1, 2
        srv.handle(P.Msg(P.PUSH, req=c + 1, clock=c, keys=keys, vals=g, rows=4, src=2, batch=c, div=4))
        ref.push([(keys, g, 4)])
    srv.handle(P.Msg(P.PULL, req=10, clock=3, keys=keys, src=2))  # needs worker 1 at clock >= 2
    assert not replies(van, 10) and len(srv.held) == 1
    srv.handle(P.Msg(P.PUSH, req=11, clock=0, src=3, rows=0))
    assert not replies(van, 10)
    srv.handle(P.Msg(P.PUSH, req=12, clock=1, keys=keys[:2], vals=-g[:2], rows=2, src=3, batch=100, div=2))
    ref.push([(keys[:2], -g[:2], 2)])
    (rep,) = replies(van, 10)
    np.testing.assert_allclose(rep.vals, ref.pull(keys), rtol=1e-6)
    rec = srv.clocks.records()
    assert rec["staleness"].tolist() == [1] and rec["held_s"][0] >= 0
    # membership without worker 1: worker 0 is no longer held back by it
    srv.handle(P.Msg(P.CTRL, meta={"op": "membership", "membership": {
        "gen": 1, "workers": [0], "servers": [0], "ranges": srv.membership.ranges, "replication": 1}}, src=0))
    srv.handle(P.Msg(P.PULL, req=20, clock=4, keys=keys, src=2))
    assert replies(van, 20)


def test_server_asp_answers_at_once_and_records_staleness(tmp_path):
    srv, van, _ = make_server(tmp_path, "backend.consistency=asp")
    for c in range(5):
        srv.handle(P.Msg(P.PUSH, req=c + 1, clock=c, rows=0, src=2))
    srv.handle(P.Msg(P.PULL, req=9, clock=5, keys=np.arange(3, dtype=np.uint64), src=2))
    assert replies(van, 9) and srv.clocks.stats()["staleness_max"] == 5


def test_server_checkpoint_and_dump(tmp_path):
    srv, van, _ = make_server(tmp_path, "backend.checkpoint_every=2", workers=1)
    keys = np.array([3, 1, 2], np.uint64)
    for c in range(2):
        srv.handle(P.Msg(P.PUSH, req=c + 1, clock=c, keys=keys, vals=np.ones((3, 1), np.float32), rows=1, src=2,
                         batch=c, div=1))
    done = [m for _, m in van.out if m.cmd == P.CTRL and m.meta["op"] == "ckpt_done"]
    assert [m.meta["clock"] for m in done] == [2]
    z = np.load(tmp_path / "checkpoints" / "clock-00000002" / "server-0.npz")
    assert sorted(z["keys"].tolist()) == [1, 2, 3] and z["S"].shape == (3, 1)
    srv.handle(P.Msg(P.CTRL, req=7, meta={"op": "dump"}, src=0))
    dump = [m for _, m in van.out if m.cmd == P.DATA][0]
    assert sorted(dump.keys.tolist()) == [1, 2, 3] and dump.vals.shape == (3, 1)
    srv.handle(P.Msg(P.CTRL, meta={"op": "stop"}, src=0))
    final = van.out[-1][1].meta
    assert final["op"] == "final" and final["keys"] == 3 and srv.stopped
    assert json.loads(json.dumps(final))  # the final record is plain JSON


def test_push_sends_only_the_rows_the_kkt_filter_kept():
    """The worker keeps each dropped row as a residual for its next push, so a dropped row
    must never travel now as well (it would be applied twice), however few are dropped."""
    from pslab.backends.ps.client import KVClient
    from pslab.backends.ps.membership import Membership

    class Van:
        delta = False
        sent: list = []

        def send(self, dest, msg, compress=True):
            self.sent.append(msg)

    van = Van()
    client = KVClient(van, Layout(size=4, servers=1), Membership(0, [0, 1], [0], [[0]] * 8), dim=1, timeout=1.0)
    keys = np.arange(1000, dtype=np.uint64)
    keep = np.ones(1000, bool)
    keep[:3] = False  # a few dropped: fewer bytes than the mask naming them
    client.push(keys, np.ones((1000, 1), np.float32), rows=10, clock=0, keep=keep)
    (msg,) = van.sent
    assert msg.keep is not None and int(msg.keep.sum()) == 997


# ---------------------------------------------------------------- exactly-once and replicas

def make_servers(tmp_path, *overrides, servers=2, workers=2):
    """Real servers wired through fake vans: deliver() moves their messages to each other."""
    from pslab.backends.ps.server import Server

    cfg = load_config(["backend=ps", f"backend.servers={servers}", *overrides])
    layout = Layout(1 + servers + workers, servers)
    out = []
    for i in range(servers):
        rec = Recorder(tmp_path / f"s{i}", 1 + i, "server", i)
        out.append(Server(cfg, i, layout, FakeVan(), rec, NoFaults()))
    return out, layout


def deliver(servers, layout) -> list:
    """Hand every server-to-server message to its receiver until none is left; returns
    what went elsewhere (to workers and the coordinator)."""
    rest = []
    while any(s.van.out for s in servers):
        for s in servers:
            out, s.van.out = s.van.out, []
            for dest, m in out:
                role, i = layout.role_of(dest)
                if role == "server":
                    m.src = layout.server_rank(s.index)
                    servers[i].handle(m)
                else:
                    rest.append((dest, m))
    return rest


def push_to_primaries(servers, layout, w, req, clock, keys, g, rows, batch):
    m = servers[0].membership
    owner = m.primary_of(keys)
    for s in m.servers:
        sel = owner == s
        servers[s].handle(P.Msg(P.PUSH, req=req * 10 + s, clock=clock, keys=keys[sel], vals=g[sel], rows=rows,
                                src=layout.worker_rank(w), batch=batch, div=rows, gen=m.gen))


def test_a_batch_is_applied_once_whatever_copy_or_resend_arrives(tmp_path):
    srv, van, _ = make_server(tmp_path, "backend.consistency=asp", workers=2)
    keys = np.arange(6, dtype=np.uint64)
    g = np.ones((6, 1), np.float32)
    srv.handle(P.Msg(P.PUSH, req=1, clock=0, keys=keys, vals=g, rows=8, src=2, batch=7, div=8))
    w1 = srv.table.gather(keys).copy()
    srv.handle(P.Msg(P.PUSH, req=1, clock=0, keys=keys, vals=g, rows=8, src=2, batch=7, div=8))   # a resend
    srv.handle(P.Msg(P.PUSH, req=5, clock=0, keys=keys, vals=g, rows=8, src=3, batch=7, div=8))   # another copy
    assert (srv.table.gather(keys) == w1).all()
    assert srv.dup_parts == 1 and (srv.log.rows == 8).all()  # every range counts the batch's rows once
    acks = [m for _, m in van.out if m.cmd == P.PUSH_ACK]
    assert len(acks) == 3  # each is acknowledged: the sender may stop re-sending


@pytest.mark.parametrize("mode", ["ssp", "asp"])
def test_backups_end_bit_identical_to_their_primary(tmp_path, mode):
    servers, layout = make_servers(tmp_path, f"backend.consistency={mode}", "backend.staleness=2",
                                   "backend.replication=2", "model=fm")
    rng = np.random.default_rng(3)
    acks = []
    for c in range(4):
        for w in (1, 0):
            keys = np.unique(rng.integers(0, 2**64 - 2, 300, dtype=np.uint64))
            g = rng.standard_normal((len(keys), servers[0].model.dim)).astype(np.float32)
            push_to_primaries(servers, layout, w, c * 2 + w + 1, c, keys, g, 16, 100 * c + w)
            # before the backups answer, no push is acknowledged
            assert not [m for s in servers for _, m in s.van.out if m.cmd == P.PUSH_ACK]
            acks += [m for _, m in deliver(servers, layout) if m.cmd == P.PUSH_ACK]
    assert len(acks) == 4 * 2 * 2
    d0, d1 = servers[0].digests(), servers[1].digests()
    assert d0 and d0 == d1 and len(d0) == servers[0].membership.n_ranges
    # and the backup's rows of a range are its primary's, bit for bit
    keys0, pos0 = servers[0].rows_of([0])
    keys1, pos1 = servers[1].rows_of([0])
    o0, o1 = np.argsort(keys0), np.argsort(keys1)
    assert (keys0[o0] == keys1[o1]).all() and (servers[0].table.W[pos0][o0] == servers[1].table.W[pos1][o1]).all()


def test_a_forward_from_a_server_that_is_not_the_primary_is_dropped(tmp_path):
    servers, layout = make_servers(tmp_path, "backend.replication=2")
    r = servers[0].membership.primary_ranges(1)[0]  # a range server 1 leads, server 0 backs up
    keys = np.array([k for k in range(2000) if range_of(np.array([k], np.uint64), 64)[0] == r][:3], np.uint64)
    stale = P.Msg(P.FWD, req=1, keys=keys, vals=np.ones((3, 2), np.float32), meta={"log": [[5, 4, [r]]]},
                  src=layout.server_rank(0))
    servers[1].handle(stale)  # server 0 is not the primary of r: server 1 must not take it
    assert servers[1].log.rows[r] == 0 and not [m for _, m in servers[1].van.out if m.cmd == P.FWD_ACK]
