"""The restart policy: a job run as attempts, each from the latest complete checkpoint.

    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 faults=kill_one_worker
    python -m pslab.launch -n 4 --max-restarts 2 --restart-ranks survivors backend=allreduce \
        backend.checkpoint_every=10 faults=kill_one_worker
    python -m pslab.launch -n 6 --max-restarts 1 backend=ps backend.servers=2 backend.checkpoint_every=10 \
        faults=kill_coordinator

What torchrun and the schedulers of Llama 3 / MegaScale do: when an attempt fails, launch
the job again from its newest complete checkpoint, up to `--max-restarts K` times, with
all N ranks (`--restart-ranks same`: a scheduler replaced the dead node) or with the
ranks that were not known dead (`survivors`: N minus the ranks a fault killed or hung or
a detection named). The newest checkpoint is the newest complete manifest of the latest
attempt that wrote one, passed to the ranks as `backend.resume_from` (allreduce:
backends/arckpt.py; PS: backends/ps/checkpoint.py); a backend without one (local, or no
checkpoint yet) starts over. The job's deadline (--deadline) covers all attempts: each
gets the time left, and no attempt starts with less than MIN_ATTEMPT_S.

Run dir of a job with --max-restarts K > 0 (with 0, the usual one-attempt layout):

    <job dir>/summary.json        the job's: status of the last attempt, attempts, ettr, ...,
                                  attempt_list (status, reason, ranks, start step per attempt)
    <job dir>/job.json            fired faults and the job's clock, read by every rank (faults/jobstate.py)
    <job dir>/events.jsonl        every attempt's events, each tagged with "attempt"
    <job dir>/metrics.jsonl       every attempt's evaluations, tagged with "attempt"
    <job dir>/result.json, config.yaml   the last attempt's
    <job dir>/attempts/<i>/       attempt i's own run dir (summary.json, ranks/, checkpoints/, mpirun.log)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..faults.jobstate import fired_ids, write_job
from ..observe import read_json, read_jsonl, write_json_atomic
from .checks import Invalid
from .ettr import goodput, timeline

RESTART_RANKS = ("same", "survivors")
MIN_ATTEMPT_S = 10.0  # an attempt given less time than this could not even start: the job stops


def check_restart_flags(max_restarts: int, restart_ranks: str, cfg=None) -> None:
    if max_restarts < 0:
        raise Invalid(f"--max-restarts {max_restarts}: must be >= 0 (restarts after a failed attempt; 0: none)")
    if restart_ranks not in RESTART_RANKS:
        raise Invalid(f"--restart-ranks {restart_ranks}: choose same (all N ranks again) or survivors "
                      "(the ranks not known dead)")
    if cfg is not None and restart_ranks == "survivors" and cfg.backend.name == "ps":
        raise Invalid("--restart-ranks survivors: backend=ps resumes a checkpoint only with as many workers as "
                      "took it (its batches are numbered per worker lane); use --restart-ranks same")


def latest_checkpoint(job_dir: Path, upto: int) -> Path | None:
    """The newest complete checkpoint manifest of attempts upto, upto-1, ..., 0."""
    from ..backends.arckpt import newest_complete

    for i in range(upto, -1, -1):
        # allreduce step-*/ or PS clock-*/ folders
        m = newest_complete(job_dir / "attempts" / str(i) / "checkpoints", "*/manifest.json")
        if m is not None:
            return m
    return None


def dead_ranks(events: list[dict]) -> set[int]:
    """Ranks an attempt's records say were killed, hung or found dead."""
    from .summary import FAILURE_KINDS, _ranks_named

    dead = {int(e["rank"]) for e in events if e.get("kind") == "fault_injected"
            and e.get("action") in ("kill", "hang") and e.get("rank") is not None}
    for e in events:
        if e.get("kind") in FAILURE_KINDS:
            dead |= _ranks_named(e)
        if e.get("kind") == "step_timeout":
            dead |= {int(r) for r in e.get("stale_ranks") or []}
    return dead


def up_time(events: list[dict], t_end: float) -> float:
    """Seconds an attempt was up: first rank start to t_end (the detection that ended a
    failed attempt; the end of a finished one)."""
    starts = [float(e["t"]) for e in events if e.get("kind") == "rank_started" and e.get("t")]
    return max(0.0, t_end - min(starts)) if starts else 0.0


def attempt_overrides(overrides: list[str], job_dir: Path, left_s: float, resume: Path | None) -> list[str]:
    drop = ("run.deadline_s=", "run.job_dir=") + (("backend.resume_from=",) if resume is not None else ())
    out = [o for o in overrides if not o.startswith(drop)]
    out += [f"run.deadline_s={left_s:.3f}", f"run.job_dir={job_dir}"]
    if resume is not None:
        out.append(f"backend.resume_from={resume}")
    return out


def survivors_layout(cfg, ranks: int) -> str | None:
    """Why `ranks` ranks cannot run this backend, or None."""
    b = cfg.backend
    if ranks < 1:
        return "no rank is left"
    if b.name == "local" and ranks != 1:
        return "backend=local runs one rank"
    return None


