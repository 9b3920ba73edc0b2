"""backend=allreduce: synchronous data parallelism with MPI collectives. Every rank holds
the whole model; each step every rank computes the summed gradient of its share of the
global batch, the gradients are summed across ranks, and every rank applies the same
optimizer update to its replica, so the replicas stay identical (checked at the end).

    python -m pslab.launch -n 4 backend=allreduce                      # dense, classic
    python -m pslab.launch -n 4 backend=allreduce backend.mode=sparse
    python -m pslab.launch -n 4 backend=allreduce backend.elastic=true faults=kill_one_worker

Batches. Rank r reads lane r of the epoch's block order (`Setup.lanes(epoch, N)`),
`Setup.lane_batch(N)` rows per step; a step's gradient is the sum over ranks of their
summed gradients divided by the step's global number of rows; all ranks run the same
number of steps (a rank whose lane has run dry contributes nothing). `backend=local
backend.lanes=N` builds the very same global batches, so both give the same model.

Exchange (`backend.mode`):
- dense: the classic design. One preallocated float32 buffer as large as the model
  (n_features x dim) is summed in place with one `Allreduce` per step. The step's numbers
  ride in a tail of the same buffer, so they cost no collective of their own: the rows and
  the loss, the touched-key count, a canary cell, and one cell per rank for its previous
  Allreduce's duration (for the wait accounting below). The update must touch exactly
  the keys some rank touched (the local trainer updates every key of the batch, also one
  whose summed gradient happens to be 0, which matters for L2 and FTRL), and that union
  is found in one of two ways, chosen by the model's size:
  * up to SCAN_MAX_CELLS cells (8 MB): signed zeros. Untouched cells hold -0.0, a rank
    writes its rows as grad + 0.0 (so a touched cell is never -0.0: -0.0 + 0.0 = +0.0).
    -0.0 is the exact identity of IEEE addition (x + -0.0 = x for every x, +0.0 included)
    and a sum of addends that are not all -0.0 is never -0.0 in round-to-nearest (an
    exact zero sum is +0.0; with gradual underflow a nonzero sum never rounds to 0), so
    after the Allreduce a cell is -0.0 exactly when no rank touched its key. The union
    costs no bytes, no bitmap to build and no second collective, only a scan of the
    buffer (a vectorized compare + np.flatnonzero: ~0.05 ms at 2^16 keys, ~0.4 ms at
    2^20). This needs an MPI whose SUM adds the contributions (what every Allreduce
    algorithm does): one that started from +0.0 would mark every key touched. The canary
    cell, which no rank writes, catches that: it comes back +0.0. All ranks see the
    same sum, so all of them then switch to the bitmap below, for that step and the
    rest of the run (summary.json: union_method).
    Flush-to-zero arithmetic (-ffast-math) would turn a sum below 1e-38 into a zero and
    could drop such a key; MPI libraries are not built that way.
  * above: a touched-key bitmap (n_features/8 bytes) OR-ed with a second `Allreduce`
    (scanning 64 MB for the union would cost more than the bitmap: ~6 ms vs ~1-2 ms at
    2^24 keys). The union is read from the bitmap, bit by bit where it is sparse.
  Only the union's rows are read back and re-zeroed (or the whole buffer memset when the
  union is a large share of the keys). Needs folded keys (data.hash_bits).
- sparse: only touched keys travel. `Allgather` of (keys, rows, loss) per rank, then one
  `Allgatherv` of records (uint64 key, dim float32 gradient values), then a local
  reduction (a lookup table or np.unique for the union, np.bincount per column for the
  sums). Works with 64-bit keys (data.hash_bits=null, a SparseTable replica) too.

Accounting. Bytes are counted at the call sites as the algorithm puts them on the wire,
per rank: a ring Allreduce of S bytes sends 2(M-1)/M*S, a ring Allgather(v) sends every
block but one (total - the next rank's block). These estimates go to `rec.acct.sent`
(bytes_sent in summary.json); the bytes this rank hands to MPI ("payload") are reported
next to them. Time: "comm" is the exchange (packing, the collectives, unpacking) and
"compute" the gradient and the optimizer update. "wait" is the idle part of the
collectives: in dense mode a rank's time in a step's Allreduce minus the shortest rank's
time in it (the last to arrive waits for nobody; the durations travel in the next step's
tail, so the last step's idle stays under "comm"); in sparse mode the first, small
collective of each step (the counts), which cannot end before the last rank arrives.
"eval" is rank 0's held-out evaluation.

Failures. Every job runs under `mpirun --with-ft ulfm`, so survivors see a dead rank as an
MPI.Exception in their next collective. Classic mode (backend.elastic=false) records
"failure_detected" and calls MPI_Abort: the job fails within a second or two, as in the
papers. Elastic mode revokes, shrinks and goes on (see elastic.py). World rank 0 must
stay alive: it evaluates and writes the result; if it dies the run fails.
"""
from __future__ import annotations

