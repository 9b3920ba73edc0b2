"""What every experiment script shares: arms, presets, skipping what is not built yet,
launching, and keeping the small records under results/<experiment>/.

An experiment script defines its arms (label, ranks, hydra overrides, the parameters its
figure needs) for a preset and calls `main(name, arms_for_preset, figure)`. Every launch
gets `experiment=<name>` first, so conf/experiment/<name>.yaml holds what the arms share.

    .venv/bin/python experiments/<name>.py [--preset small|large] [--reps N] [--only ARM ...]
                                           [--resume] [--dry-run] [--figure-only]

Run directories go to runs/<name>/<arm>/rep<k>/ (not committed: logs, checkpoints);
results/<name>/<arm>/rep<k>/ receives summary.json, metrics.jsonl, events.jsonl,
config.yaml, a per-rank digest (ranks.json) and run.json (the arm's labels);
results/<name>/manifest.json lists the arms, which ran, and which were skipped and why.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.analysis.io import read_json, save_run, write_json_atomic  # noqa: E402
from pslab.config import CONF_DIR, ConfigError, load_config  # noqa: E402
from pslab.launcher.signals import Interrupted  # noqa: E402


@dataclass
class Arm:
    label: str                      # folder name under results/<experiment>/
    n: int                          # MPI ranks
    overrides: list[str]            # hydra overrides (after experiment=<name>)
    params: dict = field(default_factory=dict)   # what the figure needs (free form)
    reps: int = 1
    deadline: float = 90.0
    probe: object = None            # callable(cfg or None) -> None, or a reason to skip the arm
    note: str = ""

    def command(self, name: str, run_dir) -> str:
        return (f".venv/bin/python -m pslab.launch -n {self.n} --run-dir {run_dir} --deadline {self.deadline:g} "
                + " ".join([f"experiment={name}", *self.overrides]))


# Settings for PS arms of experiments that do not measure failover: on a shared,
# oversubscribed 2-core machine a rank can go seconds without the CPU, and a short
# heartbeat timeout then declares a live server dead. Applied only where the PS config
# has the key. A request must outlast the detection (the PS wants request_timeout_s >= 2x
# heartbeat_timeout_s).
PS_QUIET = {"backend.heartbeat_timeout_s": 30, "backend.request_timeout_s": 60}


def ps_quiet() -> list[str]:
    """Overrides that keep the PS failure detector from false alarms (see PS_QUIET)."""
    from omegaconf import OmegaConf
    try:
        cfg = load_config(["backend=ps"])
    except ConfigError:
        return []
    return [f"{k}={v}" for k, v in PS_QUIET.items() if OmegaConf.select(cfg, k, default=None) is not None]


def backend_available(overrides: list[str]) -> str | None:
    """None if the backend the overrides select exists, else why not."""
    backend = next((o.split("=", 1)[1] for o in overrides if o.startswith("backend=")), None)
    if backend is None:
        return None
    if not (CONF_DIR / "backend" / f"{backend}.yaml").exists():
        return f"conf/backend/{backend}.yaml does not exist yet"
    try:
        if importlib.util.find_spec(f"pslab.backends.{backend}") is None:
            return f"pslab.backends.{backend} does not exist yet"
    except ImportError as e:
        return f"pslab.backends.{backend} does not import: {e}"
    return None


def why_skip(name: str, arm: Arm) -> str | None:
    """Reason an arm cannot run yet (missing backend, a config key not there yet, a probe), or None."""
    reason = backend_available(arm.overrides)
    if reason:
        return reason
    try:
        cfg = load_config([f"experiment={name}", *arm.overrides])
    except ConfigError as e:
        why = arm.probe(None) if arm.probe is not None else None  # the arm's own explanation first
        return why or f"its config does not compose yet ({str(e).splitlines()[0]})"
    if arm.probe is not None:
        return arm.probe(cfg)
    return None


def expects_success(arm: Arm) -> bool:
    """Arms without a kill or hang fault should succeed; only they are retried."""
    faults = next((o.split("=", 1)[1] for o in arm.overrides if o.startswith("faults=")), None)
    return faults in (None, "none", "straggler")


def git_commit() -> str | None:
    """The code's commit, "+dirty" if tracked files outside results/ and runs/ differ from
    it (an experiment rewrites its own results/ as it goes: that is not a code change)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)runs", ":(exclude)notebooks/FIGURES.md",
                                ":(exclude)README.md"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["small", "large"], default=os.environ.get("PRESET", "small"),
                    help="small: minutes on 2 cores (default); large: bigger machines")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per arm (default: the preset's)")
    ap.add_argument("--only", nargs="+", default=None, metavar="ARM", help="run only these arms")
    ap.add_argument("--resume", action="store_true", help="keep arms/reps already in results/")
    ap.add_argument("--dry-run", action="store_true", help="print the launches, run nothing")
    ap.add_argument("--figure-only", action="store_true", help="redraw the figure from results/ only")
    ap.add_argument("--out", type=Path, default=None, help=f"default results/{name}")
    ap.add_argument("--work", type=Path, default=None, help=f"run dirs (default runs/{name})")
    ap.add_argument("--retries", type=int, default=1,
                    help="rerun a failed rep of an arm that should succeed (no kill/hang) this many times; "
                         "failed attempts are kept as failed-rep<k>-attempt<a>/ and listed in the manifest")
    ap.add_argument("--verbose", action="store_true")
    return ap


def main(name: str, doc: str, arms_for, figure=None, argv=None, extra_args=None) -> int:
    """Parse the command line, run the sweep, draw the figure. `arms_for(preset, args)`
    returns the arms; `figure(out_dir, args)` redraws from results; `extra_args(parser)` adds
    script-specific flags."""
    ap = parser(name, doc)
    if extra_args:
        extra_args(ap)
    args = ap.parse_args(argv)
    out = (args.out or ROOT / "results" / name).resolve()
    work = (args.work or ROOT / "runs" / name).resolve()
    if args.out is not None and "PSLAB_FIGURES_DIR" not in os.environ:
        os.environ["PSLAB_FIGURES_DIR"] = str(out.parent / "figures")  # results elsewhere: figures next to them
    if not args.figure_only:
        arms = arms_for(args.preset, args)
        if args.reps is not None:
            for a in arms:
                a.reps = args.reps
        if args.only:
            unknown = set(args.only) - {a.label for a in arms}
            if unknown:
                ap.error(f"unknown arm(s) {sorted(unknown)}; known: {[a.label for a in arms]}")
            arms = [a for a in arms if a.label in args.only]
        try:
            run_sweep(name, arms, args, out, work)
        except KeyboardInterrupt as e:  # Interrupted: the launch in progress was ended and has its summary
            print(f"[{name}] interrupted{f' by {e}' if isinstance(e, Interrupted) else ''}: sweep stopped, "
                  f"{out} left as it was", file=sys.stderr, flush=True)
            return e.exit_code if isinstance(e, Interrupted) else 130
    if figure is not None and not args.dry_run:
        try:
            path = figure(out, args)
            if path:
                print(f"[{name}] figure: {Path(path).relative_to(ROOT) if str(path).startswith(str(ROOT)) else path}")
        except Exception as e:  # a figure must not hide the runs' results
            print(f"[{name}] figure failed: {type(e).__name__}: {e}", file=sys.stderr)
            if args.verbose:
                raise
            return 1
    return 0


def run_sweep(name: str, arms: list[Arm], args, out: Path, work: Path) -> dict:
    """Run the arms into a staging folder next to `out`, then swap it in: an interrupted
    sweep leaves the previous results as they were."""
    if args.dry_run:
        return _run_sweep(name, arms, args, out, work)
    # staging and the old copy live next to the run dirs (runs/, not committed), so an
    # interrupted sweep leaves nothing half-done under results/
    staging = work.parent / f".{work.name}.results-new"
    if staging.exists():
        shutil.rmtree(staging)
    if out.exists() and (args.only or args.resume):
        shutil.copytree(out, staging)  # a partial rerun keeps the arms it does not run
    manifest = _run_sweep(name, arms, args, staging, work, previous=out)
    old = work.parent / f".{work.name}.results-old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        shutil.move(str(out), str(old))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(out))
    if old.exists():
        shutil.rmtree(old)
    return manifest


def _run_sweep(name: str, arms: list[Arm], args, out: Path, work: Path, previous: Path | None = None) -> dict:
    from pslab.launch import launch
    from pslab.launcher.progress import Countdown

    t0 = time.time()
    old = read_json((previous or out) / "manifest.json") or {}
    keep_old = bool(args.only)  # a partial rerun keeps the other arms and their manifest lines
    manifest = {
        "experiment": name, "preset": args.preset, "commit": git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "arms": [],
    }
    if keep_old:
        manifest["arms"] = [a for a in old.get("arms", []) if a["label"] not in {x.label for x in arms}]
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    entries, runnable = {}, []
    for arm in arms:
        entry = {"label": arm.label, "n": arm.n, "overrides": arm.overrides, "params": arm.params,
                 "reps": arm.reps, "note": arm.note, "ran": [], "skipped": None}
        manifest["arms"].append(entry)
        entries[arm.label] = entry
        reason = why_skip(name, arm)
        if reason:
            entry["skipped"] = reason
            print(f"[{name}] SKIP {arm.label}: {reason}", flush=True)
            if not args.dry_run and (out / arm.label).exists() and not args.resume:
                shutil.rmtree(out / arm.label)
            continue
        if not args.resume and not args.dry_run and (out / arm.label).exists():
            shutil.rmtree(out / arm.label)
        runnable.append(arm)
    todo = [(arm, rep) for arm in runnable for rep in range(arm.reps)
            if not (args.resume and (out / arm.label / f"rep{rep}" / "summary.json").exists())]
    count = Countdown(len(todo))
    if todo and not args.dry_run:
        print(f"[{name}] {len(todo)} launches", flush=True)
    # Repetition-major order (rep 0 of every arm, then rep 1, ...): a shared machine's load
    # drifts, and interleaving makes it drift under every arm alike.
    for rep in range(max((a.reps for a in runnable), default=0)):
        for arm in runnable:
            if rep >= arm.reps:
                continue
            entry = entries[arm.label]
            run_dir = work / arm.label / f"rep{rep}"
            dest = out / arm.label / f"rep{rep}"
            if args.dry_run:
                print(arm.command(name, run_dir))
                continue
            if args.resume and (dest / "summary.json").exists():
                entry["ran"].append(rep)
                continue
            overrides = [f"experiment={name}", *arm.overrides]
            attempts = 1 + (max(0, args.retries) if expects_success(arm) else 0)
            for attempt in range(attempts):
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                t = time.time()
                s = launch(arm.n, overrides, run_dir, arm.deadline, quiet=True)
                if s["status"] == "succeeded" or attempt == attempts - 1:
                    break
                # a run that should have succeeded did not: keep the record, say so, try again
                entry.setdefault("failed_attempts", []).append(
                    {"rep": rep, "attempt": attempt, "reason": str(s.get("reason"))[:300], "wall_s": s["wall_s"]})
                save_run(run_dir, out / arm.label / f"failed-rep{rep}-attempt{attempt}",
                         {"experiment": name, "arm": arm.label, "rep": f"failed-{rep}-{attempt}", "n": arm.n,
                          "params": arm.params, "failed_attempt": attempt, "overrides": overrides})
                print(f"[{name}] {arm.label:22s} rep{rep} FAILED (attempt {attempt + 1}): "
                      f"{str(s.get('reason'))[:160]}; retrying", flush=True)
            meta = {"experiment": name, "arm": arm.label, "rep": rep, "n": arm.n, "preset": args.preset,
                    "overrides": overrides, "params": arm.params, "command": arm.command(name, run_dir)}
            save_run(run_dir, dest, meta)
            entry["ran"].append(rep)
            auc = s.get("test_auc")
            print(f"[{name}] {count.tick()} | {arm.label:22s} rep{rep} {s['status']:9s} wall={s['wall_s']:6.1f}s "
                  f"auc={'%.4f' % auc if auc is not None else '-':7s} ({time.time() - t:.0f}s)"
                  + (f"  reason: {str(s.get('reason'))[:120]}" if s["status"] != "succeeded" else ""), flush=True)
    if args.dry_run:
        return manifest
    if not keep_old:  # arms of an earlier sweep that are no longer defined
        labels = {a.label for a in arms}
        for d in out.iterdir():
            if d.is_dir() and d.name not in labels and (d / "rep0").exists():
                shutil.rmtree(d)
    manifest["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest["took_s"] = round(time.time() - t0, 1)
    manifest["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    write_json_atomic(out / "manifest.json", manifest)
    skipped = [a for a in manifest["arms"] if a["skipped"]]
    print(f"[{name}] {len(manifest['arms']) - len(skipped)} arms ran, {len(skipped)} skipped, "
          f"{manifest['took_s']:.0f} s -> {previous or out}", flush=True)
    return manifest
