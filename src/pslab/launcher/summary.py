"""summary.json from the records the ranks left, whatever happened to them.

status and exit_code always agree, and exit_code is the launcher's own exit code:
"succeeded" 0, "failed" 1, "invalid" 2 (a bad input found before mpirun started),
"interrupted" 128 + the signal (SIGINT 130, SIGTERM 143, SIGHUP 129). mpirun's own exit
code is `mpirun_exit_code` (negative: the signal the launcher ended it with, e.g. after
rank 0 had completed while a hung rank kept mpirun from exiting).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..observe import read_json, read_jsonl, write_json_atomic
from .procs import leftover_pids
from .signals import signal_name

SUMMARY_FIELDS = ("status", "exit_code", "backend", "model", "consistency", "ranks", "workers", "servers",
                  "wall_s", "examples", "test_logloss", "test_auc", "bytes_sent", "faults_injected",
                  "failures_detected", "ranks_alive_end", "lost_updates")
EXIT_CODES = {"succeeded": 0, "failed": 1, "invalid": 2}


def exit_code_for(status: str, signum: int | None = None) -> int:
    return 128 + signum if status == "interrupted" else EXIT_CODES[status]


def one_line(text, limit: int = 2000) -> str:
    """A message as one printable line: control characters (from binary input, or a
    multi-line error) never reach the terminal raw."""
    s = re.sub(r"\s*\n\s*", " ", str(text)).strip()
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def merge_events(run_dir: Path) -> list[dict]:
    events = []
    for p in sorted((run_dir / "ranks").glob("rank-*.events.jsonl")):
        events += read_jsonl(p)
    events.sort(key=lambda e: e.get("t", 0))
    tmp = run_dir / ".events.jsonl.tmp"
    with open(tmp, "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    os.replace(tmp, run_dir / "events.jsonl")
    return events


def rank_totals(run_dir: Path) -> dict:
    """Sum the ranks' counters: final records, or the last metric line of a rank that
    wrote none (killed; or aborted: a rank flushes its counters when it detects a failure,
    before MPI_Abort). Also each rank's time split from the same records."""
    bytes_sent, peak, split = 0, {}, {}
    for p in sorted((run_dir / "ranks").glob("rank-*.metrics.jsonl")):
        r = int(p.name.split("-")[1].split(".")[0])
        final = read_json(run_dir / "ranks" / f"rank-{r}.json")
        last = final or next((m for m in reversed(read_jsonl(p)) if "bytes_sent" in m), None)
        if last:
            bytes_sent += int(last.get("bytes_sent", 0))
            if "peak_rss_bytes" in last:
                peak[r] = last["peak_rss_bytes"]
            if isinstance(last.get("seconds"), dict):
                split[r] = {k: round(float(v), 6) for k, v in last["seconds"].items()}
    return {"bytes_sent": bytes_sent, "peak_rss_bytes_by_rank": peak,
            "peak_rss_bytes_max": max(peak.values()) if peak else None, "time_split_s": split}


# Fields of failure records that name the failed rank(s).
FAILED_RANK_KEYS = ("failed_rank", "failed_ranks", "dead_rank", "dead_ranks", "dead_world_ranks", "peer")
# Records of a failure seen: the backends' detections and recoveries, and a PS role's
# notice that a peer died (when the coordinator dies, only the survivors' peer_failed
# records say so: it records nothing itself).
FAILURE_KINDS = ("failure_detected", "recovered", "peer_failed")


def _ranks_named(e: dict) -> set[int]:
    """The failed ranks an event names."""
    out = set()
    for k in FAILED_RANK_KEYS:
        v = e.get(k)
        if isinstance(v, bool) or v is None:
            continue
        for r in (v if isinstance(v, (list, tuple)) else [v]):
            try:
                out.add(int(r))
            except (TypeError, ValueError):
                pass
    return out


def count_failures(events: list[dict]) -> int:
    """Distinct failed ranks seen in the records. Detections name the failed rank
    (failed_rank / failed_ranks / dead_world_ranks / peer, also on 'recovered'); a
    detection that names none counts once per detecting rank (every survivor may record
    the same failure), so the figure is the larger of the two counts."""
    named, per_detector = set(), {}
    for e in events:
        if e.get("kind") in FAILURE_KINDS:
            named |= _ranks_named(e)
        if e.get("kind") == "failure_detected" and not _ranks_named(e):
            per_detector[e.get("rank")] = per_detector.get(e.get("rank"), 0) + 1
    return max(len(named), max(per_detector.values(), default=0))


def fault_records(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("kind") == "fault_injected"]


