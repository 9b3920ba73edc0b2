"""One summary table per comparison (BRIEF section 5), from the runs an experiment left
under results/<name>/. The figures draw these tables; the notebooks print them; the
captions in notebooks/FIGURES.md quote them.

Every function takes the list of runs (`load_runs("<name>")`) and returns a `Table`
whose rows are arms, with medians over repetitions (timings on a shared 2-core machine
are noisy: medians, and ratios to a reference arm measured in the same sweep).
"""
from __future__ import annotations


import numpy as np

from . import intervals as I
from . import metrics as M
from .tables import Table, get, group, median, spread

CONSISTENCY_ORDER = ["bsp-nostraggler", "bsp", "ssp1", "ssp2", "ssp4", "ssp8", "ssp16", "asp"]


def _arm_order(runs, preferred):
    seen = []
    for r in runs:
        a = r.get("arm")
        if a not in seen:
            seen.append(a)
    pos = {a: i for i, a in enumerate(preferred)}
    return sorted(seen, key=lambda a: (pos.get(a, len(pos)), str(a)))


def paired_ratio(num_runs, den_runs, fn) -> float | None:
    """Median over repetitions of fn(num rep k) / fn(den rep k): reps run back to back in
    the same round of a sweep (which interleaves arms), so the machine's load, which
    drifts, cancels out of each ratio. Unpaired: the ratio of the medians."""
    num = {r.get("rep"): fn(r) for r in num_runs if r.get("status") == "succeeded"}
    den = {r.get("rep"): fn(r) for r in den_runs if r.get("status") == "succeeded"}
    pairs = [num[k] / den[k] for k in num if k in den and num[k] and den[k]]
    if pairs:
        return float(np.median(pairs))
    a, b = median(num.values()), median(den.values())
    return a / b if a and b else None


def paired_values(num_runs, den_runs, fn) -> list[float]:
    """fn(num rep k) / fn(den rep k) for every repetition k both have."""
    num = {r.get("rep"): fn(r) for r in num_runs if r.get("status") == "succeeded"}
    den = {r.get("rep"): fn(r) for r in den_runs if r.get("status") == "succeeded"}
    return [num[k] / den[k] for k in sorted(num, key=str) if k in den and num[k] and den[k]]


def _params(rs) -> dict:
    """The arm's parameters (from any of its runs that carries them)."""
    return next((r.get("params") for r in rs if r.get("params")), None) or {}


def by_arm(runs) -> dict:
    return {a: rs for a, rs in group([r for r in runs if r.get("arm")], "arm").items()}


def _ok(rs):
    return [r for r in rs if r.get("status") == "succeeded"]


# --------------------------------------------------------------------------- 2. consistency


def consistency_target(runs, rel: float = 0.01) -> float | None:
    """Target log-loss: the fault-free BSP arm's median final log-loss + rel (1%)."""
    ref = by_arm(runs).get("bsp-nostraggler") or by_arm(runs).get("bsp") or []
    return M.target_from(ref, rel)


