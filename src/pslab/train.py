"""The per-rank program: every rank of an MPI job runs this with the same overrides.

    mpirun -n 4 python -m mpi4py -m pslab.train backend=allreduce run.dir=runs/ar4
    python -m pslab.launch -n 4 backend=allreduce          # the same, with a deadline
                                                            # and a summary.json always

`python -m mpi4py` turns an unhandled exception on one rank into MPI_Abort of all of
them, instead of leaving the others blocked in a collective.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per rank
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from omegaconf import OmegaConf  # noqa: E402

from .config import load_config  # noqa: E402

LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def check_launch(comm) -> None:
    """mpirun from one MPI and mpi4py built against another: every rank says rank 0."""
    for var in LAUNCHER_SIZE_VARS:
        n = os.environ.get(var)
        if n and n.isdigit() and int(n) != comm.size:
            raise SystemExit(
                f"pslab: the launcher started {n} ranks ({var}) but MPI reports a world of {comm.size}: "
                "mpirun belongs to a different MPI than the one mpi4py uses. Use the mpirun next to "
                "this Python (e.g. .venv/bin/mpirun), or python -m pslab.launch.")


def default_run_dir(cfg) -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(sys.argv[1:] if argv is None else argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    check_launch(comm)
    run_dir = Path(cfg.run.dir) if cfg.run.dir else default_run_dir(cfg)
    if cfg.run.dir is None:
        # Ranks must agree on one folder: rank 0 picks it.
        run_dir = Path(comm.bcast(str(run_dir), root=0))
    run_dir.mkdir(parents=True, exist_ok=True)
    if comm.rank == 0:
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(cfg))
        os.replace(tmp, run_dir / "config.yaml")

    from .backends import get_backend
    from .launcher import watchdog
    from .observe import Recorder

    backend = get_backend(cfg.backend.name)
    role, index = backend.role_of(cfg, comm.rank, comm.size) if hasattr(backend, "role_of") else ("worker", comm.rank)
    rec = Recorder(run_dir, comm.rank, role, index)
    # Ends the job if the launcher is gone or the deadline passed (see its module); it
    # runs on through MPI_Finalize below, which a hung peer can block forever.
    watchdog.start(rec, float(cfg.run.deadline_s))
    try:
        result = backend.run(cfg, comm, rec, injector_factory(cfg, rec, role, index, comm))
        if result is not None:  # rank 0 (or the coordinator) reports the run's outcome
            rec.result(status="completed", backend=cfg.backend.name, model=cfg.model.name, ranks=comm.size,
                       **result)
        rec.final()
    except BaseException as e:
        rec.event("rank_error", sync=True, error=f"{type(e).__name__}: {e}",
                  traceback=traceback.format_exc(limit=8))
        if comm.size > 1:  # python -m mpi4py now aborts the job
            rec.aborting(f"rank {comm.rank} ({role} {index}): {type(e).__name__}: {e}")
        raise
    finally:
        rec.close()
    # Finalize here, not at interpreter exit: at exit the watchdog thread may already be
    # gone, and it must outlive a Finalize that a hung rank blocks.
    MPI.Finalize()
    return 0


def injector_factory(cfg, rec, role, index, comm):
    """Backends call this once they know the run's roles and planned steps."""
    from .faults import make_injector

    def make(roles: dict[str, int], planned_steps: int):
        # the launcher's progress line shows "step S of planned_steps"
        rec.event("plan", planned_steps=int(planned_steps), epochs=int(cfg.train.epochs))
        return make_injector(cfg, role, index, comm.rank, roles, planned_steps, rec)

    return make


if __name__ == "__main__":
    sys.exit(main())
