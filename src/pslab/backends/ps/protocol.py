"""The parameter server's wire format: a fixed header and three parts,

    [ header: 19 x int64 ][ keys ][ values ][ meta ]

sent with uppercase (buffer) mpi4py calls, so nothing on the data path is pickled. The
header says how each part is coded; keys and values are numpy arrays viewed in place on
receipt. Control messages (assign, stop, membership, ...) carry a small JSON `meta`
instead of keys and values: they are rare, and JSON keeps them readable in a debugger.

Small messages (payload up to INLINE_MAX) are one buffer, one MPI message: latency rules
there. Large ones are the header, then the payload as separate messages sent straight
from the caller's arrays (no copy); each piece is at most `chunk_bytes` (default 1 GiB),
so no MPI count nears the 2 GiB (int32) limit. The receiver posts receives for the
pieces as soon as it has the header; MPI keeps one sender's messages on one tag in
order, so they match.

Compression codecs, each a switch (backend.compression.*):
  fp16       values travel as float16 and come back as float32;
  delta_keys sorted keys travel as the first key + the gaps, as uint32 or LEB128 varints
             (whichever is smaller for this list);
  key_cache  a key list already sent to the same peer is named by a short id; both ends
             keep the last CACHE_SLOTS lists per peer, evicting in the same order
             (per-sender order again keeps them in step);
  mask       (the KKT filter's companion) a cached list plus a bit mask of the rows that
             follow, so a filtered push can still reuse its pull's key list.
"""
from __future__ import annotations

import json
import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

TAG = 7001                      # one tag for everything: per-sender order is then total
MAGIC = 0x50534C4142            # "PSLAB"
HEADER_LEN = 19
HEADER_BYTES = 8 * HEADER_LEN
CHUNK_BYTES = 1 << 30
INLINE_MAX = 1 << 16            # payloads above this go as separate pieces, without a copy
CACHE_SLOTS = 8

# commands
PULL, PULL_REPLY, PUSH, PUSH_ACK, CTRL, DATA, FWD, FWD_ACK = 1, 2, 3, 4, 5, 6, 7, 8
PEER_FAILED = 99                # never on the wire: the van's notice that MPI reported a dead peer
CMD_NAMES = {PULL: "pull", PULL_REPLY: "pull_reply", PUSH: "push", PUSH_ACK: "push_ack", CTRL: "ctrl",
             DATA: "data", FWD: "forward", FWD_ACK: "forward_ack", PEER_FAILED: "peer_failed"}

# flags
F_REROUTE = 1                   # a push part re-sent to a range's new primary: it ticks no clock
F_SNAPSHOT = 2                  # a forward that replaces a range's rows (re-replication), not an update

# header fields
(H_MAGIC, H_CMD, H_REQ, H_CLOCK, H_NKEYS, H_DIM, H_KCODEC, H_VCODEC, H_CACHE, H_ROWS,
 H_KBYTES, H_VBYTES, H_MBYTES, H_CHUNK, H_NCHUNKS, H_GEN, H_BATCH, H_DIV, H_FLAGS) = range(HEADER_LEN)

# key codecs (low bits) and flags
K_NONE, K_RAW, K_DELTA32, K_VARINT, K_CACHED = 0, 1, 2, 3, 4
K_STORE = 16                    # receiver: remember these keys under the cache id
K_MASK = 32                     # a packed bit mask of the rows present follows the keys
# value codecs
V_F32, V_F16 = 0, 1


@dataclass
class Msg:
    cmd: int
    req: int = 0
    clock: int = 0
    keys: np.ndarray | None = None      # uint64, or None (a pull reply has no keys)
    vals: np.ndarray | None = None      # float32 (n x dim), or None
    rows: int = 0                       # examples behind a push (BSP divides by their sum)
    meta: dict | None = None
    gen: int = 0                        # membership generation (failover fences old ones)
    keep: np.ndarray | None = None      # bool per key: rows of vals present (KKT filter)
    batch: int = -1                     # push: the batch id (ledger.batch_id), fixed for life; -1: none
    div: int = 0                        # push: what the summed gradient is divided by (from the plan)
    flags: int = 0                      # F_* bits
    src: int = -1                       # filled in on receipt
    nbytes: int = 0                     # wire size, filled in on receipt