def consistency_rows(runs, target: float | None = None) -> Table:
    target = consistency_target(runs) if target is None else target
    arms = by_arm(runs)
    rows = []
    for a in _arm_order(runs, CONSISTENCY_ORDER):
        rs = arms[a]
        ok = _ok(rs)
        p = _params(rs)
        tt = [M.time_to_target(r, target) for r in ok] if target else []
        ex = [M.time_to_target(r, target, "examples") for r in ok] if target else []
        st = [M.time_to_target(r, target, "step") for r in ok] if target else []
        rows.append({
            "arm": a, "consistency": p.get("consistency", rs[0].get("consistency")),
            "staleness": p.get("staleness"), "straggler": p.get("straggler"),
            "runs": len(rs), "succeeded": len(ok),
            "reached": sum(x is not None for x in tt),
            "time_to_target_s": median(tt), "time_to_target_min": spread(tt)[1], "time_to_target_max": spread(tt)[2],
            "examples_to_target": median(ex), "steps_to_target": median(st),
            "train_time_s": median(M.train_time_s(r) for r in ok),
            "steps": median(r.get("steps") for r in ok),
            "idle_fraction": median(M.idle_fraction(r) for r in ok),
            "idle_fraction_all": median(M.idle_fraction(r, exclude_straggler=False) for r in ok),
            "staleness_mean": median(r.get("staleness_mean") for r in ok),
            "staleness_max": median(r.get("staleness_max") for r in ok),
            "final_logloss": median(r.get("test_logloss") for r in ok),
            "final_auc": median(r.get("test_auc") for r in ok),
        })
    for r in rows:
        # time to target of BSP / of this arm, paired by repetition; and this arm's time
        # and examples to target relative to BSP's (lower is better), per repetition too
        tt = (lambda run: M.time_to_target(run, target))
        ex = (lambda run: M.time_to_target(run, target, "examples"))
        r["speedup_vs_bsp"] = paired_ratio(arms.get("bsp", []), arms[r["arm"]], tt) if target else None
        r["time_vs_bsp"] = paired_ratio(arms[r["arm"]], arms.get("bsp", []), tt) if target else None
        r["examples_vs_bsp"] = paired_ratio(arms[r["arm"]], arms.get("bsp", []), ex) if target else None
        r["time_vs_bsp_reps"] = paired_values(arms[r["arm"]], arms.get("bsp", []), tt) if target else []
        r["examples_vs_bsp_reps"] = paired_values(arms[r["arm"]], arms.get("bsp", []), ex) if target else []
        r["time_vs_bsp_ci"] = I.ratio_interval(r["time_vs_bsp_reps"]) if r["arm"] != "bsp" else None
        r["examples_vs_bsp_ci"] = I.ratio_interval(r["examples_vs_bsp_reps"]) if r["arm"] != "bsp" else None
    t = Table(rows, ["arm", "runs", "succeeded", "reached", "time_to_target_s", "speedup_vs_bsp",
                     "examples_to_target", "examples_vs_bsp", "steps_to_target", "train_time_s", "idle_fraction", "staleness_mean",
                     "staleness_max", "final_logloss", "final_auc"],
              title=f"consistency: target log-loss {target:.4f}" if target else "consistency")
    t.target = target
    return t


# --------------------------------------------------------------------------- 3. traffic

TRAFFIC_ORDER = ["allreduce-dense", "allreduce-sparse", "ps", "ps-fp16", "ps-delta_keys", "ps-key_cache",
                 "ps-fp16+delta+cache", "ps-ftrl", "ps-ftrl-kkt", "ps-ftrl-all"]


def traffic_variant(arm: str) -> str:
    """The arm's variant without its data tag ("criteo-ps-fp16" -> "ps-fp16")."""
    for v in sorted(TRAFFIC_ORDER, key=len, reverse=True):
        if arm == v or arm.endswith("-" + v):
            return v
    return arm


