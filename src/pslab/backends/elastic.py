"""Membership for the allreduce backend: which rows each rank reads, and what happens
when a rank dies.

Row streams. Each member (rank) of the current communicator reads one lane of the
epoch's block order (`Setup.lanes(epoch, M)`) as a `schedule.Stream`: the same rows in
the same order as every backend reads them. A stream is read without being consumed
(`take`, then `commit` once the step's collective succeeded), so a failed step is simply
redone; and it can begin a block part-way, so a dead rank's half-read block goes on from
the first row no completed step has used. Every rank holds the
streams of *all* members as arithmetic (segments of block ids and row ranges, no data),
so all ranks know every member's rows per step, the global batch size and the dead
member's unfinished rows without talking. Only a rank's own stream loads data.

Failures (backend.elastic=true, Open MPI run with `--with-ft ulfm`). A collective that
involves a dead rank raises MPI.Exception (PROC_FAILED, or REVOKED once a survivor has
revoked the communicator). `recover()` then
  1. revokes the communicator (so every survivor leaves whatever collective it is in)
     and shrinks it to the survivors (`Comm.Shrink`, ERRORS_RETURN on the result);
  2. agrees on the last completed step (Allreduce MIN and MAX of the step counter, and
     MIN of the detection times: recovery_s runs from the survivors' first detection).
     ULFM does not promise that a collective fails everywhere: a survivor may have
     received step t's sum and applied it while another saw the failure. The gap is at
     most one step (step t+1 needs every survivor's contribution), so the lowest new rank
     among those ahead broadcasts step t's update (union of keys and averaged gradient
     rows) and those behind apply it and commit step t ("roll forward": the dead rank's
     rows of step t were in that sum, so nothing is lost or applied twice);
  3. checks that the replicas are identical (a digest of the model, Allreduce MIN/MAX)
     and, if not, broadcasts the model from the new rank 0 (recorded as a resync);
  4. confirms with `Comm.Agree`, which completes uniformly: either every survivor leaves
     recovery with the same state, or every survivor retries with a shrunk communicator
     (a second rank dying during recovery);
  5. hands the dead members' unfinished rows to the survivors (each segment to the
     survivor with the fewest rows left; ties to the lower rank), and splits the global
     batch B over the M survivors as evenly as possible (B//M, plus one row for the
     first B%M), so the global batch stays B.
The world's rank 0 evaluates and writes the run's result: if it dies the run fails
(survivors record an "unrecoverable" event and abort the job). MPI never reports a hung
(SIGSTOPped) rank by itself; with backend.hang_timeout_s set, the launcher turns on
ULFM's heartbeat detector (`pslab.launch.hang_detector_mca`), which declares a rank
silent that long failed, and the survivors then see it and recover exactly as from a
kill (off by default: the detector is experimental in Open MPI 5.0, see the README).
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from ..schedule import Stream, split_batch  # noqa: F401 (split_batch: used here and by allreduce, arckpt)

FAILURE_CLASSES = ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")


# -- row streams -----------------------------------------------------------------------



class Plan:
    """The current epoch's streams of all members (world ranks, in communicator order)
    and each member's rows per step."""

    def __init__(self, data, members: list[int], lanes: list[list[int]], sizes: list[int]):
        assert len(members) == len(lanes) == len(sizes)
        self.data = data
        self.members = list(members)
        self.streams = [Stream(data, lane) for lane in lanes]
        self.sizes = list(sizes)

    def counts(self) -> list[int]:
        return [s.count(b) for s, b in zip(self.streams, self.sizes)]

    def commit(self, counts: list[int]) -> None:
        for s, c in zip(self.streams, counts):
            s.commit(c)

    def done(self) -> bool:
        return all(s.left == 0 for s in self.streams)

    def rows_left(self) -> int:
        return sum(s.left for s in self.streams)

    def without(self, alive: list[int], batch: int) -> tuple["Plan", list[tuple[int, int, int]]]:
        """A plan over the members in `alive` (world ranks, communicator order): the dead
        members' unfinished segments go, one by one, to the survivor with the fewest rows
        left. Returns the plan and the handed-over segments."""
        keep = [self.members.index(r) for r in alive]
        moved = [seg for j, s in enumerate(self.streams) if self.members[j] not in alive for seg in s.unfinished()]
        new = Plan(self.data, [], [], [])
        new.members = list(alive)
        new.streams = [self.streams[j] for j in keep]
        new.sizes = split_batch(batch, len(alive))
        for seg in moved:
            to = min(range(len(new.streams)), key=lambda i: (new.streams[i].left, i))
            new.streams[to].add([seg])
        return new, moved


