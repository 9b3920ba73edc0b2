"""Launch one pslab run under mpirun, with a deadline, and always leave a summary.json.

    python -m pslab.launch -n 4 --run-dir runs/ar4 backend=allreduce model=lr
    python -m pslab.launch -n 6 --deadline 300 backend=ps backend.servers=2 faults=kill_one_server
    python -m pslab.launch -n 16 --hostfile hosts.txt backend=ps backend.servers=4
    python -m pslab.launch -n 4 --max-restarts 2 backend=allreduce backend.checkpoint_every=10 faults=kill_one_worker

Everything after the launcher's own flags is a hydra override passed to every rank.
The whole run is checked before mpirun starts (a bad input: one line naming the flag, key
or file, status "invalid", exit code 2). While the run goes, a progress line (--quiet:
none). The launcher owns the job's process group: when the deadline passes, when rank 0
has recorded completion but a hung rank keeps mpirun from exiting, or on SIGINT, SIGTERM
or SIGHUP (status "interrupted", exit code 128 + signal; a second signal kills the job at
once), it ends the whole group, then writes <run dir>/summary.json from the records the
ranks left. Exit codes: 0 succeeded, 1 failed, 2 invalid, 128+N interrupted by signal N.
"""
from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
    # A signal while the imports below load (half a second): nothing has started yet, so
    # just exit as the signal asks, without a traceback. main() then installs the real
    # handlers (pslab.launcher.signals).
    for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, lambda signum, frame: sys.exit(128 + signum))

import argparse  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from .config import ConfigError, load_config  # noqa: E402
from .launcher import procs, restart, watchdog  # noqa: E402
from .launcher.checks import Invalid, check_flags, check_run  # noqa: E402
from .launcher.mpi import find_mpirun, hang_detector_mca, mpi_flavor, mpirun_command  # noqa: E402
from .launcher.progress import Progress, RunState  # noqa: E402
from .launcher.signals import Interrupted, SignalGuard, signal_name  # noqa: E402
from .launcher.summary import (SUMMARY_FIELDS, count_failures, one_line, recovery_times, summarize,  # noqa: E402
                               write_early_summary)
from .observe import ABORT_MARKER, read_json  # noqa: E402

__all__ = ["launch", "main", "Interrupted", "SUMMARY_FIELDS", "count_failures", "recovery_times", "find_mpirun",
           "mpi_flavor", "mpirun_command", "hang_detector_mca"]

GRACE_AFTER_RESULT_S = 5.0  # how long mpirun may take to exit once rank 0 is done
GRACE_AFTER_ABORT_S = 3.0  # how long an MPI_Abort may take to end the job
END_MARGIN_S = 1.5  # end the job this long before its deadline, so that it is gone by then


class RunDirError(Invalid):
    """The run dir itself is unusable: no summary.json can go there."""


def say(msg: str) -> None:
    """A line for the person at the terminal (stderr); a closed terminal is no error."""
    try:
        print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def fix_deadline(cfg, overrides: list[str], deadline: float | None) -> list[str]:
    """--deadline wins over run.deadline_s; the ranks get the value in their overrides."""
    if deadline is not None:
        cfg.run.deadline_s = float(deadline)
    return [o for o in overrides if not o.startswith("run.deadline_s=")] + \
        [f"run.deadline_s={float(cfg.run.deadline_s)}"]


