"""Goodput (ETTR) and success rate under one seeded per-rank hazard of kills and hangs:
classic allreduce resubmitted from scratch, classic allreduce with checkpoint-restart
(Young/Daly interval), elastic (ULFM) allreduce and the parameter server (R=2), at 4, 8
and 16 ranks (BRIEF section 7; issue 14).

    .venv/bin/python experiments/goodput.py --preset small     # make reproduce: ~13 min on 2 cores
    .venv/bin/python experiments/goodput.py --preset full      # 20 trials a cell, resumable (~1 h+)
    .venv/bin/python experiments/goodput.py --preset large     # bigger machines: up to 32 ranks
    .venv/bin/python experiments/goodput.py --preset small --contenders scratch elastic --ranks 4 --trials 2
    .venv/bin/python experiments/goodput.py --figure-only      # redraw results/figures/goodput.png
    .venv/bin/python experiments/goodput.py --preset tiny --out /tmp/gp   # smoke test (2 ranks, seconds)
    .venv/bin/python experiments/goodput.py --preset small --hosts 2 --out /tmp/gp2h   # over 2 emulated hosts

Contenders (a trial = one launcher job with a deadline; every contender gets the same
restart budget, `--max-restarts K`, since rank 0 is at risk too and only a restart
survives its death):
  scratch       classic allreduce, no checkpoints: a restart starts again from step 0
  ckpt_restart  classic allreduce with backend.checkpoint_every from Young/Daly,
                sqrt(2 C M): C measured by a calibration run of this experiment, M = 1 /
                (ranks x rate), converted to steps with the calibration's step time
  elastic       backend.elastic=true (ULFM shrink; a restart for what a shrink cannot
                survive: rank 0's death)
  ps            backend=ps, backend.replication=2, S servers (2 up to 8 ranks, then n // 6,
                at least 3), checkpoints at the same interval (a restart after the
                coordinator's death resumes from them)
The hazard (conf/faults/hazard.yaml): every rank, rank 0 included
(faults.hazard.exclude_ranks=[]), draws its failure time from a constant rate and its
action from faults.hazard.actions (kill 0.7, hang 0.3), seeded by (trial seed, rank):
trial t has seed t + 1 in every cell, so the contenders are paired (the same rank fails
at the same time in the same way). Hangs are found by the allreduce step watchdog
(backend.step_timeout_s) and by the PS heartbeats (backend.heartbeat_timeout_s).

The launcher restarts a failed job itself (`--max-restarts K --restart-ranks same`, from
the newest checkpoint; a fault that fired never fires again and the hazard runs on the
job's clock, pslab.faults.jobstate); the job's deadline covers every attempt. With a
launcher that lacks the flag this script resubmits a failed job itself (from step 0, the
hazard seed moved on by 1000 per attempt), and a contender whose options do not exist
(ckpt_restart needs allreduce checkpoints) is skipped with the reason, in meta.json too.

A trial succeeds when its job finishes (status "succeeded") within K restarts, with a test
AUC within 0.01 of its fault-free reference (`success`). ETTR is the launcher's
(pslab.launcher.ettr): productive time / the job's wall time from its first training step
to the result, start-up outside the ratio (`startup_s`); a failed job has ETTR 0. The
cells give ETTR's mean over all trials (failed ones 0) and over the finished ones.

Output (results/goodput/ unless --out; run dirs under runs/goodput/):
    trials.jsonl   one line per trial (the contract the simulator reads: contender, ranks,
                   workers, servers, seed, status, ettr, attempts, wall_s, productive_s,
                   checkpoint_s, restart_s, redone_s, detect_s, startup_s, train_s,
                   faults_injected, failures_detected, checkpoint_every, checkpoints,
                   recovery_s, rereplication_s, hazard, run_dir; plus success, test_auc, ...)
    references.jsonl  the fault-free runs (one per contender and size; the calibration)
    meta.json      the setting, the rate, Young/Daly's C, M and interval per size
    cells.json, cells.md   success rate (Wilson 95%) and ETTR (95%, stratified by faults) per cell
Rerunning resumes: a (contender, ranks, seed) already in trials.jsonl is not run again
(--fresh starts over); --preset full adds trials to the small preset's results. Each trial
records the commit it ran on (cells.json counts them): resuming after a change to what a
trial measures mixes semantics in a cell, so it says so; --fresh then.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.analysis.io import read_json, read_jsonl, write_json_atomic  # noqa: E402
from pslab.config import ConfigError, load_config  # noqa: E402
from pslab.launch import Interrupted, launch  # noqa: E402
from pslab.launcher.progress import Countdown  # noqa: E402
from sweep import git_commit  # noqa: E402  (experiments/ is on the path: this file's folder)

NAME = "goodput"
CONTENDERS = ["scratch", "ckpt_restart", "elastic", "ps"]
AUC_TOLERANCE = 0.01
SEED_STRIDE = 1000        # harness resubmission: attempt a runs with hazard seed + a * SEED_STRIDE
CALIBRATION_EVERY = 10    # steps between checkpoints in the calibration run (measures C)

# What every trial of a preset shares (the `setting` in meta.json: results of another
# setting are not mixed in); `trials` and `budget_s` may differ (full = small, more trials).
SMALL = dict(ranks=[4, 8, 16], batch=240, data=["data=criteo_sample", "model=lr", "train.epochs=3"],
             rate=0.015, actions={"kill": 0.7, "hang": 0.3}, max_restarts=3, step_timeout_s=10,
             heartbeat_timeout_s=10, deadline_factor=2.5, deadline_min_s=60.0)
PRESETS = {
    # references included; make reproduce took 41-42 min of its 45 on 2 cores with 900 s here
    "small": dict(SMALL, trials=6, budget_s=780),
    "full": dict(SMALL, trials=20, budget_s=None),
    "large": dict(SMALL, ranks=[4, 8, 16, 32], trials=20, budget_s=None, batch=3840,
                  data=["data=synthetic", "data.rows=400000", "data.test_rows=50000", "model=lr", "train.epochs=1"],
                  deadline_min_s=120.0),
    # smoke test: 2 ranks, the allreduce contenders, a hazard that fires in most trials
    "tiny": dict(SMALL, ranks=[2], trials=2, budget_s=None, batch=240, rate=0.05,
                 data=["data=criteo_sample", "model=lr", "train.epochs=1"], max_restarts=1,
                 deadline_min_s=60.0, contenders=["scratch", "elastic"]),
}
SETTING_KEYS = ("batch", "data", "rate", "actions", "max_restarts", "step_timeout_s", "heartbeat_timeout_s",
                "hosts")  # hosts: only with --hosts (absent on one host)


# --------------------------------------------------------------------------- what exists


def launcher_restarts() -> bool:
    """The launcher restarts a failed job itself (`--max-restarts`, branch restart)."""
    return "max_restarts" in inspect.signature(launch).parameters


def has_key(backend: str, key: str) -> bool:
    from omegaconf import OmegaConf
    try:
        cfg = load_config([f"backend={backend}"])
    except ConfigError:
        return False
    return OmegaConf.select(cfg, key, default="<missing>") != "<missing>"


def why_not(contender: str) -> str | None:
    """Why a contender cannot run with this checkout, or None."""
    if contender == "ckpt_restart" and not has_key("allreduce", "backend.checkpoint_every"):
        return ("classic allreduce has no checkpoints yet (backend.checkpoint_every, branch restart): "
                "checkpoint-restart cannot run")
    return None


# --------------------------------------------------------------------------- layout


def ps_servers(n: int) -> int:
    """Servers for the PS at n ranks: 2 up to 8 (R=2 needs two), then n // 6, at least 3."""
    return 2 if n <= 8 else max(3, n // 6)


def layout(contender: str, n: int) -> tuple[int, int]:
    """(workers, servers) at world size n."""
    if contender == "ps":
        s = ps_servers(n)
        return n - 1 - s, s
    return n, 0


def batch_for(contender: str, n: int, batch: int) -> int:
    """The global batch, rounded to a multiple of the lanes (ranks or PS workers)."""
    w, _ = layout(contender, n)
    return max(w, w * round(batch / w))


def contender_overrides(contender: str, n: int, p: dict, every: int | None) -> list[str]:
    """Hydra overrides of one contender at n ranks (no faults); every: checkpoint steps."""
    ov = [f"experiment={NAME}", *p["data"], f"train.batch_size={batch_for(contender, n, p['batch'])}"]
    if contender == "ps":
        w, s = layout(contender, n)
        ov += ["backend=ps", f"backend.servers={s}", "backend.replication=2",
               f"backend.heartbeat_timeout_s={p['heartbeat_timeout_s']}",
               f"backend.request_timeout_s={3 * p['heartbeat_timeout_s']}",
               f"backend.idle_timeout_s={6 * p['heartbeat_timeout_s']}"]
        if every:
            ov.append(f"backend.checkpoint_every={every}")
        return ov
    ov += ["backend=allreduce", f"backend.elastic={'true' if contender == 'elastic' else 'false'}"]
    if has_key("allreduce", "backend.step_timeout_s"):
        ov.append(f"backend.step_timeout_s={p['step_timeout_s']}")
    if every and contender != "scratch" and has_key("allreduce", "backend.checkpoint_every"):
        ov.append(f"backend.checkpoint_every={every}")
    return ov


def hazard_overrides(p: dict, seed: int) -> list[str]:
    mix = ",".join(f"{a}:{w:g}" for a, w in p["actions"].items())
    return ["faults=hazard", f"faults.seed={seed}", "faults.hazard.kind=constant",
            f"faults.hazard.rate_per_s={p['rate']:.6g}", f"faults.hazard.actions={{{mix}}}",
            "faults.hazard.exclude_ranks=[]"]


def trial_name(contender: str, n: int, seed: int) -> str:
    return f"{contender}-n{n}-s{seed}"


def command(n: int, overrides: list[str], run_dir, deadline: float, restarts: int | None) -> str:
    flag = f" --max-restarts {restarts}" if restarts else ""
    return (f".venv/bin/python -m pslab.launch -n {n} --run-dir {run_dir} --deadline {deadline:g}{flag} "
            + " ".join(overrides))


# --------------------------------------------------------------------------- Young/Daly


def young_daly_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young (1974) / Daly (2006): checkpoint every sqrt(2 C M) seconds."""
    return math.sqrt(2.0 * max(checkpoint_cost_s, 1e-6) * mtbf_s)


def interval_steps(checkpoint_cost_s: float, mtbf_s: float, step_s: float, steps: int) -> int:
    """Young/Daly's interval in steps, between 1 and the job's steps."""
    return int(min(max(1, steps), max(1, round(young_daly_s(checkpoint_cost_s, mtbf_s) / max(step_s, 1e-6)))))


# --------------------------------------------------------------------------- records


def _f(x):
    return None if x is None else float(x)


def n_checkpoints(x) -> int:
    """A summary's `checkpoints`: the steps (allreduce) or clocks written, or a count."""
    if isinstance(x, (list, tuple)):
        return len(x)
    return int(x or 0)


def _rereplication_s(s: dict) -> list:
    return [r.get("time_s") for r in (s.get("rereplications") or []) if isinstance(r, dict)]


def record(contender: str, n: int, seed: int, s: dict, p: dict, ref: dict | None, every: int | None,
           run_dir: str, attempts: list[dict] | None = None) -> dict:
    """The trials.jsonl line of one trial: from the launcher's summary (it restarted the
    job itself, its accounting fields are taken as they are), or, when this script
    resubmitted, from the attempts' summaries (the last one is s)."""
    w, srv = layout(contender, n)
    auc = s.get("test_auc")
    ref_auc = (ref or {}).get("test_auc")
    finished = s.get("status") == "succeeded"
    acct = combine_attempts(attempts) if attempts else {**{k: s.get(k) for k in ACCOUNTING}, **per_attempt(s)}
    line = {"contender": contender, "ranks": n, "workers": w, "servers": srv, "seed": seed,
            "status": "succeeded" if finished else "failed", **acct,
            "faults_injected": int(acct.get("faults_injected") or s.get("faults_injected") or 0),
            "failures_detected": int(acct.get("failures_detected") or s.get("failures_detected") or 0),
            "checkpoint_every": every if contender != "scratch" and every else None,
            "checkpoints": n_checkpoints(acct["checkpoints"] if acct.get("checkpoints") is not None
                                         else s.get("checkpoints")),
            "recovery_s": acct.get("recovery_s") or s.get("recovery_s") or [],
            "rereplication_s": acct.get("rereplication_s") or _rereplication_s(s),
            "hazard": s.get("hazard"), "run_dir": run_dir,
            # beyond the contract
            "success": bool(finished and auc is not None and ref_auc is not None
                            and abs(auc - ref_auc) <= AUC_TOLERANCE) if ref_auc is not None else finished,
            "test_auc": auc, "reference_auc": ref_auc, "reason": None if finished else s.get("reason"),
            "restarts_by": "harness" if attempts else "launcher", "max_restarts": p["max_restarts"],
            "replication": 2 if contender == "ps" else None, "steps": s.get("steps")}
    for k in ("attempts", "checkpoints", "faults_injected", "failures_detected"):
        line[k] = int(line[k] or 0) if k != "attempts" else int(line[k] or 1)
    return line


ACCOUNTING = ("ettr", "attempts", "wall_s", "productive_s", "checkpoint_s", "restart_s", "redone_s", "detect_s",
              "startup_s", "rank_startup_s", "train_s", "pause_s", "job_wall_s", "finish_s")


def per_attempt(s: dict) -> dict:
    """What the launcher's job summary keeps of the last attempt only, summed over its
    attempts' own summaries (<job dir>/attempts/<i>/summary.json): checkpoints written and
    re-replication times."""
    subs = [read_json(Path(a["dir"]) / "summary.json") or {} for a in s.get("attempt_list") or [] if a.get("dir")]
    if not subs:
        return {}
    return {"checkpoints": sum(n_checkpoints(x.get("checkpoints")) for x in subs),
            "rereplication_s": [t for x in subs for t in _rereplication_s(x)]}


def combine_attempts(attempts: list[dict]) -> dict:
    """One job's accounting from the summaries of its attempts, resubmitted from scratch
    by this script: each attempt's start-up is wall - train of a finished run (the
    successful attempt's; without one, the shortest attempt's wall is taken for it);
    the first attempt's start-up is `startup_s`, the later ones' `restart_s`; a failed
    attempt's time from its first fault to its end is detection (`detect_s`), the
    rest after start-up work that is lost (`redone_s`); the successful attempt's
    training is `productive_s`."""
    ok = [a for a in attempts if a.get("status") == "succeeded"]
    walls = [float(a.get("wall_s") or 0.0) for a in attempts]
    if ok and ok[-1].get("train_s") is not None:
        startup = max(0.0, float(ok[-1]["wall_s"]) - float(ok[-1]["train_s"]))
    else:
        startup = min(walls) if walls else 0.0
    detect = redone = 0.0
    for a in attempts:
        if a.get("status") == "succeeded":
            continue
        wall = float(a.get("wall_s") or 0.0)
        times = a.get("failure_times_s") or []
        # the fault's time is counted from the ranks' start, about the launcher's start-up
        # (import, mpirun) later than the attempt's own clock: bounded by the attempt's wall
        t_fault = min(wall, float(min(times))) if times else wall
        detect += max(0.0, wall - t_fault)
        redone += max(0.0, t_fault - min(startup, t_fault))
    productive = float(ok[-1].get("train_s") or 0.0) if ok else 0.0
    restart = startup * (len(attempts) - 1)
    denom = productive + restart + redone + detect
    return {"ettr": productive / denom if ok and denom > 0 else 0.0, "attempts": len(attempts),
            "wall_s": round(sum(walls), 3), "productive_s": round(productive, 3), "checkpoint_s": 0.0,
            "restart_s": round(restart, 3), "redone_s": round(redone, 3), "detect_s": round(detect, 3),
            "startup_s": round(startup, 3), "train_s": _f(ok[-1].get("train_s")) if ok else None,
            "faults_injected": sum(int(a.get("faults_injected") or 0) for a in attempts),
            "failures_detected": sum(int(a.get("failures_detected") or 0) for a in attempts),
            "checkpoints": 0,
            "recovery_s": [x for a in attempts for x in (a.get("recovery_s") or [])],
            "rereplication_s": [x for a in attempts for x in _rereplication_s(a)]}


# --------------------------------------------------------------------------- files


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_line(path: Path, row: dict) -> None:
    """Add one line to a small JSONL file: the whole file rewritten, then renamed over."""
    write_jsonl_atomic(path, read_jsonl(path) + [row])


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def infra_failure(s: dict) -> bool:
    """The job never started (e.g. PMIx's listener failed on a loaded machine): not a
    hazard failure, so the launch is repeated."""
    return s.get("status") == "failed" and not s.get("faults_injected") and "before any rank started" in str(
        s.get("reason") or "")


# --------------------------------------------------------------------------- running


class Runner:
    """Runs references and trials into out/ (records) and work/ (run dirs)."""

    def __init__(self, p: dict, out: Path, work: Path, launch_fn=launch, restarts_by_launcher: bool | None = None,
                 verbose: bool = False):
        self.p, self.out, self.work, self.launch = p, out, work, launch_fn
        self.by_launcher = launcher_restarts() if restarts_by_launcher is None else restarts_by_launcher
        self.verbose = verbose

    def _launch(self, n, overrides, run_dir, deadline, restarts: int | None = None) -> dict:
        kw = {"max_restarts": restarts, "restart_ranks": "same"} if restarts else {}
        if self.p.get("hosts"):
            kw["hosts"] = int(self.p["hosts"])  # emulated hosts (pslab.launch --hosts)
        for _ in range(3):
            s = self.launch(n, overrides, run_dir=fresh_dir(run_dir), deadline=deadline, quiet=not self.verbose, **kw)
            if not infra_failure(s):
                return s
            print(f"[{NAME}] {run_dir.name}: the job never started ({str(s.get('reason'))[:100]}); launching again",
                  flush=True)
        return s

    # ---- references: one fault-free run per (contender, n); ckpt_restart's measures C
    def reference(self, contender: str, n: int) -> dict:
        refs = {(r["contender"], r["ranks"]): r for r in read_jsonl(self.out / "references.jsonl")}
        if (contender, n) in refs:
            return refs[(contender, n)]
        every = CALIBRATION_EVERY if contender in ("ckpt_restart", "ps") else None
        ov = contender_overrides(contender, n, self.p, every) + ["faults=none"]
        run_dir = self.work / f"ref-{contender}-n{n}"
        t = time.time()
        s = self._launch(n, ov, run_dir, deadline=max(300.0, 4 * self.p["deadline_min_s"]))
        ckpts = n_checkpoints(s.get("checkpoints"))
        line = {"contender": contender, "ranks": n, "status": s["status"], "test_auc": s.get("test_auc"),
                "wall_s": s.get("wall_s"), "train_s": s.get("train_s"), "steps": s.get("steps"),
                "checkpoints": ckpts, "checkpoint_s": s.get("checkpoint_s"),
                "checkpoint_cost_s": (float(s["checkpoint_s"]) / ckpts) if ckpts and s.get("checkpoint_s") else None,
                "checkpoint_every": every, "reason": s.get("reason"), "run_dir": _rel(run_dir),
                "command": command(n, ov, run_dir, 300, None), "took_s": round(time.time() - t, 1)}
        append_line(self.out / "references.jsonl", line)
        print(f"[{NAME}] reference {contender:12s} n={n:<3d} {s['status']:9s} wall={line['wall_s'] or 0:6.1f}s "
              f"train={line['train_s'] or 0:5.1f}s" + (f" C={line['checkpoint_cost_s']:.3f}s"
                                                       if line["checkpoint_cost_s"] else ""), flush=True)
        return line

    def interval(self, n: int) -> dict:
        """Young/Daly's checkpoint interval at n ranks from the calibration reference."""
        ref = self.reference("ckpt_restart", n)
        mtbf = 1.0 / (n * self.p["rate"])
        c = ref.get("checkpoint_cost_s")
        steps = ref.get("steps") or 0
        if ref["status"] != "succeeded" or not c or not steps or not ref.get("train_s"):
            return {"ranks": n, "C_s": c, "M_s": mtbf, "interval_s": None, "every": None,
                    "note": f"calibration failed: {ref.get('reason')}"}
        step_s = float(ref["train_s"]) / steps
        return {"ranks": n, "C_s": c, "M_s": mtbf, "interval_s": young_daly_s(c, mtbf), "step_s": step_s,
                "every": interval_steps(c, mtbf, step_s, steps), "steps": steps}

    def deadline(self, ref: dict) -> float:
        return max(self.p["deadline_min_s"], self.p["deadline_factor"] * float(ref.get("wall_s") or 0))

    # ---- one trial
    def trial(self, contender: str, n: int, seed: int, every: int | None, ref: dict) -> dict:
        name = trial_name(contender, n, seed)
        k = self.p["max_restarts"]
        base = contender_overrides(contender, n, self.p, every)
        deadline = self.deadline(ref)
        if self.by_launcher:  # the job's deadline covers all its attempts
            deadline *= k + 1
            run_dir = self.work / name
            ov = base + hazard_overrides(self.p, seed)
            s = self._launch(n, ov, run_dir, deadline, restarts=k)
            line = record(contender, n, seed, s, self.p, ref, every, _rel(run_dir))
            line["replay"] = command(n, ov, run_dir, deadline, k)
        else:
            attempts = []
            for a in range(k + 1):
                run_dir = self.work / name / f"attempt{a}"
                ov = base + hazard_overrides(self.p, seed + a * SEED_STRIDE)
                s = self._launch(n, ov, run_dir, deadline)
                attempts.append(s)
                if s["status"] == "succeeded":
                    break
            line = record(contender, n, seed, s, self.p, ref, every, _rel(self.work / name), attempts)
            line["replay"] = command(n, base + hazard_overrides(self.p, seed), self.work / name / "attempt0",
                                     deadline, None)
        line["deadline_s"] = deadline
        return line


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run(p: dict, contenders: list[str], ranks: list[int], trials: int, out: Path, work: Path, budget: float | None,
        runner: Runner | None = None) -> dict:
    """References, Young/Daly intervals, then the trials round by round (seed-major, so a
    budget cut leaves the cells at most one trial apart). Returns meta."""
    runner = runner or Runner(p, out, work)
    t0 = time.time()
    usable, skipped = [], {}
    for c in contenders:
        why = why_not(c)
        if why:
            skipped[c] = why
            print(f"[{NAME}] SKIP {c}: {why}", flush=True)
        else:
            usable.append(c)
    meta = read_json(out / "meta.json") or {}
    intervals = {int(k): v for k, v in (meta.get("intervals") or {}).items()}
    for n in ranks:
        if n not in intervals and ("ckpt_restart" in usable or "ps" in usable):
            if why_not("ckpt_restart") is None:
                intervals[n] = runner.interval(n)
            else:  # no allreduce checkpoints: the PS checkpoints at the calibration's interval
                intervals[n] = {"ranks": n, "every": None, "note": "no allreduce checkpoints to calibrate C"}
    refs = {(c, n): runner.reference(c, n) for c in usable for n in ranks}
    meta.update({"experiment": NAME, "setting": {k: p[k] for k in SETTING_KEYS if k in p}, "rate_per_s": p["rate"],
                 "mtbf_job_s": {str(n): 1.0 / (n * p["rate"]) for n in ranks}, "contenders": usable,
                 "skipped": skipped, "ranks": ranks, "max_restarts": p["max_restarts"],
                 "restarts_by": "launcher" if runner.by_launcher else "harness",
                 "intervals": {str(n): v for n, v in intervals.items()}, "auc_tolerance": AUC_TOLERANCE})
    write_json_atomic(out / "meta.json", meta)
    recorded = read_jsonl(out / "trials.jsonl")
    done = {(t["contender"], t["ranks"], t["seed"]) for t in recorded}
    commit = git_commit()
    older = sorted({str(t.get("commit")) for t in recorded} - {str(commit)})
    if older:
        # Resuming adds trials to cells measured by other code: fine if nothing on the
        # measured paths changed, else the cells mix semantics. Each trial keeps its commit.
        print(f"[{NAME}] note: {out} holds trials of other code ({', '.join(older)}; this is {commit}): "
              "use --fresh if the change touches what a trial measures", flush=True)
    todo = [(c, n, s) for s in range(1, trials + 1) for n in ranks for c in usable if (c, n, s) not in done]
    count = Countdown(len(todo))
    print(f"[{NAME}] {len(todo)} trials to run ({len(done)} already recorded)"
          + (f", budget {budget:g} s" if budget else ""), flush=True)
    for c, n, seed in todo:
        # seed-major order: a budget cut leaves the cells at most one trial apart
        if budget is not None and time.time() - t0 > budget:
            print(f"[{NAME}] budget of {budget:g} s used: stopping at round {seed} (rerun to add more; "
                  "recorded trials are kept)", flush=True)
            break
        ref = refs[(c, n)]
        if ref["status"] != "succeeded":
            print(f"[{NAME}] skipping {c} n={n}: its fault-free reference failed ({ref.get('reason')})", flush=True)
            continue
        every = (intervals.get(n) or {}).get("every") or (CALIBRATION_EVERY if c == "ps" else None)
        t = time.time()
        line = {**runner.trial(c, n, seed, every, ref), "commit": commit}
        append_line(out / "trials.jsonl", line)
        e = line.get("ettr")
        print(f"[{NAME}] {count.tick()} | {trial_name(c, n, seed):22s} {line['status']:9s} "
              f"attempts={line['attempts']} faults={line['faults_injected']} "
              f"ettr={'%.2f' % e if e is not None else '-':4s} wall={line['wall_s'] or 0:6.1f}s "
              f"({time.time() - t:.0f}s)", flush=True)
    return meta


def summarize(out: Path, figure: bool = True) -> list[dict]:
    """cells.json, cells.md and the figure from the recorded trials."""
    from pslab.analysis import captions, comparisons, figures
    trials = read_jsonl(out / "trials.jsonl")
    cells = comparisons.goodput_cells(trials)
    caption = captions.goodput(cells)
    commits = Counter(str(t.get("commit")) for t in trials)
    write_json_atomic(out / "cells.json", {"meta": read_json(out / "meta.json"), "cells": list(cells),
                                           "trials_by_commit": dict(commits), "caption": caption})
    md = out / "cells.md"
    tmp = md.with_name(f".cells.md.{os.getpid()}.tmp")
    tmp.write_text(comparisons.goodput_markdown(cells) + "\n\n" + caption + "\n")
    os.replace(tmp, md)
    print(comparisons.goodput_markdown(cells))
    print(f"\n{caption}")
    if figure:
        path = figures.fig_goodput(trials, name=NAME if out.name == NAME else f"{NAME}_{out.name.split('_')[-1]}")[1]
        print(f"[{NAME}] figure: {_rel(path)}")
    return cells


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="experiments/goodput.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default=os.environ.get("PRESET", "small"))
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, help="default: the preset's (all four)")
    ap.add_argument("--ranks", nargs="+", type=int, help="default: the preset's")
    ap.add_argument("--trials", type=int, help="trials per (contender, ranks) cell (default: the preset's)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new round of trials after this")
    ap.add_argument("--out", type=Path, default=None, help="default results/goodput")
    ap.add_argument("--work", type=Path, default=None, help="run dirs (default runs/goodput)")
    ap.add_argument("--fresh", action="store_true", help="remove earlier results in --out first")
    ap.add_argument("--figure-only", action="store_true", help="cells and figure from trials.jsonl only")
    ap.add_argument("--hosts", type=int, default=None, metavar="K",
                    help="every trial over K emulated hosts (python -m pslab.launch --hosts K)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.hosts:
        p["hosts"] = args.hosts
    out = (args.out or ROOT / "results" / NAME).resolve()
    under_results = out.parent == (ROOT / "results").resolve()
    work = (args.work or (ROOT / "runs" / out.name if under_results else out / "runs")).resolve()
    if args.out is not None and "PSLAB_FIGURES_DIR" not in os.environ:
        os.environ["PSLAB_FIGURES_DIR"] = str(out.parent / "figures")
    if not args.figure_only:
        if args.fresh and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        old = (read_json(out / "meta.json") or {}).get("setting")
        setting = json.loads(json.dumps({k: p[k] for k in SETTING_KEYS if k in p}))
        if old is not None and old != setting:
            raise SystemExit(f"{NAME}: {out} holds trials of another setting ({old}); use --fresh to start over, "
                             "or another --out")
        contenders = args.contenders or p.get("contenders") or CONTENDERS
        try:
            run(p, contenders, args.ranks or p["ranks"], args.trials if args.trials is not None else p["trials"],
                out, work, args.budget_s if args.budget_s is not None else p["budget_s"])
        except KeyboardInterrupt as e:
            print(f"[{NAME}] interrupted: recorded trials are kept (rerun to go on)", file=sys.stderr)
            return e.exit_code if isinstance(e, Interrupted) else 130
    summarize(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
