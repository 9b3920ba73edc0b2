"""One function per figure; each writes a PNG atomically (temporary name, then rename)
under `figures_dir()` (results/figures, or $PSLAB_FIGURES_DIR) and returns
(figure, path). The experiment scripts call them after a sweep; the notebooks call them
and show the PNG.

    fig_goodput(trials)                ETTR and success rate vs ranks, four contenders, 95% intervals
    fig_success_rate(trials, curves)   job success rate vs workers, measured + simulated
    fig_consistency(runs)              BSP vs SSP(s) vs ASP with a straggler
    fig_traffic(runs)                  bytes per step: dense / sparse allreduce / PS / compression
    fig_recovery(runs)                 recovery after a kill, per mechanism
    fig_stragglers(runs)               waiting vs bounded staleness vs backup instances
    fig_scalability(runs)              memory per process and the largest model under a budget
    fig_sim_validation(rows)           simulated vs measured success rate at the measured sizes

Figures use matplotlib's object API (no pyplot state), so they work the same in scripts,
tests and notebooks.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import comparisons as C
from . import metrics as M
from .io import figures_dir

COLORS = {"allreduce": "tab:red", "elastic": "tab:orange", "ps": "tab:blue", "local": "tab:gray"}
LABELS = {"allreduce": "classic MPI allreduce", "elastic": "elastic allreduce (ULFM)", "ps": "parameter server"}
ANCHOR_STYLE = dict(color="black", marker="*", s=120, zorder=5)


def save(fig: Figure, name: str, out_dir=None) -> Path:
    """Write fig as <out_dir>/<name>.png: a temporary file first, then an atomic rename."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    tmp = out / f".{name}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _note(ax, text, loc="lower right", size=7):
    pos = {"lower right": (0.98, 0.02, "right", "bottom"), "upper right": (0.98, 0.98, "right", "top"),
           "upper left": (0.02, 0.98, "left", "top"), "lower left": (0.02, 0.02, "left", "bottom"),
           "center": (0.5, 0.5, "center", "center")}[loc]
    ax.text(pos[0], pos[1], text, transform=ax.transAxes, ha=pos[2], va=pos[3], fontsize=size, color="0.3")


def _legend(ax, **kw):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _empty(ax, text):
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", wrap=True, transform=ax.transAxes)


# --------------------------------------------------------------------------- 2. consistency


def _staleness_color(arm_row):
    import matplotlib

    if arm_row["arm"] == "bsp-nostraggler":
        return "black"
    if arm_row["consistency"] == "asp":
        return "tab:purple"
    s = arm_row["staleness"] or 0
    return matplotlib.colormaps["viridis"](min(1.0, np.log2(1 + s) / np.log2(17)) * 0.85)


