"""Reproduce every comparison, then every figure: `make reproduce` (PRESET=small, the
default, takes under 45 minutes on 2 cores; PRESET=large is for bigger machines).

    .venv/bin/python experiments/reproduce.py                     # = make reproduce
    .venv/bin/python experiments/reproduce.py --preset large      # = make reproduce PRESET=large
    .venv/bin/python experiments/reproduce.py --only traffic recovery
    .venv/bin/python experiments/reproduce.py --figures-only      # redraw from results/ only
    .venv/bin/python experiments/reproduce.py --dry-run           # what would run

Steps, in order (each a script of experiments/, writing results/<name>/):
  goodput       ETTR and success rate under a hazard of kills and hangs, four contenders
                (the small preset, rerun into results/goodput_small/; results/goodput/ holds
                the committed 20-trials-a-cell run, `experiments/goodput.py --preset full`)
  consistency   BSP vs SSP(s) vs ASP with a straggler
  traffic       bytes per step, compression switches
  recovery      recovery after a kill, per mechanism
  stragglers    waiting vs bounded staleness vs backup instances
  scalability   memory per process, largest model
  simulate      the simulator calibrated and validated on the above, curves to 10,000 workers
then every figure is redrawn from results/ (results/figures/*.png), the caption numbers in
notebooks/FIGURES.md are refreshed, and (--notebooks) every notebook is executed.
A step that fails is reported and the others still run; the exit code says whether all
succeeded.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STEPS = ["goodput", "consistency", "traffic", "recovery", "stragglers", "scalability", "simulate"]
BUDGET_S = {"small": 45 * 60}


def run_step(name: str, cmd: list[str]) -> int:
    """One experiment in a child process. Ctrl-C reaches the child too (the terminal signals
    the whole foreground group): its launcher ends the run in progress and writes its
    summary, so wait for that (subprocess.run would SIGKILL it after 0.25 s), then stop."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        print(f"\n[reproduce] interrupted: waiting for {name} to end its run", file=sys.stderr, flush=True)
        try:
            proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["small", "large"], default="small")
    ap.add_argument("--only", nargs="+", choices=STEPS, default=None)
    ap.add_argument("--skip", nargs="+", choices=STEPS, default=[])
    ap.add_argument("--figures-only", action="store_true")
    ap.add_argument("--notebooks", action="store_true", help="also execute every notebook")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    steps = [s for s in (args.only or STEPS) if s not in args.skip]
    t_all = time.time()
    timing, failed = [], []
    if not args.figures_only:
        for name in steps:
            script = ROOT / "experiments" / f"{name}.py"
            if not script.exists():
                print(f"[reproduce] SKIP {name}: {script.relative_to(ROOT)} does not exist yet", flush=True)
                timing.append((name, None, "missing"))
                continue
            cmd = [sys.executable, str(script), "--preset", args.preset]
            if name == "goodput":
                # it resumes by default; reproducing means every trial again, next to (not over)
                # the committed full run
                cmd += ["--fresh", "--out", str(ROOT / "results" / "goodput_small")]
            if args.dry_run:
                print("[reproduce] " + " ".join(str(c) for c in cmd), flush=True)
                if name in ("goodput", "simulate"):  # no dry-run mode of their own
                    continue
                cmd.append("--dry-run")
            else:
                print(f"\n[reproduce] === {name} ({time.strftime('%H:%M:%S')}) ===", flush=True)
            t = time.time()
            rc = run_step(name, cmd)
            timing.append((name, time.time() - t, "ok" if rc == 0 else f"exit {rc}"))
            if rc != 0:
                failed.append(name)
    if args.dry_run:
        return 0
    from pslab.analysis import figures
    print(f"\n[reproduce] === figures ({time.strftime('%H:%M:%S')}) ===", flush=True)
    t = time.time()
    for name, path in figures.draw_all().items():
        print(f"[reproduce] {name:15s} {path}")
        if str(path).startswith("failed"):
            failed.append(f"figure {name}")
    rc = subprocess.run([sys.executable, str(ROOT / "notebooks" / "make_figures_md.py")], cwd=ROOT).returncode
    if rc:
        failed.append("FIGURES.md")
    if args.notebooks:
        rc = subprocess.run([sys.executable, str(ROOT / "notebooks" / "make_notebooks.py"), "--execute"],
                            cwd=ROOT).returncode
        if rc:
            failed.append("notebooks")
    timing.append(("figures", time.time() - t, "ok"))
    total = time.time() - t_all
    print("\n[reproduce] step           seconds  status")
    for name, secs, status in timing:
        print(f"[reproduce] {name:14s} {'-' if secs is None else f'{secs:7.0f}':>7s}  {status}")
    print(f"[reproduce] total {total / 60:.1f} min" + (f" (budget {BUDGET_S[args.preset] / 60:.0f} min)"
                                                      if args.preset in BUDGET_S else ""))
    if args.preset in BUDGET_S and total > BUDGET_S[args.preset] and not args.figures_only:
        print("[reproduce] WARNING: over the time budget (a loaded machine?)")
    if failed:
        print(f"[reproduce] FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("[reproduce] interrupted: results/ of the finished steps are kept", file=sys.stderr)
        sys.exit(130)
