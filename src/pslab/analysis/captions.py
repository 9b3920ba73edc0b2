"""Caption-level conclusions, computed from results/ (so a caption can never say more than
the committed numbers do). The notebooks print them under each figure, and
`experiments/figures_md.py` writes them into notebooks/FIGURES.md.

Each function takes the runs (or the simulator's outputs) and returns one or two
sentences; where an arm is missing it says so instead of concluding.
"""
from __future__ import annotations

from . import comparisons as C
from . import intervals as I
from . import metrics as M


def _pct(x):
    return f"{x:.0%}"


def _range(vals) -> str:
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return ""
    return f" (repetitions {min(vals):.2f}-{max(vals):.2f})"


def consistency(runs) -> str:
    """Each SSP/ASP arm against BSP (paired by repetition, 95% t intervals on the log
    ratios): "fewer examples" or "sooner" only where the interval clears 1 by the margin
    (intervals.MARGIN), else intervals.no_ranking's words; no "best" staleness unless its
    interval separates from the others'."""
    rows = {r["arm"]: r for r in C.consistency_rows(runs)}
    if "bsp" not in rows:
        return "No BSP run with a straggler in results/consistency yet."
    b = rows["bsp"]
    others = [r for a, r in rows.items() if (a.startswith("ssp") or a == "asp")]
    a = rows.get("asp")
    reps = min((len(r["time_vs_bsp_reps"]) for r in others if r["time_vs_bsp_reps"]), default=0)
    parts = [f"With one of {_workers(runs)} workers slowed {b['straggler'] or 3}x ({reps} paired repetitions an arm; "
             "95% intervals of the ratio to BSP)"]
    ex = [r for r in others if r["examples_vs_bsp"] is not None]
    if ex:
        parts.append("examples to the target log-loss vs BSP: " + ", ".join(_vs(r, "examples_vs_bsp") for r in ex)
                     + " (SSP and ASP apply each push as it arrives; BSP sums a clock's pushes into one update)")
    timed = [r for r in others if r.get("time_vs_bsp")]
    if timed:
        parts.append("wall time to the target vs BSP: " + ", ".join(_vs(r, "time_vs_bsp") for r in timed)
                     + " (OSDI'14: delay 8 at 1/1.6 = 0.63x)")
        best = I.order([(r["arm"], -r["time_vs_bsp"], _iv(r.get("time_vs_bsp_ci"))) for r in timed])
        parts.append(f"fastest to the target: {best[0]}" if best else
                     f"which staleness is fastest is {I.INDISTINCT}")
    if a and a.get("staleness_max") is not None:
        parts.append(f"ASP served pulls up to {a['staleness_max']:.0f} clocks stale (mean {a['staleness_mean']:.0f}), "
                     f"SSP never more than s")
    if b.get("idle_fraction") is not None:
        parts.append(f"the other workers waited {_pct(b['idle_fraction'])} of their time under BSP"
                     + (f" and {_pct(a['idle_fraction'])} under ASP" if a and a.get("idle_fraction") is not None else "")
                     + " (with 5 processes on 2 cores most waiting is for a CPU, so OSDI'14's 50% / 1.7% are not "
                       "comparable)")
    return "; ".join(parts) + "."


def _iv(x):
    return tuple(x) if x else None


def _vs(r: dict, key: str) -> str:
    """'ssp2 0.77x (95% CI 0.70-0.85, fewer/sooner)' or '... indistinguishable ...'."""
    v, iv = r[key], _iv(r.get(key + "_ci"))
    if iv is None:
        return f"{r['arm']} {v:.2f}x (too few repetitions to rank)"
    word = "fewer" if key.startswith("examples") else "sooner"
    verdict = (word if iv[1] < 1 else "more" if word == "fewer" else "later") if I.excludes(iv) else I.no_ranking(iv)
    return f"{r['arm']} {v:.2f}x ({I.fmt_interval(iv)}: {verdict})"


def _workers(runs) -> str:
    w = {(r.get("params") or {}).get("workers") for r in runs}
    w.discard(None)
    return str(w.pop()) if len(w) == 1 else "the"