def fig_consistency(runs, out_dir=None):
    """Left: test log-loss against the examples the workers had processed (from their own
    step records; independent of when the coordinator evaluated). Middle: time and
    examples to the target log-loss relative to BSP, paired by repetition (bars: median,
    dots: repetitions). Right: idle fraction of the non-slowed workers, and the staleness
    the servers served."""
    rows = C.consistency_rows(runs)
    target = rows.target
    fig = Figure(figsize=(13.5, 4.3))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    if not rows:
        _empty(ax2, "no consistency runs in results/consistency")
        return fig, save(fig, "consistency", out_dir)
    arms = C.by_arm(runs)
    for row in rows:
        ok = [r for r in arms[row["arm"]] if r.get("status") == "succeeded"]
        if not ok:
            continue
        # the repetition whose examples to target is the median one
        ex = [(M.time_to_target(r, target, "examples") if target else None) or np.inf for r in ok]
        r = ok[int(np.argsort(ex)[len(ex) // 2])]
        s = M.eval_series(r)
        ls = "--" if row["arm"] == "bsp-nostraggler" else "-"
        ax1.plot(s["examples"] / 1e3, s["logloss"], ls, color=_staleness_color(row), lw=1.4,
                 label=row["arm"].replace("-nostraggler", " (no straggler)"))
    if target:
        ax1.axhline(target, color="0.5", lw=0.8, ls=":")
        _note(ax1, f"target {target:.4f} (fault-free BSP + 1%)", "upper right")
    ax1.set_xlabel("thousands of examples processed (all workers)")
    ax1.set_ylabel("test log-loss")
    ax1.set_title("Convergence per example, one worker slowed 3x", fontsize=10)
    lo = np.nanmin([row["final_logloss"] or np.nan for row in rows])
    if np.isfinite(lo):
        ax1.set_ylim(lo * 0.995, lo * 1.12)
    _legend(ax1, fontsize=7, ncol=2)

    x = np.arange(len(rows))
    w = 0.38
    for off, key, label, hatch in ((-w / 2, "time_vs_bsp", "time to target", None),
                                   (w / 2, "examples_vs_bsp", "examples to target", "//")):
        vals = [row[key] if row[key] is not None else np.nan for row in rows]
        ax2.bar(x + off, vals, w, color=[_staleness_color(row) for row in rows], hatch=hatch,
                alpha=0.9 if hatch is None else 0.55, label=label, edgecolor="white" if hatch is None else "0.2")
        for i, row in enumerate(rows):
            reps = row[key + "_reps"]
            ax2.plot([i + off] * len(reps), reps, "k.", ms=3)
            if not row["reached"]:
                ax2.text(i, 0.02, "not\nreached", ha="center", va="bottom", fontsize=7)
    ax2.axhline(1.0, color="0.3", lw=0.8)
    ax2.axhline(1 / 1.6, color="0.3", lw=0.8, ls=":")
    ax2.text(len(rows) - 0.5, 1 / 1.6, "OSDI'14: delay 8 at 1/1.6 of BSP's time", ha="right", va="bottom", fontsize=7)
    ax2.set_xticks(x, [row["arm"].replace("-nostraggler", "\n(no strag.)") for row in rows], fontsize=7)
    ax2.set_ylabel("relative to BSP with the straggler (lower: better)")
    ax2.set_title("To the target log-loss: time (solid) and examples (hatched)", fontsize=10)
    top = np.nanmax([v for row in rows for v in row["time_vs_bsp_reps"] + row["examples_vs_bsp_reps"]] + [1.2])
    ax2.set_ylim(0, top * 1.1)

    idle = [row["idle_fraction"] if row["idle_fraction"] is not None else np.nan for row in rows]
    ax3.bar(x, idle, color=[_staleness_color(row) for row in rows])
    ax3.set_xticks(x, [row["arm"].replace("-nostraggler", "\n(no strag.)") for row in rows], fontsize=7)
    ax3.set_ylim(0, 1)
    ax3.set_ylabel("idle fraction of the other workers")
    ax3.set_title("Waiting, and staleness served", fontsize=10)
    ax3.axhline(0.50, color="0.3", lw=0.8, ls="--")
    ax3.text(len(rows) - 0.5, 0.51, "OSDI'14 delay 0: 50%", ha="right", va="bottom", fontsize=7)
    ax3.axhline(0.017, color="0.3", lw=0.8, ls=":")
    ax3.text(len(rows) - 0.5, 0.025, "delay 16: 1.7%", ha="right", va="bottom", fontsize=7)
    ax3b = ax3.twinx()
    ax3b.plot(x, [row["staleness_mean"] if row["staleness_mean"] is not None else np.nan for row in rows],
              "o", color="tab:red", ms=5, label="mean staleness served")
    ax3b.set_ylabel("mean staleness served (clocks)", color="tab:red", fontsize=8)
    ax3b.set_yscale("symlog", linthresh=1)
    fig.tight_layout()
    return fig, save(fig, "consistency", out_dir)


# --------------------------------------------------------------------------- 3. traffic


def fig_traffic(runs, out_dir=None):
    rows = C.traffic_rows(runs)
    datas = sorted({r["data"] for r in rows if r["data"]}, key=str)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, max(1, len(datas)), squeeze=False)[0]
    if not datas:
        _empty(axes[0], "no traffic runs in results/traffic")
        return fig, save(fig, "traffic", out_dir)
    for ax, data in zip(axes, datas):
        rs = [r for r in rows if r["data"] == data and r["bytes_per_step"]]
        x = np.arange(len(rs))
        col = ["tab:red" if r["backend"] == "allreduce" else "tab:blue" if not r["switch"] else "tab:cyan"
               for r in rs]
        ax.bar(x, [r["bytes_per_step"] for r in rs], color=col)
        for i, r in enumerate(rs):
            lab = f"{r['vs_ps']:.2f}x" if r["vs_ps"] and r["backend"] == "ps" and r["variant"] not in ("ps", "ps-ftrl") \
                else ""
            if r["variant"] in ("ps", "allreduce-sparse") and r["vs_dense"]:
                lab = f"{r['vs_dense']:.0f}x < dense" if r["vs_dense"] >= 2 else f"{r['vs_dense']:.2f}x"
            if lab:
                ax.text(i, r["bytes_per_step"] * 1.15, lab, ha="center", fontsize=6.5, rotation=90, va="bottom")
        ax.set_yscale("log")
        ax.set_xticks(x, [r["variant"].replace("allreduce", "AR") for r in rs], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("bytes on the wire per step (all ranks)")
        top = max(r["bytes_per_step"] for r in rs) if rs else 1
        ax.set_ylim(top / 1e3, top * 20)
        ax.set_title(f"data={data}")
        kkt = next((r for r in rs if r["variant"] == "ps-ftrl-kkt"), None)
        cache = next((r for r in rs if r["variant"] == "ps-key_cache"), None)
        notes = ["OSDI'14: key caching saves ~50%, KKT filters >93% of features,",
                 "filters cut traffic 40x (server) / 12x (worker)"]
        got = []
        if cache and cache["vs_ps"]:
            got.append(f"key caching here: {1 - 1 / cache['vs_ps']:.0%} saved")
        if kkt and kkt["kkt_kept_fraction"] is not None:
            got.append(f"KKT here: {1 - kkt['kkt_kept_fraction']:.0%} of pushed keys filtered")
        _note(ax, "\n".join(notes + got), "upper right", 6.5)
    fig.suptitle("Communication per step: dense allreduce vs sparse allgather vs PS pull/push, and compression",
                 fontsize=10)
    fig.tight_layout()
    return fig, save(fig, "traffic", out_dir)


# --------------------------------------------------------------------------- 4. recovery


def fig_recovery(runs, out_dir=None, skipped: dict | None = None):
    """Left: seconds from the kill until training is back where it was (elastic / PS: the
    recovery record; classic MPI: the rerun must redo everything up to the kill). Right:
    wall time to a trained model, next to the same layout run fault-free.
    skipped: {arm: reason} of mechanisms not measured (drawn as empty slots)."""
    rows = list(C.recovery_rows(runs))
    skipped = {k: v for k, v in (skipped or {}).items() if not k.endswith("-ref")}
    fig = Figure(figsize=(11.5, 4.4))
    ax1, ax2 = fig.subplots(1, 2)
    if not rows and not skipped:
        _empty(ax1, "no recovery runs in results/recovery")
        return fig, save(fig, "recovery", out_dir)
    order = [a for a in C.RECOVERY_ORDER if a in skipped or any(r["arm"] == a for r in rows)]
    order += [r["arm"] for r in rows if r["arm"] not in order]
    byarm = {r["arm"]: r for r in rows}
    arms = C.by_arm(runs)
    x = np.arange(len(order))

    def color(a):
        r = byarm.get(a, {})
        return (COLORS["ps"] if a.startswith("ps") else COLORS["elastic"] if r.get("mechanism") == "shrink"
                else COLORS["allreduce"])

    top = 1.0
    for i, a in enumerate(order):
        r = byarm.get(a)
        if r is None:
            ax1.text(i, 0.012, "not measured:\n" + _wrap(skipped.get(a, "").split(" (")[0], 18), ha="center",
                     va="bottom", fontsize=6.5, color="0.35")
            ax2.text(i, 0.5, "not measured", ha="center", va="bottom", fontsize=7, color="0.35", rotation=90)
            continue
        vals = [v for run in arms[a] for v in (run.get("recovery_s") or [])]
        if r["mechanism"] == "restart" and r.get("restart_recovery_s") is not None:
            v = r["restart_recovery_s"]
            ax1.bar(i, v, color=color(a), alpha=0.35, hatch="//")
            ax1.text(i, v * 1.1, f"{v:.1f} s: job failed;\na rerun redoes\nall of it", ha="center", va="bottom",
                     fontsize=7)
            top = max(top, v)
        elif vals:
            ax1.bar(i, np.median(vals), color=color(a), alpha=0.85)
            ax1.plot([i] * len(vals), vals, "k.", ms=4)
            ax1.text(i, max(vals) * 1.1, f"{np.median(vals):.2f} s", ha="center", va="bottom", fontsize=7)
            top = max(top, max(vals))
        else:
            ax1.text(i, 0.012, "no recovery\nrecorded\n(" + r["status"] + ")", ha="center", va="bottom", fontsize=7)
        # right: wall time to a trained model vs fault-free
        ax2.bar(i, r["wall_s"] if r["wall_s"] is not None else np.nan, color=color(a), alpha=0.85)
        if r["reference_wall_s"] is not None:
            ax2.plot([i - 0.4, i + 0.4], [r["reference_wall_s"]] * 2, "k--", lw=1)
        txt = f"lost updates: {r['lost_updates']:.0f}" if r["lost_updates"] is not None else r["status"]
        if r["auc_change"] is not None:
            txt += f"\nAUC {r['auc_change']:+.4f}"
        ax2.text(i, (r["wall_s"] or 0) * 1.02, txt, ha="center", va="bottom", fontsize=6.5)
    ax1.axhline(0.8, color="0.3", ls=":", lw=0.8)
    ax1.text(len(order) - 0.5, 0.8, "OSDI'14: server recovered in 0.8 s", fontsize=7, ha="right", va="bottom")
    ax1.set_yscale("log")
    ax1.set_ylim(0.01, top * 5)
    ax1.set_xticks(x, order, rotation=20, ha="right", fontsize=8)
    ax1.set_ylabel("seconds from the kill to training again")
    ax1.set_title("Recovery time (bars: median; dots: runs)", fontsize=10)
    ax2.set_xticks(x, order, rotation=20, ha="right", fontsize=8)
    ax2.set_ylabel("wall seconds to a trained model (median)")
    ax2.set_title("Wall time with one kill (dashed: fault-free; classic: failed run + rerun)", fontsize=9)
    ymax = max([r["wall_s"] or 0 for r in rows] + [1.0])
    ax2.set_ylim(0, ymax * 1.3)
    fig.tight_layout()
    return fig, save(fig, "recovery", out_dir)


def _wrap(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)[:6])


# --------------------------------------------------------------------------- 5. stragglers


def fig_stragglers(runs, out_dir=None, skipped=None):
    rows = C.straggler_rows(runs)
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    if not rows:
        _empty(ax1, "no straggler runs in results/stragglers")
        return fig, save(fig, "stragglers", out_dir)
    x = np.arange(len(rows))
    col = ["tab:red" if r["backend"] == "allreduce" else "tab:green" if r["mitigation"] == "backup" else "tab:blue"
           for r in rows]
    alpha = [0.45 if (r["straggler"] or 1) == 1 else 0.9 for r in rows]
    for i, r in enumerate(rows):
        ax1.bar(i, r["train_time_s"] or np.nan, color=col[i], alpha=alpha[i])
        if r["train_time_vs_fault_free"]:
            lab = f"{r['train_time_vs_fault_free']:.2f}x"
            if r.get("train_time_gain_vs_nobackup") is not None:
                lab += f"\n{-r['train_time_gain_vs_nobackup']:+.0%}\nvs ASP"
            ax1.text(i, r["train_time_s"], lab, ha="center", va="bottom", fontsize=7)
        ax2.bar(i, r["time_to_target_s"] or np.nan, color=col[i], alpha=alpha[i])
        if r["time_to_target_gain_vs_wait"] is not None and r["mitigation"] not in ("wait", "none"):
            ax2.text(i, r["time_to_target_s"], f"{r['time_to_target_gain_vs_wait']:+.0%}", ha="center",
                     va="bottom", fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(x, [r["arm"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax1.set_ylabel("seconds of training (median)")
    ax1.set_title("Training time (x = vs the same backend without straggler)")
    ax2.set_ylabel("seconds to the target log-loss (median)")
    ax2.set_title("Time to target (% = gain vs waiting, BSP)")
    _note(ax2, "KunPeng: backup instances gain 10-20%" + (f"\nskipped: {skipped}" if skipped else ""),
          "upper left")
    fig.tight_layout()
    return fig, save(fig, "stragglers", out_dir)


# --------------------------------------------------------------------------- 6. scalability


def fig_scalability(runs, out_dir=None, budget_bytes: float = 2 * C.GIB):
    pts = [p for p in C.scalability_points(runs) if p["status"] == "succeeded" and p["params_stored"]]
    big = C.largest_model(runs, budget_bytes)
    fig = Figure(figsize=(11.5, 4.4))
    ax1, ax2 = fig.subplots(1, 2)
    if not pts:
        _empty(ax1, "no scalability runs in results/scalability")
        return fig, save(fig, "scalability", out_dir)
    ar_style = {"dense": ("o-", "tab:red", "allreduce, dense hashed model: every rank"),
                "sparse": ("o--", "salmon", "allreduce, sparse 64-bit keys: every rank")}
    for design, (fmt_, col, label) in ar_style.items():
        ar = sorted((p for p in pts if p["design"] == design), key=lambda p: p["params_stored"])
        if ar:
            ax1.plot([p["params_stored"] for p in ar], [p["rank_rss_bytes"] / C.GIB for p in ar], fmt_, color=col,
                     label=label)
    ps = [p for p in pts if str(p["design"]).startswith("ps")]
    cmap = {1: "tab:blue", 2: "tab:cyan", 4: "tab:green", 8: "tab:olive"}
    for s, group_ in sorted(C.group(ps, "servers").items()):
        group_ = sorted(group_, key=lambda p: p["params_stored"])
        ax1.plot([p["params_stored"] for p in group_], [p["server_rss_bytes"] / C.GIB for p in group_], "s-",
                 color=cmap.get(s, "tab:blue"), label=f"PS: each of {s} server{'s' if s > 1 else ''}")
    if ps:
        wk = sorted(ps, key=lambda p: p["params_stored"])
        ax1.plot([p["params_stored"] for p in wk], [(p["worker_rss_bytes"] or np.nan) / C.GIB for p in wk], "x",
                 color="0.4", label="PS: a worker")
    ax1.set_xscale("log")
    ax1.set_xlabel("model parameters stored (whole model)")
    ax1.set_ylabel("peak RSS per process (GiB)")
    ax1.set_title("Memory per process, measured")
    _legend(ax1, fontsize=7)

    if big:
        y = np.arange(len(big))
        ax2.barh(y, [r["largest_params"] for r in big],
                 color=[("salmon" if "sparse" in r["design"] else "tab:red") if r["servers"] == 0
                        else cmap.get(r["servers"], "tab:blue") for r in big])
        for i, r in enumerate(big):
            ax2.text(r["largest_params"], i, f" {r['largest_params']:.2g} ({r['bytes_per_param']:.0f} B/param)",
                     va="center", fontsize=7)
        ax2.set_yticks(y, [r["design"] for r in big], fontsize=8)
        ax2.set_xscale("log")
        ax2.set_xlim(min(r["largest_params"] for r in big) / 10, max(r["largest_params"] for r in big) * 30)
        ax2.set_xlabel("parameters (linear fit of RSS on parameters)")
        ax2.set_title(f"Largest model within {budget_bytes / C.GIB:g} GiB per process")
    else:
        _empty(ax2, "not enough points to fit memory per parameter")
    _note(ax2, "deck: \"multiple servers vs single server\"", "lower right")
    fig.tight_layout()
    return fig, save(fig, "scalability", out_dir)


# --------------------------------------------------------------------------- 1. success rate (headline)


def fig_success_rate(trials, curves: dict | None, out_dir=None):
    """Job success rate vs workers: measured (Wilson 95% intervals, by backend and ranks)
    and simulated curves (pslab.sim, calibrated on the measured runs) to 10,000 workers,
    with the deck's 30% above 1000 workers and Li et al.'s failure table marked.

    curves: results/sim/curves.json as written by pslab.analysis.simulation."""
    from ..sim import OSDI_FAILURE_TABLE, anchor

    fig = Figure(figsize=(12.5, 4.8))
    ax1, ax2 = fig.subplots(1, 2)
    rates = M.success_rates([t for t in trials if t.get("backend_key") in COLORS], by=("backend_key", "workers")) \
        if trials and all("workers" in t for t in trials) else \
        M.success_rates([t for t in trials if t.get("backend_key") in COLORS], by=("backend_key", "ranks"))
    xkey = "workers" if rates and "workers" in rates[0] else "ranks"
    curves = curves or {}
    meas = curves.get("measured_regime") or {}
    prod = curves.get("production_regime") or {}
    for ax, regime, title in ((ax1, meas, "Under the measured hazard"), (ax2, prod, "")):
        for b in ("allreduce", "elastic", "ps"):
            c = regime.get("curves", {}).get(b)
            if c:
                n = np.array(c["workers"])
                p = np.array(c["success_rate"])
                ax.plot(n, p, "-", color=COLORS[b], lw=1.6, label=f"{LABELS[b]} (simulated)")
                if c.get("ci_low"):
                    ax.fill_between(n, c["ci_low"], c["ci_high"], color=COLORS[b], alpha=0.12, lw=0)
        for b in ("allreduce", "elastic", "ps"):
            c = regime.get("curves_deck", {}).get(b)
            if c:
                ax.plot(c["workers"], c["success_rate"], "--", color=COLORS[b], lw=1.0, alpha=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlim(2, 12000)
        ax.set_xlabel("workers")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for b in ("allreduce", "elastic", "ps"):
        pts = sorted([r for r in rates if r["backend_key"] == b], key=lambda r: r[xkey])
        if not pts:
            continue
        n = np.array([r[xkey] for r in pts], float)
        # elastic/PS points sit slightly right so the intervals do not hide each other
        off = {"allreduce": 0.94, "elastic": 1.0, "ps": 1.06}[b]
        p = np.array([r["rate"] for r in pts])
        err = np.array([p - [r["ci_low"] for r in pts], [r["ci_high"] for r in pts] - p])
        ax1.errorbar(n * off, p, yerr=err, fmt="o", color=COLORS[b], capsize=3, ms=6,
                     label=f"{LABELS[b]}: measured ({sum(r['trials'] for r in pts)} trials)")
    h = meas.get("hazard_label")
    ax1.set_title("Measured (95% Wilson) and simulated, accelerated hazard" + (f"\n{h}" if h else ""), fontsize=9)
    ax1.set_ylabel("job success rate")
    _legend(ax1, fontsize=6.5, loc="lower left")
    if rates:
        _note(ax1, "trials spare rank 0 (coordinator / evaluator);\nthe simulator puts every rank at risk",
              "upper right", 6.5)
    if not rates:
        _note(ax1, "no measured trials yet (results/success_rate/trials.jsonl)", "center", 9)

    # production regime: anchors
    deck = anchor("deck_mpi_success_over_1000_workers")
    ax2.scatter([1000], [deck.value], **ANCHOR_STYLE)
    ax2.annotate("deck: MPI finished 30%\nof jobs at >1000 workers", (1000, deck.value), (12, 0.42),
                 fontsize=7, arrowprops=dict(arrowstyle="->", lw=0.6))
    hours = prod.get("job_hours")
    if hours:
        n_osdi = [mh / hours for mh, _, _ in OSDI_FAILURE_TABLE]
        ax2.scatter(n_osdi, [1 - f for _, _, f in OSDI_FAILURE_TABLE], color="black", marker="D", s=40, zorder=5,
                    label=f"Li et al. OSDI'14 Table 1 (1 - failed), at {hours:g} h per job")
        for (mh, _, f), n in zip(OSDI_FAILURE_TABLE, n_osdi):
            ax2.annotate(f"{f:.1%} failed\n~{mh:,.0f} machine-h", (n, 1 - f), (0, -28), textcoords="offset points",
                         fontsize=6.5, ha="center")
    ax2.set_title(prod.get("title", "Production scale: anchored hazard"), fontsize=9)
    _legend(ax2, fontsize=6.5, loc="lower left")
    if not prod:
        _note(ax2, "run experiments/simulate.py for the simulated curves", "center", 9)
    fig.suptitle("Job success rate vs number of workers: classic MPI allreduce vs elastic allreduce vs PS",
                 fontsize=10)
    fig.tight_layout()
    return fig, save(fig, "success_rate", out_dir)


def fig_sim_validation(rows: list[dict], out_dir=None):
    """Each measured cell: measured success rate with its Wilson 95% interval, and the
    simulator's prediction (calibrated on the same results)."""
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    if not rows:
        _empty(ax, "no validation rows (results/sim/validation.json)")
        return fig, save(fig, "sim_validation", out_dir)
    x = np.arange(len(rows))
    m = np.array([r["measured_rate"] for r in rows])
    lo = np.array([r["measured_ci"][0] for r in rows])
    hi = np.array([r["measured_ci"][1] for r in rows])
    ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o", color="black", capsize=3, label="measured (95% Wilson)")
    ax.plot(x, [r["simulated_rate"] for r in rows], "D", ms=7, mfc="none",
            color="tab:green", label="simulated")
    for i, r in enumerate(rows):
        if not r["inside"]:
            ax.text(i, r["simulated_rate"] + 0.04, "outside", color="tab:red", ha="center", fontsize=7)
    ax.set_xticks(x, [f"{r['backend']}\nn={r['ranks']}" + ("\nno hazard" if not r.get("hazard") else "")
                      for r in rows], fontsize=7)
    ax.set_ylim(-0.05, 1.1)
    ax.set_ylabel("job success rate")
    inside = sum(r["inside"] for r in rows)
    ax.set_title(f"Simulator validation: {inside}/{len(rows)} predictions inside the measured 95% interval",
                 fontsize=10)
    _legend(ax, fontsize=8)
    fig.tight_layout()
    return fig, save(fig, "sim_validation", out_dir)


def fig_sim_curves(curves: dict, out_dir=None):
    """What failures cost at scale (simulated, production regime): the expected time until
    a job has finished, resubmitting failed ones, over its failure-free length, and the
    rank failures a job meets, vs workers; solid under Li et al.'s failure law, dashed
    under the deck's constant rate."""
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    prod = (curves or {}).get("production_regime") or {}
    if not prod.get("curves"):
        _empty(ax1, "no simulated curves (run experiments/simulate.py)")
        return fig, save(fig, "sim_curves", out_dir)
    length = 3600.0 * float(prod.get("job_hours") or 1.0)
    for key, ls in (("curves", "-"), ("curves_deck", "--")):
        for b, c in (prod.get(key) or {}).items():
            n = np.array(c["workers"], float)
            t = np.array([np.nan if v is None else v for v in c["resubmit_time_to_target_s"]], float)
            lab = LABELS[b] if ls == "-" else None
            ax1.plot(n, t / length, ls, color=COLORS[b], label=lab)
            ax2.plot(n, c["failures_mean"], ls, color=COLORS[b], label=lab)
    for ax, ylabel, title in ((ax1, "expected time to a finished job / job length",
                               "Resubmitting failed jobs until one finishes"),
                              (ax2, "rank failures per job (mean)",
                               "Failures a job meets (elastic allreduce and the PS go on)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        _legend(ax, fontsize=7, loc="upper left")
    _note(ax2, prod.get("title", ""), "lower right", 6.5)
    fig.tight_layout()
    return fig, save(fig, "sim_curves", out_dir)


GOODPUT_COLORS = {"scratch": "tab:red", "ckpt_restart": "tab:purple", "elastic": "tab:orange", "ps": "tab:blue"}


def fig_goodput(trials, out_dir=None, name: str = "goodput"):
    """Left: ETTR (productive / wall time, failed jobs counted 0) vs ranks, mean and
    95% interval (stratified by faults); right: success rate with Wilson 95% intervals; one line per
    contender, offset a little along x so the intervals do not hide each other."""
    cells = list(C.goodput_cells(trials))
    fig = Figure(figsize=(11, 4.3))
    ax1, ax2 = fig.subplots(1, 2)
    if not cells:
        _empty(ax1, "no goodput trials in results/goodput/trials.jsonl")
        return fig, save(fig, name, out_dir)
    ranks = sorted({c["ranks"] for c in cells})
    present = [k for k in C.GOODPUT_ORDER if any(c["contender"] == k for c in cells)]
    present += sorted({c["contender"] for c in cells} - set(present))
    for j, k in enumerate(present):
        cs = sorted((c for c in cells if c["contender"] == k), key=lambda c: c["ranks"])
        x = np.array([c["ranks"] for c in cs], float) * 2 ** (0.06 * (j - (len(present) - 1) / 2))
        col = GOODPUT_COLORS.get(k, "tab:gray")
        lab = C.GOODPUT_LABELS.get(k, k)
        e = np.array([c["ettr_mean"] for c in cs])
        elo = np.array([c["ettr_ci"][0] if c["ettr_ci"][0] is not None else m for c, m in zip(cs, e)])
        ehi = np.array([c["ettr_ci"][1] if c["ettr_ci"][1] is not None else m for c, m in zip(cs, e)])
        ax1.errorbar(x, e, yerr=[e - elo, ehi - e], fmt="o-", color=col, capsize=3, label=lab)
        r = np.array([c["success_rate"] for c in cs])
        lo = np.array([c["success_ci"][0] for c in cs])
        hi = np.array([c["success_ci"][1] for c in cs])
        ax2.errorbar(x, r, yerr=[r - lo, hi - r], fmt="s-", color=col, capsize=3, label=lab)
    n_min = min(c["trials"] for c in cells)
    for ax, ylabel, title in ((ax1, "ETTR: productive / wall time (failed job: 0)",
                               "Goodput (mean, 95% interval)"),
                              (ax2, "job success rate", "Success rate (Wilson 95% interval)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(n) for n in ranks])
        ax.set_xlabel("ranks (world size)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(title, fontsize=10)
    ax1.axhline(0.9, color="0.3", lw=0.8, ls=":")
    ax1.text(ranks[0], 0.905, "Llama 3 / MegaScale: ETTR > 90%", fontsize=7, va="bottom")
    _legend(ax2, fontsize=7, loc="lower left")
    hz = next((t.get("hazard") for t in trials if t.get("hazard")), None) or {}
    mix = hz.get("actions") or {hz.get("action", "kill"): 1}
    _note(ax1, f">= {n_min} paired trials a cell; hazard {hz.get('rate_per_s', '?')}/rank/s, "
               + ", ".join(f"{a} {w:g}" for a, w in mix.items()) + ", rank 0 at risk", "lower left", 6.5)
    fig.tight_layout()
    return fig, save(fig, name, out_dir)


def draw_all(root=None, out_dir=None, budget_bytes: float = 2 * C.GIB) -> dict:
    """Every figure from results/ (what `make reproduce` ends with). Returns {name: path or error}."""
    from . import simulation as S
    from .io import load_runs, results_root

    root = Path(root or results_root())
    out = {}

    def attempt(name, fn):
        try:
            out[name] = fn()[1]
        except Exception as e:  # one broken figure must not hide the others
            out[name] = f"failed: {type(e).__name__}: {e}"

    def runs(name):
        d = root / name
        return load_runs(d) if d.exists() else []

    def skipped(name):
        from .io import read_json
        m = read_json(root / name / "manifest.json") or {}
        return {a["label"]: a["skipped"] for a in m.get("arms", []) if a.get("skipped")}

    from .io import read_jsonl
    # the committed full run; without it, what make reproduce's small preset left
    gp = read_jsonl(root / "goodput" / "trials.jsonl") or read_jsonl(root / "goodput_small" / "trials.jsonl")
    attempt("goodput", lambda: fig_goodput(gp, out_dir))
    attempt("consistency", lambda: fig_consistency(runs("consistency"), out_dir))
    attempt("traffic", lambda: fig_traffic(runs("traffic"), out_dir))
    attempt("recovery", lambda: fig_recovery(runs("recovery"), out_dir, skipped("recovery")))
    attempt("stragglers", lambda: fig_stragglers(runs("stragglers"), out_dir,
                                                 "; ".join(skipped("stragglers")) or None))
    attempt("scalability", lambda: fig_scalability(runs("scalability"), out_dir, budget_bytes))
    simres = S.load_sim(root)
    attempt("success_rate", lambda: fig_success_rate(S.success_trials(root), simres["curves"], out_dir))
    attempt("sim_validation", lambda: fig_sim_validation(simres["validation"], out_dir))
    attempt("sim_curves", lambda: fig_sim_curves(simres["curves"], out_dir))
    return out
