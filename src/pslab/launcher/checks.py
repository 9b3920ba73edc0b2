"""The whole run checked before mpirun starts, so that a bad input costs no MPI launch
and gets one line that names the flag, key or file and says what to do.

pslab.config.check covers each value on its own (every rank runs it too); this module
adds what needs the launcher's flags, the rank count or the filesystem: -n against the
backend's layout, the fault plan's targets, the data files, --hostfile, --mpirun,
--deadline. Data files are only looked at (exist, not empty, text): parsing them is the
ranks' work, and a malformed line is reported by them with its file and line.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..config import ConfigError
from .mpi import find_mpirun


class Invalid(ConfigError):
    """A bad input found before mpirun started: summary status "invalid", exit code 2."""


def check_flags(n: int, deadline: float | None, hostfile: str | None, mpirun: str | None) -> str:
    """The launcher's own flags; returns the mpirun to use."""
    if n < 1:
        raise Invalid(f"-n {n}: the number of MPI ranks must be >= 1")
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise Invalid(f"--deadline {deadline:g}: must be a number of seconds > 0 (the run's wall-clock limit)")
    if hostfile is not None:
        p = Path(hostfile)
        if not p.is_file():
            raise Invalid(f"--hostfile {hostfile}: no such file (an Open MPI hostfile: one 'HOST slots=N' a line)")
        if not os.access(p, os.R_OK):
            raise Invalid(f"--hostfile {hostfile}: not readable")
        if not any(line.split("#", 1)[0].strip() for line in p.read_text(errors="replace").splitlines()):
            raise Invalid(f"--hostfile {hostfile}: names no host (one 'HOST slots=N' a line)")
    try:
        return find_mpirun(mpirun)
    except FileNotFoundError as e:
        raise Invalid(str(e)) from None


def roles_for(cfg, n: int) -> dict:
    """Role counts of an n-rank run, as the backends give them to the fault injector."""
    if cfg.backend.name == "ps":
        s = int(cfg.backend.servers)
        return {"coordinator": 1, "server": s, "worker": n - 1 - s, "rank": n}
    if cfg.backend.name == "allreduce":
        return {"worker": n, "rank": n, "coordinator": 1}
    return {"worker": 1, "rank": 1}


def check_run(cfg, n: int) -> None:
    """The composed config against the rank count, the fault plan and the data files."""
    from ..faults import parse_plan, resolve_events

    b = cfg.backend
    if b.name == "local" and n != 1:
        raise Invalid(f"backend=local runs in one process: use -n 1 (got -n {n}), or backend=allreduce")
    if b.name == "ps" and n < int(b.servers) + 2:
        raise Invalid(f"backend=ps with backend.servers={b.servers} needs -n {int(b.servers) + 2} or more "
                      f"(a coordinator, the servers and at least one worker); got -n {n}")
    try:
        resolve_events(parse_plan(cfg.faults), roles_for(cfg, n))
    except ConfigError as e:
        raise Invalid(f"{e} (faults={cfg.faults.name}, backend={b.name}, -n {n})") from None
    resume = b.get("resume_from")
    if resume and not Path(str(resume)).exists():
        raise Invalid(f"backend.resume_from={resume}: no such file or folder (a run dir, a checkpoints folder "
                      "or a manifest.json)")
    check_data_files(cfg.data)


def check_data_files(data) -> None:
    """data.path and data.test_path exist on this host, are not empty and are text
    (pslab.data.data_path). With --hostfile, the README asks for a filesystem every host
    shares, so what this host sees is what the ranks will see."""
    from ..data import DataError, data_path

    if data.format == "synthetic":
        return
    try:
        data_path(data.path, "data.path")
        if data.get("test_path"):
            data_path(data.test_path, "data.test_path")
    except DataError as e:
        raise Invalid(str(e)) from None