def traffic_rows(runs) -> Table:
    rows = []
    for data, rs_d in group([r for r in runs if r.get("arm")], "params.data").items():
        refs = {}
        variants = sorted({traffic_variant(r["arm"]) for r in rs_d},
                          key=lambda v: (TRAFFIC_ORDER.index(v) if v in TRAFFIC_ORDER else 99, v))
        for v in variants:
            rs = [r for r in rs_d if traffic_variant(r["arm"]) == v]
            ok = _ok(rs)
            p = _params(rs)
            bps = median(M.bytes_per_step(r) for r in ok)
            roles = [M.bytes_per_step_by_role(r) for r in ok]
            sw = p.get("switch")
            row = {"data": data, "arm": rs[0]["arm"], "variant": v, "backend": p.get("backend"), "switch": sw,
                   "optim": p.get("optim"), "runs": len(rs), "succeeded": len(ok),
                   "bytes_per_step": bps,
                   "worker_bytes_per_step": median(x.get("worker") for x in roles),
                   "server_bytes_per_step": median(x.get("server") for x in roles),
                   "steps": median(r.get("steps") for r in ok),
                   "model_keys": median(r.get("model_keys") for r in ok),
                   "test_auc": median(r.get("test_auc") for r in ok),
                   "measured_factor": median(get(r, "compression.all" if sw == "all" else f"compression.{sw}")
                                             for r in ok) if sw else None,
                   "kkt_kept_fraction": median(get(r, "compression.kkt_kept_fraction") for r in ok)}
            refs[v] = row
            rows.append(row)
        for row in [r for r in rows if r["data"] == data]:
            base = refs.get("ps-ftrl" if row["optim"] == "ftrl" else "ps")
            dense = refs.get("allreduce-dense")
            row["vs_ps"] = (base["bytes_per_step"] / row["bytes_per_step"]
                            if base and base["bytes_per_step"] and row["bytes_per_step"] else None)
            row["vs_dense"] = (dense["bytes_per_step"] / row["bytes_per_step"]
                               if dense and dense["bytes_per_step"] and row["bytes_per_step"] else None)
            for role in ("worker", "server"):
                b, x = base and base[f"{role}_bytes_per_step"], row[f"{role}_bytes_per_step"]
                row[f"{role}_vs_ps"] = b / x if b and x else None
            auc_ref = base and base["test_auc"]
            row["auc_change"] = (row["test_auc"] - auc_ref) if auc_ref is not None and row["test_auc"] is not None \
                else None
    return Table(rows, ["data", "variant", "succeeded", "bytes_per_step", "worker_bytes_per_step",
                        "server_bytes_per_step", "vs_ps", "worker_vs_ps", "server_vs_ps", "vs_dense",
                        "measured_factor", "kkt_kept_fraction", "test_auc", "auc_change"],
                 title="bytes on the wire per step (all ranks); vs_ps: the PS with the same optimizer / this")


# --------------------------------------------------------------------------- 4. recovery

RECOVERY_ORDER = ["ps-replica", "ps-checkpoint", "ps-worker", "elastic-shrink", "classic-restart"]


def recovery_rows(runs) -> Table:
    """Per mechanism: recovery time (fault -> first completed step after it), time lost
    (wall with the fault - the fault-free wall of the same backend), updates lost, AUC."""
    arms = by_arm(runs)
    rows = []
    mechanisms = [a for a in _arm_order(runs, RECOVERY_ORDER) if not str(a).endswith("-ref")]
    for a in mechanisms:
        rs = arms[a]
        p = _params(rs)
        ref = _ok(arms.get(p.get("reference"), []))
        ref_wall = median(r.get("wall_s") for r in ref)
        ref_auc = median(r.get("test_auc") for r in ref)
        ok = _ok(rs)
        rec = [x for r in rs for x in (r.get("recovery_s") or [])]
        failed = [r for r in rs if r.get("status") != "succeeded"]
        recovery_equiv = None
        if p.get("mechanism") == "restart":
            # classic MPI: the job dies; recovering is running it again from scratch. The
            # failed run's whole wall time is lost, then a whole rerun follows. From the
            # kill (at time k of the failed run) the job ends at its wall time w, and the
            # rerun is back at the kill's point k later: w - k + k = w after the kill.
            time_lost = median(r.get("wall_s") for r in failed)
            total = (time_lost + ref_wall) if time_lost is not None and ref_wall is not None else None
            recovery_equiv = time_lost
            status = f"{len(failed)}/{len(rs)} failed, rerun"
            auc = ref_auc
        else:
            walls = [r.get("wall_s") for r in ok]
            time_lost = (median(walls) - ref_wall) if walls and ref_wall is not None else None
            total = median(walls)
            status = f"{len(ok)}/{len(rs)} succeeded"
            auc = median(r.get("test_auc") for r in ok)
        rows.append({
            "arm": a, "mechanism": p.get("mechanism"), "backend": p.get("backend"), "fault": p.get("fault"),
            "runs": len(rs), "status": status, "succeeded": len(ok),
            "recovery_s": median(rec), "recovery_min_s": spread(rec)[1], "recovery_max_s": spread(rec)[2],
            "restart_recovery_s": recovery_equiv, "work_lost_s": median(_died_at_s(r) for r in failed),
            "recoveries": len(rec),
            "detect_s": median(_detect_s(r) for r in rs),
            "time_lost_s": time_lost, "wall_s": total, "reference_wall_s": ref_wall,
            "lost_updates": median(r.get("lost_updates") for r in ok) if ok else None,
            "failed_at_s": median(r.get("failed_at_s") for r in failed),
            "reported_failed_max_s": max((r.get("wall_s") or 0 for r in failed), default=None),
            "test_auc": auc, "auc_change": (auc - ref_auc) if auc is not None and ref_auc is not None else None,
            "ranks_alive_end": median(r.get("ranks_alive_end") for r in ok),
        })
    return Table(rows, ["arm", "status", "recovery_s", "restart_recovery_s", "detect_s", "time_lost_s", "wall_s",
                        "reference_wall_s", "lost_updates", "test_auc", "auc_change", "ranks_alive_end"],
                 title="recovery after a kill (medians over repetitions)")


