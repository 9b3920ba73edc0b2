"""The headline at scale: ETTR vs workers (4 to 16,384) for the four contenders under each
hazard preset, with the costs fitted from the measured goodput trials.

    from pslab.analysis import goodput_scale as G
    cfg = G.settings(["sim.hazard=llama3"])    # conf/sim/goodput.yaml + sim.KEY=VALUE overrides
    costs, label = G.costs()                   # fitted from results/goodput/trials.jsonl, else defaults
    curves = G.scale_curves(cfg, costs, label) # ETTR, success, Young/Daly interval per point
    G.conclusion(curves)                       # the sentence the README and `make demo` print
    G.figure(curves, validation_rows)          # results/figures/goodput_scale.png
    G.headline()                               # the sentence, from results/sim/goodput_scale.json

Scratch (relaunched from scratch until it finishes) uses the exact renewal closed form
(pslab.sim.goodput.scratch_expected_wall): by 16,384 workers it needs more relaunches
than a Monte Carlo could afford. The others are Monte Carlo (pslab.sim.goodput); their
ETTR is pooled over the trials (total productive / total wall time: the goodput of a
stream of such jobs). A contender "beats" checkpoint-restart from the smallest size from
which its ETTR stays above checkpoint-restart's by more than twice the Monte Carlo error.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..sim import anchors as A
from ..sim.contenders import contender_job, fatal_mtbf_s
from ..sim.fit_goodput import DEFAULT_COSTS, fit_costs, read_trials
from ..sim.goodput import CONTENDERS, Costs, daly_wall, scratch_expected_wall, simulate_goodput
from ..sim.presets import preset
from .io import read_json, repo_root, results_root, write_json_atomic

CURVES_FILE = ("sim", "goodput_scale.json")
LABELS = {"scratch": "classic allreduce, relaunched from scratch",
          "ckpt_restart": "classic allreduce + checkpoint-restart (Young/Daly)",
          "elastic": "elastic allreduce (ULFM shrink; rank 0 relaunched from checkpoint)",
          "ps": "parameter server, R=2 (failover; coordinator relaunched from checkpoint)"}
SHORT = {"scratch": "restarting from scratch", "ckpt_restart": "checkpoint-restart",
         "elastic": "elastic allreduce", "ps": "the PS"}
COLORS = {"scratch": "tab:red", "ckpt_restart": "tab:purple", "elastic": "tab:orange", "ps": "tab:blue"}
TITLES = {"llama3": "Llama 3 (419 interruptions / 54 days at 16K GPUs)",
          "meta_rsc": "Kokolis et al. (MTTF 7.9 h at 1,024 GPUs)",
          "osdi14": "Li et al. OSDI'14 Table 1 (per machine)",
          "deck": "the deck (30% of 1,000-worker MPI jobs finish)"}


# --------------------------------------------------------------------------- inputs


def settings(overrides=()) -> dict:
    """conf/sim/goodput.yaml with `sim.KEY=VALUE` overrides (an unknown key is an error)."""
    from omegaconf import OmegaConf
    path = repo_root() / "conf" / "sim" / "goodput.yaml"
    base = OmegaConf.load(path)
    dots = []
    for o in overrides:
        key, _, value = o.partition("=")
        if not key.startswith("sim.") or not _:
            raise ValueError(f"override {o!r}: expected sim.KEY=VALUE")
        if key[4:].split(".")[0] not in base:
            raise ValueError(f"override {o!r}: no key {key[4:]!r} in {path} (known: {', '.join(base)})")
        dots.append(f"{key[4:]}={value}")
    cfg = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(dots)))
    cfg["presets"] = [cfg["hazard"]] if cfg.get("hazard") else list(cfg["presets"])
    return cfg


def costs(root=None) -> tuple[dict, str]:
    """({contender: Costs}, label): fitted from <results>/goodput/trials.jsonl when it
    exists, else pslab.sim.fit_goodput.DEFAULT_COSTS (the label says which)."""
    path = Path(root or results_root()) / "goodput" / "trials.jsonl"
    if path.exists():
        trials = read_trials(path)
        return fit_costs(trials).costs, f"costs fitted from {len(trials)} measured trials ({path.parent.name}/)"
    return ({c: Costs(**DEFAULT_COSTS) for c in CONTENDERS},
            "default costs (no measured trials yet: pslab.sim.fit_goodput.DEFAULT_COSTS)")


# --------------------------------------------------------------------------- curves


def _point(job, trials, rng) -> dict:
    if job.contender == "scratch":
        d = (1 - job.hang_fraction) * job.costs.detect_kill_s + job.hang_fraction * job.costs.detect_hang_s
        wall = scratch_expected_wall(job.work_s, job.hazard, job.layout()["fatal"], job.costs, d)
        job_wall = wall - job.costs.startup_s - job.costs.finish_s   # ETTR's denominator
        return {"ettr": 0.0 if not math.isfinite(wall) else job.work_s / job_wall, "success": 1.0, "se": 0.0}
    r = simulate_goodput(job, trials, rng)
    e = r.ettr[r.succeeded]
    return {"ettr": r.ettr_pooled, "success": r.success_rate,
            "se": float(e.std() / math.sqrt(max(e.size, 1))) if e.size else 0.0}


def _daly_ettr(job) -> tuple[float | None, float]:
    """Daly (2006)'s ETTR for checkpoint-restart at the job's interval, M its MTBF."""
    m, tau = fatal_mtbf_s(job), job.checkpoint_interval_s
    if not tau or not math.isfinite(m):
        return None, m
    c = job.costs
    restart = c.restart_s + (1 - job.hang_fraction) * c.detect_kill_s + job.hang_fraction * c.detect_hang_s
    return job.work_s / daly_wall(job.work_s, m, c.checkpoint_s, restart, tau), m


def with_overrides(cost_map: dict, overrides: dict | None, label: str) -> tuple[dict, str]:
    """Every contender's costs with `overrides` ({cost: seconds}) applied; the label says so."""
    if not overrides:
        return cost_map, label
    from dataclasses import fields, replace
    known = {f.name for f in fields(Costs)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"sim.costs: unknown cost(s) {bad}; known: {sorted(known)}")
    text = ", ".join(f"{k}={v:g}" for k, v in sorted(overrides.items()))
    return ({c: replace(v, **{k: float(x) for k, x in overrides.items()}) for c, v in cost_map.items()},
            f"{label}, overridden: {text}")


