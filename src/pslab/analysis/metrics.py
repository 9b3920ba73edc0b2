"""Per-run and per-group measures used by the notebooks and figures.

Times on this machine (2 cores, oversubscribed, shared) are noisy; the figures report
medians over repetitions next to the quantities that do not depend on the scheduler
(steps, examples, bytes, idle fractions measured inside the ranks, failures).
"""
from __future__ import annotations


import numpy as np

from ..sim import wilson_interval
from .io import load_metrics, load_ranks
from .tables import get, group, median

__all__ = ["wilson", "success_rates", "train_start_t", "eval_series", "time_to_target", "first_below",
           "idle_fraction", "bytes_per_step", "bytes_per_step_by_role", "model_params", "peak_rss_by_role",
           "train_time_s", "straggler_worker", "target_from"]


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (pslab.sim's, so figures and the simulator agree)."""
    return wilson_interval(successes, trials, confidence)


def success_rates(trials: list[dict], by=("backend_key", "ranks"), success="success") -> list[dict]:
    """One row per group: trials, successes, rate and its Wilson 95% interval."""
    rows = []
    for k, ts in group(trials, *by).items():
        kk = k if isinstance(k, tuple) else (k,)
        ok = sum(bool(get(t, success)) for t in ts)
        lo, hi = wilson(ok, len(ts))
        rows.append({**dict(zip(by, kk)), "trials": len(ts), "successes": ok, "rate": ok / len(ts),
                     "ci_low": lo, "ci_high": hi})
    return rows


# --------------------------------------------------------------------------- time series


def train_start_t(run: dict, ranks: list[dict] | None = None) -> float | None:
    """Wall-clock (epoch seconds) when training started: each worker's first logged step
    records extrapolated back to step 0 (set-up, data generation and waiting for the
    coordinator excluded), earliest over the workers. Falls back to the evaluation
    clock's origin (t - elapsed_s of the first evaluation). ranks: load_ranks(run), if read."""
    starts = []
    for r in load_ranks(run) if ranks is None else ranks:
        if r.get("role") != "worker":
            continue
        pts = [(p["step"], p["t"]) for p in (r.get("first_steps") or []) if p.get("t") is not None and p.get("step")]
        if len(pts) >= 2 and pts[1][0] > pts[0][0]:
            (s1, t1), (s2, t2) = pts[0], pts[1]
            starts.append(t1 - s1 * (t2 - t1) / (s2 - s1))
        elif len(pts) == 1 and r.get("t_started") is not None:
            starts.append(r["t_started"])
    if starts:
        return float(min(starts))
    evals = load_metrics(run)
    if evals and evals[0].get("elapsed_s") is not None:
        return float(evals[0]["t"] - evals[0]["elapsed_s"])
    return None


def worker_progress(run: dict, ranks: list[dict] | None = None, t0: float | None = None):
    """A function t (epoch seconds) -> (examples all workers had processed, slowest
    worker's step), interpolated from the workers' own step records (ranks.json), or None
    when the run has no such records. Independent of when rank 0 got round to evaluating.
    ranks, t0: load_ranks(run) and train_start_t(run), if the caller has them."""
    ranks = load_ranks(run) if ranks is None else ranks
    t0 = train_start_t(run, ranks) if t0 is None else t0
    workers = [r for r in ranks if r.get("role") == "worker" and len(r.get("step_t") or []) >= 1]
    if t0 is None or not workers:
        return None
    n_w = len(workers)
    steps_total = run.get("steps")
    rows_per_step = (float(run["examples"]) / (float(steps_total) * n_w)
                     if run.get("examples") and steps_total else None)
    curves = []
    for r in workers:
        ts = np.array([t0] + list(r["step_t"]), float)
        st = np.array([0] + list(r["steps_logged"]), float)
        order = np.argsort(ts)
        curves.append((ts[order], st[order]))

    def at(t_abs: float):
        steps = [float(np.interp(t_abs, ts, st)) for ts, st in curves]
        ex = sum(steps) * rows_per_step if rows_per_step else None
        return ex, min(steps)
    return at


def eval_series(run: dict) -> dict:
    """Rank 0's evaluations as arrays: time since training started (s), examples and
    step, logloss, auc. Examples and steps are what the workers had done when the
    evaluation ran (from their own step records, when the run kept them): rank 0 may
    evaluate later than the clock its record names. Points that share a step keep the
    last."""
    evals = load_metrics(run)
    ranks = load_ranks(run)
    t0 = train_start_t(run, ranks)
    keep: dict = {}
    for e in evals:
        keep[e.get("step")] = e
    ev = sorted(keep.values(), key=lambda e: e.get("t", 0))
    arr = lambda k: np.array([float(e.get(k)) if e.get(k) is not None else np.nan for e in ev])  # noqa: E731
    t = np.array([e["t"] - t0 for e in ev]) if t0 is not None and ev else arr("elapsed_s")
    examples, step = arr("examples"), arr("step")
    prog = worker_progress(run, ranks, t0) if ev and t0 is not None else None
    if prog is not None:
        got = [prog(e["t"]) for e in ev]
        if all(g[0] is not None for g in got):
            examples = np.array([g[0] for g in got])
            step = np.array([g[1] for g in got])
    return {"time": t, "examples": examples, "step": step, "logloss": arr("logloss"), "auc": arr("auc")}


def first_below(x: np.ndarray, y: np.ndarray, target: float) -> float | None:
    """The x at which y first reaches <= target, linearly interpolated from the previous
    point (None if never). Before the first point the curve is not known: a first point
    already below the target gives its own x."""
    below = np.nonzero(y <= target)[0]
    if not below.size:
        return None
    i = int(below[0])
    if i == 0 or not np.isfinite(y[i - 1]):
        return float(x[i])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1)) if y0 != y1 else float(x1)


