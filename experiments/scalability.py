"""Model scalability: memory per process and the largest model trainable, one replica per
rank vs a model sharded over S servers (BRIEF section 5, #6).

    .venv/bin/python experiments/scalability.py                   # small preset, ~4 min on 2 cores
    .venv/bin/python experiments/scalability.py --preset large    # up to 2^26 dense / 20M keys
    .venv/bin/python experiments/scalability.py --budget-gib 64   # the largest model under another budget
    .venv/bin/python experiments/scalability.py --figure-only     # redraw results/figures/scalability.png

Arms:
  allreduce-dense-b<bits>  2 ranks, dense model of 2^bits parameters (data.hash_bits=bits):
                           every rank holds the model, its optimizer state and a model-sized
                           gradient buffer
  allreduce-sparse-r<rows> 2 ranks, 64-bit keys: every rank stores every key seen
  ps-s<S>-r<rows>          1 worker, S servers, 64-bit keys: each server stores its share
Measured: peak RSS of every process (getrusage), the model's parameters and bytes. A
straight line of peak RSS on parameters stored (per server: on its share) gives each
design's fixed cost and bytes per parameter, and so the largest model that fits a
per-process memory budget: 2 GiB by default (--budget-gib), stated in the figure.
"""
from __future__ import annotations

import sys

import sweep
from sweep import Arm

NAME = "scalability"
BUDGET_GIB = 2.0
PRESETS = {
    "small": dict(bits=[18, 20, 22, 24], rows=[16384, 49152, 98304], servers=[1, 2, 4], sparse=True),
    "large": dict(bits=[20, 22, 24, 26], rows=[65536, 262144, 524288], servers=[1, 2, 4, 8], sparse=True),
}


def arms(preset: str, args) -> list[Arm]:
    p = PRESETS[preset]
    out = []
    for b in p["bits"]:
        out.append(Arm(f"allreduce-dense-b{b}", 2, ["backend=allreduce", "backend.mode=dense",
                                                     f"data.hash_bits={b}", "data.rows=8192"],
                       {"design": "dense", "backend": "allreduce", "x": 2 ** b}, deadline=180))
    if p["sparse"]:
        for rows in p["rows"]:
            out.append(Arm(f"allreduce-sparse-r{rows}", 2, ["backend=allreduce", "backend.mode=sparse",
                                                             f"data.rows={rows}"],
                           {"design": "sparse", "backend": "allreduce", "x": rows}, deadline=180))
    for s in p["servers"]:
        for rows in p["rows"]:
            out.append(Arm(f"ps-s{s}-r{rows}", 1 + s + 1, ["backend=ps", f"backend.servers={s}", f"data.rows={rows}",
                                                            *sweep.ps_quiet()],
                           {"design": f"ps-s{s}", "backend": "ps", "servers": s, "x": rows}, deadline=180))
    return out


def budget_args(ap):
    ap.add_argument("--budget-gib", type=float, default=BUDGET_GIB, help="per-process memory budget (GiB)")


def figure(out_dir, args=None):
    from pslab.analysis import figures, load_runs
    b = (getattr(args, "budget_gib", None) or BUDGET_GIB) * 2 ** 30
    return figures.fig_scalability(load_runs(out_dir), budget_bytes=b)[1]


if __name__ == "__main__":
    sys.exit(sweep.main(NAME, __doc__, arms, figure, extra_args=budget_args))