def recovery_times(events: list[dict]) -> list[dict]:
    """For each kill/hang fault: seconds from the fault to the first 'recovered' record
    after it (one that names the faulted rank when recoveries name ranks), or None."""
    recs = sorted((e for e in events if e.get("kind") == "recovered"), key=lambda e: e.get("t", 0))
    out = []
    for f in fault_records(events):
        if f.get("action") not in ("kill", "hang"):
            continue
        after = [r for r in recs if r.get("t", 0) >= f.get("t", 0)]
        naming = [r for r in after if f.get("rank") in _ranks_named(r)]
        first = (naming or after or [None])[0]
        out.append({"rank": f.get("rank"), "role": f.get("target_role"), "action": f.get("action"),
                    "recovery_s": None if first is None else round(first["t"] - f["t"], 6)})
    return out


def hazard_fields(cfg, events: list[dict]) -> dict:
    """The configured hazard and the failure times it produced (seconds since each rank
    started), for the simulator's censored fit: ranks that drew a time but did not fail
    are censored at the end of the run."""
    from ..faults import parse_plan

    plan = parse_plan(cfg.faults)  # checked before mpirun started
    if plan.hazard is None:
        return {"hazard": None, "failure_times_s": None}
    hits = [f for f in fault_records(events) if f.get("trigger") == "hazard"]
    drawn = [e for e in events if e.get("kind") == "hazard_drawn"]
    return {"hazard": plan.hazard.to_dict(),
            "failure_times_s": sorted(round(float(f.get("fired_s", f.get("elapsed", 0.0))), 4) for f in hits),
            "hazard_ranks_at_risk": len(drawn)}


def mpirun_error(log_path: Path, lines: int = 2) -> str:
    """mpirun's own complaint in its log (after the command line the launcher wrote
    first), as one line: Open MPI boxes it in dashes."""
    try:
        text = log_path.read_text(errors="replace").splitlines()[1:]
    except FileNotFoundError:
        return ""
    said = [s.strip() for s in text if s.strip() and not set(s.strip()) <= set("-=*")]
    return one_line(" ".join(said[:lines]), 400)


def failure_reason(reason, errors, faults, events, mpirun_code, log_path: Path) -> str:
    """Why a run failed, in one line: the launcher's own reason (deadline, abort), else the
    first rank error, else what mpirun said; then the faults that were injected."""
    if not reason and errors:
        reason = errors[0].get("error") or errors[0].get("reason")
    if not reason:
        started = any(e.get("kind") == "rank_started" for e in events)
        said = mpirun_error(log_path)
        reason = (f"mpirun exited with code {mpirun_code} "
                  + ("before rank 0 completed" if started else "before any rank started")
                  + (f": {said} (more in {log_path})" if said and not started else f" (see {log_path})"))
    hit = "; ".join(f"{f.get('action')} rank {f.get('rank')} ({f.get('target_role')} {f.get('target_index')}) "
                    f"at {'step %s' % f['step'] if f.get('step') is not None else '%.1f s' % f.get('elapsed', 0)}"
                    for f in faults[:3])
    return reason + (f" (faults injected: {hit}{'; ...' if len(faults) > 3 else ''})" if hit else "")


def backup_note(cfg, events: list[dict]) -> str | None:
    """backend.backup_workers=true, a straggler, and neither a backup nor a word why."""
    if cfg.backend.name != "ps" or not cfg.backend.get("backup_workers"):
        return None
    slowed = any(f.get("action") == "slow" for f in fault_records(events))
    said = any(e.get("kind", "").startswith("backup_") for e in events)
    why = [e.get("reason") for e in events if e.get("kind") == "backup_not_launched"]
    if why and not any(e.get("kind") == "backup_launched" for e in events):
        return f"no backup instance was launched: {why[0]}"
    if slowed and not said:
        return (f"backend.backup_workers=true with a straggler, but no backup instance was launched and the PS "
                f"recorded no reason (consistency={cfg.backend.get('consistency')})")
    return None