def scale_curves(cfg: dict, cost_map: dict, cost_label: str = "") -> dict:
    """ETTR (and success rate, Monte Carlo error, Young/Daly interval, Daly's closed form,
    the job MTBF) for every contender, size and preset of `cfg` (see `settings`)."""
    cost_map, cost_label = with_overrides(cost_map, cfg.get("costs"), cost_label)
    rng = np.random.default_rng(cfg.get("seed", 0))
    work = float(cfg["job_hours"]) * 3600.0
    ns = [int(n) for n in cfg["workers"]]
    out = {"job_hours": cfg["job_hours"], "workers": ns, "trials": cfg["trials"], "cost_label": cost_label,
           "costs": {c: asdict(v) for c, v in cost_map.items()}, "servers_per_worker": cfg["servers_per_worker"],
           "presets": {}}
    for name in cfg["presets"]:
        p = preset(name, ranks_per_host=cfg.get("ranks_per_host"), hang_fraction=cfg.get("hang_fraction"),
                   rate_per_s=cfg.get("rate_per_s"), shape=cfg.get("shape"), scale_s=cfg.get("scale_s"))
        pc = {"source": p.source, "ranks_per_host": p.ranks_per_host, "hang_fraction": p.hang_fraction,
              "contenders": {c: {"ettr": [], "success": [], "se": []} for c in CONTENDERS},
              "young_daly_interval_s": [], "mtbf_s": [], "daly_ettr": [], "single_attempt_success": []}
        for n in ns:
            for c in CONTENDERS:
                job = contender_job(c, n, p, cost_map, work, servers_per_worker=cfg["servers_per_worker"],
                                    replication=cfg["replication"])
                for k, v in _point(job, cfg["trials"], rng).items():
                    pc["contenders"][c][k].append(float(v))
                if c == "ckpt_restart":
                    daly, m = _daly_ettr(job)
                    pc["daly_ettr"].append(None if daly is None else float(daly))
                    pc["mtbf_s"].append(float(m))
                    pc["young_daly_interval_s"].append(job.checkpoint_interval_s)
                    h = float(job.hazard.cumulative_hazard(job.costs.exposed_startup_s + work))
                    pc["single_attempt_success"].append(float(math.exp(-job.layout()["fatal"] * h)))
        pc["crossover"] = crossovers(pc, ns)
        out["presets"][name] = pc
    out["conclusion"] = conclusion(out)
    return out


def crossovers(pc: dict, ns: list[int]) -> dict:
    """{contender: smallest workers from which it stays ahead of checkpoint-restart, or None}."""
    base = pc["contenders"]["ckpt_restart"]
    out = {}
    for c in ("elastic", "ps"):
        cur = pc["contenders"][c]
        ahead = [e - b > 2 * math.hypot(s, t) + 1e-4
                 for e, b, s, t in zip(cur["ettr"], base["ettr"], cur["se"], base["se"])]
        start = None
        for i in range(len(ns) - 1, -1, -1):
            if not ahead[i]:
                break
            start = ns[i]
        out[c] = start
    return out


