"""Job success rate under a per-rank failure hazard: classic MPI allreduce vs ULFM
elastic allreduce vs the parameter server, at 4, 8 and 16 ranks (BRIEF section 5, #1).

    .venv/bin/python experiments/success_rate.py --preset small      # ~15 min on 2 cores
    .venv/bin/python experiments/success_rate.py --preset large      # bigger machines
    .venv/bin/python experiments/success_rate.py --preset small --backends allreduce elastic --ranks 4 8 \
        --trials 3 --rate 0.02                                        # a subset, a fixed hazard
    .venv/bin/python experiments/success_rate.py --tiny              # end-to-end smoke test (local backend)

For every (backend, ranks) cell the script first runs the fault-free reference (same
data, model, batch and layout), then `trials` runs with `faults=hazard`: every rank except
rank 0 (the coordinator / evaluator, a single point of failure in every design, spared
on purpose) draws its own time to failure from a constant per-rank hazard (or Weibull,
--hazard weibull), seeded by (trial seed, rank). Trial t uses seed t+1 in every cell, so
the cells are paired: the same rank draws the same failure time in every backend, and a
bigger job only adds ranks (and their risk) to a smaller one.

A trial succeeds when it finishes (status "succeeded") AND its test AUC is within 0.01
of the fault-free run of the same backend and size.

The hazard rate. The small preset uses 0.01 failures per rank per second: on 2 cores a
classic job lives ~5 / 9 / 20 s at 4 / 8 / 16 ranks, so it meets a failure in roughly
13% / 45% / 95% of the trials (3, 7, 15 ranks at risk). With --rate auto (the large
preset's default) the rate is set once, from the fault-free runs, so that a classic
allreduce job at the middle size is expected to see `--target-faults` failures (default
1: it fails ~63% of the time), which adapts the hazard to the machine's speed. The rate
is written to every trial line, so a trial can be replayed exactly (its `replay` field
is the command). Wall-clock time on an oversubscribed 2-core machine grows with the
number of ranks, so bigger jobs are exposed for longer here than on a real cluster; the
simulator (pslab.sim) carries the per-rank figures to 1000+ ranks.

Output (results/success_rate/ unless --out):
    baseline-<backend>-n<N>/      fault-free run dirs (summary.json, events.jsonl, ...)
    trial-<backend>-n<N>-s<seed>/  one run dir per trial
    trials.jsonl                   one line per trial (backend, elastic, ranks, seed, status,
                                   test_auc, wall_s, faults_injected, recovery_s, success, ...)
    baselines.jsonl                one line per fault-free reference
    table.json                     success rate per (backend, ranks)
Rerunning resumes: trials already in trials.jsonl are kept (--fresh starts over).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.config import CONF_DIR  # noqa: E402
from pslab.launch import Interrupted, launch  # noqa: E402
from pslab.launcher.progress import Countdown  # noqa: E402
from pslab.observe import read_jsonl  # noqa: E402

AUC_TOLERANCE = 0.01

# backend name -> (hydra overrides, module that must exist, conf file that must exist)
BACKENDS = {
    "allreduce": (["backend=allreduce", "backend.elastic=false"], "pslab.backends.allreduce", "allreduce"),
    "elastic": (["backend=allreduce", "backend.elastic=true"], "pslab.backends.elastic", "allreduce"),
    "ps": (["backend=ps"], "pslab.backends.ps", "ps"),
    "local": (["backend=local"], "pslab.backends.local", "local"),  # one rank: smoke tests only
}

PRESETS = {
    # 2 cores: the shipped Criteo sample, LR, 2 epochs (~70 steps at batch 240:
    # conf/experiment/success_rate.yaml);
    # 3 backends x 3 sizes x (1 reference + 4 trials) = 45 runs.
    "small": dict(backends=["allreduce", "elastic", "ps"], ranks=[4, 8, 16], trials=4, batch=240,
                  data=["experiment=success_rate", "data=criteo_sample", "model=lr"], budget_s=840, deadline_factor=3.0,
                  deadline_min_s=45.0, rate=0.01),
    # A bigger machine (>= 16 cores): synthetic CTR data, more trials and sizes.
    "large": dict(backends=["allreduce", "elastic", "ps"], ranks=[4, 8, 16, 32, 64], trials=20, batch=3840,
                  data=["data=synthetic", "data.rows=400000", "data.test_rows=50000", "model=lr",
                        "train.epochs=1"], budget_s=None, deadline_factor=3.0, deadline_min_s=120.0, rate="auto"),
    # Smoke test: one rank, the local backend (hazard on rank 0, which is otherwise spared).
    "tiny": dict(backends=["local"], ranks=[1], trials=2, batch=240,
                 data=["data=criteo_sample", "model=lr"], budget_s=None, deadline_factor=3.0, deadline_min_s=30.0,
                 rate="auto"),
}

# PS layout per size: servers S (replication 2 when S >= 2); workers = ranks - 1 - S.
def ps_servers(n: int) -> int:
    return 1 if n <= 4 else 2 if n <= 8 else max(3, n // 6)


def layout_overrides(backend: str, n: int) -> list[str]:
    if backend != "ps":
        return []
    s = ps_servers(n)
    return [f"backend.servers={s}", f"backend.replication={2 if s >= 2 else 1}"]


def lanes(backend: str, n: int) -> int:
    return n - 1 - ps_servers(n) if backend == "ps" else n


def batch_for(backend: str, n: int, batch: int) -> int:
    """The global batch, rounded to a multiple of the lanes (ranks or workers)."""
    k = lanes(backend, n)
    return max(k, k * round(batch / k))


def available(backend: str) -> tuple[bool, str]:
    overrides, module, conf = BACKENDS[backend]
    if not (CONF_DIR / "backend" / f"{conf}.yaml").exists():
        return False, f"conf/backend/{conf}.yaml does not exist yet"
    try:
        if importlib.util.find_spec(module) is None:
            return False, f"{module} does not exist yet"
    except ImportError as e:
        return False, f"{module} does not import: {e}"
    return True, ""


def hazard_overrides(kind: str, rate: float, shape: float, seed: int, exclude_rank0: bool) -> list[str]:
    out = ["faults=hazard", f"faults.seed={seed}", f"faults.hazard.kind={kind}"]
    if kind == "constant":
        out.append(f"faults.hazard.rate_per_s={rate:.6g}")
    else:  # same mean lifetime as the constant rate: scale = mean / Gamma(1 + 1/shape)
        out += [f"faults.hazard.shape={shape}", f"faults.hazard.scale_s={1.0 / rate / math.gamma(1 + 1 / shape):.6g}"]
    if not exclude_rank0:
        out.append("faults.hazard.exclude_ranks=[]")
    return out


def append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def fresh_dir(path: Path) -> Path:
    """A run dir this script owns: a leftover (an interrupted run) is removed."""
    if path.exists():
        shutil.rmtree(path)
    return path


def cell_overrides(backend: str, n: int, p: dict) -> list[str]:
    return [*BACKENDS[backend][0], *layout_overrides(backend, n), *p["data"],
            f"train.batch_size={batch_for(backend, n, p['batch'])}"]


def command(n: int, overrides: list[str], run_dir: Path, deadline: float) -> str:
    return (f".venv/bin/python -m pslab.launch -n {n} --run-dir {run_dir} --deadline {deadline:g} "
            + " ".join(overrides))


def run_baselines(cells, p, out: Path, quiet: bool) -> dict:
    done = {(b["backend_key"], b["ranks"]): b for b in read_jsonl(out / "baselines.jsonl")}
    for backend, n in cells:
        if (backend, n) in done:
            continue
        run_dir = fresh_dir(out / f"baseline-{backend}-n{n}")
        ov = cell_overrides(backend, n, p) + ["faults=none"]
        deadline = max(p["deadline_min_s"] * 4, 300.0)
        t = time.time()
        s = launch(n, ov, run_dir=run_dir, deadline=deadline, quiet=quiet)
        line = {"backend_key": backend, "backend": s.get("backend"), "elastic": s.get("elastic"), "ranks": n,
                "status": s["status"], "test_auc": s.get("test_auc"), "wall_s": s["wall_s"],
                "train_s": s.get("train_s"), "reason": s.get("reason"), "run_dir": str(run_dir.relative_to(out)),
                "command": command(n, ov, run_dir, deadline), "took_s": round(time.time() - t, 2)}
        append_jsonl(out / "baselines.jsonl", line)
        done[(backend, n)] = line
        print(f"[success_rate] reference {backend:9s} n={n:<3d} {s['status']:9s} auc="
              f"{'%.4f' % s['test_auc'] if s.get('test_auc') is not None else '-':7s} wall={s['wall_s']:.1f}s")
    return done


def auto_rate(baselines: dict, ranks: list[int], target_faults: float, exclude_rank0: bool) -> float:
    """A per-rank rate at which a classic job of the middle size expects target_faults
    failures over its fault-free wall time."""
    mid = sorted(ranks)[len(ranks) // 2]
    for key in ("allreduce", "elastic", "ps", "local"):
        b = baselines.get((key, mid))
        if b and b["status"] == "succeeded":
            at_risk = max(1, mid - (1 if exclude_rank0 else 0))
            return target_faults / (at_risk * float(b["wall_s"]))
    raise SystemExit("success_rate: no fault-free reference succeeded; cannot set the hazard rate "
                     "(fix the backends first, or give --rate)")


def table(trials: list[dict]) -> list[dict]:
    cells = {}
    for t in trials:
        cells.setdefault((t["backend_key"], t["ranks"]), []).append(t)
    out = []
    for (backend, n), ts in sorted(cells.items(), key=lambda kv: (list(BACKENDS).index(kv[0][0]), kv[0][1])):
        ok = sum(t["success"] for t in ts)
        rec = [x for t in ts for x in (t.get("recovery_s") or [])]
        out.append({"backend": backend, "ranks": n, "trials": len(ts), "successes": ok,
                    "success_rate": ok / len(ts), "finished": sum(t["status"] == "succeeded" for t in ts),
                    "with_faults": sum(t["faults_injected"] > 0 for t in ts),
                    "faults_injected": sum(t["faults_injected"] for t in ts),
                    "median_recovery_s": sorted(rec)[len(rec) // 2] if rec else None,
                    "mean_wall_s": sum(t["wall_s"] for t in ts) / len(ts),
                    "all_ended_before_deadline": all(t["ended_before_deadline"] for t in ts),
                    "no_process_left": all(t["no_process_left"] for t in ts)})
    return out


def print_table(rows: list[dict]) -> None:
    print(f"\n{'backend':10s} {'ranks':>5s} {'success':>9s} {'finished':>8s} {'w/faults':>8s} {'faults':>6s} "
          f"{'recov_s':>7s} {'wall_s':>7s}")
    for r in rows:
        rec = "%.2f" % r["median_recovery_s"] if r["median_recovery_s"] is not None else "-"
        print(f"{r['backend']:10s} {r['ranks']:5d} {r['successes']:3d}/{r['trials']:<3d}{r['success_rate']:4.0%} "
              f"{r['finished']:8d} {r['with_faults']:8d} {r['faults_injected']:6d} {rec:>7s} {r['mean_wall_s']:7.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["small", "large", "tiny"], default="small")
    ap.add_argument("--tiny", action="store_true", help="same as --preset tiny (local backend, 1 rank)")
    ap.add_argument("--backends", nargs="+", choices=list(BACKENDS), help="default: the preset's")
    ap.add_argument("--ranks", nargs="+", type=int, help="default: the preset's")
    ap.add_argument("--trials", type=int, help="trials per (backend, ranks) cell")
    ap.add_argument("--rate", default=None, help="per-rank failures per second, or 'auto' (see above); "
                    "default: the preset's (small: 0.01)")
    ap.add_argument("--target-faults", type=float, default=1.0,
                    help="auto rate: expected failures of a classic job at the middle size")
    ap.add_argument("--hazard", choices=["constant", "weibull"], default="constant")
    ap.add_argument("--shape", type=float, default=0.7, help="Weibull shape (same mean lifetime as the rate)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no trial after this many seconds")
    ap.add_argument("--out", type=Path, default=None,
                    help="default results/success_rate (tiny: runs/success_rate_tiny)")
    ap.add_argument("--fresh", action="store_true", help="remove earlier results in --out first")
    ap.add_argument("--verbose", action="store_true", help="print every launch")
    args = ap.parse_args(argv)
    preset = "tiny" if args.tiny else args.preset
    p = dict(PRESETS[preset])
    backends = args.backends or p["backends"]
    ranks = args.ranks or p["ranks"]
    trials = args.trials if args.trials is not None else p["trials"]
    budget = args.budget_s if args.budget_s is not None else p["budget_s"]
    exclude_rank0 = preset != "tiny" and min(ranks) > 1
    out = (args.out or (ROOT / ("runs/success_rate_tiny" if preset == "tiny" else "results/success_rate"))).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    rate_arg = str(args.rate if args.rate is not None else p["rate"])
    setting = {"preset": preset, "hazard": args.hazard, "shape": args.shape if args.hazard == "weibull" else None,
               "rate": rate_arg, "target_faults": args.target_faults if rate_arg == "auto" else None,
               "data": p["data"], "batch": p["batch"], "exclude_rank0": exclude_rank0}
    old = json.loads((out / "meta.json").read_text()).get("setting") if (out / "meta.json").exists() else None
    if old is not None and old != setting:
        raise SystemExit(f"success_rate: {out} holds trials of another setting ({old}); "
                         "use --fresh to start over, or another --out")

    usable = []
    for b in backends:
        ok, why = available(b)
        if ok:
            usable.append(b)
        else:
            print(f"[success_rate] skipping backend {b}: {why}")
    if "local" in usable and any(n != 1 for n in ranks):
        print("[success_rate] backend local runs one rank only: using it at n=1")
    cells = [(b, n) for b in usable for n in (ranks if b != "local" else [1])]
    if not cells:
        print("[success_rate] nothing to run")
        return 1

    baselines = run_baselines(cells, p, out, quiet=not args.verbose)
    good = []
    for b, n in cells:
        ref = baselines[(b, n)]
        if ref["status"] != "succeeded":
            print(f"[success_rate] skipping {b} n={n}: its fault-free run failed ({ref.get('reason')})")
        else:
            good.append((b, n))
    rate = auto_rate(baselines, ranks if "local" not in usable else [1], args.target_faults, exclude_rank0) \
        if rate_arg == "auto" else float(rate_arg)
    meta = {"setting": setting, "preset": preset, "hazard": args.hazard, "rate_per_s": rate,
            "shape": args.shape if args.hazard == "weibull" else None,
            "target_faults": args.target_faults if rate_arg == "auto" else None, "exclude_rank0": exclude_rank0,
            "trials": trials, "ranks": ranks, "backends": usable, "data": p["data"], "batch": p["batch"],
            "auc_tolerance": AUC_TOLERANCE}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"[success_rate] hazard: {args.hazard}, {rate:.4g} failures per rank per second "
          f"(mean lifetime {1 / rate:.0f} s){'' if exclude_rank0 else ', rank 0 at risk too'}")

    have = {t["trial"] for t in read_jsonl(out / "trials.jsonl")}
    count = Countdown(sum(1 for t in range(trials) for b, n in good if f"trial-{b}-n{n}-s{t + 1}" not in have))
    print(f"[success_rate] {count.total} trials to run" + (f" (budget {budget:g} s)" if budget else ""), flush=True)
    stopped_early = False
    # Round-robin over cells, so a budget cut leaves every cell with about as many trials.
    for t in range(trials):
        seed = t + 1
        for b, n in good:
            name = f"trial-{b}-n{n}-s{seed}"
            if name in have:
                continue
            if budget is not None and time.time() - t_start > budget:
                stopped_early = True
                break
            ref = baselines[(b, n)]
            deadline = max(p["deadline_min_s"], p["deadline_factor"] * float(ref["wall_s"]))
            ov = cell_overrides(b, n, p) + hazard_overrides(args.hazard, rate, args.shape, seed, exclude_rank0)
            run_dir = fresh_dir(out / name)
            s = launch(n, ov, run_dir=run_dir, deadline=deadline, quiet=not args.verbose)
            auc = s.get("test_auc")
            finished = s["status"] == "succeeded"
            success = bool(finished and auc is not None and abs(auc - ref["test_auc"]) <= AUC_TOLERANCE)
            line = {"trial": name, "backend_key": b, "backend": s.get("backend"), "elastic": s.get("elastic"),
                    "ranks": n, "seed": seed, "status": s["status"], "test_auc": auc, "reference_auc": ref["test_auc"],
                    "wall_s": s["wall_s"], "deadline_s": deadline, "faults_injected": s.get("faults_injected", 0),
                    "failures_detected": s.get("failures_detected"), "recovery_s": s.get("recovery_s") or [],
                    "failure_times_s": s.get("failure_times_s"), "ranks_alive_end": s.get("ranks_alive_end"),
                    "lost_updates": s.get("lost_updates"), "success": success,
                    "ended_before_deadline": s["wall_s"] <= deadline,
                    "no_process_left": bool(s.get("killed_pids_dead", True)) and not s.get("rank_pids_alive"),
                    "hazard": s.get("hazard"), "reason": s.get("reason"),
                    "run_dir": str(run_dir.relative_to(out)), "replay": command(n, ov, run_dir, deadline)}
            append_jsonl(out / "trials.jsonl", line)
            print(f"[success_rate] {count.tick()} | {name:28s} {s['status']:9s} faults={line['faults_injected']} "
                  f"auc={'%.4f' % auc if auc is not None else '-':7s} wall={s['wall_s']:5.1f}s "
                  f"{'SUCCESS' if success else 'fail'}")
        if stopped_early:
            print(f"[success_rate] budget of {budget:g} s used: stopping after {t} full round(s) of trials "
                  "(rerun to add more; finished trials are kept)")
            break
    rows = table([t for t in read_jsonl(out / "trials.jsonl") if (t["backend_key"], t["ranks"]) in set(good)])
    (out / "table.json").write_text(json.dumps({"meta": meta, "cells": rows}, indent=1))
    print_table(rows)
    print(f"\n[success_rate] {len(rows)} cells in {time.time() - t_start:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:  # Interrupted: the launch in progress was ended; finished trials are kept
        print("[success_rate] interrupted: stopped (rerun to go on)", file=sys.stderr)
        sys.exit(e.exit_code if isinstance(e, Interrupted) else 130)
