"""Benchmark of the parameter server's data path (issue 4), three parts in one run:

  (a) the message layer (header + keys + values, encoded, sent, decoded and answered with
      a message of the same size) against a bare mpi4py Send/Recv ping-pong of the same
      bytes, at 100, 10k and 1M keys: round-trip time and bandwidth, and their ratios;
  (b) full pull and push round trips from one client through routing, two servers and
      their SparseTable stores, in keys/s, with a breakdown of where the time goes;
  (c) end-to-end examples/s of backend=ps with W = 1, 2, 4 workers next to
      backend=allreduce with the same number of workers, on the same data;
  (r) the cost of exactly-once and replication: (b)'s push round trips with R = 1 and
      R = 2 (each server the other's backup: apply, forward, wait for the backup's
      acknowledgement), their ratio (target: R = 2 at most 1.5x R = 1), and the
      re-replication rate in keys/s measured in a training run whose server is killed.

Run it from the project root (about 3 minutes on 2 cores):

    .venv/bin/python experiments/bench_ps.py
    .venv/bin/python experiments/bench_ps.py --parts ab --reps 30      # only the MPI micro-benchmarks
    .venv/bin/python experiments/bench_ps.py --parts c --e2e-repeats 3 --data synthetic
    .venv/bin/python experiments/bench_ps.py --parts r                 # replication's cost

Every figure is a median over repeats, and every ratio is against a baseline measured in
the same run. Results also go to results/bench_ps/bench.json. (a) and (b) run this file
under mpirun (-n 2 and -n 4, the launcher's flags minus ULFM, see run_mpi); (c) goes
through `python -m pslab.launch`. Wall-clock on an
oversubscribed 2-core machine mostly measures the OS scheduler: (c) reports the
coordinator's training time (startup excluded), not the launch's wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (100, 10_000, 1_000_000)
TAG_BARE = 4242


# ------------------------------------------------------------------ helpers (MPI side)

class _Rec:
    """The part of observe.Recorder the van and the server use."""

    def __init__(self, run_dir="."):
        from pslab.observe import Accounting

        self.acct = Accounting()
        self.run_dir = Path(run_dir)

    def event(self, *a, **k):
        pass

    def metric(self, *a, **k):
        pass


def _wait_one(van, timeout=60.0):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        msgs = van.recv(deadline - time.perf_counter())
        if msgs:
            assert len(msgs) == 1, "ping-pong: one message at a time"
            return msgs[0]
    raise TimeoutError("bench: no message")


def part_messages(reps: int) -> dict | None:
    """(a): rank 0 <-> rank 1."""
    from mpi4py import MPI

    from pslab.backends.ps import protocol as P
    from pslab.backends.ps.van import Van

    comm = MPI.COMM_WORLD.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    rank, other = comm.Get_rank(), 1 - comm.Get_rank()
    van = Van(comm, _Rec())
    out = {}
    for n in SIZES:
        keys = (np.arange(n, dtype=np.uint64) * np.uint64(7919)) ^ np.uint64(0x5DEECE66D)
        vals = np.ones((n, 1), np.float32)
        nbytes = P.HEADER_BYTES + 12 * n
        buf = np.zeros(nbytes, np.uint8)
        # As osu_latency does: timed batches of back-to-back round trips (no barrier
        # inside a batch), the median over batches. Bare and van batches alternate, so a
        # change in the machine's load hits both sides of the ratio alike.
        batch = 50 if n < 1_000_000 else 5
        bare, ours = [], []
        for r in range(reps + 1):  # the first batches are warm-up
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(batch):
                if rank == 0:
                    comm.Send([buf, MPI.BYTE], other, TAG_BARE)
                    comm.Recv([buf, MPI.BYTE], other, TAG_BARE)
                else:
                    comm.Recv([buf, MPI.BYTE], other, TAG_BARE)
                    comm.Send([buf, MPI.BYTE], other, TAG_BARE)
            if r:
                bare.append((time.perf_counter() - t) / batch)
            comm.Barrier()
            t = time.perf_counter()
            for i in range(batch):
                if rank == 0:
                    van.send(other, P.Msg(P.PUSH, req=i, keys=keys, vals=vals, rows=1))
                    m = _wait_one(van)
                    assert len(m.vals) == n
                else:
                    m = _wait_one(van)
                    van.send(other, P.Msg(P.PUSH, req=m.req, keys=m.keys, vals=m.vals, rows=1))
            if r:
                ours.append((time.perf_counter() - t) / batch)
            van.flush(10.0)
        if rank == 0:
            b, o = float(np.median(bare)), float(np.median(ours))
            out[n] = {"bytes": nbytes, "bare_rtt_s": b, "van_rtt_s": o, "bare_GBps": 2 * nbytes / b / 1e9,
                      "van_GBps": 2 * nbytes / o / 1e9, "rtt_ratio": o / b, "bandwidth_fraction": b / o}
    return out if rank == 0 else None


class _BenchServer:
    """A real ps Server, plus a `stats` control message to read and reset its timers."""

    @staticmethod
    def make(cfg, index, layout, van, rec):
        from pslab.backends.ps import protocol as P
        from pslab.backends.ps.server import Server

        class S(Server):
            def on_ctrl(self, m):
                if (m.meta or {}).get("op") == "stats":
                    sec = dict(self.rec.acct.seconds)
                    self.rec.acct.seconds.clear()
                    self.van.send(m.src, P.Msg(P.CTRL, meta={"op": "stats", "seconds": sec, "keys": len(self.table)}))
                    return
                super().on_ctrl(m)

        class NoFaults:
            def on_step(self, step):
                pass

            def point(self, name, step):
                pass

        return S(cfg, index, layout, van, rec, NoFaults())


def part_kv(reps: int, replication: int = 1) -> dict | None:
    """(b): rank 0 idle (the coordinator's seat), ranks 1-2 servers, rank 3 the client.
    With replication=2 each server is the other's backup: every push is applied by its
    range's primary, forwarded to the backup and acknowledged once the backup holds it,
    and each push carries a batch id that the ranges record (exactly-once)."""
    from mpi4py import MPI

    from pslab.backends.ps import protocol as P
    from pslab.backends.ps.client import KVClient
    from pslab.backends.ps.membership import Layout, Membership
    from pslab.backends.ps.van import Van
    from pslab.config import load_config

    comm = MPI.COMM_WORLD.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    rank = comm.Get_rank()
    cfg = load_config(["backend=ps", "backend.servers=2", "backend.consistency=asp", "model=lr",
                       "data.hash_bits=null", f"backend.replication={replication}"])
    layout = Layout(comm.Get_size(), 2)
    tmp = tempfile.mkdtemp(prefix="bench_ps_")
    van = Van(comm, _Rec(tmp))
    if rank in (1, 2):
        srv = _BenchServer.make(cfg, rank - 1, layout, van, _Rec(tmp))
        srv.serve(idle_timeout=120, deadline=time.time() + 600)
        return None
    if rank == 0:  # the coordinator's seat stays empty: the client drives the servers
        return None
    client = KVClient(van, layout, Membership.initial(layout, cfg.backend), 1, timeout=60)
    rng = np.random.default_rng(0)

    def server_seconds():
        for s in (1, 2):
            van.send(s, P.Msg(P.CTRL, meta={"op": "stats"}))
        got = []
        while len(got) < 2:
            client.pump(1.0)
            got += [m.meta for m in client.inbox if (m.meta or {}).get("op") == "stats"]
            client.inbox.clear()
        return got

    out = {}
    clock = 0
    for n in SIZES:
        keys = np.unique(rng.integers(0, 2**63, n, dtype=np.uint64))
        rng.shuffle(keys)
        g = rng.standard_normal((len(keys), 1)).astype(np.float32)
        client.wait(client.push(keys, g, 1, clock, batch=clock, div=1))  # first touch inserts the keys
        clock += 1
        server_seconds()
        reps_n = reps if n < 1_000_000 else max(5, reps // 3)
        t_pull, t_push, t_route, t_send_pull, t_send_push = [], [], [], [], []
        for r in range(reps_n):
            fresh = keys.copy()  # a new array: routing is not served from the client's cache
            t0 = time.perf_counter()
            client.split(fresh)
            t1 = time.perf_counter()
            ts = client.pull(fresh, clock)
            t2 = time.perf_counter()
            client.wait(ts)
            t3 = time.perf_counter()
            ts = client.push(fresh, g, 1, clock, batch=clock, div=1)
            t4 = time.perf_counter()
            client.wait(ts)
            t5 = time.perf_counter()
            clock += 1
            t_route.append(t1 - t0)
            t_send_pull.append(t2 - t1)
            t_pull.append(t3 - t0)
            t_send_push.append(t4 - t3)
            t_push.append(t5 - t3)
        srv = server_seconds()
        # Throughput: `depth` pushes in flight (as a worker's max_inflight_pushes allows),
        # so a push's latency overlaps the next one's work: seconds per push.
        depth, t_pipe = 8, []
        for r in range(max(3, reps_n // 3)):
            t0 = time.perf_counter()
            tss = []
            for _ in range(depth):
                tss.append(client.push(keys, g, 1, clock, batch=clock, div=1))
                clock += 1
                if len(tss) > 2:
                    client.wait(tss.pop(0))
            for ts in tss:
                client.wait(ts)
            t_pipe.append((time.perf_counter() - t0) / depth)
        per = lambda key: sum(s["seconds"].get(key, 0.0) for s in srv) / reps_n  # noqa: E731
        pull, push = float(np.median(t_pull)), float(np.median(t_push))
        out[n] = {"keys": int(len(keys)), "pull_s": pull, "push_s": push, "pull_keys_per_s": len(keys) / pull,
                  "push_pipelined_s": float(np.median(t_pipe)),
                  "push_keys_per_s": len(keys) / push,
                  "breakdown_s": {"client_route_split": float(np.median(t_route)),
                                  "client_encode_send_pull": float(np.median(t_send_pull)),
                                  "client_encode_send_push": float(np.median(t_send_push)),
                                  "servers_compute_per_pull_and_push (sum of 2)": per("compute"),
                                  "servers_send_per_pull_and_push (sum of 2)": per("comm")}}
    for s in (1, 2):
        van.send(s, P.Msg(P.CTRL, meta={"op": "stop"}))
    client.pump(1.0)
    van.flush(10)
    return out


def mpi_main(part: str, reps: int, out_path: str) -> None:
    res = part_messages(reps) if part == "a" else part_kv(reps, 2 if part == "b2" else 1)
    if res is not None:
        Path(out_path).write_text(json.dumps(res))


# ------------------------------------------------------------------ driver

def run_mpi(part: str, n: int, reps: int) -> dict:
    from pslab.launch import find_mpirun, mpirun_command

    out = Path(tempfile.mkdtemp(prefix="bench_ps_")) / f"{part}.json"
    cmd, env = mpirun_command(find_mpirun(), n, [], out.parent, None)
    py = cmd.index(sys.executable)
    # The launcher's flags, without ULFM: under --with-ft ulfm a blocking Recv here woke up
    # milliseconds late, which would flatter the message layer against its baseline.
    flags = [f for i, f in enumerate(cmd[:py]) if f != "--with-ft" and (i == 0 or cmd[i - 1] != "--with-ft")]
    cmd = flags + [sys.executable, "-m", "mpi4py", __file__, "--mpi-part", part, "--reps", str(reps),
                   "--out", str(out)]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=900)
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def launch(n: int, overrides: list[str]) -> dict:
    d = Path(tempfile.mkdtemp(prefix="bench_ps_e2e_")) / "run"
    subprocess.run([sys.executable, "-m", "pslab.launch", "-n", str(n), "--run-dir", str(d), "--deadline", "300",
                    *overrides], cwd=ROOT, capture_output=True, timeout=400)
    s = json.loads((d / "summary.json").read_text())
    if s.get("status") == "succeeded" and s.get("backend") != "ps":
        # Same clock for both: training time without held-out evaluation (the PS's train_s
        # already leaves it out; allreduce's rank 0 evaluates inside its training time).
        r0 = json.loads((d / "ranks" / "rank-0.json").read_text())
        s["train_s"] -= r0.get("seconds", {}).get("eval", 0.0)
    return s


def part_e2e(data: list[str], repeats: int) -> dict:
    have_allreduce = (ROOT / "src" / "pslab" / "backends" / "allreduce.py").exists()
    out = {}
    for w in (1, 2, 4):
        row = {}
        configs = [("ps", 2 + w, ["backend=ps", "backend.servers=1"])]
        if have_allreduce:
            configs.append(("allreduce", w, ["backend=allreduce"]))
        for name, n, over in configs:
            eps, auc, wall = [], [], []
            for _ in range(repeats):
                s = launch(n, over + data)
                if s.get("status") != "succeeded":
                    row[name] = {"status": s.get("status"), "reason": s.get("reason")}
                    break
                eps.append(s["examples"] / s["train_s"])
                auc.append(s["test_auc"])
                wall.append(s["wall_s"])
            else:
                row[name] = {"ranks": n, "examples_per_s": float(np.median(eps)), "test_auc": float(np.median(auc)),
                             "wall_s": float(np.median(wall))}
        if "ps" in row and "allreduce" in row and "examples_per_s" in row.get("allreduce", {}) \
                and "examples_per_s" in row["ps"]:
            row["ps_over_allreduce"] = row["ps"]["examples_per_s"] / row["allreduce"]["examples_per_s"]
        out[w] = row
    if not have_allreduce:
        out["note"] = "backend=allreduce not present: PS only"
    return out


def part_replication(reps: int) -> dict:
    r1, r2 = run_mpi("b", 4, reps), run_mpi("b2", 4, reps)
    out = {"push": {n: {"r1_push_s": r1[n]["push_s"], "r2_push_s": r2[n]["push_s"],
                        "r2_over_r1": r2[n]["push_s"] / r1[n]["push_s"],
                        "r1_pipelined_s": r1[n]["push_pipelined_s"], "r2_pipelined_s": r2[n]["push_pipelined_s"],
                        "r2_over_r1_pipelined": r2[n]["push_pipelined_s"] / r1[n]["push_pipelined_s"]}
                    for n in r1}}
    # End to end: training time with R = 1 and R = 2 (2 servers, 2 workers, BSP), median of 3.
    e2e = {}
    for R in (1, 2):
        runs = [launch(5, ["backend=ps", "backend.servers=2", f"backend.replication={R}", "data=criteo_sample",
                           "train.epochs=3"]) for _ in range(3)]
        e2e[R] = float(np.median([x["train_s"] for x in runs if x.get("status") == "succeeded"] or [np.nan]))
    out["train_s"] = {"r1": e2e[1], "r2": e2e[2], "r2_over_r1": e2e[2] / e2e[1]}
    # Re-replication while training goes on: 3 servers, R = 2, server 0 killed at 40%.
    run = launch(7, ["backend=ps", "backend.servers=3", "backend.replication=2", "data=synthetic",
                     "data.rows=60000", "data.test_rows=5000", "train.batch_size=1024", "faults=kill_one_server",
                     "faults.events.0.target.index=0", "faults.events.0.at.progress=0.4"])
    rr = run.get("rereplications") or []
    keys, secs = sum(x["keys"] for x in rr), sum(x["time_s"] for x in rr)
    out["rereplication"] = {"status": run.get("status"), "snapshots": len(rr), "keys": keys,
                            "bytes": sum(x["bytes"] for x in rr), "seconds": secs,
                            "keys_per_s": keys / secs if secs else None, "rows_applied": run.get("rows_applied"),
                            "rows_planned": run.get("rows_planned"), "lost_updates": run.get("lost_updates")}
    return out


def fmt_s(s: float) -> str:
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="abcr")
    ap.add_argument("--reps", type=int, default=15, help="repeats (batches in (a)) per size in (a) and (b)")
    ap.add_argument("--e2e-repeats", type=int, default=1)
    ap.add_argument("--data", default="criteo", choices=["criteo", "synthetic"])
    ap.add_argument("--mpi-part", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mpi_part:
        return mpi_main(args.mpi_part, args.reps, args.out)
    results = {}
    if "a" in args.parts:
        a = results["messages"] = run_mpi("a", 2, args.reps)
        print("(a) message layer vs bare mpi4py Send/Recv ping-pong (same bytes, round trip, median)")
        print(f"{'keys':>9} {'bytes':>10} {'bare rtt':>11} {'van rtt':>11} {'rtt x':>7} {'bare GB/s':>9} "
              f"{'van GB/s':>9} {'bw frac':>7}")
        for n, r in a.items():
            print(f"{n:>9} {r['bytes']:>10} {fmt_s(r['bare_rtt_s']):>11} {fmt_s(r['van_rtt_s']):>11} "
                  f"{r['rtt_ratio']:>7.2f} {r['bare_GBps']:>9.2f} {r['van_GBps']:>9.2f} {r['bandwidth_fraction']:>7.2f}")
        print(f"    targets: rtt x <= 10 at 100 keys ({a[100]['rtt_ratio']:.1f}); "
              f"bw frac >= 0.5 at 1M keys ({a[1_000_000]['bandwidth_fraction']:.2f})")
    if "b" in args.parts:
        b = results["kv"] = run_mpi("b", 4, args.reps)
        print("\n(b) pull / push round trips, 1 client -> 2 servers (64-bit keys, LR rows, median)")
        for n, r in b.items():
            print(f"{n:>9} keys: pull {fmt_s(r['pull_s'])} = {r['pull_keys_per_s'] / 1e6:6.2f} M keys/s; "
                  f"push {fmt_s(r['push_s'])} = {r['push_keys_per_s'] / 1e6:6.2f} M keys/s")
            for k, v in r["breakdown_s"].items():
                print(f"{'':>14}{k:<48}{fmt_s(v)}")
        print(f"    target: >= 10 M keys/s for a pull of 1M keys ({b[1_000_000]['pull_keys_per_s'] / 1e6:.1f})")
    if "c" in args.parts:
        data = ["data=criteo_sample", "train.epochs=3"] if args.data == "criteo" else \
            ["data=synthetic", "data.rows=40000", "data.test_rows=5000", "train.batch_size=1024"]
        c = results["e2e"] = part_e2e(data, args.e2e_repeats)
        print(f"\n(c) end-to-end examples/s (training time, startup excluded), data: {' '.join(data)}")
        for w, row in c.items():
            if w == "note":
                print("    " + row)
                continue
            parts = []
            for name in ("ps", "allreduce"):
                r = row.get(name)
                if r and "examples_per_s" in r:
                    parts.append(f"{name} ({r['ranks']} ranks) {r['examples_per_s']:>9.0f} ex/s auc {r['test_auc']:.4f}")
                elif r:
                    parts.append(f"{name}: {r.get('status')} ({r.get('reason')})")
            ratio = f"  ps/allreduce {row['ps_over_allreduce']:.2f}" if "ps_over_allreduce" in row else ""
            print(f"  W={w}: " + "; ".join(parts) + ratio)
    if "r" in args.parts:
        r = results["replication"] = part_replication(args.reps)
        print("\n(r) pushes, 1 client -> 2 servers: R = 1 vs R = 2 (forward + backup ack), median")
        print(f"{'keys':>9} {'R=1 rtt':>11} {'R=2 rtt':>11} {'x':>5} | {'R=1 /push':>11} {'R=2 /push':>11} {'x':>5}"
              f"   (rtt: one push waited for; /push: 8 in flight, 2 unacknowledged at most)")
        for n, x in r["push"].items():
            print(f"{n:>9} {fmt_s(x['r1_push_s']):>11} {fmt_s(x['r2_push_s']):>11} {x['r2_over_r1']:>5.2f} | "
                  f"{fmt_s(x['r1_pipelined_s']):>11} {fmt_s(x['r2_pipelined_s']):>11} {x['r2_over_r1_pipelined']:>5.2f}")
        t = r["train_s"]
        print(f"    training (criteo, 3 epochs, 2 servers, 2 workers, BSP): R=1 {t['r1']:.2f} s, R=2 {t['r2']:.2f} s, "
              f"x {t['r2_over_r1']:.2f}")
        print(f"    target: R=2 costs at most 1.5x R=1 (pushes in flight at 10k keys: "
              f"{r['push'][10_000]['r2_over_r1_pipelined']:.2f}; training: {t['r2_over_r1']:.2f})")
        x = r["rereplication"]
        rate = f"{x['keys_per_s'] / 1e6:.2f} M keys/s" if x["keys_per_s"] else "n/a"
        print(f"    re-replication during training ({x['status']}): {x['snapshots']} snapshots, {x['keys']} keys, "
              f"{x['bytes'] / 1e6:.1f} MB in {x['seconds']:.3f} s = {rate}; rows applied {x['rows_applied']} "
              f"of {x['rows_planned']}, lost {x['lost_updates']}")
    out = ROOT / "results" / "bench_ps"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"time": time.time(), "argv": sys.argv[1:], **results}, indent=1,
                                               default=str))


if __name__ == "__main__":
    main()