def _died_at_s(run) -> float | None:
    """Seconds from the job's first rank start to the first failure record (the work a
    classic job throws away); the run's wall time if nothing was recorded."""
    from .io import load_events
    ev = load_events(run)
    starts = [e["t"] for e in ev if e.get("kind") == "rank_started" and e.get("t")]
    det = [e["t"] for e in ev if e.get("kind") in ("failure_detected", "rank_error") and e.get("t")]
    if starts and det:
        return float(min(det) - min(starts))
    return run.get("wall_s")


def _detect_s(run) -> float | None:
    """Seconds from the injected fault to the first failure_detected record."""
    from .io import load_events
    ev = load_events(run)
    f = next((e for e in ev if e.get("kind") == "fault_injected" and e.get("action") in ("kill", "hang")), None)
    if f is None:
        return None
    d = next((e for e in ev if e.get("kind") == "failure_detected" and e.get("t", 0) >= f.get("t", 0)), None)
    return None if d is None else float(d["t"] - f["t"])


# --------------------------------------------------------------------------- 5. stragglers

STRAGGLER_ORDER = ["ps-bsp-none", "ps-bsp", "ps-ssp", "ps-asp", "ps-backup", "allreduce-none", "allreduce"]
MITIGATION_LABELS = {"none": "no straggler", "wait": "wait (BSP)", "staleness": "SSP", "async": "ASP",
                     "backup": "ASP + backup"}


def _straggler_sort_key(row):
    base = row["arm"].split("-x")[0]
    pos = STRAGGLER_ORDER.index(base) if base in STRAGGLER_ORDER else len(STRAGGLER_ORDER)
    return (row["backend"] != "ps", row["straggler"] or 1, pos)