def traffic(runs) -> str:
    rows = C.traffic_rows(runs)
    out = []
    for data in sorted({r["data"] for r in rows if r["data"]}, key=str):
        rs = {r["variant"]: r for r in rows if r["data"] == data}
        d, s, p = rs.get("allreduce-dense"), rs.get("allreduce-sparse"), rs.get("ps")
        bits = []
        if d and p and d["bytes_per_step"] and p["bytes_per_step"]:
            bits.append(f"the PS sent {d['bytes_per_step'] / p['bytes_per_step']:.0f}x fewer bytes per step than dense "
                        f"allreduce ({_mb(p['bytes_per_step'])} vs {_mb(d['bytes_per_step'])})")
        if s and p and s["bytes_per_step"] and p["bytes_per_step"]:
            bits.append(f"sparse allreduce {_mb(s['bytes_per_step'])}")
        for sw, name in (("ps-fp16", "fp16 values"), ("ps-delta_keys", "delta-coded keys"),
                         ("ps-key_cache", "key caching")):
            r = rs.get(sw)
            if r and r["vs_ps"]:
                bits.append(f"{name} saved {_pct(1 - 1 / r['vs_ps'])}")
        k = rs.get("ps-ftrl-kkt")
        if k and k["vs_ps"]:
            bits.append(f"the KKT filter (FTRL, L1) {_pct(1 - 1 / k['vs_ps'])}"
                        + (f", dropping {_pct(1 - k['kkt_kept_fraction'])} of pushed keys"
                           if k.get("kkt_kept_fraction") is not None else ""))
        al = rs.get("ps-ftrl-all")
        if al and al["vs_ps"]:
            bits.append(f"all switches together {al['vs_ps']:.1f}x less"
                        + (f" (workers {al['worker_vs_ps']:.1f}x, servers {al['server_vs_ps']:.1f}x)"
                           if al.get("worker_vs_ps") and al.get("server_vs_ps") else "")
                        + (f", AUC {al['auc_change']:+.4f}" if al.get("auc_change") is not None else ""))
        if bits:
            out.append(f"On {data}: " + ", ".join(bits))
    if not out:
        return "No traffic runs in results/traffic yet."
    return ("; ".join(out) + ". OSDI'14: key caching ~50% saved, KKT >93% of features filtered, 12x (worker) / "
            "40x (server) less traffic.")


def _mb(b):
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def recovery(runs, manifest: dict | None = None) -> str:
    rows = {r["arm"]: r for r in C.recovery_rows(runs)}
    bits = []
    e = rows.get("elastic-shrink")
    if e:
        bits.append(f"ULFM shrink recovered in {e['recovery_s']:.2f} s (median; {e['status']}; wall time "
                    f"{e['time_lost_s']:+.1f} s against fault-free)" if e.get("recovery_s") is not None
                    and e.get("time_lost_s") is not None else f"ULFM shrink: {e['status']}")
    c = rows.get("classic-restart")
    if c and c.get("time_lost_s") is not None:
        bits.append(f"classic MPI failed ({c['status']}): the failed run's {c['time_lost_s']:.1f} s are lost and a "
                    f"full {c['reference_wall_s']:.1f} s rerun follows, so training is back where it was "
                    f"{c['restart_recovery_s']:.1f} s after the kill")
    for arm, name in (("ps-replica", "PS replica promotion"), ("ps-checkpoint", "PS checkpoint restore"),
                      ("ps-worker", "PS worker failover")):
        r = rows.get(arm)
        if r and r.get("recovery_s") is not None:
            bits.append(f"{name} {r['recovery_s']:.2f} s, {r['lost_updates'] or 0:.0f} updates lost")
        elif r:
            bits.append(f"{name}: {r['status']}")
    skipped = [a["label"] for a in (manifest or {}).get("arms", []) if a.get("skipped")]
    if skipped:
        bits.append("not measured yet: " + ", ".join(skipped) + " (PS failover not built)")
    return ("; ".join(bits) + ". OSDI'14: a server recovers in 0.8 s.") if bits else "No recovery runs yet."