def summarize(run_dir: Path, cfg, n: int, mpirun_code, wall_s: float, reason: str | None = None,
              log_tail: str = "", signum: int | None = None, note: str | None = None) -> dict:
    """Write and return summary.json. reason: the launcher's own reason for ending the
    job (deadline, abort); note: a remark on a run that still succeeded; signum: the
    signal that interrupted the launcher."""
    result = read_json(run_dir / "result.json") or {}
    events = merge_events(run_dir)
    totals = rank_totals(run_dir)
    ok = result.get("status") == "completed"
    errors = [e for e in events if e.get("kind") in ("rank_error", "unrecoverable")]
    faults = fault_records(events)
    summary = {k: None for k in SUMMARY_FIELDS}
    summary.update({
        "backend": cfg.backend.name, "model": cfg.model.name, "ranks": n,
        "elastic": bool(cfg.backend.get("elastic", False)) if cfg.backend.name == "allreduce" else None,
        "consistency": cfg.backend.get("consistency"), "staleness": cfg.backend.get("staleness"),
        "faults": cfg.faults.name, "data": cfg.data.name, "optim": cfg.optim.name,
        "failures_detected": 0, "lost_updates": 0,
    })
    summary.update({k: v for k, v in result.items() if k not in ("status", "t", "ranks")})
    split = totals.pop("time_split_s")
    summary.update(totals)
    if not ok and not summary.get("time_split_s"):
        summary["time_split_s"] = split  # no result from rank 0: the ranks' own last records
    status = "interrupted" if signum is not None else "succeeded" if ok else "failed"
    summary["status"] = status
    summary["exit_code"] = exit_code_for(status, signum)
    summary["mpirun_exit_code"] = mpirun_code
    summary["wall_s"] = round(wall_s, 3)
    summary["deadline_s"] = float(cfg.run.deadline_s)
    summary["faults_injected"] = len(faults)
    summary["failures_detected"] = max(int(result.get("failures_detected") or 0), count_failures(events))
    # Recovery: from each injected fault to the first completed step after it (the
    # backends' 'recovered' record). The backend's own figure (from its detection of the
    # failure, so without the detection delay) is kept as recovery_s_reported, and used
    # when the records give none.
    recov = recovery_times(events)
    measured = [r["recovery_s"] for r in recov if r["recovery_s"] is not None]
    reported = result.get("recovery_s")
    if isinstance(reported, list):
        summary["recovery_s_reported"] = [float(x) for x in reported if x is not None]
    summary["recovery_s"] = measured or list(summary.get("recovery_s_reported") or [])
    for role in ("worker", "server"):
        key = f"{role}_recovery_s"
        if not isinstance(result.get(key), list):
            summary[key] = [r["recovery_s"] for r in recov if r["role"] == role and r["recovery_s"] is not None]
    summary["faults_unrecovered"] = sum(1 for r in recov if r["recovery_s"] is None)
    if status == "interrupted":
        summary["signal"] = signal_name(signum)
        summary["reason"] = (f"interrupted by {signal_name(signum)} after {wall_s:.1f} s; the launcher ended the job"
                             + (" (rank 0 had completed)" if ok else ""))
    elif not ok:
        summary["reason"] = failure_reason(reason, errors, faults, events, mpirun_code, run_dir / "mpirun.log")
        summary["failed_at_s"] = round(wall_s, 3)
    if status != "succeeded":
        summary["log_tail"] = log_tail
    elif note:
        summary["note"] = note
    extra = backup_note(cfg, events)
    if extra:
        summary["backup_note"] = extra
    if summary.get("ranks_alive_end") is None:
        # Without rank 0's count: the ranks that ran to their end (wrote a final record).
        summary["ranks_alive_end"] = n if ok else len(list((run_dir / "ranks").glob("rank-*.json")))
    summary["lost_updates"] = int(summary.get("lost_updates") or 0)
    # Every rank a fault killed (or hung, then the launcher killed) must really be gone.
    left = leftover_pids(events, run_dir)
    killed = {f.get("rank") for f in faults if f.get("action") in ("kill", "hang")}
    summary["killed_pids_dead"] = not (killed & set(left))
    summary["rank_pids_alive"] = sorted(left.values())
    summary.update(hazard_fields(cfg, events))
    summary["injected"] = [{k: e.get(k) for k in ("elapsed", "rank", "action", "target_role", "target_index",
                                                  "step", "trigger", "fault_id", "fired_s")}
                           for e in faults]
    summary.update(attempts=1, **goodput_of_run(events, result, wall_s))
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def goodput_of_run(events: list[dict], result: dict, wall_s: float) -> dict:
    """ETTR and its parts for a run of one attempt (pslab.launcher.ettr)."""
    import time

    from .ettr import goodput, timeline

    now = time.time()
    return goodput([timeline(events, result, now - wall_s, now)])


def write_early_summary(run_dir: Path, status: str, reason: str, n: int, cfg=None, signum: int | None = None,
                        wall_s: float = 0.0) -> dict:
    """summary.json of a run that never started mpirun: a bad input ("invalid"), or a
    signal before the launch ("interrupted")."""
    summary = {k: None for k in SUMMARY_FIELDS}
    summary.update({"status": status, "exit_code": exit_code_for(status, signum), "mpirun_exit_code": None,
                    "ranks": n, "wall_s": round(wall_s, 3), "reason": one_line(reason), "faults_injected": 0,
                    "failures_detected": 0, "lost_updates": 0, "ranks_alive_end": 0})
    if signum is not None:
        summary["signal"] = signal_name(signum)
    if cfg is not None:
        summary.update({"backend": cfg.backend.name, "model": cfg.model.name,
                        "consistency": cfg.backend.get("consistency"), "faults": cfg.faults.name,
                        "data": cfg.data.name, "deadline_s": float(cfg.run.deadline_s)})
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