# -- the ULFM part ---------------------------------------------------------------------


def is_failure(err) -> bool:
    from mpi4py import MPI
    try:
        cls = err.Get_error_class()
    except Exception:  # noqa: BLE001
        return False
    return cls in {getattr(MPI, n) for n in FAILURE_CLASSES if hasattr(MPI, n)}


def error_name(err) -> str:
    from mpi4py import MPI
    try:
        cls = err.Get_error_class()
    except Exception:  # noqa: BLE001
        return str(err)
    for n in FAILURE_CLASSES:
        if getattr(MPI, n, None) == cls:
            return n
    return f"MPI error class {cls}"


def world_ranks(comm) -> list[int]:
    from mpi4py import MPI
    return list(MPI.Group.Translate_ranks(comm.Get_group(), list(range(comm.size)), MPI.COMM_WORLD.Get_group()))


def digest(table) -> int:
    """A 56-bit digest of a replica (keys, parameters and optimizer state)."""
    h = hashlib.blake2b(digest_size=7)
    if hasattr(table, "index"):  # SparseTable: slot order may differ, so go by key
        keys = np.sort(table.keys())
        s = table.slots(keys, create=False)
        h.update(keys.tobytes())
        h.update(np.ascontiguousarray(table.W[s]).tobytes())
        h.update(np.ascontiguousarray(table.S[s]).tobytes())
    else:
        h.update(memoryview(np.ascontiguousarray(table.W)).cast("B"))
        h.update(memoryview(np.ascontiguousarray(table.S)).cast("B"))
    return int.from_bytes(h.digest(), "little")


def same_everywhere(comm, value: int) -> bool:
    """True on every rank iff all ranks passed the same value (one Allreduce MIN)."""
    from mpi4py import MPI
    v = np.array([value, -value], np.int64)
    comm.Allreduce(MPI.IN_PLACE, v, op=MPI.MIN)
    return int(v[0]) == -int(v[1])


def bcast_model(comm, table, root: int = 0):
    """Make every replica equal to root's. Returns the (possibly new) table."""
    if not hasattr(table, "index"):
        comm.Bcast(table.W, root=root)
        comm.Bcast(table.S, root=root)
        return table
    from ..store import SparseTable
    n = np.array([len(table)], np.int64)
    comm.Bcast(n, root=root)
    if comm.rank == root:
        keys = table.keys()
        s = table.slots(keys, create=False)
        W, S = np.ascontiguousarray(table.W[s]), np.ascontiguousarray(table.S[s])
    else:
        keys = np.empty(int(n[0]), np.uint64)
        W = np.empty((int(n[0]), table.W.shape[1]), table.W.dtype)
        S = np.empty((int(n[0]), table.S.shape[1]), table.S.dtype)
    for a in (keys, W, S):
        comm.Bcast(a, root=root)
    if comm.rank == root:
        return table
    fresh = SparseTable(table.model, table.opt, table.W.dtype, capacity=max(16, int(n[0])))
    fresh.load(keys, W, S)
    return fresh


def shrink(comm):
    from mpi4py import MPI
    try:
        comm.Revoke()
    except MPI.Exception:
        pass  # already revoked by another survivor
    new = comm.Shrink()
    new.Set_errhandler(MPI.ERRORS_RETURN)
    return new