def straggler_rows(runs) -> Table:
    """Per arm: training time, time to the target log-loss (the fault-free PS run's final
    log-loss + 1%), and ratios against the same backend without a straggler and against
    waiting (BSP / synchronous allreduce) with the same straggler."""
    arms = by_arm(runs)
    ref_ps = [r for rs in arms.values() for r in rs
              if (r.get("params") or {}).get("backend") == "ps" and (r.get("params") or {}).get("straggler") == 1]
    target = M.target_from(ref_ps or [r for rs in arms.values() for r in rs
                                      if (r.get("params") or {}).get("straggler") == 1])
    rows = []
    for a, rs in arms.items():
        ok = _ok(rs)
        p = _params(rs)
        rows.append({"arm": a, "backend": p.get("backend"), "mitigation": p.get("mitigation"), "base": p.get("base"),
                     "straggler": p.get("straggler"), "runs": len(rs), "succeeded": len(ok),
                     "backups_launched": median(r.get("backups_launched") for r in ok),
                     "train_time_s": median(M.train_time_s(r) for r in ok),
                     "time_to_target_s": median(M.time_to_target(r, target) for r in ok) if target else None,
                     "idle_fraction": median(M.idle_fraction(r) for r in ok),
                     "final_auc": median(r.get("test_auc") for r in ok),
                     "final_logloss": median(r.get("test_logloss") for r in ok)})
    rows.sort(key=_straggler_sort_key)
    fns = {"train_time_s": M.train_time_s, "time_to_target_s": lambda run: M.time_to_target(run, target)}
    for r in rows:
        ref = next((x for x in rows if x["backend"] == r["backend"] and (x["straggler"] or 1) == 1), None)
        wait = next((x for x in rows if x["backend"] == r["backend"] and x["straggler"] == r["straggler"]
                     and x["mitigation"] == "wait"), None)
        for k, fn in fns.items():
            if k == "time_to_target_s" and not target:
                r["time_to_target_vs_fault_free"] = r["time_to_target_gain_vs_wait"] = None
                r["time_to_target_gain_vs_nobackup"] = None
                continue
            vs = paired_ratio(arms[r["arm"]], arms[ref["arm"]], fn) if ref else None
            vw = paired_ratio(arms[r["arm"]], arms[wait["arm"]], fn) if wait else None
            key = k.replace("_s", "")
            r[key + "_vs_fault_free"] = vs
            r[key + "_vs_fault_free_ci"] = I.ratio_interval(paired_values(arms[r["arm"]], arms[ref["arm"]], fn)) \
                if ref and ref is not r else None
            r[key + "_gain_vs_wait"] = None if vw is None else 1 - vw
            r[key + "_gain_vs_wait_ci"] = _gain_ci(paired_values(arms[r["arm"]], arms[wait["arm"]], fn)) \
                if wait and wait is not r else None
            # backup instances run on top of a consistency model (params "base"): their own
            # gain is against that model without them, same straggler
            base = next((x for x in rows if x["backend"] == r["backend"] and x["straggler"] == r["straggler"]
                         and x["mitigation"] == r.get("base")), None) if r["mitigation"] == "backup" else None
            vb = paired_ratio(arms[r["arm"]], arms[base["arm"]], fn) if base else None
            r[key + "_gain_vs_nobackup"] = None if vb is None else 1 - vb
            r[key + "_gain_vs_nobackup_ci"] = _gain_ci(paired_values(arms[r["arm"]], arms[base["arm"]], fn)) \
                if base else None
    t = Table(rows, ["arm", "straggler", "succeeded", "train_time_s", "train_time_vs_fault_free",
                     "train_time_gain_vs_wait", "train_time_gain_vs_nobackup", "time_to_target_s",
                     "time_to_target_vs_fault_free", "time_to_target_gain_vs_wait", "time_to_target_gain_vs_nobackup",
                     "idle_fraction", "final_auc"],
              title=f"stragglers (target log-loss {target:.4f})" if target else "stragglers")
    t.target = target
    return t


def _gain_ci(ratios) -> tuple[float, float] | None:
    """The 95% interval of a gain 1 - ratio, from the paired ratios (see intervals)."""
    iv = I.ratio_interval(ratios)
    return None if iv is None else (1 - iv[1], 1 - iv[0])


# --------------------------------------------------------------------------- 6. scalability

GIB = 2 ** 30