def run_attempts(cfg, n: int, overrides: list[str], job_dir: Path, run_attempt, max_restarts: int,
                 restart_ranks: str, interrupted, say=lambda msg: None) -> dict:
    """Run the job's attempts. run_attempt(cfg, ranks, overrides, attempt_dir) -> that
    attempt's summary (pslab.launch.run_job); interrupted() -> a signal came."""
    from ..config import ConfigError, load_config
    from .checks import check_run

    t_job, deadline = time.time(), float(cfg.run.deadline_s)
    top_log = job_dir / "mpirun.log"  # made by the launcher's run-dir check; each attempt has its own
    if top_log.exists() and top_log.stat().st_size == 0:
        top_log.unlink()
    fired, offset, ranks, resume = set(), 0.0, n, None
    attempts, tls, summaries = [], [], []
    stop_reason = None
    for i in range(max_restarts + 1):
        left = deadline - (time.time() - t_job)
        if i > 0 and left < MIN_ATTEMPT_S:
            stop_reason = f"no restart: {left:.1f} s left of the job's deadline of {deadline:g} s"
            break
        adir = job_dir / "attempts" / str(i)
        adir.mkdir(parents=True, exist_ok=True)
        (adir / "mpirun.log").touch()
        write_job(job_dir, i, fired, offset)
        ov = attempt_overrides(overrides, job_dir, left, resume)
        try:
            acfg = load_config(ov)
            check_run(acfg, ranks)
        except ConfigError as e:  # e.g. survivors too few for the fault plan's targets
            stop_reason = f"attempt {i} with {ranks} ranks cannot run: {e}"
            break
        if i > 0:
            say(f"[pslab] restart {i} of {max_restarts}: {ranks} ranks, "
                f"{'from ' + str(resume) if resume else 'from the start (no checkpoint)'} -> {adir}")
        t_launch = time.time()
        s = run_attempt(acfg, ranks, ov, adir)
        t_end = time.time()
        events = read_jsonl(adir / "events.jsonl")
        tl = timeline(events, read_json(adir / "result.json"), t_launch, t_end)
        # The job is down from the detection that ended a failed attempt: its clock stops
        # there, and a fault that fired during the teardown (in a rank not yet ended) hit
        # a job that was down, so it stays due, at the same time of the job's clock.
        t_down = min(t_end, tl["t_detect"]) if not tl["ok"] and tl["t_detect"] is not None else t_end
        fired |= fired_ids([e for e in events if float(e.get("t", 0.0)) <= t_down])
        offset += up_time(events, t_down)
        started = next((e for e in events if e.get("kind") in ("resume",) and e.get("rank") == 0), None)
        attempts.append({"attempt": i, "status": s["status"], "reason": s.get("reason"), "ranks": ranks,
                         "start_step": (started or {}).get("step", (started or {}).get("clock", 0)),
                         "resume_from": str(resume) if resume else None, "wall_s": round(t_end - t_launch, 3),
                         "t_launch": round(t_launch, 3), "t_end": round(t_end, 3),
                         "faults_injected": s.get("faults_injected", 0), "dir": str(adir)})
        tls.append(tl)
        summaries.append(s)
        if s["status"] != "failed" or interrupted() or i == max_restarts:
            break
        resume = latest_checkpoint(job_dir, i)
        if restart_ranks == "survivors":
            dead = {r for r in dead_ranks(events) if 0 <= r < ranks}
            why = survivors_layout(acfg, ranks - len(dead))
            if why:
                stop_reason = f"--restart-ranks survivors: {ranks - len(dead)} ranks left and {why}"
                break
            ranks -= len(dead)
    return job_summary(job_dir, summaries, attempts, tls, t_job, max_restarts, restart_ranks, stop_reason)


def merge_tagged(job_dir: Path, attempts: list[dict], name: str) -> None:
    """<job dir>/<name>: every attempt's lines of attempts/<i>/<name>, tagged with the attempt."""
    tmp = job_dir / f".{name}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        for a in attempts:
            for e in read_jsonl(Path(a["dir"]) / name):
                f.write(json.dumps({**e, "attempt": a["attempt"]}) + "\n")
    os.replace(tmp, job_dir / name)


def job_summary(job_dir: Path, summaries: list[dict], attempts: list[dict], tls: list[dict], t_job: float,
                max_restarts: int, restart_ranks: str, stop_reason: str | None) -> dict:
    last = dict(summaries[-1])
    last_dir = Path(attempts[-1]["dir"])
    merge_tagged(job_dir, attempts, "events.jsonl")
    merge_tagged(job_dir, attempts, "metrics.jsonl")
    for name in ("result.json", "config.yaml"):
        if (last_dir / name).exists():
            shutil.copyfile(last_dir / name, job_dir / f".{name}.tmp")
            os.replace(job_dir / f".{name}.tmp", job_dir / name)
    s = last
    s.update(goodput(tls))
    s["attempts"] = len(attempts)
    s["attempt_list"] = attempts
    s["max_restarts"], s["restart_ranks"] = max_restarts, restart_ranks
    s["ranks"] = attempts[0]["ranks"]
    s["ranks_last_attempt"] = attempts[-1]["ranks"]
    s["wall_s"] = round(time.time() - t_job, 3)
    for k in ("faults_injected", "failures_detected"):
        s[k] = sum(int(x.get(k) or 0) for x in summaries)
    s["injected"] = [{**f, "attempt": a["attempt"]} for x, a in zip(summaries, attempts) for f in x.get("injected", [])]
    s["recovery_s"] = [r for x in summaries for r in x.get("recovery_s") or []]
    if s.get("hazard"):  # hazard failure times are on the job's clock (jobstate.py): all attempts' count
        s["failure_times_s"] = sorted(t for x in summaries for t in x.get("failure_times_s") or [])
    s["killed_pids_dead"] = all(x.get("killed_pids_dead", True) for x in summaries)
    s["rank_pids_alive"] = sorted({p for x in summaries for p in x.get("rank_pids_alive") or []})
    if s["status"] == "failed":
        why = stop_reason or (f"{len(attempts) - 1} restart(s) of --max-restarts {max_restarts} used"
                              if len(attempts) > max_restarts else None)
        s["reason"] = f"attempt {attempts[-1]['attempt']}: {s.get('reason')}" + (f"; {why}" if why else "")
    write_json_atomic(job_dir / "summary.json", s)
    return s
