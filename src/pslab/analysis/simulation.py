"""The simulator (pslab.sim) fed with the measured results: calibration, validation and
the curves to 10,000 workers that the headline figure draws.

    from pslab.analysis import simulation as S
    runs = S.calibration_runs()             # success-rate trials (+ their run records), recovery runs
    cal, notes = S.calibrate_results(runs)  # pslab.sim.calibrate, per backend that has enough data
    rows = S.validate_results(cal, runs)    # simulated vs measured success, per measured cell
    curves = S.curves(cal, runs)            # N = 2 .. 10,000, measured and production regimes

What the measured runs give the simulator (see pslab.sim.calibrate for the fits):
- success-rate trials (results/success_rate/trials.jsonl, one line per trial, and the
  trial's run folder when kept): status, wall time, deadline, configured hazard, failure
  times (for the hazard MLE), recoveries; from the run folder: workers, servers, steps,
  examples and per-step times (from the ranks' step records: consecutive records give
  the mean step time over each logging window);
- fault-free references of the same cells (baselines.jsonl): the launch overhead;
- wall times are the ranks' exposure (first rank start to completion, `exposure_s`), not
  the launcher's wall time: the hazard clock starts with the rank, after mpirun start-up;
- hazards are restated for the simulator, which puts every rank at risk, from the ranks
  the trials spared (`at_risk_hazard`);
- recovery runs (results/recovery/): recovery times per mechanism (elastic shrink, PS
  worker and server failover), as recovery-only records that enter no other fit.

A trial counts as a success as the success-rate experiment defines it (finished, and test
AUC within 0.01 of the fault-free run): its status is set from `success`.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np

from .. import sim
from .io import read_json, read_jsonl, results_root

N_GRID = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 150, 250, 400, 600, 1000, 1500, 2500, 4000, 6000, 10000]
SIM_DIR = "sim"


# --------------------------------------------------------------------------- inputs


def _overrides(command: str | None) -> dict:
    """key=value overrides of a launch command line (the trial's `replay`)."""
    out = {}
    if not command:
        return out
    try:
        toks = shlex.split(command)
    except ValueError:
        toks = command.split()
    for t in toks:
        if "=" in t and not t.startswith("-"):
            k, v = t.split("=", 1)
            out[k] = v
    return out


def step_times_from_digest(digest: list[dict]) -> list[float]:
    """Per-step times (s) from the step records of the workers: each pair of consecutive
    records gives the mean step time over the steps between them. The worker with the
    most records is used (in BSP every worker sees the same steps)."""
    best = []
    for r in digest:
        if r.get("role") not in ("worker", None):
            continue
        steps, ts = r.get("steps_logged") or [], r.get("step_t") or []
        out = []
        for (s0, t0), (s1, t1) in zip(zip(steps, ts), zip(steps[1:], ts[1:])):
            if s1 and s0 is not None and s1 > s0 and t1 and t0 and t1 > t0:
                out.append((t1 - t0) / (s1 - s0))
        if len(out) > len(best):
            best = out
    return best


def pseudo_step_times(summary: dict, k: int = 16, sigma: float = 0.1) -> list[float]:
    """When a run kept no per-step records: k quantiles of a lognormal around the run's
    mean step time, train_s / steps (evaluation included: it is part of the job's
    length), with a nominal spread `sigma`. The summaries keep only a median step time,
    which on an oversubscribed machine is far below the mean; the mean is what sets a
    job's length, and so its exposure to failures. [] if the summary lacks the numbers."""
    steps, train = summary.get("steps"), summary.get("train_s")
    if not steps or not train or train <= 0:
        return []
    from scipy import stats
    mean = float(train) / float(steps)
    median = mean * np.exp(-sigma * sigma / 2)
    return [float(x) for x in stats.lognorm(s=sigma, scale=median).ppf((np.arange(k) + 0.5) / k)]


def _step_list(rd: Path | None, summary: dict) -> tuple[list | float | None, str]:
    st = step_times_from_digest(_digest(rd)) if rd and rd.exists() else []
    if len(st) >= 2:
        return st, "step records"
    ps = pseudo_step_times(summary)
    if ps:
        return ps, "mean step of the summary (train_s / steps), nominal spread"
    return summary.get("step_time_s"), "none"


def _digest(run_dir: Path) -> list[dict]:
    d = read_json(run_dir / "ranks.json")
    if d:
        return d
    if (run_dir / "ranks").is_dir():
        from .io import rank_digest
        return rank_digest(run_dir)
    return []


def _workers(backend: str, ranks: int, ov: dict, summary: dict) -> int:
    if summary.get("workers"):
        return int(summary["workers"])
    if backend == "ps":
        return int(ranks) - 1 - int(ov.get("backend.servers", 1))
    return int(ranks)


def at_risk_hazard(hazard: dict | None, ranks: int) -> dict | None:
    """The hazard, restated for pslab.sim, which puts every rank of a job at risk.

    The trials spare some ranks (exclude_ranks, by default rank 0: the coordinator or
    evaluator). n - e ranks at rate r fail first as n ranks at rate r (n - e) / n do (a
    Weibull: scale times (n / (n - e)) ** (1 / shape)); exact for classic allreduce, and
    slightly pessimistic for elastic allreduce and the PS, where the simulator's rank 0
    is a single point of failure the trials never kill."""
    if not hazard:
        return hazard
    spared = len({int(r) for r in hazard.get("exclude_ranks") or [] if 0 <= int(r) < ranks})
    if not spared or spared >= ranks:
        return hazard
    f = (ranks - spared) / ranks
    out = dict(hazard, at_risk=ranks - spared, restated_for_all_ranks=True)
    if hazard.get("kind") == "constant":
        out["rate_per_s"] = float(hazard["rate_per_s"]) * f
    elif hazard.get("kind") == "weibull":
        out["scale_s"] = float(hazard["scale_s"]) * (1.0 / f) ** (1.0 / float(hazard["shape"]))
    return out


def exposure_s(run_dir: Path | None) -> float | None:
    """Seconds the ranks were alive: from the first rank's start to rank 0's completion
    record (result.json), or to the last record when the job died. A rank's hazard clock
    starts when the rank starts (pslab.faults), while the launcher's wall time also counts
    mpirun's start-up of the ranks (seconds on a loaded 2-core machine, more with more
    ranks): the simulator's job clock, which exposes ranks from time 0, must be this one."""
    if run_dir is None or not run_dir.exists():
        return None
    ev = read_jsonl(run_dir / "events.jsonl")
    starts = [e["t"] for e in ev if e.get("kind") == "rank_started" and e.get("t")]
    if not starts:
        return None
    res = read_json(run_dir / "result.json")
    end = res.get("t") if isinstance(res, dict) and res.get("t") else max(e.get("t", 0) for e in ev)
    return float(end - min(starts)) if end > min(starts) else None


def success_trials(root=None) -> list[dict]:
    """The success-rate trials as run records the simulator reads (one dict per trial)."""
    root = Path(root or results_root()) / "success_rate"
    out = []
    for t in read_jsonl(root / "trials.jsonl"):
        rd = root / t["run_dir"] if t.get("run_dir") else None
        summary = (read_json(rd / "summary.json") if rd else None) or {}
        ov = _overrides(t.get("replay"))
        backend = t.get("backend") or summary.get("backend")
        rec = {
            "source": "success_rate", "trial": t.get("trial"), "backend": backend,
            "backend_key": t.get("backend_key"), "elastic": t.get("elastic"), "ranks": int(t["ranks"]),
            "workers": _workers(backend, int(t["ranks"]), ov, summary),
            "servers": summary.get("servers") or (int(ov.get("backend.servers", 1)) if backend == "ps" else 0),
            "replication": int(ov.get("backend.replication", 1)) if backend == "ps" else None,
            "status": "succeeded" if t.get("success") else "failed", "finished": t.get("status"),
            "success": bool(t.get("success")), "wall_s": exposure_s(rd) or t.get("wall_s"),
            "launcher_wall_s": t.get("wall_s"), "deadline_s": t.get("deadline_s"),
            "hazard": at_risk_hazard(t.get("hazard") or summary.get("hazard"), int(t["ranks"])),
            "hazard_configured": t.get("hazard") or summary.get("hazard"),
            "failure_times_s": t.get("failure_times_s", summary.get("failure_times_s")),
            "faults_injected": t.get("faults_injected", 0),
            "failures_detected": t.get("failures_detected"),
            "recovery_s": t.get("recovery_s") or [],
            "worker_recovery_s": summary.get("worker_recovery_s"),
            "server_recovery_s": summary.get("server_recovery_s"),
            "consistency": summary.get("consistency") or ov.get("backend.consistency", "bsp"),
            "staleness": summary.get("staleness") or 0,
            "steps": summary.get("steps"), "examples": summary.get("examples"),
            "test_auc": t.get("test_auc"),
        }
        rec["step_time_s"], rec["step_time_source"] = _step_list(rd, summary)
        out.append(rec)
    return out


def baseline_runs(root=None) -> list[dict]:
    """The fault-free references of the success-rate cells (no hazard: the simulator
    must predict they all succeed; they measure the overhead and step time)."""
    root = Path(root or results_root()) / "success_rate"
    out = []
    for b in read_jsonl(root / "baselines.jsonl"):
        if b.get("backend") not in ("allreduce", "ps"):
            continue
        rd = root / b["run_dir"] if b.get("run_dir") else None
        summary = (read_json(rd / "summary.json") if rd else None) or {}
        ov = _overrides(b.get("command"))
        st, source = _step_list(rd, summary)
        out.append({
            "source": "success_rate_baseline", "backend": b["backend"], "backend_key": b.get("backend_key"),
            "elastic": b.get("elastic"), "ranks": int(b["ranks"]),
            "workers": _workers(b["backend"], int(b["ranks"]), ov, summary),
            "servers": summary.get("servers") or (int(ov.get("backend.servers", 1)) if b["backend"] == "ps" else 0),
            "replication": int(ov.get("backend.replication", 1)) if b["backend"] == "ps" else None,
            "status": b.get("status"), "wall_s": exposure_s(rd) or b.get("wall_s"), "launcher_wall_s": b.get("wall_s"),
            "deadline_s": summary.get("deadline_s"),
            "hazard": None, "failure_times_s": None, "faults_injected": 0, "recovery_s": [],
            "consistency": summary.get("consistency") or "bsp", "staleness": summary.get("staleness") or 0,
            "steps": summary.get("steps"), "examples": summary.get("examples"),
            "step_time_s": st, "step_time_source": source,
        })
    return out


def recovery_records(root=None) -> list[dict]:
    """Recovery times from results/recovery, as records that only feed the recovery fits
    (status 'recovery_only': not successful runs, no step times, no hazard)."""
    from .io import load_runs
    d = Path(root or results_root()) / "recovery"
    out = []
    for r in load_runs(d) if d.exists() else []:
        p = r.get("params") or {}
        if not p.get("mechanism") or p.get("mechanism") == "restart":
            continue
        rec = {"source": "recovery", "backend": r.get("backend"), "elastic": r.get("elastic"),
               "ranks": r.get("ranks"), "workers": r.get("workers"), "status": "recovery_only",
               "faults_injected": r.get("faults_injected", 0), "hazard": None, "failure_times_s": None,
               "consistency": "bsp", "mechanism": p.get("mechanism")}
        if r.get("backend") == "ps":
            rec["worker_recovery_s"] = r.get("worker_recovery_s") or (
                r.get("recovery_s") if p.get("mechanism") == "worker" else [])
            rec["server_recovery_s"] = r.get("server_recovery_s") or (
                r.get("recovery_s") if p.get("mechanism") in ("promotion", "restore") else [])
            rec["recovery_s"] = []
        else:
            rec["recovery_s"] = r.get("recovery_s") or []
        if rec.get("recovery_s") or rec.get("worker_recovery_s") or rec.get("server_recovery_s"):
            out.append(rec)
    return out


def calibration_runs(root=None) -> list[dict]:
    return success_trials(root) + baseline_runs(root) + recovery_records(root)


# --------------------------------------------------------------------------- calibration


def _backend_runs(runs, key):
    return [r for r in runs if r.get("backend") in ("allreduce", "ps") and sim.backend_key(r) == key]


def calibrate_results(runs: list[dict]) -> tuple[sim.Calibration | None, dict]:
    """pslab.sim.calibrate on the backends that can be calibrated; notes say why a backend
    was left out (e.g. the PS has no measured recovery yet)."""
    notes, usable = {}, []
    for key in ("allreduce", "elastic", "ps"):
        rs = _backend_runs(runs, key)
        if not rs:
            notes[key] = "no measured runs"
            continue
        try:
            cal = sim.calibrate(rs)
            cal.job(key, 4, hazard=None, servers=1 if key == "ps" else None)  # everything a job needs is there
            usable += rs
            notes[key] = "calibrated"
        except ValueError as e:
            notes[key] = f"not calibrated: {e}"
    sources = sorted({r.get("step_time_source") for r in runs if r.get("step_time_source")})
    if sources:
        notes["step_times_from"] = ", ".join(sources)
    if not usable:
        return None, notes
    return sim.calibrate(usable), notes


def calibrate_by_size(runs: list[dict]) -> dict:
    """{ranks: (Calibration or None, notes)}: one calibration per measured job size, from
    that size's trials and references (plus every recovery record).

    On one oversubscribed 2-core machine a step of a 16-rank job is several times slower
    than one of a 4-rank job (the ranks share the cores), which pslab.sim's job model
    (a worker's step time does not depend on N) cannot express; pooled over sizes, the
    fitted step-time spread absorbs the slowdown and distorts every size. Per size, the
    job model is checked where it applies: given what a job of that size takes, do the
    hazard, the recoveries and the deadline give its success rate?"""
    sizes = sorted({int(r["ranks"]) for r in runs if r.get("source") in ("success_rate", "success_rate_baseline")})
    rec = [r for r in runs if r.get("source") == "recovery"]
    # per size the hazard is the configured one (a cell of 4 trials may see no failure,
    # which leaves nothing to fit); the pooled calibration fits it
    return {n: calibrate_results([{**r, "failure_times_s": None} for r in runs
                                  if r.get("source") != "recovery" and int(r["ranks"]) == n] + rec)
            for n in sizes}


def validate_results(cal, runs: list[dict], trials: int = 4000) -> list[dict]:
    """Simulated vs measured success rate per measured cell. `cal`: a Calibration (used
    for every cell) or calibrate_by_size's dict (each cell with its own size's)."""
    by_size = cal if isinstance(cal, dict) else None
    rows = []
    # the trials only: a fault-free reference has no hazard, and pslab.sim.validate would
    # simulate such a cell under the calibrated one
    cells = [r for r in runs if r.get("backend") in ("allreduce", "ps") and r.get("status") in ("succeeded", "failed")
             and r.get("source") not in ("success_rate_baseline", "recovery")]
    groups = {}
    for r in cells:
        groups.setdefault(int(r["ranks"]) if by_size is not None else None, []).append(r)
    for n, rs in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        c = (by_size.get(n) or (None, None))[0] if by_size is not None else cal
        if c is None:
            continue
        rs = [r for r in rs if sim.backend_key(r) in c.fits]
        if rs:
            rows += sim.validate(c, rs, trials=trials, rng=0)
    return sorted(rows, key=lambda r: (r["backend"], r["ranks"]))


def calibration_dict(cal, notes) -> dict:
    out = {"notes": notes, "hazard": None if cal is None or cal.hazard is None else cal.hazard.to_dict(),
           "hazard_source": None if cal is None else cal.hazard_source, "backends": {}}
    if cal is None:
        return out
    for k, f in cal.fits.items():
        d = f.step_time.dist
        out["backends"][k] = {
            "runs": f.runs, "step_time": f.step_time.label, "step_median_s": float(d.median()),
            "step_sigma": float(getattr(d, "kwds", {}).get("s", np.nan)), "overhead_s": f.overhead_s,
            "steps": f.steps, "examples_per_worker_step": f.examples_per_worker_step, "recovery_s": f.recovery_s,
            "server_recovery_s": f.server_recovery_s, "staleness_cost": f.staleness_cost,
            "servers_per_worker": f.servers_per_worker, "replication": f.replication}
    return out


# --------------------------------------------------------------------------- curves


def _measured_hazard(runs, cal):
    """The hazard the trials were run under (they agree on one), else the calibrated one."""
    configured = {json.dumps(r.get("hazard_configured") or r["hazard"], sort_keys=True)
                  for r in runs if r.get("hazard")}
    if len(configured) == 1:
        return sim.hazard_from_dict(json.loads(configured.pop()))
    return cal.hazard


def _hazard_label(h) -> str:
    if h is None:
        return "no hazard"
    d = h.to_dict()
    if d.get("kind") == "constant":
        return f"constant per-rank hazard {d['rate_per_s']:.3g}/s (mean lifetime {1 / d['rate_per_s']:.0f} s)"
    return f"Weibull per-rank hazard, shape {d['shape']:.2g}, scale {d['scale_s']:.3g} s"


PS_LAYOUT = {"servers_per_worker": 0.25, "replication": 2}  # until measured runs say otherwise


def _job(cal, key, n, hazard, steps=None, deadline=None, layout=None):
    kw = dict(hazard=hazard, deadline_s=deadline, steps=steps)
    if key == "ps":
        lay = layout or PS_LAYOUT
        kw["servers"] = max(1, int(round(lay["servers_per_worker"] * n)))
        kw["replication"] = min(int(lay["replication"]), kw["servers"])
    return cal.job(key, n, **kw)


def ps_layout(runs) -> dict:
    """The PS layout to extrapolate: that of the largest measured PS job (the small ones
    run 1 server without replicas), as servers per worker and replication."""
    ps = [r for r in runs if r.get("backend") == "ps" and r.get("workers") and r.get("servers")]
    if not ps:
        return dict(PS_LAYOUT)
    top = max(int(r["ranks"]) for r in ps)
    big = [r for r in ps if int(r["ranks"]) == top]
    spw = float(np.median([r["servers"] / r["workers"] for r in big]))
    rep = int(round(float(np.median([r.get("replication") or 1 for r in big]))))
    return {"servers_per_worker": spw, "replication": max(1, rep), "from_ranks": top}


def _curve(cal, key, ns, hazard_for, trials, rng, steps_for=None, layout=None):
    out = {"workers": [], "success_rate": [], "ci_low": [], "ci_high": [], "wall_median_s": [],
           "resubmit_time_to_target_s": [], "failures_mean": []}
    for n in ns:
        job = _job(cal, key, n, hazard_for(n), steps=steps_for(key, n) if steps_for else None, layout=layout)
        r = sim.simulate(job, trials, rng)
        out["workers"].append(int(n))
        out["success_rate"].append(r.success_rate)
        out["ci_low"].append(r.success_ci[0])
        out["ci_high"].append(r.success_ci[1])
        out["wall_median_s"].append(None if math.isnan(r.wall_quantiles_s[0.5]) else r.wall_quantiles_s[0.5])
        out["resubmit_time_to_target_s"].append(None if not math.isfinite(r.resubmit_time_to_target_s)
                                                else r.resubmit_time_to_target_s)
        out["failures_mean"].append(r.failures_mean)
    return out


def curves(cal, runs, ns=N_GRID, trials: int = 2000, job_hours: float = 1.0, rng=0) -> dict:
    """Simulated success rate (and wall time) vs workers for every calibrated backend:

    - measured regime: the job as measured (steps, step time, overhead, recovery) under
      the hazard the trials ran with: what the measured points would become at N workers;
    - production regime: jobs of `job_hours` hours failure-free (steps from the calibrated
      step time) under the per-rank Weibull that reproduces Li et al.'s failure table
      for jobs of that many ranks (pslab.sim.fit_osdi_weibull; machine-hours = N x
      job_hours), and under the deck's constant rate (30% success for 1000 workers)."""
    rng = np.random.default_rng(rng)
    out = {"n_grid": list(ns), "measured_regime": {"curves": {}}, "production_regime": {"curves": {}},
           "notes": {}}
    if cal is None:
        return out
    lay = ps_layout(runs)
    out["ps_layout"] = lay
    h = _measured_hazard(runs, cal)
    out["measured_regime"]["hazard"] = None if h is None else h.to_dict()
    out["measured_regime"]["hazard_label"] = _hazard_label(h)
    for key in cal.fits:
        try:
            out["measured_regime"]["curves"][key] = _curve(cal, key, ns, lambda n: h, trials, rng, layout=lay)
        except ValueError as e:
            out["notes"][f"measured/{key}"] = str(e)

    law = sim.fit_osdi_weibull()
    deck = sim.deck_rank_rate(job_hours)

    def steps_for(key, n):
        """Steps that make the failure-free job last job_hours at n workers (a BSP step
        waits for the slowest of n, so bigger jobs take fewer, longer steps)."""
        f = cal.fit(key)
        per_step = _job(cal, key, n, None, layout=lay).step_moments()[0]
        return max(1, int(round((job_hours * 3600.0 - f.overhead_s) / per_step)))

    prod = out["production_regime"]
    prod.update({"job_hours": job_hours, "osdi_weibull": {"shape": law.shape,
                                                          "scale_machine_hours": law.scale_machine_hours},
                 "deck_rate_per_s": deck.rate_per_s,
                 "title": f"Production scale: {job_hours:g} h jobs at every size\nsolid: per-rank Weibull fitted to "
                          f"Li et al.'s table; dashed: the deck's constant rate"})
    prod["curves_deck"] = {}
    for key in cal.fits:
        try:
            prod["curves"][key] = _curve(cal, key, ns, law.rank_hazard, trials, rng, steps_for, lay)
            prod["curves_deck"][key] = _curve(cal, key, ns, lambda n: deck, trials, rng, steps_for, lay)
        except ValueError as e:
            out["notes"][f"production/{key}"] = str(e)
    return out


# --------------------------------------------------------------------------- all of it


def for_curves(runs: list[dict], by_size: dict | None = None):
    """The calibration the curves extrapolate from: the smallest measured job size (the
    least oversubscribed, so the closest to one worker per core), where every backend
    calibrates; else the pooled one. Returns (Calibration or None, notes, label).
    by_size: calibrate_by_size(runs), when the caller has it already."""
    for n, (c, notes) in sorted((by_size or calibrate_by_size(runs)).items()):
        if c is not None and all(v == "calibrated" for k, v in notes.items() if k in ("allreduce", "elastic", "ps")):
            return c, notes, f"calibrated on the {n}-rank runs"
    c, notes = calibrate_results(runs)
    return c, notes, "calibrated on all runs"


def load_sim(root=None) -> dict:
    d = Path(root or results_root()) / SIM_DIR
    return {"calibration": read_json(d / "calibration.json") or {},
            "validation": (read_json(d / "validation.json") or {}).get("rows", []),
            "curves": read_json(d / "curves.json") or {}}
