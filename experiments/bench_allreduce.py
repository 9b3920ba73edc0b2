"""Speed of the allreduce backend's gradient exchange, against a bare MPI Allreduce of the
same buffer measured in the same run, and end-to-end examples/s.

    .venv/bin/python experiments/bench_allreduce.py                 # N = 2, 4, 8; 2^16, 2^20, 2^24
    .venv/bin/python experiments/bench_allreduce.py --ranks 2 4 --bits 16 20 --repeats 15
    .venv/bin/python experiments/bench_allreduce.py --skip-e2e --out results/bench_allreduce.json

Part 1 (exchange). For each N the script runs itself under mpirun (Open MPI, the flags
pslab.launch uses: --oversubscribe --with-ft ulfm, btl ^ofi). Each rank takes the
gradient of a realistic minibatch: 1024 synthetic CTR rows (39 power-law keys each,
`data=synthetic`) folded into 2^b keys: 17-20k touched keys per rank. For every
model size it times, interleaved repeat by repeat in a shuffled order after a warm-up,
with a Barrier before each and the slowest rank's time counted:
  bare    MPI.COMM_WORLD.Allreduce(IN_PLACE, buf) of a buffer as large as the backend's
          (2^b float32 gradient cells and the tail of the step's numbers, 4 + N floats)
  dense   DenseExchange, the whole exchange: write the rank's rows and numbers into the
          buffer, [the touched-key bitmap Allreduce (BOR), models > 2^21 cells only], the
          buffer's Allreduce, finding the union of the touched keys (signed zeros or
          bitmap), reading back and re-zeroing the union's rows
  sparse  SparseExchange: Allgather of counts, Allgatherv of (key, value) records, union and sums
and prints medians and the ratio dense/bare (target: <= 1.2), split into the time inside
the exchange's MPI calls (MPI/bare; the same single Allreduce as bare at <= 2^21 cells,
plus the ranks' skew) and the rest, the sparse-to-dense conversion (convert: packing,
the union, unpacking); the ratio of the fastest repeats (less sensitive to other jobs on
a shared machine); and, for scale, one AdaGrad update of every key of the model on one
rank (full update): what the classic design, which applies the dense sum to the whole
model, pays per step instead of the conversion.

Part 2 (end to end). `python -m pslab.launch -n N backend=allreduce` on synthetic data
(65,536 rows, 2 epochs, 2^20 keys, global batch 4096, LR) for N = 1, 2, 4, dense and
sparse, plus backend=local; examples/s inside the second epoch, from the time stamps of
rank 0's per-step records (the first epoch also generates the synthetic rows; start-up
and evaluation are excluded). On this 2-core machine N > 2 is oversubscribed, so these
figures measure the scheduler as much as the code (BRIEF.md section 5).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


# -- part 1, inside each rank -----------------------------------------------------------


def batch_keys(rank: int, bits: int, rows: int = 1024) -> np.ndarray:
    """A minibatch's unique folded keys in order of first appearance, as the trainer's
    deduplication hands them to the exchange (not sorted)."""
    from pslab.data.synthetic import make_block
    keys = make_block(1000 + rank, rows=rows, nnz=39, n_keys=1 << 22, alpha=1.0, seed=0).fold(bits).keys
    first = np.unique(keys, return_index=True)[1]
    return keys[np.sort(first)]


def timed(comm, fn, ex=None) -> tuple[float, float]:
    """(seconds, seconds inside MPI calls) of fn, the slowest rank's."""
    from mpi4py import MPI
    comm.Barrier()
    m0 = ex.mpi_s if ex is not None else 0.0
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    out = np.array([dt, ex.mpi_s - m0 if ex is not None else dt])
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.MAX)
    return float(out[0]), float(out[1])