# --------------------------------------------------------------------------- the sentence


def _pct(x) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.2f}%" if x >= 0.99 else f"{100 * x:.1f}%"


def _hours(s) -> str:
    if s < 3600:
        return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
    return f"{s / 3600:.1f} h" if s < 86400 * 3 else f"{s / 86400:.0f} days"


def conclusion(curves: dict) -> str:
    """One sentence with the numbers: ETTR of the four contenders at the largest size under
    the main preset (llama3 when drawn), and from which size elastic allreduce and the PS
    stay ahead of checkpoint-restart under each preset, and by how much at the largest."""
    presets = curves.get("presets") or {}
    if not presets:
        return "no simulated curves"
    main = "llama3" if "llama3" in presets else next(iter(presets))
    pc, n = presets[main], curves["workers"][-1]
    e = {c: pc["contenders"][c]["ettr"][-1] for c in CONTENDERS}
    tau = pc["young_daly_interval_s"][-1]
    cross = []
    for c in ("ps", "elastic"):
        x = pc["crossover"][c]
        others = ", ".join(f"{p2['crossover'][c]:,} {name}" if p2["crossover"][c] else f"never {name}"
                           for name, p2 in presets.items() if name != main)
        gap = 100 * (e[c] - e["ckpt_restart"])
        cross.append(f"{SHORT[c]} {'from ' + format(x, ',') + ' workers on' if x else 'never'}"
                     f"{' (' + others + ')' if others else ''}, {gap:+.2f} points at {n:,}")
    return (f"Simulated {curves['job_hours']:g} h jobs of {n:,} workers under {main}'s failure law (a job "
            f"failure every {_hours(pc['mtbf_s'][-1])}; {curves['cost_label']}): checkpoint-restart at the "
            f"Young/Daly interval ({_hours(tau) if tau else 'none'}) keeps an ETTR of {_pct(e['ckpt_restart'])}, "
            f"elastic allreduce {_pct(e['elastic'])}, the PS with R=2 {_pct(e['ps'])} and restarting from "
            f"scratch {_pct(e['scratch'])}; ahead of checkpoint-restart by more than the Monte Carlo error: "
            f"{'; '.join(cross)}.")


def write_curves(curves: dict, root=None) -> Path:
    path = Path(root or results_root()).joinpath(*CURVES_FILE)
    write_json_atomic(path, curves)
    return path


def headline(root=None) -> str | None:
    """The stored conclusion (results/sim/goodput_scale.json), or None before the first run."""
    d = read_json(Path(root or results_root()).joinpath(*CURVES_FILE))
    return d.get("conclusion") if isinstance(d, dict) else None


# --------------------------------------------------------------------------- the figure


def _anchors(ax, name: str, curves: dict, pc: dict):
    star = dict(marker="*", s=140, color="black", zorder=6)
    if name in ("llama3", "meta_rsc"):
        ax.scatter([A.LLAMA3_FIGURES["gpus"]], [A.LLAMA3_FIGURES["ettr_min"]], marker="^", s=70,
                   color="black", zorder=6, label="Llama 3: ETTR > 90% at 16K")
        ax.scatter([A.MEGASCALE_FIGURES["gpus"]], [A.MEGASCALE_FIGURES["ettr_min"]], marker="v", s=70,
                   color="0.4", zorder=6, label="MegaScale: ETTR > 90% at 10K")
    if name in ("deck", "osdi14"):
        ax.plot(curves["workers"], pc["single_attempt_success"], ":", color="tab:red", lw=1.2,
                label="classic MPI: P(one attempt finishes)")
    if name == "deck":
        ax.scatter([1000], [A.anchor("deck_mpi_success_over_1000_workers").value], label="deck: 30% finished",
                   **star)
    if name == "osdi14":
        xs = [mh / curves["job_hours"] for mh, _, _ in A.OSDI_FAILURE_TABLE]
        ax.scatter(xs, [1 - p for _, _, p in A.OSDI_FAILURE_TABLE], label="OSDI'14 Table 1: jobs finished",
                   **star)