def make_run_dir(run_dir, cfg, n: int) -> Path:
    if run_dir is None:
        run_dir = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.backend.name}-{cfg.model.name}-n{n}"
    run_dir = Path(run_dir).expanduser().resolve()
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirError(f"--run-dir {run_dir}: is a file, not a directory; pick a new --run-dir")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise RunDirError(f"--run-dir {run_dir}: is not empty (an earlier run's files?); pick a new --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "mpirun.log").touch()  # writable? (mkdir of an existing dir proves nothing)
    except OSError as e:
        raise RunDirError(f"--run-dir {run_dir}: cannot write there ({e.strerror or e}); pick a writable path") \
            from None
    return run_dir


def leave_invalid(run_dir, err: Exception, n: int, cfg) -> None:
    """A bad input with --run-dir given: the run dir gets a summary.json saying so (not
    when the dir is someone else's: a file, or not empty)."""
    try:
        p = Path(run_dir).expanduser().resolve()
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            return
        p.mkdir(parents=True, exist_ok=True)
        write_early_summary(p, "invalid", str(err), n, cfg)
    except OSError:
        pass


def watch(proc: subprocess.Popen, run_dir: Path, t0: float, deadline: float, guard: SignalGuard,
          view: Progress | None) -> tuple[str | None, str | None]:
    """Wait for the job to end, or for a reason to end it: (reason the run failed, note on
    a run that completed). Both None: mpirun exited, or a signal came (guard.signum)."""
    done_at = aborted_at = None
    end_at = t0 + deadline - END_MARGIN_S * min(1.0, deadline / 20)
    while True:
        try:
            proc.wait(timeout=0.1)
            return None, None
        except subprocess.TimeoutExpired:
            pass
        now = time.time()
        if guard.signum is not None:
            return None, None
        if done_at is None and (run_dir / "result.json").exists():
            done_at = now
        if done_at is not None and now - done_at > GRACE_AFTER_RESULT_S:
            # Rank 0 finished but the job does not end: a hung rank blocks MPI_Finalize.
            return None, "ended by the launcher after rank 0 completed (a rank did not exit)"
        if aborted_at is None and (run_dir / ABORT_MARKER).exists():
            aborted_at = now
        if aborted_at is not None and now - aborted_at > GRACE_AFTER_ABORT_S:
            # A rank called MPI_Abort, but under ULFM the job may linger: end it (the
            # reason is read from the marker).
            return None, None
        if now > end_at:
            return f"deadline of {deadline:g} s passed", None
        if view is not None:
            view.tick(now)


def run_job(cfg, n: int, overrides: list[str], run_dir: Path, hostfile: str | None, mpirun_path: str,
            guard: SignalGuard, progress: bool) -> dict:
    deadline = float(cfg.run.deadline_s)
    cmd, env = mpirun_command(mpirun_path, n, overrides, run_dir, hostfile, hang_detector_mca(cfg))
    t0 = time.time()
    env.update(watchdog.launcher_env(t0 + deadline))
    view = Progress(RunState(run_dir, n, cfg.backend.name, int(cfg.train.epochs), t0)) if progress else None
    log_path = run_dir / "mpirun.log"
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = procs.start_mpirun(cmd, env, log)
        guard.hard_stop = lambda: procs.kill_now(proc, run_dir)
        try:
            reason, note = watch(proc, run_dir, t0, deadline, guard, view)
        finally:
            if view is not None:
                view.close()
            procs.end_group(proc, run_dir)  # no process outlives its run, whatever happened
    if reason is None and (run_dir / ABORT_MARKER).exists():
        reason = f"aborted: {(read_json(run_dir / ABORT_MARKER) or {}).get('reason', 'a rank called MPI_Abort')}"
    return summarize(run_dir, cfg, n, proc.returncode, time.time() - t0, reason, tail(log_path), guard.signum,
                     note)


def report(summary: dict, cfg, n: int, run_dir: Path) -> None:
    auc = summary.get("test_auc")
    try:
        print(f"[pslab] {summary['status']}: {cfg.backend.name}/{cfg.model.name} n={n} "
              f"wall={summary['wall_s']:.1f}s auc={'%.4f' % auc if auc is not None else '-'} -> {run_dir}",
              flush=True)
    except (OSError, ValueError):
        pass
    if summary["status"] != "succeeded":
        say(f"[pslab] reason: {one_line(summary.get('reason'), 600)}")
    if summary.get("attempts", 1) > 1 or summary.get("ettr") is not None:
        say(f"[pslab] attempts {summary.get('attempts', 1)}, ettr {summary.get('ettr')}")
    for key in ("note", "backup_note"):
        if summary.get(key):
            say(f"[pslab] note: {one_line(summary[key], 600)}")


def launch(n: int, overrides: list[str], run_dir: Path | None = None, deadline: float | None = None,
           hostfile: str | None = None, mpirun: str | None = None, quiet: bool = False,
           progress: bool | None = None, max_restarts: int = 0, restart_ranks: str = "same") -> dict:
    """Run one job and return its summary. quiet: print nothing; progress: the progress
    line (default: not quiet). Raises ConfigError for a bad input (after leaving a summary
    "invalid" in run_dir, when given) and Interrupted on SIGINT/SIGTERM/SIGHUP (after the
    job is ended and its summary written). max_restarts > 0: run the job as attempts, each
    restarted from the latest checkpoint (pslab.launcher.restart)."""
    progress = (not quiet) if progress is None else progress
    given_dir = run_dir
    with SignalGuard() as guard:
        cfg = None
        try:  # everything checked before mpirun starts
            mpirun_path = check_flags(n, deadline, hostfile, mpirun)
            restart.check_restart_flags(max_restarts, restart_ranks)
            cfg = load_config(overrides)
            restart.check_restart_flags(max_restarts, restart_ranks, cfg)
            overrides = fix_deadline(cfg, list(overrides), deadline)
            check_run(cfg, n)
            run_dir = make_run_dir(run_dir, cfg, n)
        except ConfigError as e:
            if given_dir is not None and not isinstance(e, RunDirError):
                leave_invalid(given_dir, e, n, cfg)
            raise
        if guard.signum is not None:  # before mpirun started: nothing to end
            summary = write_early_summary(run_dir, "interrupted", f"interrupted by {signal_name(guard.signum)} "
                                          "before mpirun started", n, cfg, guard.signum)
            if not quiet:
                say(f"[pslab] {summary['reason']} -> {run_dir}")
            raise Interrupted(guard.signum, summary)
        if progress:
            say(f"[pslab] run dir: {run_dir}")
        try:
            if max_restarts > 0:
                summary = restart.run_attempts(
                    cfg, n, overrides, run_dir,
                    lambda c, k, ov, d: run_job(c, k, ov, d, hostfile, mpirun_path, guard, progress),
                    max_restarts, restart_ranks, lambda: guard.signum is not None,
                    say if not quiet else (lambda msg: None))
            else:
                summary = run_job(cfg, n, overrides, run_dir, hostfile, mpirun_path, guard, progress)
        except Exception as e:  # a launcher bug: still a summary, and the traceback in the run dir
            log = run_dir / "launcher-error.log"
            log.write_text(traceback.format_exc())
            summary = write_early_summary(run_dir, "failed", f"launcher error: {type(e).__name__}: {e} "
                                          f"(traceback in {log})", n, cfg)
        if not quiet:
            report(summary, cfg, n, run_dir)
        if guard.signum is not None:
            raise Interrupted(guard.signum, summary)
    return summary


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, not argparse's usage block."""
        say(f"pslab.launch: {message} (python -m pslab.launch --help)")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m pslab.launch", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1, help="number of MPI ranks")
    ap.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/<time>-...)")
    ap.add_argument("--deadline", type=float, default=None, help="wall-clock limit in seconds (run.deadline_s)")
    ap.add_argument("--hostfile", default=None, help="MPI hostfile for several machines")
    ap.add_argument("--mpirun", default=None, help="mpirun to use (default: the one next to this Python)")
    ap.add_argument("--quiet", action="store_true", help="no progress line while the run goes")
    ap.add_argument("--max-restarts", type=int, default=0, metavar="K",
                    help="relaunch a failed job up to K times from its latest checkpoint (default 0)")
    ap.add_argument("--restart-ranks", default="same", metavar="same|survivors",
                    help="a restart runs all N ranks again (same) or the ranks not known dead (survivors)")
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        ap.error(f"unknown launcher flag(s): {' '.join(bad)}")
    try:
        summary = launch(args.n, overrides, args.run_dir, args.deadline, args.hostfile, args.mpirun,
                         progress=not args.quiet, max_restarts=args.max_restarts, restart_ranks=args.restart_ranks)
    except Interrupted as e:
        return e.exit_code
    except ConfigError as e:
        say(f"pslab.launch: {one_line(e)}")
        return 2
    return int(summary["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
