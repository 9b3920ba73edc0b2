"""The headline comparison, on the shipped Criteo sample, in a few minutes on 2 cores.

    make demo                      # = .venv/bin/python experiments/demo.py
    .venv/bin/python experiments/demo.py --ranks 4 --model fm
    .venv/bin/python experiments/demo.py --hosts 2         # every distributed run over 2 emulated hosts

The same LR model trained by the local reference, classic MPI allreduce, elastic (ULFM)
allreduce and the parameter server, once fault-free and once with a worker SIGKILLed
halfway. Prints one table (status, test AUC, wall time, bytes sent, recovery time) and
saves it as results/figures/demo.png, then the simulator's one-sentence conclusion at
16,384 workers (results/sim/goodput_scale.json, when experiments/simulate.py has run).
Run directories go to runs/demo/.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pslab.launch import Interrupted, launch  # noqa: E402
from pslab.launcher.progress import Countdown  # noqa: E402

FAULTS = ["none", "kill_one_worker"]


def contenders(n: int) -> list[tuple[str, int, list[str]]]:
    """(label, ranks, overrides). The PS spends one rank on the coordinator and one on a
    server, so it gets two more ranks than allreduce has workers: the same number of
    workers, as in the papers' comparisons."""
    return [("allreduce (classic MPI)", n, ["backend=allreduce"]),
            ("allreduce (elastic, ULFM)", n, ["backend=allreduce", "backend.elastic=true"]),
            ("parameter server", n + 2, ["backend=ps", "backend.servers=1"])]


def available(backend: str) -> bool:
    return (importlib.util.find_spec(f"pslab.backends.{backend}") is not None
            and (ROOT / "conf" / "backend" / f"{backend}.yaml").exists())


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=4, help="workers per run")
    ap.add_argument("--model", default="lr")
    ap.add_argument("--deadline", type=float, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--hosts", type=int, default=None, metavar="K",
                    help="run the distributed contenders over K emulated hosts (python -m pslab.launch --hosts)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    common = [f"model={args.model}", "data=criteo_sample"]
    ref = launch(1, ["backend=local", *common], args.out / "local", args.deadline, quiet=True)
    rows = [("local reference", "none", ref)]
    print(f"local reference: test AUC {fmt(ref.get('test_auc'), '.4f')}, log-loss {fmt(ref.get('test_logloss'), '.4f')}")
    todo = [c for c in contenders(args.ranks) if available(c[2][0].split("=")[1])]
    count = Countdown(len(todo) * len(FAULTS))
    for label, n, overrides in contenders(args.ranks):
        backend = overrides[0].split("=")[1]
        if not available(backend):
            print(f"{label}: backend {backend!r} not built yet, skipped")
            continue
        for fault in FAULTS:
            run_dir = args.out / f"{backend}{'-elastic' if 'elastic' in ' '.join(overrides) else ''}-{fault}"
            s = launch(n, [*overrides, *common, f"faults={fault}"], run_dir, args.deadline, quiet=True,
                       **({"hosts": args.hosts} if args.hosts else {}))
            rows.append((label, fault, s))
            print(f"  {count.tick():16s} {label:28s} faults={fault:16s} {s['status']:9s} "
                  f"auc={fmt(s.get('test_auc'), '.4f')} wall={s['wall_s']:.1f}s", flush=True)
    print_table(rows)
    plot(rows, ROOT / "results" / "figures" / "demo.png")
    print_at_scale()
    return 0


def print_at_scale() -> None:
    """The simulator's headline (results/sim/goodput_scale.json), when it has been run."""
    from pslab.analysis.goodput_scale import headline
    text = headline()
    print(f"\nat scale (simulated): {text}" if text else
          "\nat scale: no simulated goodput curves yet (experiments/simulate.py --goodput writes them)")


def recovery(s) -> str:
    r = s.get("recovery_s") or []
    return "-" if not r else ", ".join(f"{x:.2f}s" for x in r)


def print_table(rows) -> None:
    head = f"\n{'backend':28s} {'faults':16s} {'status':9s} {'AUC':>7s} {'logloss':>8s} {'wall s':>7s} {'MB sent':>8s} {'alive':>5s} recovery"
    print(head)
    print("-" * len(head))
    for label, fault, s in rows:
        mb = s.get("bytes_sent")
        print(f"{label:28s} {fault:16s} {s['status']:9s} {fmt(s.get('test_auc'), '7.4f')} "
              f"{fmt(s.get('test_logloss'), '8.4f')} {s['wall_s']:7.1f} {fmt(None if mb is None else mb / 1e6, '8.2f')} "
              f"{fmt(s.get('ranks_alive_end'), '>5')} {recovery(s)}")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{label}\n{fault}" for label, fault, _ in rows]
    auc = [s.get("test_auc") or 0 for _, _, s in rows]
    ok = [s["status"] == "succeeded" for _, _, s in rows]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars = ax.bar(range(len(rows)), auc, color=["tab:green" if k else "tab:red" for k in ok])
    for i, (b, k) in enumerate(zip(bars, ok)):
        ax.text(b.get_x() + b.get_width() / 2, max(b.get_height(), 0.5) + 0.005,
                "ok" if k else "FAILED", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(0.5, 0.8)
    ax.set_ylabel("test AUC (Criteo sample)")
    ax.set_title("Same model, same data: a worker SIGKILLed halfway (red = job failed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    print(f"\nfigure: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:  # Interrupted: the run in progress was ended, with its summary
        print("demo: interrupted", file=sys.stderr)
        sys.exit(e.exit_code if isinstance(e, Interrupted) else 130)
