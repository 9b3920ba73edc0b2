"""Speed of the local trainer against peers on the same data, in the same run.

    .venv/bin/python experiments/bench_local.py                 # 1M rows, as in the issue
    .venv/bin/python experiments/bench_local.py --rows 200000   # quicker look

Synthetic CTR rows (39 nonzeros per row, 2^22 distinct keys, labels from a hidden LR),
one epoch each, on one core: pslab's local LR and FM (k=8), scikit-learn's
SGDClassifier, and Vowpal Wabbit (one pass, logistic loss) when the `bench` extra is
installed. Prints examples/s, test AUC and the ratios to VW (and to SGDClassifier).
Timings are medians over --repeats passes; data generation and file writing are not timed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.linear_model import SGDClassifier  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pslab.data import Deduper, Rows  # noqa: E402
from pslab.data.rows import as_csr  # noqa: E402
from pslab.data.synthetic import make_block  # noqa: E402
from pslab.metrics import predict  # noqa: E402
from pslab.models import FM, LR  # noqa: E402
from pslab.optim import AdaGrad  # noqa: E402
from pslab.store import DenseTable, apply_gradient  # noqa: E402

BITS = 22


def make_data(rows: int, test_rows: int, block: int = 8192):
    args = dict(rows=block, nnz=39, n_keys=1 << BITS, alpha=1.0, seed=1)
    nb, nt = -(-rows // block), -(-test_rows // block)
    train = Rows.concat([make_block(b, **args) for b in range(nb)]).fold(BITS)
    test = Rows.concat([make_block(nb + b, **args) for b in range(nt)]).fold(BITS)
    return train.slice(0, rows), test.slice(0, test_rows)


def train_pslab(model, train: Rows, batch: int, lr: float):
    table = DenseTable(1 << BITS, model, AdaGrad(lr=lr))  # setup, not timed (VW's table is not either)
    dedupe = Deduper(BITS)
    t = time.perf_counter()
    for a in range(0, len(train), batch):
        b = dedupe(train.slice(a, min(len(train), a + batch)))
        _, grad = model.loss_grad(b, table.gather(b.uniq))
        apply_gradient(table, b.uniq, grad / len(b))
    return time.perf_counter() - t, table


def bench_pslab(name, model, train, test, batch, lr, repeats):
    times, table = [], None
    for _ in range(repeats):
        dt, table = train_pslab(model, train, batch, lr)
        times.append(dt)
    p = predict(model, test, table.gather, BITS)
    return name, len(train) / float(np.median(times)), roc_auc_score(test.y, p)


def bench_sklearn(train, test, repeats):
    X, Xt = as_csr(train, 1 << BITS), as_csr(test, 1 << BITS)
    times = []
    for _ in range(repeats):
        clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, alpha=1e-6, random_state=0)
        t = time.perf_counter()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter=1 is the point: one pass
            clf.fit(X, train.y)
        times.append(time.perf_counter() - t)
    return "sklearn SGDClassifier", len(train) / float(np.median(times)), roc_auc_score(test.y, clf.decision_function(Xt))


def write_vw(rows: Rows, path: str) -> None:
    with open(path, "w") as f:
        for i in range(len(rows)):
            ks = rows.keys[rows.indptr[i]:rows.indptr[i + 1]]
            f.write(("1" if rows.y[i] > 0 else "-1") + " |f " + " ".join(map(str, ks.tolist())) + "\n")


def bench_vw(train, test, repeats):
    try:
        import vowpalwabbit
    except ImportError:
        return None
    d = tempfile.mkdtemp(prefix="pslab-vw-")
    tr, te, model, preds = (os.path.join(d, n) for n in ("train.vw", "test.vw", "model.vw", "preds.txt"))
    write_vw(train, tr)
    write_vw(test, te)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        # Feature names are numbers: VW hashes them into 2^b like everyone else here.
        ws = vowpalwabbit.Workspace(f"-d {tr} --loss_function logistic -b {BITS} -f {model} --quiet --noconstant")
        ws.finish()
        times.append(time.perf_counter() - t)
    ws = vowpalwabbit.Workspace(f"-d {te} -t -i {model} -p {preds} --link logistic --quiet")
    ws.finish()
    p = np.loadtxt(preds)
    return "Vowpal Wabbit (1 pass)", len(train) / float(np.median(times)), roc_auc_score(test.y, p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--test-rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    train, test = make_data(args.rows, args.test_rows)
    print(f"data: {len(train)} train / {len(test)} test rows, 39 nnz/row, 2^{BITS} keys; batch {args.batch}")
    bench_pslab("warm-up", LR(), train.slice(0, 20000), test.slice(0, 2000), args.batch, 0.05, 1)
    results = [bench_pslab("pslab local LR (AdaGrad)", LR(), train, test, args.batch, 0.05, args.repeats),
               bench_pslab("pslab local FM k=8 (AdaGrad)", FM(k=8), train, test, args.batch, 0.05, args.repeats),
               bench_sklearn(train, test, args.repeats)]
    vw = bench_vw(train, test, args.repeats)
    if vw is None:
        print("(Vowpal Wabbit not installed: pip install -e '.[bench]' to compare)")
    else:
        results.append(vw)
    base = vw or results[2]
    print(f"\n{'trainer':32s} {'examples/s':>12s} {'test AUC':>9s} {'x ' + base[0].split()[0]:>10s}")
    for name, eps, auc in results:
        print(f"{name:32s} {eps:12,.0f} {auc:9.4f} {eps / base[1]:10.2f}")
    lr, fm = results[0], results[1]
    print(f"\nLR vs {base[0]}: {lr[1] / base[1]:.2f}x examples/s (target >= 1.0), "
          f"AUC {lr[2]:.4f} vs {base[2]:.4f} (target: equal or better)")
    print(f"FM: {fm[1]:,.0f} examples/s (target >= 100,000)")


if __name__ == "__main__":
    main()