def full_update_s(n: int, repeats: int = 5) -> float:
    """Median seconds of one AdaGrad step on all n keys (LR: one weight each), as a dense
    optimizer update of the whole replica would take it."""
    from pslab.optim import AdaGrad
    opt, w, acc = AdaGrad(lr=0.1), np.zeros((n, 1), np.float32), np.full((n, 1), 0.1, np.float32)
    g = np.random.default_rng(0).standard_normal((n, 1)).astype(np.float32)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.update(w, acc, g)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def worker(args) -> None:
    from mpi4py import MPI

    from pslab.backends.allreduce import DenseExchange, SparseExchange
    from pslab.observe import Accounting

    comm = MPI.COMM_WORLD
    for bits in args.bits:
        n = 1 << bits
        keys = batch_keys(comm.rank, bits)
        grad = np.random.default_rng(comm.rank).standard_normal((len(keys), 1)).astype(np.float32)
        dense, sparse = DenseExchange(n, 1, Accounting(), comm.size), SparseExchange(n, 1, Accounting())
        bare = np.zeros(dense.flat.size, np.float32)
        ops = {"bare": (lambda: comm.Allreduce(MPI.IN_PLACE, bare, op=MPI.SUM), None),
               "dense": (lambda: dense(comm, keys, grad, 1024, 0.0), dense),
               "sparse": (lambda: sparse(comm, keys, grad, 1024, 0.0), sparse)}
        reps = args.repeats if bits < 22 else max(5, args.repeats // 3)
        times = {k: [] for k in ops}
        mpi = {k: [] for k in ops}
        for i in range(args.warmup + reps):
            # a new order each repeat (the same on every rank: the collectives must match), so
            # that no op always runs with the caches another one left behind
            for name in np.random.default_rng(i).permutation(list(ops)):
                fn, ex = ops[name]
                dt, dm = timed(comm, fn, ex)
                if i >= args.warmup:
                    times[name].append(dt)
                    mpi[name].append(dm)
        full_update = full_update_s(n)
        union = np.array([len(keys), dense.last_union])
        comm.Allreduce(MPI.IN_PLACE, union[:1], op=MPI.SUM)
        if comm.rank == 0:
            med = {k: float(np.median(v)) for k, v in times.items()}
            med_mpi = {k: float(np.median(v)) for k, v in mpi.items()}
            outside = float(np.median(np.array(times["dense"]) - np.array(mpi["dense"])))
            best = {k: float(np.min(v)) for k, v in times.items()}
            print(json.dumps({"ranks": comm.size, "bits": bits, "params": n, "repeats": reps,
                              "touched_per_rank": int(union[0]) // comm.size, "union": int(union[1]),
                              "bare_s": med["bare"], "dense_s": med["dense"], "sparse_s": med["sparse"],
                              "dense_ratio": med["dense"] / med["bare"], "sparse_ratio": med["sparse"] / med["bare"],
                              "dense_mpi_s": med_mpi["dense"], "sparse_mpi_s": med_mpi["sparse"],
                              "dense_mpi_ratio": med_mpi["dense"] / med["bare"], "dense_outside_mpi_s": outside,
                              "dense_union": "bitmap" if dense.words is not None else "signed zeros",
                              "full_update_s": full_update,
                              "best_bare_s": best["bare"], "best_dense_s": best["dense"],
                              "best_sparse_s": best["sparse"], "best_dense_ratio": best["dense"] / best["bare"],
                              "bytes_buffer": int(dense.buffer_bytes), "bytes_bitmap": int(dense.bitmap_bytes)}),
                  flush=True)
        del dense, sparse, bare


def mpirun_cmd(n: int, argv: list[str]) -> tuple[list[str], dict]:
    """The launcher's mpirun flags and environment (pslab.launch.mpirun_command), running
    this file instead of pslab.train."""
    from pslab.launch import find_mpirun, mpirun_command
    cmd, env = mpirun_command(find_mpirun(), n, [], Path(tempfile.gettempdir()), None)
    return cmd[:cmd.index(sys.executable)] + [sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
                                              *argv], env


def exchange_bench(args) -> list[dict]:
    rows = []
    for n in args.ranks:
        argv = ["--worker", "--bits", *map(str, args.bits), "--repeats", str(args.repeats),
                "--warmup", str(args.warmup)]
        cmd, env = mpirun_cmd(n, argv)
        print(f"# mpirun -n {n} ... (exchange, bits {args.bits})", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=ROOT)
        got = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        if p.returncode or len(got) != len(args.bits):
            print(f"# N={n} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}", file=sys.stderr)
        rows += got
    return rows


# -- part 2: end to end -----------------------------------------------------------------

E2E = ["data=synthetic", "data.rows=65536", "data.test_rows=2048", "data.hash_bits=20", "train.batch_size=4096",
       "train.epochs=2", "train.eval_every=0", "train.log_every=2", "model=lr"]


def second_epoch_rate(run_dir: Path):
    """Examples/s inside the second epoch, from rank 0's per-step records (their time
    stamps; no evaluation falls between them; the first epoch also generates the
    synthetic blocks, which later epochs read from memory)."""
    lines = [json.loads(line) for line in (run_dir / "ranks" / "rank-0.metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m.get("kind") == "step" and m.get("epoch") == 1]
    if len(steps) < 2:
        return None
    a, b = steps[0], steps[-1]
    return (b["examples"] - a["examples"]) / (b["t"] - a["t"])


def e2e_bench(args) -> list[dict]:
    from pslab.launch import launch
    out = []
    base = Path(tempfile.mkdtemp(prefix="pslab-bench-ar-"))
    runs = [("local", 1, ["backend=local"])]
    for n in (1, 2, 4):
        runs += [("allreduce dense", n, ["backend=allreduce", "backend.mode=dense"]),
                 ("allreduce sparse", n, ["backend=allreduce", "backend.mode=sparse"])]
    for i, (label, n, ov) in enumerate(runs):
        s = launch(n, E2E + ov, run_dir=base / f"run{i}", deadline=600, quiet=True)
        train_s = s.get("train_s")
        out.append({"label": label, "ranks": n, "status": s["status"], "examples": s.get("examples"),
                    "train_s": train_s, "examples_per_s": second_epoch_rate(base / f"run{i}"),
                    "test_auc": s.get("test_auc"), "bytes_sent": s.get("bytes_sent"),
                    "wait_fraction": (s.get("time_fraction") or {}).get("wait")})
    return out


def print_exchange(rows: list[dict]) -> None:
    print("\nGradient exchange per step, median over repeats (slowest rank), LR (1 float32 per key)")
    print("dense = the whole exchange (pack, [bitmap +] buffer Allreduce, union, unpack); MPI = its MPI calls only;")
    print("convert = the rest, sparse rows to the dense buffer and back (median of dense - MPI per repeat); union =")
    print("how dense finds the touched keys; best = ratio of the fastest repeats (less sensitive to other jobs);")
    print("full update = one AdaGrad step on every key, what a dense update of the replica costs instead of convert")
    print(f"{'N':>2} {'params':>7} {'touched':>8} {'union':>7} {'bare ms':>8} {'dense ms':>9} {'dense/bare':>10} "
          f"{'MPI/bare':>8} {'convert ms':>10} {'full update ms':>14} {'union by':>12} {'sparse ms':>9} "
          f"{'sparse/bare':>11} {'best dense/bare':>15}")
    for r in rows:
        print(f"{r['ranks']:>2} {'2^%d' % r['bits']:>7} {r['touched_per_rank']:>8} {r['union']:>7} "
              f"{1e3 * r['bare_s']:>8.3f} {1e3 * r['dense_s']:>9.3f} {r['dense_ratio']:>10.2f} "
              f"{r['dense_mpi_ratio']:>8.2f} {1e3 * r['dense_outside_mpi_s']:>10.3f} {1e3 * r['full_update_s']:>14.3f} "
              f"{r['dense_union']:>12} {1e3 * r['sparse_s']:>9.3f} {r['sparse_ratio']:>11.2f} "
              f"{r['best_dense_ratio']:>15.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 20, 24])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip-e2e", action="store_true", help="only part 1 (exchange)")
    ap.add_argument("--skip-exchange", action="store_true", help="only part 2 (end to end)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    load0 = os.getloadavg()
    rows = [] if args.skip_exchange else exchange_bench(args)
    if rows:
        print_exchange(rows)
    e2e = []
    if not args.skip_e2e:
        e2e = e2e_bench(args)
        print("\nEnd to end, synthetic LR, 65,536 rows x 2 epochs, 2^20 keys, global batch 4096; examples/s of "
              "the second epoch (data in memory)")
        print(f"{'backend':<18} {'N':>2} {'status':>9} {'examples/s':>11} {'train s':>8} {'AUC':>7} {'wait':>6}")
        for r in e2e:
            eps = r["examples_per_s"]
            print(f"{r['label']:<18} {r['ranks']:>2} {r['status']:>9} {eps if eps is None else round(eps):>11} "
                  f"{r['train_s'] or 0:>8.2f} {r['test_auc'] or 0:>7.4f} "
                  f"{'' if r['wait_fraction'] is None else '%.2f' % r['wait_fraction']:>6}")
    load1 = os.getloadavg()
    print(f"\nload average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on {os.cpu_count()} cores "
          "(other jobs on the machine inflate the times, the small sizes most)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"exchange": rows, "end_to_end": e2e, "loadavg": [load0, load1]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