def stragglers(runs, manifest: dict | None = None) -> str:
    """Slowdowns against the fault-free run and gains against waiting (BSP) or against ASP
    without backups, each with its 95% interval over paired repetitions; a direction
    ("sooner", "later", "slower") only where the interval clears no change by the margin."""
    rows = list(C.straggler_rows(runs))
    bits = []
    for f in sorted({r["straggler"] for r in rows if (r["straggler"] or 1) > 1}):
        at = {r["arm"].split("-x")[0]: r for r in rows if r["straggler"] == f}
        slow = []
        for a, name in (("ps-bsp", "PS BSP"), ("allreduce", "allreduce")):
            x = at.get(a)
            if x and x.get("train_time_vs_fault_free"):
                iv = _iv(x.get("train_time_vs_fault_free_ci"))
                slow.append(f"{name} {x['train_time_vs_fault_free']:.2f}x ("
                            + ("too few repetitions for an interval" if iv is None else I.fmt_interval(iv)
                               + ("" if I.excludes(iv) else f"; vs no slowdown: {I.no_ranking(iv)}")) + ")")
        part = (f"one worker slowed {f}x: training took " + " and ".join(slow) + " as long as without it") if slow \
            else f"one worker slowed {f}x"
        for arm, name in (("ps-ssp", "SSP (s=4)"), ("ps-asp", "ASP")):
            x = at.get(arm)
            if x and x.get("time_to_target_gain_vs_wait") is not None:
                part += ", " + _gain(name, "BSP", "reached the target", x["time_to_target_gain_vs_wait"],
                                     x.get("time_to_target_gain_vs_wait_ci"))
        b = at.get("ps-backup")
        if b and b.get("train_time_gain_vs_nobackup") is not None:
            part += ", " + _gain(f"backup instances (on ASP; {b['backups_launched'] or 0:.0f} launched per run)",
                                 "ASP without them", "finished training", b["train_time_gain_vs_nobackup"],
                                 b.get("train_time_gain_vs_nobackup_ci")) + " (KunPeng: 10-20% faster)"
        bits.append(part)
    skipped = [a["label"] for a in (manifest or {}).get("arms", []) if a.get("skipped")]
    if skipped:
        bits.append("not measured yet: " + ", ".join(skipped) + " (PS backup instances not built)")
    reps = max((r["succeeded"] for r in rows), default=0)
    return (f"Over {reps} paired repetitions an arm (95% intervals): " + "; ".join(bits) + ".") if bits \
        else "No straggler runs yet."


def _gain(name: str, other: str, what: str, gain: float, ci) -> str:
    """'ASP reached the target 28% sooner than BSP (95% CI 20%-35%)', or indistinguishable."""
    iv = _iv(ci)
    if iv is None:
        return f"{name} vs {other}: time ratio {1 - gain:.2f} (too few repetitions to rank)"
    ratio = f"time ratio {1 - gain:.2f}, 95% CI {1 - iv[1]:.2f}-{1 - iv[0]:.2f}"
    if I.excludes(iv, 0.0):
        return f"{name} {what} {_signed_pct(gain)} than {other} ({ratio})"
    return f"{name} and {other}: {I.no_ranking(iv, 0.0)} ({ratio})"


def _signed_pct(gain: float) -> str:
    return f"{gain:.0%} sooner" if gain >= 0 else f"{-gain:.0%} later"


def scalability(runs, budget_bytes: float = 2 * C.GIB) -> str:
    big = list(C.largest_model(runs, budget_bytes))
    pts = [p for p in C.scalability_points(runs) if p["status"] == "succeeded"]
    if not big:
        return "No scalability runs yet."
    gib = f"{budget_bytes / C.GIB:g} GiB"
    bits = []
    sparse = next((r for r in big if r["servers"] == 0 and "sparse" in r["design"]), None)
    dense = next((r for r in big if r["servers"] == 0 and "dense" in r["design"]), None)
    ps = sorted((r for r in big if r["servers"] > 0), key=lambda r: r["servers"])
    if sparse:
        bits.append(f"with 64-bit keys, one replica per rank (sparse allreduce) costs {sparse['bytes_per_param']:.0f} "
                    f"bytes per parameter on every rank, so {gib} per process caps the model at "
                    f"{sparse['largest_params']:.2g} parameters however many ranks there are")
    if ps:
        bits.append("sharded over S servers the PS fits " + ", ".join(
            f"{r['largest_params']:.2g} (S={r['servers']})" for r in ps)
            + f" ({ps[0]['bytes_per_param']:.0f} bytes per parameter on a server): the limit grows with S")
    if dense:
        bits.append(f"a dense model of hashed keys packs {dense['bytes_per_param']:.0f} bytes per parameter "
                    f"({dense['largest_params']:.2g} in {gib}), but only by folding the key space into 2^b slots")
    if pts:
        bits.append(f"largest model measured here: {max(p['params_stored'] for p in pts):.3g} parameters")
    return "; ".join(bits) + "."