def recover(tr, err) -> None:
    """Elastic recovery (see the module docstring). `tr` is the allreduce Trainer: its
    comm, table, plan, step and last update are read and replaced here."""
    from mpi4py import MPI

    t_fail = time.time()
    rec = tr.rec
    comm, attempts, rolled, resynced, t_shrink = tr.comm, 0, False, False, 0.0
    t_first = t_fail
    members = list(tr.plan.members)
    error = error_name(err)
    # Recovery's own collectives (shrink, agree, resync) are watched like a step's: a rank
    # hung (not dead) when another died would otherwise hold the shrink forever; the
    # watchdog fences it (or aborts) after backend.step_timeout_s.
    with tr.collective(tr.step):
        while True:
            attempts += 1
            t0 = time.perf_counter()
            new = shrink(comm)
            t_shrink += time.perf_counter() - t0
            alive = world_ranks(new)
            lost = [r for r in members if r not in alive]
            members = alive
            if lost:
                rec.event("failure_detected", sync=True, step=tr.step, epoch=tr.epoch, error=error,
                          dead_world_ranks=lost, ranks_alive=new.size, detected_at=t_fail, elastic=True,
                          during_recovery=attempts > 1)
            else:  # revoked without a dead rank (a drill, or a false alarm of a detector)
                rec.event("false_alarm", sync=True, step=tr.step, epoch=tr.epoch, error=error)
            if 0 not in alive:
                tr.flush_counters("unrecoverable")
                rec.event("unrecoverable", sync=True, reason="world rank 0 (evaluation, result) died", alive=alive)
                rec.aborting("world rank 0 (evaluation, result) died: elastic allreduce cannot go on without it")
                MPI.COMM_WORLD.Abort(1)
            try:
                # last completed step (min, max) and the earliest detection among the survivors
                agree = np.array([tr.step, -tr.step, t_fail], np.float64)
                new.Allreduce(MPI.IN_PLACE, agree, op=MPI.MIN)
                lo, hi, t_first = int(agree[0]), -int(agree[1]), float(agree[2])
                if hi > lo:
                    if hi - lo > 1:
                        raise RuntimeError(f"survivors are {hi - lo} steps apart (at most 1 is possible)")
                    me = np.array([new.rank if tr.step == hi else new.size], np.int64)
                    new.Allreduce(MPI.IN_PLACE, me, op=MPI.MIN)
                    keys, g = bcast_update(new, int(me[0]), tr.last_update if tr.step == hi else None, tr.dim)
                    if tr.step < hi:
                        tr.roll_forward(keys, g)
                    rolled = True
                if not same_everywhere(new, digest(tr.table)):
                    tr.table = bcast_model(new, tr.table, root=0)
                    if new.rank == 0:
                        tr.rec.acct.sent("recovery_model", tr.table.nbytes * (new.size - 1))
                    resynced = True
                new.Agree(1)
            except MPI.Exception as e2:  # another failure during recovery: shrink again
                error = error_name(e2)
                comm = new
                continue
            break
    dead = [r for r in tr.plan.members if r not in alive]
    if tr.steps_in_epoch == 0:
        # No step of this epoch yet: deal the epoch afresh over the survivors.
        tr.plan = tr.new_plan(tr.epoch, alive)
        moved = []
    else:
        tr.plan, moved = tr.plan.without(alive, tr.batch)
    tr.set_comm(new)
    if dead:
        tr.failures.append({"t_fail": t_first, "dead_world_ranks": dead, "step": tr.step})
    tr.pending_recovery = {"t_fail": t_first, "detected_here_after_s": round(t_fail - t_first, 6),
                           "dead_world_ranks": dead, "ranks_alive": new.size,
                           "shrink_s": round(t_shrink, 6), "attempts": attempts, "rolled_forward": rolled,
                           "model_resynced": resynced, "segments_moved": len(moved),
                           "rows_moved": int(sum(e - a for _, a, e in moved)), "batch_sizes": tr.plan.sizes,
                           "agreed_step": tr.step}


def bcast_update(comm, root: int, update, dim: int):
    """Root's last applied update (keys uint64, averaged gradient rows float32) to all."""
    n = np.array([0 if update is None else len(update[0])], np.int64)
    comm.Bcast(n, root=root)
    if comm.rank == root:
        keys, g = np.ascontiguousarray(update[0], np.uint64), np.ascontiguousarray(update[1], np.float32)
    else:
        keys, g = np.empty(int(n[0]), np.uint64), np.empty((int(n[0]), dim), np.float32)
    comm.Bcast(keys, root=root)
    comm.Bcast(g, root=root)
    return keys, g