def _preset_panels(ax, lost, name, curves, pc):
    ns = curves["workers"]
    for c in CONTENDERS:
        e = np.array(pc["contenders"][c]["ettr"], dtype=float)
        ax.plot(ns, e, "-o", ms=3, color=COLORS[c], label=LABELS[c])
        lost.plot(ns, np.clip(1 - e, 1e-6, 1), "-o", ms=3, color=COLORS[c])
    daly = np.array([np.nan if v is None else v for v in pc["daly_ettr"]], dtype=float)
    ax.plot(ns, daly, "--", color="black", lw=0.9, label="Young/Daly optimum (Daly 2006 closed form)")
    lost.plot(ns, np.clip(1 - daly, 1e-6, 1), "--", color="black", lw=0.9)
    _anchors(ax, name, curves, pc)
    for c in ("ps", "elastic"):
        x = pc["crossover"].get(c)
        if x:
            lost.axvline(x, color=COLORS[c], lw=0.8, ls="-.", label=f"{SHORT[c]} ahead from {x:,}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("ETTR (productive / wall time)")
    ax.set_title(f"{name}: {TITLES.get(name, pc['source'])}", fontsize=8)
    lost.set_yscale("log")
    lost.set_ylim(1e-6 * 0.8, 1.2)
    lost.set_ylabel("1 - ETTR (time lost)")
    lost.set_xlabel("workers")
    if lost.get_legend_handles_labels()[0]:
        lost.legend(fontsize=6, loc="upper left")
    for a in (ax, lost):
        a.set_xscale("log", base=2)
        a.grid(alpha=0.3)


def _measured_panels(ax, succ, validation):
    for c in CONTENDERS:
        rs = [r for r in validation if r["contender"] == c]
        if not rs:
            continue
        x = np.array([r["ranks"] for r in rs], dtype=float) * (1 + 0.05 * CONTENDERS.index(c))
        with_e = [(xi, r) for xi, r in zip(x, rs) if r.get("measured_ettr_mean") is not None]
        if with_e:
            xe = np.array([xi for xi, _ in with_e])
            m = np.array([r["measured_ettr_mean"] for _, r in with_e])
            ci = np.array([r["measured_ettr_ci"] or (v, v) for (_, r), v in zip(with_e, m)])
            ax.errorbar(xe, m, yerr=[m - ci[:, 0], ci[:, 1] - m], fmt="o", color=COLORS[c], capsize=3,
                        label=f"{SHORT[c]}: measured (95% CI)")
            ax.scatter(xe, [r["simulated_ettr_mean"] if r["simulated_ettr_mean"] is not None else np.nan
                            for _, r in with_e], marker="x", s=50, color=COLORS[c], zorder=5)
        m = np.array([r["measured_rate"] for r in rs])
        ci = np.array([r["measured_ci"] for r in rs])
        succ.errorbar(x, m, yerr=[m - ci[:, 0], ci[:, 1] - m], fmt="o", color=COLORS[c], capsize=3)
        succ.scatter(x, [np.nan if r["simulated_rate"] is None else r["simulated_rate"] for r in rs], marker="x",
                     s=50, color=COLORS[c], zorder=5)
    passed = sum(r["passed"] for r in validation)
    ax.set_title(f"measured cells (o, 95% CI) vs simulated (x): {passed}/{len(validation)} pass", fontsize=8)
    ax.set_ylabel("mean ETTR of successful trials")
    succ.set_ylabel("success rate")
    succ.set_xlabel("ranks")
    succ.set_ylim(-0.02, 1.05)
    for a in (ax, succ):
        a.set_xscale("log", base=2)
        a.grid(alpha=0.3)
    ax.legend(fontsize=6)


def figure(curves: dict, validation: list[dict] | None = None, out_dir=None):
    """results/figures/goodput_scale.png: per preset, ETTR (top) and time lost, 1 - ETTR
    on a log scale (bottom, where the gaps between the contenders show); the measured
    cells next to their simulation when `validation` rows are given."""
    import textwrap

    from matplotlib.figure import Figure

    from . import figures
    names = list(curves["presets"])
    cols = len(names) + (1 if validation else 0)
    fig = Figure(figsize=(4.3 * cols, 8.4))
    for i, name in enumerate(names):
        ax, lost = fig.add_subplot(2, cols, i + 1), fig.add_subplot(2, cols, cols + i + 1)
        _preset_panels(ax, lost, name, curves, curves["presets"][name])
        h, lab = ax.get_legend_handles_labels()
        keep = [(a, b) for a, b in zip(h, lab) if i == 0 or (b not in LABELS.values() and "Daly" not in b)]
        if keep:
            ax.legend(*zip(*keep), fontsize=6, loc="lower left")
    if validation:
        _measured_panels(fig.add_subplot(2, cols, cols), fig.add_subplot(2, cols, 2 * cols), validation)
    fig.suptitle(f"ETTR vs workers: {curves['job_hours']:g} h jobs, the four contenders under each failure "
                 f"law ({curves['cost_label']})", fontsize=10)
    fig.text(0.01, 0.005, textwrap.fill(curves["conclusion"], int(48 * cols)), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig, figures.save(fig, "goodput_scale", out_dir)
