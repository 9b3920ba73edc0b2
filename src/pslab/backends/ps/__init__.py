"""backend=ps: a parameter server over MPI point-to-point messages.

    python -m pslab.launch -n 6 backend=ps backend.servers=2 backend.consistency=ssp backend.staleness=2

Rank 0 is the coordinator, ranks 1..S the servers, the rest the workers. Modules, one job
each (after ps-lite's split of transport / request tracking / retries):
    protocol     the wire format, codecs, key caches, chunking
    van          the transport over MPI (non-blocking, deadlines, byte accounting)
    ranges       key -> range, the replica map (primary + backups), per-range failover
    membership   the rank layout and the live membership (data the coordinator changes)
    client       pull / push / wait(ts) with timeouts, re-routing after a failover
    consistency  BSP / SSP / ASP clock rules and the staleness served
    rangeclocks  BSP clocks kept per key range (a range inherited mid-clock stays exact)
    applied      per-range records of the batches applied (exactly-once)
    server       the key ranges' rows and the optimizer; server_ctrl its control messages
    forward      primary-backup replication: forwards, snapshots, both ends
    worker       the training loop over the batches it is given
    ledger       the plan's batches with fixed ids, and who has which (the work ledger)
    detector     heartbeats from a thread of their own; silent ranks
    coordinator  the run: assignments, clocks, evaluation, the end; failover, backups,
                 report: its parts
    checkpoint   atomic shards (consistent cuts) and manifests keyed by ranges, restore
"""
from __future__ import annotations

import time

from mpi4py import MPI

from . import protocol as P
from .detector import Heartbeat, check_timeouts
from .membership import Layout, Membership

__all__ = ["run", "role_of"]


def role_of(cfg, rank: int, size: int) -> tuple[str, int]:
    return Layout(size, int(cfg.backend.servers)).role_of(rank)


def make_van(cfg, comm, rec):
    from .van import Van

    bc, c = cfg.backend, cfg.backend.compression
    return Van(comm, rec, fp16=bool(c.fp16), delta_keys=bool(c.delta_keys), key_cache=bool(c.key_cache),
               kkt_filter=bool(c.kkt_filter), chunk_bytes=int(bc.chunk_bytes),
               spin_s=float(bc.get("poll_spin_s", 1e-3)), max_sleep_s=float(bc.poll_sleep_max_s))


def run(cfg, comm, rec, make_injector):
    layout = Layout(comm.Get_size(), int(cfg.backend.servers))
    layout.check()
    # A private communicator: our tag space, and errors returned instead of aborting,
    # so a dead peer is an exception the roles can handle (failover), not the end.
    comm = comm.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    hb_comm = comm.Dup()  # heartbeats travel apart from the data path (detector.py)
    hb_comm.Set_errhandler(MPI.ERRORS_RETURN)
    check_timeouts(cfg.backend)
    deadline = time.time() + float(cfg.run.deadline_s)
    role, index = layout.role_of(comm.Get_rank())
    van = make_van(cfg, comm, rec)
    roles = {"worker": layout.workers, "server": layout.servers, "coordinator": 1, "rank": layout.size}
    heartbeat = None
    try:
        if role == "coordinator":
            try:
                return _coordinator(cfg, layout, van, hb_comm, rec, make_injector, roles, deadline)
            except BaseException as e:
                # Tell every rank to stop now (under ULFM an MPI_Abort alone does not end
                # the others promptly), then fail with the reason.
                reason = f"{type(e).__name__}: {e}"
                rec.event("unrecoverable", sync=True, reason=reason)
                for r in range(1, layout.size):
                    van.send(r, P.Msg(P.CTRL, meta={"op": "abort", "reason": reason}))
                van.flush(2.0)
                raise
        heartbeat = Heartbeat(hb_comm, float(cfg.backend.heartbeat_timeout_s) / 4).start()
        start = _wait_start(van, rec, float(cfg.backend.idle_timeout_s), deadline)
        injector = make_injector(roles, int(start["planned"]))
        membership = Membership.from_meta(start["membership"])
        if role == "server":
            from . import checkpoint as ckpt
            from .server import Server

            restore = ckpt.read_manifest(start["resume_from"]) if start.get("resume_from") else None
            Server(cfg, index, layout, van, rec, injector, int(start["start_clock"]), restore, membership).serve(
                float(cfg.backend.idle_timeout_s), deadline, early=start["_early"])
        else:
            from .worker import Worker

            w = Worker(cfg, index, layout, _setup(cfg, rec), van, rec, injector, membership)
            w.client.inbox.extend(start.get("_early", []))
            w.run(deadline)
        return None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        van.flush(2.0)


def _setup(cfg, rec):
    from ..common import Setup

    with rec.acct.timed("setup"):
        return Setup.build(cfg)  # data, model, optimizer: the same code as every backend


def _wait_start(van, rec, idle_timeout: float, deadline: float) -> dict:
    """Servers and workers wait for the coordinator's `start` (planned clocks, resume point)."""
    limit = min(deadline, time.time() + idle_timeout)
    start, later = None, []
    while time.time() < limit:
        for m in van.recv(0.5):
            if start is None and m.cmd == P.CTRL and (m.meta or {}).get("op") == "start":
                start = m.meta
            elif m.cmd == P.CTRL and m.src == 0 and (m.meta or {}).get("op") == "abort":
                raise SystemExit(f"the coordinator ended the run before the start: {m.meta.get('reason')}")
            elif m.cmd == P.PEER_FAILED and m.src == 0:
                raise SystemExit("the coordinator (rank 0) died before the start")
            else:
                later.append(m)  # what came with it (an assignment) is the role's to handle
        if start is not None:
            return {**start, "_early": later}
    raise TimeoutError(f"no start message from the coordinator within {idle_timeout:g} s")


def _coordinator(cfg, layout, van, hb_comm, rec, make_injector, roles, deadline) -> dict:
    from . import checkpoint as ckpt
    from .coordinator import Coordinator
    from .ledger import Plan

    s = _setup(cfg, rec)
    plan = Plan(s, layout.workers, int(cfg.train.epochs), str(cfg.backend.consistency) == "bsp")
    start_clock, resume = 0, cfg.backend.get("resume_from")
    if resume:
        info = ckpt.read_manifest(resume)
        if int(info.get("workers", layout.workers)) != layout.workers:
            # the plan's batches and clocks are numbered per worker lane: another count would
            # skip some rows and apply others twice
            raise SystemExit(f"backend.resume_from: checkpoint {info['dir']} was taken with {info['workers']} "
                             f"workers; resume with as many (-n {info['workers'] + 1 + layout.servers})")
        start_clock = int(info["clock"])
        resume = str(info["dir"])
        rec.event("resume", clock=start_clock, manifest=resume)
    injector = make_injector(roles, plan.total)
    coord = Coordinator(cfg, layout, s, van, hb_comm, rec, injector, plan, start_clock, resume)
    rec.event("training_started", clock=start_clock)  # productive time starts here (launcher/ettr.py)
    for r in range(1, layout.size):
        van.send(r, P.Msg(P.CTRL, meta={"op": "start", "planned": plan.total, "start_clock": start_clock,
                                        "resume_from": resume, "membership": coord.membership.to_meta()}))
    return coord.run(deadline)
