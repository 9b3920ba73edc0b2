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
  (n_features x dim, plus two cells carrying the step's loss and row count) is summed in
  place with `Allreduce`. To know exactly which keys the step touched (the local trainer
  updates every key of the batch, also one whose summed gradient happens to be 0, which
  matters for L2 and FTRL), a touched-key bitmap (n_features/8 bytes) is OR-ed with a
  second `Allreduce` first. The union is read from the bitmap (a scan of n/64 words), not
  from the buffer, and only the union's rows are read back and re-zeroed, so the per-step
  work outside MPI is proportional to the touched keys. Needs folded keys (data.hash_bits).
- sparse: only touched keys travel. `Allgather` of (keys, rows, loss) per rank, then one
  `Allgatherv` of records (uint64 key, dim float32 gradient values), then a local
  reduction (a lookup table or np.unique for the union, np.bincount per column for the
  sums). Works with 64-bit keys (data.hash_bits=null, a SparseTable replica) too.

Accounting. Bytes are counted at the call sites as the algorithm puts them on the wire,
per rank: a ring Allreduce of S bytes sends 2(M-1)/M*S, a ring Allgather(v) sends every
block but one (total - the next rank's block). These estimates go to `rec.acct.sent`
(bytes_sent in summary.json); the bytes this rank hands to MPI ("payload") are reported
next to them. Time: "wait" is the first, small collective of each step (touched bitmap
or counts), which cannot end before the last rank arrives, so it measures idle time plus
one small message; "comm" is the big collective plus packing and unpacking; "compute" is
the gradient and the optimizer update; "eval" is rank 0's held-out evaluation.

Failures. Every job runs under `mpirun --with-ft ulfm`, so survivors see a dead rank as an
MPI.Exception in their next collective. Classic mode (backend.elastic=false) records
"failure_detected" and calls MPI_Abort: the job fails within a second or two, as in the
papers. Elastic mode revokes, shrinks and goes on (see elastic.py). World rank 0 must
stay alive: it evaluates and writes the result; if it dies the run fails.
"""
from __future__ import annotations

import time

import numpy as np

from ..store import apply_gradient, make_table
from .common import Setup, save_model
from .elastic import Plan, digest, error_name, is_failure, recover, same_everywhere, split_batch, world_ranks

ONE = np.uint64(1)
FLAGS_MAX_KEYS = 1 << 20  # up to here the touched bitmap is built from a bool array (np.packbits)
_POP8 = np.array([bin(i).count("1") for i in range(256)], np.int64)  # set bits per byte value


def set_bits(w: np.ndarray) -> int:
    """Number of set bits in a uint64 array (np.bitwise_count needs numpy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(w).sum())
    return int(_POP8[w.view(np.uint8)].sum())


def ring_allreduce_bytes(nbytes: int, m: int) -> int:
    """Bytes one rank sends in a ring Allreduce (reduce-scatter + allgather) of nbytes."""
    return 2 * (m - 1) * int(nbytes) // m if m > 1 else 0


def ring_allgather_bytes(block_bytes, rank: int) -> int:
    """Bytes `rank` sends in a ring Allgather(v): every block except the next rank's."""
    m = len(block_bytes)
    return int(sum(block_bytes)) - int(block_bytes[(rank + 1) % m]) if m > 1 else 0


def bitmap_keys(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Set bits of a uint64 bitmap as sorted int64 positions, and the nonzero words.
    Below ~10% set bits the work grows with the nonzero words only (plus one scan of
    the n/64 words); above, unpacking the whole bitmap is cheaper."""
    nz = np.flatnonzero(words)
    w = words[nz]
    if set_bits(w) * 10 > len(words) * 64:
        return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")), nz
    by = w.view(np.uint8)
    nzb = np.flatnonzero(by != 0)
    p = np.flatnonzero(np.unpackbits(by[nzb], bitorder="little"))
    q = nzb[p >> 3]
    return nz[q >> 3] * 64 + ((q & 7) << 3) + (p & 7), nz


class DenseExchange:
    """Dense in-place Allreduce of a model-sized buffer, plus a touched-key bitmap."""

    mode = "dense"

    def __init__(self, n_features: int, dim: int, acct):
        self.n, self.dim, self.acct = int(n_features), int(dim), acct
        self.flat = np.zeros(self.n * self.dim + 2, np.float32)  # gradient rows, loss, rows
        self.G = self.flat[: self.n * self.dim].reshape(self.n, self.dim)
        self.words = np.zeros(max(1, -(-self.n // 64)), np.uint64)
        # building the bitmap: a bool array + np.packbits (fast up to a few million keys), or
        # np.bitwise_or.at on the words (work grows with the touched keys only)
        self.flags = np.zeros(len(self.words) * 64, bool) if self.n <= FLAGS_MAX_KEYS else None
        self.payload = 0
        self.mpi_s = 0.0  # seconds inside MPI calls (the benchmark splits MPI from packing)
        self.last_union = 0

    @property
    def buffer_bytes(self) -> int:
        return self.flat.nbytes

    @property
    def bitmap_bytes(self) -> int:
        return self.words.nbytes

    def step_bytes(self, m: int) -> dict:
        """What one rank sends per step, whatever the batch (the arithmetic tests check)."""
        return {"allreduce_touched": ring_allreduce_bytes(self.bitmap_bytes, m),
                "allreduce_grad": ring_allreduce_bytes(self.buffer_bytes, m)}

    def reset(self) -> None:
        """After a failed collective the buffers hold partial sums: start clean."""
        self.flat[:] = 0
        self.words[:] = 0
        if self.flags is not None:
            self.flags[:] = False

    def __call__(self, comm, keys, grad, rows: int, loss: float):
        from mpi4py import MPI
        acct, m = self.acct, comm.size
        with acct.timed("comm"):
            k = keys.astype(np.int64)
            self.G[k] = grad
            self.flat[-2], self.flat[-1] = loss, rows
            if self.flags is not None:
                self.flags[k] = True
                self.words[:] = np.packbits(self.flags, bitorder="little").view(np.uint64)
                self.flags[k] = False
            elif len(k):
                np.bitwise_or.at(self.words, k >> 6, ONE << (k & 63).astype(np.uint64))
        t0 = time.perf_counter()
        with acct.timed("wait"):
            comm.Allreduce(MPI.IN_PLACE, self.words, op=MPI.BOR)
        with acct.timed("comm"):
            comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
            self.mpi_s += time.perf_counter() - t0
            for kind, nbytes in self.step_bytes(m).items():
                acct.sent(kind, nbytes)
            self.payload += self.buffer_bytes + self.bitmap_bytes
            union, nz = bitmap_keys(self.words)
            g = self.G[union]  # a copy (fancy indexing)
            self.G[union] = 0
            self.words[nz] = 0
            loss_all, rows_all = float(self.flat[-2]), int(round(float(self.flat[-1])))
            self.flat[-2:] = 0
        self.last_union = len(union)
        return union.astype(np.uint64), g, rows_all, loss_all


class SparseExchange:
    """Allgather of counts, Allgatherv of (key, gradient row) records, local reduction."""

    mode = "sparse"

    def __init__(self, n_features, dim: int, acct):
        from mpi4py import MPI
        self.dim, self.acct = int(dim), acct
        self.rec = np.dtype([("k", "<u8"), ("g", "<f4", (self.dim,))])
        self.mpi_rec = MPI.BYTE.Create_contiguous(self.rec.itemsize).Commit()
        # a position table for the union of folded keys (np.unique for 64-bit keys)
        self.pos = np.empty(int(n_features), np.int32) if n_features and n_features <= (1 << 27) else None
        self.payload = 0
        self.mpi_s = 0.0
        self.last_union = 0
        self.last_counts = None

    def reset(self) -> None:
        pass  # nothing survives between steps

    def union(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.pos is None or len(k) == 0:
            u, inv = np.unique(k, return_inverse=True)
            return u, inv.reshape(-1)
        idx = k.astype(np.int64)
        p = np.arange(len(k), dtype=np.int32)
        self.pos[idx[::-1]] = p[::-1]  # the last write wins: each key -> its first position
        first = self.pos[idx]
        is_first = first == p
        rank = np.cumsum(is_first) - 1
        return k[is_first], rank[first]

    def __call__(self, comm, keys, grad, rows: int, loss: float):
        from mpi4py import MPI
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
            union, inv = self.union(recv["k"])
            g = np.empty((len(union), self.dim), np.float32)
            vals = recv["g"]
            for c in range(self.dim):
                g[:, c] = np.bincount(inv, weights=vals[:, c], minlength=len(union))
        self.last_union, self.last_counts = len(union), counts
        return union, g, int(round(allmeta[:, 1].sum())), float(allmeta[:, 2].sum())


def make_exchange(mode: str, n_features, dim: int, acct):
    if mode == "dense":
        if n_features is None:
            raise ValueError("backend.mode=dense needs folded keys: the dense buffer has one row per key of "
                             "[0, 2^b). Set data.hash_bits=b, or use backend.mode=sparse for 64-bit keys.")
        return DenseExchange(n_features, dim, acct)
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
        s.lane_batch(self.n_world)  # the batch must split evenly over the starting ranks
        self.exchange = make_exchange(self.mode, s.data.n_features, s.model.dim, rec.acct)
        self.table = make_table(s.data.n_features, s.model, s.opt)
        self.dim = s.model.dim
        self.epochs = int(cfg.train.epochs)
        self.eval_every = int(cfg.train.eval_every)
        self.log_every = max(1, int(cfg.train.log_every))
        self.injector = make_injector({"worker": self.n_world, "rank": self.n_world, "coordinator": 1},
                                      s.steps_per_epoch(self.n_world) * self.epochs)
        self.comm = comm
        self.step = self.epoch = self.steps_in_epoch = self.examples = 0
        self.plan = self.new_plan(0, world_ranks(comm))
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
        sizes = [self.s.lane_batch(m)] * m if m == self.n_world else split_batch(self.batch, m)
        return Plan(self.s.data, members, self.s.lanes(epoch, m), sizes)

    def set_comm(self, comm) -> None:
        self.comm = comm
        self.exchange.reset()

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
        union, g, n_rows, loss_all = self.exchange(self.comm, keys, grad, len(rows), loss)
        if self.drill is not None and self.drill == (self.step + 1, self.rec.rank):
            self.revoke_drill()
        if n_rows != sum(counts):
            raise RuntimeError(f"step {self.step + 1}: ranks sent {n_rows} rows, the plan says {sum(counts)}")
        with self.rec.acct.timed("compute"):
            g /= np.float32(n_rows)
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

    def on_failure(self, err) -> None:
        if not is_failure(err):
            raise err
        if not self.elastic:
            self.rec.event("failure_detected", sync=True, step=self.step, epoch=self.epoch, error=error_name(err),
                           elastic=False, action="MPI_Abort")
            self.rec.aborting(f"rank {self.rec.rank}: a collective failed ({error_name(err)}): "
                              "classic allreduce cannot go on without every rank")
            self.MPI.COMM_WORLD.Abort(1)
        self.exchange.reset()
        recover(self, err)

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
        while True:
            self.train()
            try:  # the end: are all replicas the same? (and everyone's counters to rank 0)
                t_check = time.perf_counter()
                identical = same_everywhere(self.comm, digest(self.table))
                check_s = time.perf_counter() - t_check
                stats = self.comm.gather({"rank": self.rec.rank, **self.rec.acct.snapshot()}, root=0)
                break
            except self.MPI.Exception as e:
                self.on_failure(e)
        self.note_recovered(first_step_after=None)  # a failure after the last step
        train_s = time.time() - self.t_start
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
            "steps": self.step, "examples": self.examples, "train_s": train_s,
            "step_time_s": float(np.median(self.step_times)) if self.step_times else None,
            "examples_per_s": self.examples / train_s if train_s > 0 else None,
            "test_logloss": final["logloss"], "test_auc": final["auc"], "test_accuracy": final["accuracy"],
            "workers": self.n_world, "servers": 0, "consistency": "bsp",
            "ranks_alive_end": self.comm.size,
            "failures_detected": sum(len(f["dead_world_ranks"]) for f in self.failures),
            "lost_updates": 0,
            "recovery_s": [r["recovery_s"] for r in self.recoveries if r["dead_world_ranks"]],
            "recoveries": self.recoveries,
            "mode": self.mode, "elastic": self.elastic,
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
            out["dense_bytes_per_step_per_rank_ring_est"] = sum(ex.step_bytes(self.n_world).values())
        return out


def run(cfg, comm, rec, make_injector) -> dict | None:
    return Trainer(cfg, comm, rec, make_injector).run()