def time_to_target(run: dict, target: float, x: str = "time") -> float | None:
    """Seconds (x="time"), examples or steps until the test log-loss first reaches target."""
    s = eval_series(run)
    if not s["logloss"].size:
        return None
    return first_below(s[x], s["logloss"], target)


def target_from(runs: list[dict], rel: float = 0.01) -> float | None:
    """A target log-loss: the median final log-loss of `runs` (the reference arm), plus
    `rel` of it (1% by default), so every arm that converges can reach it."""
    m = median(r.get("test_logloss") for r in runs if r.get("status") == "succeeded")
    return None if m is None else m * (1.0 + rel)


def train_time_s(run: dict) -> float | None:
    """From the start of training (train_start_t) to the last evaluation; else train_s."""
    t0 = train_start_t(run)
    evals = load_metrics(run)
    if t0 is not None and evals:
        return float(evals[-1]["t"] - t0)
    return run.get("train_s")


# --------------------------------------------------------------------------- idle, bytes, memory


def straggler_worker(run: dict) -> int | None:
    """The index of the slowed worker (faults=straggler targets the last one)."""
    for f in run.get("injected") or []:
        if f.get("action") == "slow":
            return f.get("target_index")
    return None


def idle_fraction(run: dict, exclude_straggler: bool = True) -> float | None:
    """Share of a worker's training time spent waiting (PS: wait / busy per worker;
    allreduce: the 'wait' share of the ranks' time split), averaged over the workers,
    without the slowed worker by default (it is the one the others wait for)."""
    w = run.get("wait_fraction_by_worker")
    if isinstance(w, dict) and w:
        slow = straggler_worker(run) if exclude_straggler else None
        if slow is not None and slow < 0:
            slow = len(w) + slow
        vals = [float(v) for k, v in w.items() if slow is None or int(k) != slow]
        return float(np.mean(vals)) if vals else None
    split = run.get("time_split_s")
    if isinstance(split, dict) and split:
        slow = straggler_worker(run) if exclude_straggler else None
        if slow is not None and slow < 0:
            slow = len(split) + slow
        fr = []
        for k, sp in split.items():
            if slow is not None and int(k) == slow:
                continue
            tot = sum(v for kk, v in sp.items() if kk != "eval")
            if tot > 0:
                fr.append(sp.get("wait", 0.0) / tot)
        return float(np.mean(fr)) if fr else None
    return get(run, "time_fraction.wait")


def bytes_per_step(run: dict) -> float | None:
    """Bytes on the wire per global step, all ranks together."""
    b, s = run.get("bytes_sent"), run.get("steps")
    return float(b) / s if b and s else None


def bytes_per_step_by_role(run: dict) -> dict:
    """PS: {coordinator, server, worker: bytes per step}; allreduce: {worker: ...}."""
    s = run.get("steps")
    if not s:
        return {}
    roles = run.get("bytes_by_role")
    if isinstance(roles, dict):
        return {k: float(v) / s for k, v in roles.items()}
    return {"worker": float(run.get("bytes_sent") or 0) / s}


def model_params(run: dict) -> int | None:
    """Parameters stored for the model (keys x row width): dense allreduce holds the whole
    folded key space, sparse stores the keys seen."""
    keys = run.get("model_keys")
    dim = 1 if run.get("model") == "lr" else None
    if dim is None:
        k = get(run, "_meta.params.k") or 8
        dim = 1 + int(k)
    return int(keys) * dim if keys is not None else None


def peak_rss_by_role(run: dict) -> dict:
    """{role: max peak RSS over that role's ranks} from the per-rank digest or, failing
    that, the summary (rank layout: PS 0 coordinator, 1..S servers, the rest workers)."""
    out: dict = {}
    digest = load_ranks(run)
    if digest:
        for r in digest:
            if r.get("peak_rss_bytes") is None:
                continue
            out[r["role"]] = max(out.get(r["role"], 0), int(r["peak_rss_bytes"]))
        return out
    by_rank = run.get("peak_rss_bytes_by_rank") or {}
    servers = int(run.get("servers") or 0)
    for k, v in by_rank.items():
        r = int(k)
        role = "worker" if run.get("backend") != "ps" else "coordinator" if r == 0 else "server" if r <= servers else "worker"
        out[role] = max(out.get(role, 0), int(v))
    return out