def scalability_points(runs) -> Table:
    """One row per run: model parameters stored, per-process peak RSS by role."""
    rows = []
    for r in runs:
        if not r.get("arm"):
            continue
        p = r.get("params") or {}
        rss = M.peak_rss_by_role(r)
        servers = int(r.get("servers") or 0)
        tables = r.get("table_bytes_by_server") or {}
        rows.append({
            "arm": r["arm"], "design": p.get("design"), "servers": servers if r.get("backend") == "ps" else 0,
            "status": r.get("status"), "params_stored": M.model_params(r),
            "model_bytes": r.get("model_bytes") or (sum(tables.values()) if tables else None),
            "max_server_table_bytes": max(tables.values()) if tables else None,
            "rank_rss_bytes": rss.get("worker") if r.get("backend") != "ps" else None,
            "server_rss_bytes": rss.get("server"), "worker_rss_bytes": rss.get("worker") if r.get("backend") == "ps"
            else None,
            "peak_rss_bytes_max": r.get("peak_rss_bytes_max"),
            "x": p.get("x"),
        })
    rows.sort(key=lambda x: (str(x["design"]), x["servers"], x["params_stored"] or 0))
    return Table(rows, ["arm", "design", "servers", "status", "params_stored", "model_bytes",
                        "max_server_table_bytes", "rank_rss_bytes", "server_rss_bytes", "worker_rss_bytes"],
                 title="memory per process")


def memory_fit(points: list[dict], y: str) -> tuple[float, float] | None:
    """Least-squares line y = base + per_param * params over successful points."""
    xs = np.array([p["params_stored"] for p in points if p.get(y) and p.get("params_stored")], float)
    ys = np.array([p[y] for p in points if p.get(y) and p.get("params_stored")], float)
    if xs.size < 2 or np.ptp(xs) == 0:
        return None
    per, base = np.polyfit(xs, ys, 1)
    return float(base), float(max(per, 1e-9))


def largest_model(runs, budget_bytes: float = 2 * GIB) -> Table:
    """The largest model (parameters) that fits a per-process memory budget: one replica
    per rank (allreduce: every rank's RSS grows with the whole model) vs a model sharded
    over S servers (each server's RSS grows with its share), by a linear fit of measured
    peak RSS on parameters stored."""
    pts = [p for p in scalability_points(runs) if p["status"] == "succeeded"]
    rows = []
    for design, ps in group(pts, "design").items():
        if design is None:
            continue
        if design.startswith("ps"):
            for s, pss in sorted(group(ps, "servers").items()):
                # per server: the RSS against the parameters it stores (its share)
                share = [{**p, "params_stored": p["params_stored"] / max(1, s)} for p in pss]
                fit = memory_fit(share, "server_rss_bytes")
                if fit is None:
                    continue
                base, per = fit
                rows.append({"design": f"PS, {s} server{'s' if s > 1 else ''}", "servers": s,
                             "base_bytes": base, "bytes_per_param": per,
                             "largest_params": s * max(0.0, budget_bytes - base) / per,
                             "measured_max_params": max(p["params_stored"] for p in pss)})
        else:
            fit = memory_fit(ps, "rank_rss_bytes")
            if fit is None:
                continue
            base, per = fit
            rows.append({"design": f"allreduce ({design}), one replica per rank", "servers": 0,
                         "base_bytes": base, "bytes_per_param": per,
                         "largest_params": max(0.0, budget_bytes - base) / per,
                         "measured_max_params": max(p["params_stored"] for p in ps)})
    t = Table(rows, ["design", "base_bytes", "bytes_per_param", "largest_params", "measured_max_params"],
              title=f"largest model under {budget_bytes / GIB:g} GiB per process")
    t.budget_bytes = budget_bytes
    return t




# --------------------------------------------------------------------------- 1. goodput

GOODPUT_ORDER = ["scratch", "ckpt_restart", "elastic", "ps"]
GOODPUT_LABELS = {"scratch": "classic allreduce, restarted from scratch",
                  "ckpt_restart": "classic allreduce, checkpoint-restart (Young/Daly)",
                  "elastic": "elastic allreduce (ULFM)", "ps": "parameter server (R=2)"}


def struck_by_fault(t: dict) -> bool:
    """A fault struck the trial (a failed one always counts as struck)."""
    return bool(t.get("faults_injected") or t.get("failures_detected")) or t.get("status") != "succeeded"