def success_rate(trials, curves: dict | None) -> str:
    rates = M.success_rates([t for t in trials if t.get("backend_key") in ("allreduce", "elastic", "ps")],
                            by=("backend_key", "ranks"))
    bits = []
    if rates:
        top = max(r["ranks"] for r in rates)
        at = {r["backend_key"]: r for r in rates if r["ranks"] == top}
        bits.append(f"measured at {top} ranks: " + ", ".join(
            f"{k} {v['successes']}/{v['trials']} ({v['rate']:.0%}, 95% CI {v['ci_low']:.0%}-{v['ci_high']:.0%})"
            for k, v in sorted(at.items())))
    regime = (curves or {}).get("production_regime") or {}
    names = {"allreduce": "classic allreduce", "elastic": "elastic allreduce", "ps": "the PS"}
    for key, n, law in (("curves", 10000, "under the per-rank failure law fitted to Li et al.'s table"),
                        ("curves_deck", 1000, "under the deck's rate (30% for classic MPI there)")):
        cs = regime.get(key) or {}
        vals = [f"{names.get(k, k)} {c['success_rate'][c['workers'].index(n)]:.0%}" for k, c in sorted(cs.items())
                if n in c["workers"]]
        if vals:
            bits.append(f"simulated {regime.get('job_hours', 1):g} h jobs of {n:,} workers {law}: " + ", ".join(vals))
    if any("ps" in (regime.get(key) or {}) for key in ("curves", "curves_deck")):
        # pslab.sim.job's rule is the conservative one; pslab.sim.goodput models pslab's per-range rule.
        bits.append("these curves use pslab.sim.job's conservative PS rule (the job fails if any R servers die "
                    "within the measured recovery time); the goodput model below uses pslab's own rule (a "
                    "second failure of a dead server's partner before re-replication loses ranges, restored "
                    "from the last checkpoint)")
    return ("; ".join(bits) + ".") if bits else "No success-rate trials yet."


def simulator(validation_rows) -> str:
    if not validation_rows:
        return "The simulator has not been validated yet (no results/sim/validation.json)."
    inside = sum(r["inside"] for r in validation_rows)
    return (f"{inside} of {len(validation_rows)} measured cells have the simulated success rate inside the "
            "measured 95% Wilson interval.")


def goodput(cells) -> str:
    """Per size: the contenders ranked by success rate and by ETTR only where their 95%
    intervals separate (Wilson; the mean ETTR stratified by faults), else said to be indistinguishable."""
    cells = list(cells)
    if not cells:
        return "No goodput trials yet (results/goodput/trials.jsonl)."
    bits = []
    for n in sorted({c["ranks"] for c in cells}):
        at = [c for c in cells if c["ranks"] == n]
        desc = ", ".join(f"{c['contender']} {c['successes']}/{c['trials']} (ETTR {c['ettr_mean']:.2f}, "
                         f"{I.fmt_interval(tuple(c['ettr_ci']) if c['ettr_ci'][0] is not None else None)})"
                         for c in at)
        part = f"at {n} ranks: {desc}; " + _ranking("success rate", [
            (c["contender"], c["success_rate"], tuple(c["success_ci"])) for c in at])
        part += "; " + _ranking("ETTR", [(c["contender"], c["ettr_mean"], tuple(c["ettr_ci"])
                                          if c["ettr_ci"][0] is not None else None) for c in at])
        bits.append(part)
    trials = min(c["trials"] for c in cells)
    return (f"With {trials}+ paired trials a cell (95% intervals: Wilson for rates, ETTR means stratified by whether a fault struck; a "
            "failed job counts ETTR 0): " + "; ".join(bits) + ". Production anchors: Llama 3 and MegaScale report "
            "ETTR above 90% with automatic checkpoint-restart on 16K and 10K GPUs.")


def _ranking(what: str, items) -> str:
    """The order of items by value where every neighbour's interval separates; pairs that
    separate otherwise; or that they are indistinguishable."""
    if len(items) < 2:
        return ""
    full = I.order(items)
    if full:
        return f"{what}: " + " > ".join(full)
    above = {a: [b for b, vb, ib in sorted(items, key=lambda t: -t[1]) if va > vb and I.separated(ia, ib)]
             for a, va, ia in sorted(items, key=lambda t: -t[1])}
    pairs = [f"{a} > {' and '.join(bs)}" for a, bs in above.items() if bs]
    if pairs:
        return f"{what}: " + ", ".join(pairs) + f" (other pairs {I.INDISTINCT})"
    return f"{what}: {I.INDISTINCT}"