import time

import numpy as np

from ..data.rows import Deduper
from ..optim import divisor
from ..store import apply_gradient, make_table, take_rows
from . import arckpt, stepwatch
from .common import Setup, save_model
from .elastic import Plan, digest, error_name, is_failure, recover, same_everywhere, split_batch, world_ranks

ONE = np.uint64(1)
FLAGS_MAX_KEYS = 1 << 20  # up to here the touched bitmap is built from a bool array (np.packbits)
DENSE_SHARE = 12  # a union of more than 1/12 of the keys is read and cleared with whole-array ops
SCAN_MAX_CELLS = 1 << 21  # dense buffers up to 8 MB find the union by signed zeros, larger ones by a bitmap
NEG0_BITS = np.uint32(0x80000000)  # float32 -0.0
# the buffer's tail, after the n x dim gradient cells: the step's numbers travel in the
# gradient's own Allreduce (exact: rows and touched keys are integers below 2^24)
TAIL_LOSS, TAIL_ROWS, TAIL_TOUCHED, TAIL_CANARY, TAIL_DUR = 0, 1, 2, 3, 4  # TAIL_DUR + r: rank r's last Allreduce s
PEEL_ROUNDS = 4  # bitmap_keys: rounds of lowest-set-bit extraction before unpacking the words left
_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # set bits per byte value


def popcount(w: np.ndarray) -> np.ndarray:
    """Set bits of each element of a uint64 array (np.bitwise_count needs numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(w)
    return _POP8[w.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


def set_bits(w: np.ndarray) -> int:
    """Number of set bits in a uint64 array."""
    return int(popcount(w).sum(dtype=np.int64))


def ring_allreduce_bytes(nbytes: int, m: int) -> int:
    """Bytes one rank sends in a ring Allreduce (reduce-scatter + allgather) of nbytes."""
    return 2 * (m - 1) * int(nbytes) // m if m > 1 else 0


def ring_allgather_bytes(block_bytes, rank: int) -> int:
    """Bytes `rank` sends in a ring Allgather(v): every block except the next rank's."""
    m = len(block_bytes)
    return int(sum(block_bytes)) - int(block_bytes[(rank + 1) % m]) if m > 1 else 0


def bitmap_keys(words: np.ndarray) -> np.ndarray:
    """Set bits of a uint64 bitmap as int64 positions.
    Above 1/DENSE_SHARE set bits: unpack the whole bitmap (np.unpackbits, then np.flatnonzero
    on a bool view: ~0.5 ns a bit, 10x faster than on the uint8 array unpackbits returns).
    Below, the work follows the set bits: PEEL_ROUNDS rounds each take the lowest set bit
    of every nonzero word (most words hold one or two: 37k keys in 16k words at 2^20, in
    35k words at 2^24), then the few words with bits left are unpacked. The positions come
    as sorted runs, not sorted overall: the union's order does not matter (one update per
    key), and all ranks read the same bitmap the same way, so they list it in the same order."""
    nz = np.flatnonzero(words != 0)  # flatnonzero of a bool array: the fast path
    w = words[nz]
    if set_bits(w) * DENSE_SHARE > len(words) * 64:
        return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little").view(bool))
    base, out = nz * 64, []
    for _ in range(PEEL_ROUNDS):
        if not len(w):
            break
        below = w - ONE
        out.append(base + popcount(w ^ below) - 1)  # w ^ (w - 1): the lowest set bit and the zeros under it
        w &= below  # clear the lowest set bit
        left = w != 0
        base, w = base[left], w[left]
    p = np.flatnonzero(np.unpackbits(w.view(np.uint8), bitorder="little").view(bool))
    out.append(base[p >> 6] + (p & 63))
    return np.concatenate(out)


