"""Bytes per step: dense allreduce vs sparse allreduce vs PS pull/push, then each PS
compression switch (BRIEF section 5, #3).

    .venv/bin/python experiments/traffic.py                   # small preset, ~4 min on 2 cores
    .venv/bin/python experiments/traffic.py --preset large    # bigger synthetic data, 4 workers
    .venv/bin/python experiments/traffic.py --figure-only     # redraw results/figures/traffic.png

Every arm has two workers (allreduce: 2 ranks; PS: coordinator + 1 server + 2 workers)
and the same global batch, on data=synthetic (2^22 hashed keys, power-law popularity) and
data=criteo_sample. Bytes are counted by the backends where they are sent; each PS switch
also reports its own measured factor (bytes without the switch / bytes with it).
The KKT filter needs L1, so it runs with FTRL and a stronger L1 than the default (optim.l1=2
per example: a weight stays at exactly zero until its gradients add up to two examples'
worth; at the default 0.25 the filter dropped next to nothing on the Criteo sample),
against a plain FTRL PS run with the same settings.
OSDI'14 anchors: key caching saves ~50%; the KKT filter drops >93% of the features; the
filters together cut traffic 40x (server) and 12x (worker).
"""
from __future__ import annotations

import sys

import sweep
from sweep import Arm

NAME = "traffic"
SWITCHES = ["fp16", "delta_keys", "key_cache"]
FTRL = ["optim=ftrl", "optim.l1=2"]
PRESETS = {
    "small": dict(workers=2, data={
        "synthetic": ["data=synthetic", "data.rows=32768", "data.test_rows=4096"],
        "criteo_sample": ["data=criteo_sample"]}),
    "large": dict(workers=4, data={
        "synthetic": ["data=synthetic", "data.rows=400000", "data.test_rows=20000"],
        "criteo_sample": ["data=criteo_sample"]}),
}


def arms(preset: str, args) -> list[Arm]:
    p = PRESETS[preset]
    w = p["workers"]
    out = []
    for data, dov in p["data"].items():
        tag = "" if data == "synthetic" else "criteo-"
        P = lambda **kw: {"data": data, "workers": w, **kw}  # noqa: E731
        ar = ["backend=allreduce", *dov]
        out.append(Arm(f"{tag}allreduce-dense", w, [*ar, "backend.mode=dense"],
                       P(backend="allreduce", mode="dense", switch=None, optim="adagrad")))
        out.append(Arm(f"{tag}allreduce-sparse", w, [*ar, "backend.mode=sparse"],
                       P(backend="allreduce", mode="sparse", switch=None, optim="adagrad")))
        ps = ["backend=ps", "backend.servers=1", *dov, *sweep.ps_quiet()]
        n = 2 + w
        out.append(Arm(f"{tag}ps", n, ps, P(backend="ps", switch=None, optim="adagrad")))
        for sw in SWITCHES:
            out.append(Arm(f"{tag}ps-{sw}", n, [*ps, f"backend.compression.{sw}=true"],
                           P(backend="ps", switch=sw, optim="adagrad")))
        out.append(Arm(f"{tag}ps-fp16+delta+cache", n, [*ps, *(f"backend.compression.{sw}=true" for sw in SWITCHES)],
                       P(backend="ps", switch="all", optim="adagrad")))
        out.append(Arm(f"{tag}ps-ftrl", n, [*ps, *FTRL], P(backend="ps", switch=None, optim="ftrl")))
        out.append(Arm(f"{tag}ps-ftrl-kkt", n, [*ps, *FTRL, "backend.compression.kkt_filter=true"],
                       P(backend="ps", switch="kkt_filter", optim="ftrl")))
        out.append(Arm(f"{tag}ps-ftrl-all", n, [*ps, *FTRL,
                                                 *(f"backend.compression.{sw}=true" for sw in SWITCHES + ["kkt_filter"])],
                       P(backend="ps", switch="all", optim="ftrl")))
    return out


def figure(out_dir, args=None):
    from pslab.analysis import figures, load_runs
    return figures.fig_traffic(load_runs(out_dir))[1]


if __name__ == "__main__":
    sys.exit(sweep.main(NAME, __doc__, arms, figure))
