"""Backends: local (one process, the reference), allreduce (MPI collectives, one
replica per rank) and ps (parameter server over MPI point-to-point messages)."""
from __future__ import annotations

import importlib

BACKENDS = {"local": "pslab.backends.local", "allreduce": "pslab.backends.allreduce",
            "ps": "pslab.backends.ps"}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}: unknown backend (choose {', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name])