class DenseExchange:
    """Dense in-place Allreduce of a model-sized buffer, the step's numbers in its tail; the
    union of the touched keys from signed zeros (small models) or a touched-key bitmap
    (large ones), see the module docstring. Per step outside MPI: write the rank's rows and
    numbers into the buffer, find the union, gather its rows (np.take), re-zero them (or
    memset the buffer when the union holds more than 1/DENSE_SHARE of the keys, as at 2^16:
    ~45% of the keys at N=2). The bitmap is built from bool flags + np.packbits up to
    FLAGS_MAX_KEYS keys; above, np.packbits over 2^24 flags would cost ~1 ms, so
    np.bitwise_or.at on the words, whose work follows the keys."""

    mode = "dense"

    def __init__(self, n_features: int, dim: int, acct, ranks: int = 1):
        self.n, self.dim, self.acct = int(n_features), int(dim), acct
        cells = self.n * self.dim
        self.flat = np.zeros(cells + TAIL_DUR + int(ranks), np.float32)  # what travels
        self.grad = self.flat[:cells]
        self.G = self.grad.reshape(self.n, self.dim)
        # the rows as indexed per key: with one float per key the flat array itself (1-D fancy
        # indexing is ~1.5x faster than on an (n, 1) array)
        self.by_key = self.grad if self.dim == 1 else self.G
        self.tail = self.flat[cells:]
        signed_zeros = cells <= SCAN_MAX_CELLS
        self.use_union_method(signed_zeros, "signed zeros" if signed_zeros else "bitmap")
        self.flat[:] = self.zero
        self.payload = 0
        self.mpi_s = 0.0  # seconds inside MPI calls (the benchmark splits MPI from packing)
        self.last_union = 0
        self.last_collective_s = None  # this rank's last Allreduce, reported in the next step's tail
        acct.seconds["wait"] += 0.0  # present from the start, also in runs of one rank

    @property
    def buffer_bytes(self) -> int:
        return self.flat.nbytes

    def use_union_method(self, signed_zeros: bool, name: str) -> None:
        """Signed zeros (the buffer's untouched cells hold -0.0) or the touched-key bitmap,
        with the buffers each needs. The gradient buffer itself is the caller's to (re)fill."""
        self.signed_zeros, self.union_method = signed_zeros, name
        self.zero = np.float32(-0.0 if signed_zeros else 0.0)  # what an untouched cell holds
        self.words = None if signed_zeros else np.zeros(max(1, -(-self.n // 64)), np.uint64)
        self.mask = np.zeros(-(-self.n // 8) * 8, bool) if signed_zeros else None  # touched flags, whole uint64s
        self.flags = None
        if self.words is not None and self.n <= FLAGS_MAX_KEYS:
            self.flags = np.zeros(len(self.words) * 64, bool)
        self._step_bytes: dict[int, dict] = {}  # comm size -> bytes per step; the bitmap changes them

    @property
    def bitmap_bytes(self) -> int:
        return 0 if self.words is None else self.words.nbytes

    def step_bytes(self, m: int) -> dict:
        """What one rank sends per step, whatever the batch (the arithmetic tests check)."""
        if m not in self._step_bytes:
            out = {}
            if self.words is not None:
                out["allreduce_touched"] = ring_allreduce_bytes(self.bitmap_bytes, m)
            out["allreduce_grad"] = ring_allreduce_bytes(self.buffer_bytes, m)
            self._step_bytes[m] = out
        return self._step_bytes[m]

    def reset(self) -> None:
        """After a failed collective the buffers hold partial sums: start clean, and the
        communicator changes, so the last Allreduce's time has nobody to be compared with."""
        self.flat[:] = self.zero
        if self.words is not None:
            self.words[:] = 0
        if self.flags is not None:
            self.flags[:] = False
        self.last_collective_s = None

    def touched_bitmap(self, k: np.ndarray) -> None:
        """Set the bits of this rank's keys (unique, any order) in self.words (all zero)."""
        if self.flags is not None:
            self.flags[k] = True
            self.words[:] = np.packbits(self.flags, bitorder="little").view(np.uint64)
            self.flags[k] = False
        else:
            np.bitwise_or.at(self.words, k >> 6, ONE << (k & 63).astype(np.uint64))

    def union(self, touched_all: float) -> np.ndarray:
        """The keys some rank touched this step (after the sums); touched_all, the sum of
        the ranks' touched keys (an upper bound of the union's size), picks the scan."""
        if self.words is not None:
            return bitmap_keys(self.words)
        # -0.0 exactly where no rank wrote (any column will do: a touched row has no -0.0)
        col = self.G[:, 0].view(np.uint32)
        if touched_all * DENSE_SHARE > self.n:
            return np.flatnonzero(col != NEG0_BITS)  # ~0.5 ns a key, whatever the share touched
        # Few keys touched: np.flatnonzero over all n flags would cost ~0.5 ms at 2^20.
        # Skip the groups of 8 keys nobody touched (a uint64 view of the flags), then
        # read the touched groups' flags only.
        np.not_equal(col, NEG0_BITS, out=self.mask[: self.n])
        w = self.mask.view(np.uint64)
        groups = np.flatnonzero(w != 0)
        p = np.flatnonzero(w[groups].view(bool))
        union = np.take(groups, p >> 3)
        union <<= 3
        union |= p & 7
        return union

    def lost_signed_zeros(self) -> bool:
        """The canary cell nobody writes is -0.0 after the sum, unless this MPI's SUM does
        not keep -0.0 (a reduction that starts from +0.0, or hardware offload)."""
        return self.signed_zeros and self.tail[TAIL_CANARY:TAIL_CANARY + 1].view(np.uint32)[0] != NEG0_BITS

    def fall_back_to_bitmap(self, comm, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """From this step on, find the union with the touched-key bitmap. Every rank sees
        the same summed buffer, so all of them take this branch together and the extra
        collective below matches. The sums themselves are right; only the union must come
        from the bitmap, built from this step's own keys."""
        from mpi4py import MPI
        self.use_union_method(False, "bitmap (this MPI's SUM lost the signed zeros)")
        self.touched_bitmap(k)
        comm.Allreduce(MPI.IN_PLACE, self.words, op=MPI.BOR)
        self.acct.sent("allreduce_touched", ring_allreduce_bytes(self.bitmap_bytes, comm.size))
        self.payload += self.bitmap_bytes
        union = bitmap_keys(self.words)
        g = take_rows(self.G, union)
        self.flat[:] = self.zero  # untouched cells may hold -0.0 or +0.0: all +0.0 from now on
        self.words[:] = 0
        return union, g

    def pack(self, comm, keys, grad, rows: int, loss: float) -> np.ndarray:
        """Write this rank's rows and numbers into the buffer (and its keys into the
        bitmap); the keys as int64 positions."""
        # folded keys are below 2^b: their uint64 bits read as int64 positions, no copy
        k = keys.view(np.int64) if keys.dtype == np.uint64 else keys.astype(np.int64)
        grad = grad.reshape(len(k), *self.by_key.shape[1:])  # (t, 1) -> (t,) when self.by_key is 1-D
        if self.signed_zeros:
            self.by_key[k] = grad + np.float32(0.0)  # turns a -0.0 of grad into +0.0: touched
        else:
            self.by_key[k] = grad
            self.touched_bitmap(k)
        tail = self.tail
        tail[TAIL_LOSS], tail[TAIL_ROWS], tail[TAIL_TOUCHED] = loss, rows, len(k)
        if self.last_collective_s is not None:
            tail[TAIL_DUR + comm.rank] = self.last_collective_s
        return k

    def reduce(self, comm) -> None:
        """The step's collectives: the bitmap's OR (large models only), then the sum of the
        buffer. Their time goes into the next step's tail."""
        from mpi4py import MPI
        t0 = time.perf_counter()
        if self.words is not None:
            comm.Allreduce(MPI.IN_PLACE, self.words, op=MPI.BOR)
        comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
        self.last_collective_s = time.perf_counter() - t0
        self.mpi_s += self.last_collective_s
        for kind, nbytes in self.step_bytes(comm.size).items():
            self.acct.sent(kind, nbytes)
        self.payload += self.bitmap_bytes + self.buffer_bytes

    def idle_of_last_step(self, comm) -> float:
        """How long this rank waited in the previous step's collective for the others: its
        time in it minus the shortest rank's (the last to arrive waits for nobody, so its
        time is the collective's own). 0 when a rank has no previous time to report."""
        d = self.tail[TAIL_DUR:TAIL_DUR + comm.size]
        if comm.size < 2 or not (d > 0).all():
            return 0.0
        return float(d[comm.rank]) - float(d.min())

    def unpack(self, comm, k: np.ndarray):
        """The union of the touched keys and its summed rows; the buffer left clean."""
        tail = self.tail
        rows, loss, touched_all = round(float(tail[TAIL_ROWS])), float(tail[TAIL_LOSS]), float(tail[TAIL_TOUCHED])
        idle = self.idle_of_last_step(comm)
        if self.lost_signed_zeros():
            union, g = self.fall_back_to_bitmap(comm, k)
        else:
            union = self.union(touched_all)
            g = take_rows(self.G, union)  # a copy
            if len(union) * DENSE_SHARE > self.n:
                self.flat[:] = self.zero  # a memset of the whole buffer beats a scatter
            else:
                self.by_key[union] = self.zero
                tail[:] = self.zero
            if self.words is not None:
                self.words[:] = 0
        self.last_union = len(union)
        return union.view(np.uint64), g, rows, loss, idle

    def __call__(self, comm, keys, grad, rows: int, loss: float):
        acct = self.acct
        with acct.timed("comm"):
            k = self.pack(comm, keys, grad, rows, loss)
            self.reduce(comm)
            union, g, rows_all, loss_all, idle = self.unpack(comm, k)
        acct.move("comm", "wait", idle)
        return union, g, rows_all, loss_all


class SparseExchange:
    """Allgather of counts, Allgatherv of (key, gradient row) records, local reduction."""

    mode = "sparse"

    def __init__(self, n_features, dim: int, acct):
        from mpi4py import MPI
        self.dim, self.acct = int(dim), acct
        self.rec = np.dtype([("k", "<u8"), ("g", "<f4", (self.dim,))])
        self.mpi_rec = MPI.BYTE.Create_contiguous(self.rec.itemsize).Commit()
        # the union of folded keys through a position table (np.unique for 64-bit keys);
        # n_features is 2^hash_bits
        bits = int(n_features).bit_length() - 1 if n_features and n_features <= (1 << 27) else None
        self.dedupe = Deduper(bits)
        self.payload = 0
        self.mpi_s = 0.0
        self.last_union = 0

    def reset(self) -> None:
        pass  # nothing survives between steps

    def __call__(self, comm, keys, grad, rows: int, loss: float):
        acct, m = self.acct, comm.size
        meta = np.array([len(keys), rows, loss], np.float64)
        allmeta = np.empty((m, 3), np.float64)
        t0 = time.perf_counter()
        with acct.timed("wait"):
            comm.Allgather(meta, allmeta)
        self.mpi_s += time.perf_counter() - t0
        with acct.timed("comm"):
            acct.sent("allgather_counts", ring_allgather_bytes([meta.nbytes] * m, comm.rank))
            counts = allmeta[:, 0].astype(np.int64)
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
            send = np.empty(len(keys), self.rec)
            send["k"], send["g"] = keys, grad
            recv = np.empty(int(counts.sum()), self.rec)
            t0 = time.perf_counter()
            comm.Allgatherv([send, self.mpi_rec], [recv, (counts.tolist(), displs.tolist()), self.mpi_rec])
            self.mpi_s += time.perf_counter() - t0
            acct.sent("allgatherv_rows", ring_allgather_bytes(counts * self.rec.itemsize, comm.rank))
            self.payload += meta.nbytes + send.nbytes
            union, inv = self.dedupe.unique(recv["k"])
            g = np.empty((len(union), self.dim), np.float32)
            vals = recv["g"]
            for c in range(self.dim):
                g[:, c] = np.bincount(inv, weights=vals[:, c], minlength=len(union))
        self.last_union = len(union)
        return union, g, int(round(allmeta[:, 1].sum())), float(allmeta[:, 2].sum())


def make_exchange(mode: str, n_features, dim: int, acct, ranks: int = 1, batch: int = 0):
    if mode == "dense":
        if n_features is None:
            raise ValueError("backend.mode=dense needs folded keys: the dense buffer has one row per key of "
                             "[0, 2^b). Set data.hash_bits=b, or use backend.mode=sparse for 64-bit keys.")
        if batch >= 1 << 24:
            raise ValueError(f"train.batch_size={batch}: backend.mode=dense counts a step's rows in float32, "
                             "exact below 2^24 (16,777,216); use a smaller batch or backend.mode=sparse")
        return DenseExchange(n_features, dim, acct, ranks)
    if mode == "sparse":
        return SparseExchange(n_features, dim, acct)
    raise ValueError(f"backend.mode={mode!r}: choose dense or sparse")


class Trainer:
    def __init__(self, cfg, comm, rec, make_injector):
        from mpi4py import MPI
        self.MPI = MPI
        self.cfg, self.rec = cfg, rec
        self.mode = str(cfg.backend.get("mode", "dense"))
        self.elastic = bool(cfg.backend.get("elastic", False))
        self.s = s = Setup.build(cfg)
        self.n_world = comm.size
        self.batch = int(cfg.train.batch_size)
        resume = cfg.backend.get("resume_from")
        self.resumed = arckpt.load(resume) if resume else None
        if self.resumed is None or len(self.resumed["plan"]["segments"]) == self.n_world:
            s.lane_batch(self.n_world)  # the batch must split evenly over the starting ranks
        # (a restart with the survivors may not: it splits B as elastic does, see arckpt)
        self.exchange = make_exchange(self.mode, s.data.n_features, s.model.dim, rec.acct, self.n_world, self.batch)
        self.table = make_table(s.data.n_features, s.model, s.opt)
        self.dim = s.model.dim
        self.epochs = int(cfg.train.epochs)
        self.eval_every = int(cfg.train.eval_every)
        self.log_every = max(1, int(cfg.train.log_every))
        self.injector = make_injector({"worker": self.n_world, "rank": self.n_world, "coordinator": 1},
                                      arckpt.planned_steps(s, self.n_world, self.batch, self.epochs))
        self.comm = comm
        self.step = self.epoch = self.steps_in_epoch = self.examples = 0
        self.plan = self.new_plan(0, world_ranks(comm))
        self.start_step = self.start_examples = 0
        if self.resumed is not None:
            arckpt.restore(self, self.resumed, world_ranks(comm))
            self.start_step, self.start_examples = self.step, self.examples
            rec.event("resume", step=self.step, epoch=self.epoch, manifest=self.resumed["dir"],
                      ranks=self.n_world, checkpoint_ranks=len(self.resumed["plan"]["segments"]))
            self.resumed = {k: v for k, v in self.resumed.items() if k not in ("keys", "W", "S")}
        self.ckpt = arckpt.Checkpointer(cfg, rec)
        timeout = cfg.backend.get("step_timeout_s")
        self.watch = None if timeout is None else stepwatch.start(rec, float(timeout), self.on_hang,
                                                                  world_ranks(comm))
        self.inflight = None        # per-member rows of the step being exchanged
        self.last_update = None     # (keys, averaged gradient) of the last applied step
        self.failures: list[dict] = []
        self.recoveries: list[dict] = []
        self.pending_recovery = None
        self.step_times: list[float] = []
        self.last_loss = None
        drill = cfg.backend.get("drill_revoke")
        self.drill = None if drill is None else (int(drill["step"]), int(drill.get("rank", 1)))

    # -- plumbing used by elastic.recover --
    def new_plan(self, epoch: int, members: list[int]) -> Plan:
        m = len(members)
        if epoch >= self.epochs:
            return Plan(self.s.data, members, [[] for _ in range(m)], [0] * m)
        return Plan(self.s.data, members, self.s.lanes(epoch, m), split_batch(self.batch, m))

    def set_comm(self, comm) -> None:
        self.comm = comm
        self.exchange.reset()
        if self.watch is not None:
            self.watch.members = set(world_ranks(comm))

    def collective(self, step: int):
        """A context around a collective: the step watchdog's (backend.step_timeout_s) or none."""
        from contextlib import nullcontext
        return nullcontext() if self.watch is None else self.watch.collective(step)

    # -- one step --
    def one_step(self) -> None:
        t0 = time.perf_counter()
        me = self.comm.rank
        counts = self.plan.counts()
        self.inflight = counts
        with self.rec.acct.timed("compute"):
            rows = self.plan.streams[me].read(self.plan.sizes[me])
            if len(rows):
                keys, loss, grad = self.s.gradient(rows, self.table.gather)
            else:
                keys, loss, grad = np.zeros(0, np.uint64), 0.0, np.zeros((0, self.dim), np.float32)
        self.injector.slow_down(time.perf_counter() - t0)
        with self.collective(self.step + 1):
            union, g, n_rows, loss_all = self.exchange(self.comm, keys, grad, len(rows), loss)
        if self.drill is not None and self.drill == (self.step + 1, self.rec.rank):
            self.revoke_drill()
        if n_rows != sum(counts):
            raise RuntimeError(f"step {self.step + 1}: ranks sent {n_rows} rows, the plan says {sum(counts)}")
        with self.rec.acct.timed("compute"):
            g /= np.float32(divisor(self.s.opt, n_rows))
            apply_gradient(self.table, union, g)
        self.last_update = (union, g)
        self.plan.commit(counts)
        self.step_times.append(time.perf_counter() - t0)
        self.after_step(n_rows, loss_all, own_rows=len(rows), own_keys=len(keys))

    def revoke_drill(self) -> None:
        """backend.drill_revoke={step: K, rank: R}: world rank R behaves, right after step K's
        exchange succeeded and before applying it, as if it had seen a failure: it revokes
        the communicator. The others have applied step K, R has not: the survivors are one
        step apart, the case a collective that fails on some ranks only creates, and
        recovery must roll R forward. (What a false alarm of a timeout detector does.)"""
        self.drill = None
        self.rec.event("drill_revoke", sync=True, step=self.step + 1)
        self.comm.Revoke()
        raise self.MPI.Exception(self.MPI.ERR_REVOKED)

    def roll_forward(self, keys, g) -> None:
        """Apply the step the survivors ahead of this rank completed (elastic recovery)."""
        apply_gradient(self.table, keys, g)
        self.last_update = (keys, g)
        counts = self.inflight
        self.plan.commit(counts)
        self.after_step(sum(counts), None, own_rows=counts[self.comm.rank], own_keys=None)

    def after_step(self, n_rows: int, loss_all, own_rows: int, own_keys) -> None:
        self.step += 1
        self.steps_in_epoch += 1
        self.examples += n_rows
        self.inflight = None
        if loss_all is not None and n_rows:
            self.last_loss = loss_all / n_rows
        self.note_recovered(first_step_after=self.step)
        if self.step % self.log_every == 0:
            self.rec.metric("step", step=self.step, epoch=self.epoch, loss=self.last_loss, examples=self.examples,
                            ranks=self.comm.size, rows=own_rows, keys=own_keys,
                            union_keys=self.exchange.last_union, payload_bytes=self.exchange.payload,
                            **self.rec.acct.snapshot())
        self.injector.on_step(self.step)
        if self.eval_every and self.step % self.eval_every == 0:
            self.evaluate(epoch=self.epoch)
        if self.comm.rank == 0 and self.rec.rank == 0 and self.ckpt.on and self.ckpt.due(self.step):
            self.ckpt.write(self)  # rank 0 alone: every replica and every member's stream are the same here

    def note_recovered(self, first_step_after) -> None:
        """The first step after a recovery completed (None: recovery after the last step)."""
        if self.pending_recovery is None:
            return
        r, self.pending_recovery = self.pending_recovery, None
        r["recovery_s"] = round(time.time() - r.pop("t_fail"), 6)
        r["first_step_after"] = first_step_after
        self.recoveries.append(r)
        self.rec.event("recovered", sync=True, **r)

    def evaluate(self, epoch: int) -> dict | None:
        if self.comm.rank != 0:
            return None
        with self.rec.acct.timed("eval"):
            res = self.s.evaluate(self.table.gather)
        self.rec.shared_metric("eval", step=self.step, epoch=epoch, examples=self.examples,
                               elapsed_s=time.time() - self.t_start, ranks=self.comm.size, **res)
        return res

    def end_epoch(self) -> None:
        if not self.eval_every:
            self.evaluate(epoch=self.epoch + 1)
        self.epoch += 1
        self.steps_in_epoch = 0
        self.plan = self.new_plan(self.epoch, self.plan.members)

    def flush_counters(self, why: str) -> None:
        """This rank's cumulative counters (bytes, time split) as a metric line, now: the job
        is about to be aborted, no final record will follow, and the launcher sums the
        ranks' last lines that carry counters into summary.json."""
        self.rec.metric("counters", why=why, step=self.step, epoch=self.epoch, examples=self.examples,
                        ranks=self.comm.size, union_keys=self.exchange.last_union,
                        payload_bytes=self.exchange.payload, **self.rec.acct.snapshot())

    def on_hang(self, step: int, waited_s: float, stale: list[int]) -> None:
        """The step watchdog's verdict (its thread; the main thread is blocked in a collective):
        a collective of step `step` has waited `waited_s` s, `stale` are the ranks not running.
        Classic: abort the job (the launcher's restart policy takes over). Elastic: fence the
        hung ranks (SIGKILL, so that ULFM reports them dead and the survivors shrink) when
        each is on this host and is not world rank 0; otherwise abort as classic does."""
        self.rec.event("step_timeout", sync=True, step=step, waited_s=waited_s, stale_ranks=stale,
                       timeout_s=self.watch.timeout, elastic=self.elastic)
        why = None
        if not self.elastic:
            why = "classic allreduce cannot go on without every rank"
        elif not stale:
            why = "no rank is stale (a collective hung with every rank inside it): nothing to fence"
        elif 0 in stale:
            why = "world rank 0 (evaluation, result) is the hung one"
        else:
            for r in stale:
                why = stepwatch.fence(self.rec.run_dir, r)
                if why:
                    why = f"cannot fence rank {r}: {why}"
                    break
            if why is None:
                self.rec.event("fenced", sync=True, ranks=stale, step=step, reason="step_timeout_s")
                return
        self.flush_counters("step_timeout")
        self.rec.aborting(f"rank {self.rec.rank}: step {step}'s collective did not return within "
                          f"backend.step_timeout_s={self.watch.timeout:g} (waited {waited_s:g} s; ranks not "
                          f"running: {stale or 'none'}): {why}")
        self.MPI.COMM_WORLD.Abort(1)

    def on_failure(self, err) -> None:
        if not is_failure(err):
            raise err
        if not self.elastic:
            self.flush_counters("failure_detected")
            self.rec.event("failure_detected", sync=True, step=self.step, epoch=self.epoch, error=error_name(err),
                           elastic=False, action="MPI_Abort")
            self.rec.aborting(f"rank {self.rec.rank}: a collective failed ({error_name(err)}): "
                              "classic allreduce cannot go on without every rank")
            self.MPI.COMM_WORLD.Abort(1)
        recover(self, err)  # ends in set_comm, which resets the exchange's buffers

    # -- the run --
    def train(self) -> None:
        while True:
            if self.plan.done():
                if self.epoch >= self.epochs:
                    return
                self.end_epoch()
                continue
            try:
                self.one_step()
            except self.MPI.Exception as e:
                self.on_failure(e)

    def run(self) -> dict | None:
        self.t_start = time.time()
        self.rec.event("training_started", step=self.step, epoch=self.epoch)
        while True:
            self.train()
            try:  # the end: are all replicas the same? (and everyone's counters to rank 0)
                t_check = time.perf_counter()
                with self.collective(self.step + 1):
                    model_digest = digest(self.table)
                    identical = same_everywhere(self.comm, model_digest)
                    check_s = time.perf_counter() - t_check
                    stats = self.comm.gather({"rank": self.rec.rank, **self.rec.acct.snapshot()}, root=0)
                break
            except self.MPI.Exception as e:
                self.on_failure(e)
        if self.watch is not None:
            self.watch.stop()
        self.note_recovered(first_step_after=None)  # a failure after the last step
        train_s = time.time() - self.t_start
        self.rec.event("training_ended", step=self.step)
        self.model_digest = f"{model_digest:014x}"
        if self.comm.rank != 0:
            return None
        final = self.evaluate(epoch=self.epoch)
        if self.cfg.run.save_model:
            keys = self.table.keys()
            save_model(self.rec.run_dir / "model.npz", keys, self.table.W[self.table.slots(keys, create=False)])
        return self.result(final, identical, check_s, stats, train_s)

    def result(self, final, identical, check_s, stats, train_s) -> dict:
        mine = self.rec.acct.snapshot()
        steps = max(1, self.step)
        by_kind = {}
        for st in stats:
            for k, v in st["bytes_by_kind"].items():
                by_kind[k] = by_kind.get(k, 0) + v
        split = {st["rank"]: {k: round(v, 6) for k, v in st["seconds"].items()} for st in stats}
        tot = {k: sum(sp.get(k, 0.0) for sp in split.values()) for k in ("compute", "comm", "wait", "eval")}
        busy = sum(tot.values()) or 1.0
        ex = self.exchange
        out = {
            # examples: the rows this run applied (a resumed run started with start_examples)
            "steps": self.step, "examples": self.examples - self.start_examples, "train_s": train_s,
            # every completed step applied the rows its collective summed (elastic: also the
            # steps survivors rolled forward): the same counts the PS reports from its ranges
            "rows_applied": self.examples, "rows_applied_max": self.examples,
            "rows_planned": self.s.data.n_train * self.epochs,
            "duplicates_dropped": 0, "rereplications": [],
            "step_time_s": float(np.median(self.step_times)) if self.step_times else None,
            "examples_per_s": (self.examples - self.start_examples) / train_s if train_s > 0 else None,
            "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
            "workers": self.n_world, "servers": 0, "consistency": "bsp",
            "ranks_alive_end": self.comm.size,
            "failures_detected": sum(len(f["dead_world_ranks"]) for f in self.failures),
            "lost_updates": 0,
            "recovery_s": [r["recovery_s"] for r in self.recoveries if r["dead_world_ranks"]],
            "recoveries": self.recoveries,
            "mode": self.mode, "elastic": self.elastic, "model_digest": self.model_digest,
            "start_step": self.start_step, "checkpoints": self.ckpt.written,
            "checkpoint_s": round(self.ckpt.seconds, 6),
            "replicas_identical": bool(identical), "replica_check_s": check_s,
            "model_bytes": self.table.nbytes,
            "model_keys": len(self.table.keys()) if hasattr(self.table, "index") else self.table.n,
            "rank0_bytes_sent": mine["bytes_sent"],
            "rank0_bytes_per_step_wire_est": mine["bytes_sent"] / steps,
            "rank0_payload_bytes_per_step": ex.payload / steps,
            "bytes_by_kind_alive_ranks": by_kind,
            "time_split_s": split,
            "time_fraction": {k: v / busy for k, v in tot.items()},
        }
        if isinstance(ex, DenseExchange):
            out["grad_buffer_bytes"] = ex.buffer_bytes
            out["touched_bitmap_bytes"] = ex.bitmap_bytes
            out["union_method"] = ex.union_method
            out["dense_bytes_per_step_per_rank_ring_est"] = sum(ex.step_bytes(self.n_world).values())
        return out


def run(cfg, comm, rec, make_injector) -> dict | None:
    return Trainer(cfg, comm, rec, make_injector).run()