def goodput_cells(trials: list[dict]) -> Table:
    """One row per (contender, ranks) of results/goodput/trials.jsonl: success rate with
    its Wilson 95% interval, ETTR's mean with a 95% interval stratified by whether a fault
    struck (intervals.ettr_interval; a failed trial
    counts 0: no model delivered) and its mean over the finished trials, attempts,
    faults, and the unproductive time split (medians)."""
    rows = []
    for (c, n), ts in group(trials, "contender", "ranks").items():
        ok = [t for t in ts if t.get("status") == "succeeded"]
        succ = sum(bool(t.get("success", t.get("status") == "succeeded")) for t in ts)
        ettr = [float(t["ettr"]) if t.get("status") == "succeeded" and t.get("ettr") is not None else 0.0
                for t in ts]
        struck = [struck_by_fault(t) for t in ts]
        ok_known = [t for t in ok if t.get("ettr") is not None]
        ettr_ok = [float(t["ettr"]) for t in ok_known]
        lo, hi = I.wilson(succ, len(ts))
        rows.append({
            "contender": c, "ranks": n, "trials": len(ts), "successes": succ, "success_rate": succ / len(ts),
            "success_ci": [lo, hi], "finished": len(ok),
            "ettr_mean": float(np.mean(ettr)), "ettr_ci": list(I.ettr_interval(ettr, struck) or (None, None)),
            "ettr_finished_mean": float(np.mean(ettr_ok)) if ettr_ok else None,
            "ettr_finished_ci": list(I.ettr_interval(ettr_ok, [struck_by_fault(t) for t in ok_known])
                                     or (None, None)),
            "attempts_mean": float(np.mean([t.get("attempts") or 1 for t in ts])),
            "with_faults": sum((t.get("faults_injected") or 0) > 0 for t in ts),
            "faults_mean": float(np.mean([t.get("faults_injected") or 0 for t in ts])),
            "checkpoint_every": median(t.get("checkpoint_every") for t in ts),
            "wall_s": median(t.get("wall_s") for t in ts),
            **{f"{k}_median": median(t.get(k) for t in ok) for k in
               ("productive_s", "checkpoint_s", "restart_s", "redone_s", "detect_s")},
            "workers": median(t.get("workers") for t in ts), "servers": median(t.get("servers") for t in ts),
        })
    pos = {c: i for i, c in enumerate(GOODPUT_ORDER)}
    rows.sort(key=lambda r: (r["ranks"], pos.get(r["contender"], 99)))
    return Table(rows, ["contender", "ranks", "trials", "successes", "success_rate", "success_ci", "ettr_mean",
                        "ettr_ci", "ettr_finished_mean", "attempts_mean", "faults_mean", "checkpoint_every",
                        "wall_s"],
                 title="goodput: success rate (Wilson 95%) and ETTR (95%, stratified by faults; failed trials count 0)")


def goodput_markdown(cells) -> str:
    """cells as a markdown table."""
    head = ("| contender | ranks | trials | success | 95% CI | ETTR mean | 95% CI | ETTR (finished) | attempts | "
            "faults/trial | ckpt every |\n|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|")
    lines = [head]
    for r in cells:
        ci = r["ettr_ci"]
        lines.append(
            f"| {r['contender']} | {r['ranks']} | {r['trials']} | {r['successes']}/{r['trials']} "
            f"({r['success_rate']:.0%}) | {r['success_ci'][0]:.0%}-{r['success_ci'][1]:.0%} | {r['ettr_mean']:.2f} | "
            + (f"{ci[0]:.2f}-{ci[1]:.2f}" if ci and ci[0] is not None else "-") + " | "
            + (f"{r['ettr_finished_mean']:.2f}" if r["ettr_finished_mean"] is not None else "-")
            + f" | {r['attempts_mean']:.1f} | {r['faults_mean']:.1f} | "
            + (f"{r['checkpoint_every']:.0f}" if r["checkpoint_every"] else "-") + " |")
    return "\n".join(lines)