# ---------------------------------------------------------------- key codecs

def varint_sizes(d: np.ndarray) -> np.ndarray:
    """Bytes per value in LEB128 (7 bits per byte)."""
    n = np.ones(len(d), np.int64)
    for j in range(1, 10):
        n += d >= np.uint64(1 << (7 * j))
    return n


def varint_encode(d: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    d = np.asarray(d, np.uint64)
    nb = varint_sizes(d) if sizes is None else sizes
    ends = np.cumsum(nb)
    starts = ends - nb
    out = np.empty(int(ends[-1]) if len(d) else 0, np.uint8)
    for j in range(int(nb.max()) if len(d) else 0):  # a loop over byte positions, not values
        sel = np.flatnonzero(nb > j)
        byte = ((d[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= (nb[sel] > j + 1).astype(np.uint8) << 7
        out[starts[sel] + j] = byte
    return out


def varint_decode(b: np.ndarray, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, np.uint64)
    last = np.flatnonzero((b & 0x80) == 0)
    if len(last) != n:
        raise ValueError(f"varint stream holds {len(last)} values, header says {n}")
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = last[:-1] + 1
    shift = (np.arange(len(b)) - np.repeat(starts, last - starts + 1)) * 7
    parts = (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(parts, starts)  # the 7-bit groups do not overlap: add == or


def encode_keys(keys: np.ndarray, delta: bool) -> tuple[int, np.ndarray]:
    """(codec, bytes). Delta coding needs sorted, distinct keys (the client sorts)."""
    keys = np.ascontiguousarray(keys, np.uint64)
    if not delta or len(keys) < 2:
        return K_RAW, keys.view(np.uint8)
    gaps = np.diff(keys)
    head = keys[:1].view(np.uint8)
    sizes = varint_sizes(gaps)
    nvar = int(sizes.sum())
    if int(gaps.max()) < (1 << 32) and 4 * len(gaps) <= nvar:
        return K_DELTA32, np.concatenate([head, gaps.astype(np.uint32).view(np.uint8)])
    if nvar >= 8 * len(gaps):  # 64-bit keys spread over 2^64: varints do not pay
        return K_RAW, keys.view(np.uint8)
    return K_VARINT, np.concatenate([head, varint_encode(gaps, sizes)])


def decode_keys(codec: int, b: np.ndarray, n: int) -> np.ndarray:
    if codec == K_RAW:
        return b.view(np.uint64) if b is not None else np.zeros(0, np.uint64)
    if n == 0:
        return np.zeros(0, np.uint64)
    head = b[:8].view(np.uint64)
    gaps = b[8:].view(np.uint32).astype(np.uint64) if codec == K_DELTA32 else varint_decode(b[8:], n - 1)
    out = np.empty(n, np.uint64)
    out[0] = head[0]
    np.cumsum(gaps, out=out[1:])
    out[1:] += head[0]
    return out


# ---------------------------------------------------------------- key caches

class SendCache:
    """Key lists recently sent to one peer: id -> (keys, coded bytes per key)."""

    def __init__(self, slots: int = CACHE_SLOTS):
        self.slots = slots
        self.entries: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()
        self.next_id = 0

    def find(self, keys: np.ndarray):
        for cid in reversed(self.entries):
            k, bpk = self.entries[cid]
            if len(k) == len(keys) and (k is keys or np.array_equal(k, keys)):
                return cid, bpk
        return None, 0.0

    def store(self, keys: np.ndarray, bpk: float) -> int:
        cid = self.next_id
        self.next_id += 1
        self.entries[cid] = (keys, bpk)
        self.entries.pop(cid - self.slots, None)
        return cid


class RecvCache:
    """The receiving end: id -> keys, per sender, evicting exactly as the sender does."""

    def __init__(self, slots: int = CACHE_SLOTS):
        self.slots = slots
        self.by_src: dict[int, dict[int, np.ndarray]] = {}

    def store(self, src: int, cid: int, keys: np.ndarray) -> None:
        d = self.by_src.setdefault(src, {})
        d[cid] = keys
        d.pop(cid - self.slots, None)

    def get(self, src: int, cid: int) -> np.ndarray:
        try:
            return self.by_src[src][cid]
        except KeyError:
            raise KeyError(f"key cache: rank {src} named list {cid}, which this rank does not hold") from None

    def forget(self, src: int) -> None:
        self.by_src.pop(src, None)


# ---------------------------------------------------------------- encode / decode

class Sizes:
    """Bytes of one message as sent, and as it would have been without each switch
    (the others as configured): the run summary's compression factors are sums of these."""
    __slots__ = ("raw", "wire", "without")

    def __init__(self, wire: int = 0, raw: int = 0, without: dict | None = None):
        self.wire, self.raw = wire, raw
        self.without = {} if without is None else without


_HEAD = struct.Struct(f"<{HEADER_LEN}q")


def _bytes(a) -> memoryview:
    """A flat byte view of a contiguous array or bytes, no copy."""
    return memoryview(a).cast("B")


def encode(msg: Msg, fp16: bool = False, delta: bool = False, cache: SendCache | None = None,
           chunk_bytes: int = CHUNK_BYTES, inline_max: int = INLINE_MAX) -> tuple[list, Sizes]:
    """One message as a list of buffers to send in order, and its size accounting: one
    buffer (header + payload) up to inline_max bytes of payload, else the header and then
    the payload's pieces (H_NCHUNKS of them, views of the caller's arrays)."""
    keys, vals, keep = msg.keys, msg.vals, msg.keep
    if not (fp16 or delta or cache is not None or keep is not None or msg.meta):
        fast = _encode_plain(msg, keys, vals, inline_max)
        if fast is not None:
            return fast
    n_full = len(keys) if keys is not None else (0 if vals is None else len(vals))
    kcodec, kpart, cid, bpk, cache_hit = K_NONE, None, -1, 8.0, False
    nkeys = n_full  # keys on the wire (for a cached list: its full length)
    if keys is not None:
        if cache is not None and n_full == 0:
            cache = None  # nothing worth naming
        if cache is not None:
            cid, bpk = cache.find(keys)
            cache_hit = cid is not None
        if cache_hit:
            kcodec = K_CACHED
            if keep is not None:
                kcodec |= K_MASK
                kpart = np.packbits(keep)
        else:
            sent = keys if keep is None else keys[keep]
            nkeys = len(sent)
            if delta:
                kcodec, kpart = encode_keys(sent, True)
            else:
                kcodec, kpart = K_RAW, np.ascontiguousarray(sent, np.uint64)
            bpk = kpart.nbytes / max(1, nkeys)
            if cache is not None and keep is None:
                cid = cache.store(keys, bpk)
                kcodec |= K_STORE
            else:
                cid = -1
    vpart, vcodec, dim = None, V_F32, 0
    if vals is not None:
        v = vals if keep is None else vals[keep]  # vals come full length; only the kept rows travel
        if fp16:
            with np.errstate(over="ignore"):
                h16 = v.astype(np.float16)
            if np.isinf(h16).any() and not np.isinf(v).any():
                fp16 = False  # beyond float16's 65504: this message goes as float32
            else:
                v, vcodec = h16, V_F16
        if not fp16 and v.dtype != np.float32:
            v = v.astype(np.float32)
        dim = v.shape[1] if v.ndim == 2 else 1
        vpart = np.ascontiguousarray(v)
    mpart = json.dumps(msg.meta, separators=(",", ":")).encode() if msg.meta else None
    kn = 0 if kpart is None else kpart.nbytes
    vn = 0 if vpart is None else vpart.nbytes
    mn = 0 if mpart is None else len(mpart)
    payload = kn + vn + mn
    if fp16 or delta or cache is not None or keep is not None:
        sizes = _sizes(HEADER_BYTES, mn, n_full, n_vals=n_full if keep is None else int(keep.sum()), dim=dim,
                       vb=vn, kb=kn, fp16=fp16, delta=delta, cache_on=cache is not None, cache_hit=cache_hit,
                       filtered=keep is not None, bpk=bpk, has_keys=keys is not None)
    else:
        sizes = Sizes(HEADER_BYTES + payload, HEADER_BYTES + payload)
    parts = [x for x in (kpart, vpart, mpart) if x is not None and len(x)]
    if payload <= inline_max:
        # Small: one buffer, one MPI message (latency is what counts here).
        head = _HEAD.pack(MAGIC, msg.cmd, msg.req, msg.clock, nkeys, dim, kcodec, vcodec, cid, msg.rows,
                          kn, vn, mn, 0, 0, msg.gen, msg.batch, msg.div, msg.flags)
        return [b"".join((head, *parts))], sizes
    # Large: the header announces the pieces, which then go straight from the arrays
    # (no copy), each below chunk_bytes, so no MPI count ever nears 2^31.
    views = [_bytes(x) for x in parts]
    pieces = [b[a:a + chunk_bytes] for b in views for a in range(0, len(b), chunk_bytes)]
    head = _HEAD.pack(MAGIC, msg.cmd, msg.req, msg.clock, nkeys, dim, kcodec, vcodec, cid, msg.rows,
                      kn, vn, mn, chunk_bytes, len(pieces), msg.gen, msg.batch, msg.div, msg.flags)
    return [head] + pieces, sizes


def _encode_plain(msg: Msg, keys, vals, inline_max: int):
    """encode() of a small message with no compression, no filter and no meta (most pulls,
    replies, pushes and acks), in a few microseconds: a round trip of 100 keys is mostly
    this Python work. None when the message needs the general path."""
    if keys is not None and not (keys.dtype == np.uint64 and keys.flags.c_contiguous):
        return None
    if vals is not None and not (vals.dtype == np.float32 and vals.ndim == 2 and vals.flags.c_contiguous):
        return None
    kn = 0 if keys is None else keys.nbytes
    vn = 0 if vals is None else vals.nbytes
    if kn + vn > inline_max:
        return None
    n = len(keys) if keys is not None else (0 if vals is None else len(vals))
    head = _HEAD.pack(MAGIC, msg.cmd, msg.req, msg.clock, n, 0 if vals is None else vals.shape[1],
                      K_NONE if keys is None else K_RAW, V_F32, -1, msg.rows, kn, vn, 0, 0, 0, msg.gen, msg.batch,
                      msg.div, msg.flags)
    parts = [x for x in (keys, vals) if x is not None and len(x)]
    wire = HEADER_BYTES + kn + vn
    return [b"".join((head, *parts))], Sizes(wire, wire)


def piece_bounds(kb: int, vb: int, mb: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of the payload sent as separate messages: each part (keys, values,
    meta) cut into pieces of at most chunk_bytes. Both ends compute the same list."""
    out, o = [], 0
    for n in (kb, vb, mb):
        for a in range(0, n, chunk_bytes):
            out.append((o + a, o + min(n, a + chunk_bytes)))
        o += n
    return out


def _sizes(hb, mb, n_full, n_vals, dim, vb, kb, fp16, delta, cache_on, cache_hit, filtered, bpk, has_keys) -> Sizes:
    """Counterfactual sizes: the message without each enabled switch, others unchanged."""
    def size(fp16=fp16, cache_hit=cache_hit, n_vals=n_vals, delta=delta) -> int:
        v = n_vals * dim * (2 if fp16 else 4)
        if not has_keys:
            return hb + v + mb
        if cache_hit:
            k = -(-n_full // 8) if n_vals != n_full else 0
        else:
            k = int(round(n_vals * (bpk if delta else 8.0)))
        return hb + k + v + mb
    s = Sizes(wire=hb + kb + vb + mb)
    s.raw = hb + (8 * n_full if has_keys else 0) + n_full * dim * 4 + mb
    if fp16:
        s.without["fp16"] = size(fp16=False)
    if delta and has_keys:
        s.without["delta_keys"] = size(delta=False)
    if cache_on and has_keys:
        s.without["key_cache"] = size(cache_hit=False)
    if filtered and has_keys:
        s.without["kkt_filter"] = size(n_vals=n_full, cache_hit=cache_hit)
    return s


def header_of(buf) -> tuple:
    """The header's fields as Python ints."""
    if len(buf) < HEADER_BYTES:
        raise ValueError(f"a message of {len(buf)} bytes is shorter than a pslab header")
    h = _HEAD.unpack_from(buf)
    if h[H_MAGIC] != MAGIC:
        raise ValueError("not a pslab message (bad magic); a peer speaks another protocol")
    return h


def payload_size(h) -> int:
    return h[H_KBYTES] + h[H_VBYTES] + h[H_MBYTES]


def decode(h: tuple, buf, src: int, cache: RecvCache | None = None, off: int = 0) -> Msg:
    """A message from its header and the buffer holding its whole payload from byte
    `off` on (arrays are views into it, no copies, except float16 values, which come back
    as float32)."""
    kcodec, vcodec, nkeys, dim = h[H_KCODEC], h[H_VCODEC], h[H_NKEYS], h[H_DIM]
    kb, vb, mb = h[H_KBYTES], h[H_VBYTES], h[H_MBYTES]
    keys, keep = None, None
    base = kcodec & 15
    if base == K_RAW:
        keys = np.ndarray(nkeys, np.uint64, buf, off)
    elif base == K_CACHED:
        if cache is None:
            raise ValueError(f"rank {src} sent a cached key list, but key caching is off here")
        keys = cache.get(src, h[H_CACHE])
        if kcodec & K_MASK:
            keep = np.unpackbits(np.ndarray(kb, np.uint8, buf, off), count=len(keys)).astype(bool)
    elif base != K_NONE:
        keys = decode_keys(base, np.ndarray(kb, np.uint8, buf, off), nkeys)
    if kcodec & K_STORE and cache is not None:
        cache.store(src, h[H_CACHE], keys)
    vals = None
    if dim:
        if vcodec == V_F16:
            vals = np.ndarray((vb // (2 * dim), dim), np.float16, buf, off + kb).astype(np.float32)
        else:
            vals = np.ndarray((vb // (4 * dim), dim), np.float32, buf, off + kb)
    if keep is not None:
        keys = keys[keep]
    meta = json.loads(bytes(buf[off + kb + vb:off + kb + vb + mb])) if mb else None
    return Msg(h[H_CMD], h[H_REQ], h[H_CLOCK], keys, vals, h[H_ROWS], meta, h[H_GEN], None,
               batch=h[H_BATCH], div=h[H_DIV], flags=h[H_FLAGS], src=src, nbytes=HEADER_BYTES + kb + vb + mb)


def decode_buffers(bufs: list, src: int, cache: RecvCache | None = None) -> Msg:
    """The receiving side of encode() without MPI (tests, tools): the same buffers in order."""
    first = np.frombuffer(bufs[0], np.uint8)
    h = header_of(first)
    if h[H_NCHUNKS] == 0:
        return decode(h, first, src, cache, HEADER_BYTES)
    payload = np.empty(payload_size(h), np.uint8)
    for (a, b), piece in zip(piece_bounds(h[H_KBYTES], h[H_VBYTES], h[H_MBYTES], h[H_CHUNK]), bufs[1:]):
        payload[a:b] = np.frombuffer(piece, np.uint8)
    return decode(h, payload, src, cache)
