"""Speed of the local trainer against peers on the same data, in the same run.

    .venv/bin/python experiments/bench_local.py                 # 1M rows, as in the issue
    .venv/bin/python experiments/bench_local.py --rows 200000   # quicker look

Synthetic CTR rows (39 nonzeros per row, 2^22 distinct keys, labels from a hidden LR),
one epoch each, on one core: pslab's local LR and FM (k=8), scikit-learn's
SGDClassifier, and Vowpal Wabbit (one pass, logistic loss) when the `bench` extra is
installed. Prints examples/s, test AUC and the ratios to VW (and to SGDClassifier).
Timings are medians over --repeats passes, taken in turns round the trainers (the machine
may be shared); data generation and file writing are not timed. The load average is printed.

pslab runs with its defaults (conf/: the default optimizer, AdaGrad with its settings per
example, FM k=8, train.batch_size, the margin started at the training base rate's
log-odds), as a user gets them; --batch changes the batch only.

VW runs with its defaults (adaptive, normalized, invariant updates, learning rate 0.5).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.linear_model import SGDClassifier  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pslab.backends.common import start_offset  # noqa: E402
from pslab.config import load_config  # noqa: E402
from pslab.data import Dataset, Deduper, Rows  # noqa: E402
from pslab.data.rows import as_csr  # noqa: E402
from pslab.data.synthetic import make_block  # noqa: E402
from pslab.metrics import predict  # noqa: E402
from pslab.models import make_model  # noqa: E402
from pslab.optim import make_optimizer  # noqa: E402
from pslab.optim import divisor  # noqa: E402
from pslab.store import DenseTable, apply_gradient  # noqa: E402

BITS = 22


def make_data(rows: int, test_rows: int, block: int = 8192):
    args = dict(rows=block, nnz=39, n_keys=1 << BITS, alpha=1.0, seed=1)
    nb, nt = -(-rows // block), -(-test_rows // block)
    train = Rows.concat([make_block(b, **args) for b in range(nb)]).fold(BITS)
    test = Rows.concat([make_block(nb + b, **args) for b in range(nt)]).fold(BITS)
    return train.slice(0, rows), test.slice(0, test_rows)


def train_pslab(model, train: Rows, batch: int, opt):
    table = DenseTable(1 << BITS, model, opt)  # setup, not timed (VW's table is not either)
    dedupe = Deduper(BITS)
    t = time.perf_counter()
    for a in range(0, len(train), batch):
        b = dedupe(train.slice(a, min(len(train), a + batch)))
        _, grad = model.loss_grad(b, table.gather(b.uniq))
        apply_gradient(table, b.uniq, grad / divisor(table.opt, len(b)))
    return time.perf_counter() - t, table


class PslabTrainer:
    """pslab's model and optimizer as the config gives them (`overrides` on the defaults)."""

    def __init__(self, name, overrides, train, test, batch):
        cfg = load_config([*overrides, f"train.batch_size={batch}"])
        self.name, self.cfg, self.train, self.test, self.batch = name, cfg, train, test, batch
        self.model = make_model(cfg.model)
        self.model.offset = start_offset(cfg.model.offset, Dataset.from_rows(train, test, BITS, 8192))
        self.table = None

    def run(self) -> float:
        self.table = None  # free the last pass's table before building the next
        dt, self.table = train_pslab(self.model, self.train, self.batch, make_optimizer(self.cfg.optim))
        return dt

    def auc(self) -> float:
        return roc_auc_score(self.test.y, predict(self.model, self.test, self.table.gather, BITS))


class SklearnTrainer:
    name = "sklearn SGDClassifier"

    def __init__(self, train, test):
        self.X, self.Xt, self.y, self.yt = as_csr(train, 1 << BITS), as_csr(test, 1 << BITS), train.y, test.y
        self.clf = None

    def run(self) -> float:
        self.clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, alpha=1e-6, random_state=0)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter=1 is the point: one pass
            self.clf.fit(self.X, self.y)
        return time.perf_counter() - t

    def auc(self) -> float:
        return roc_auc_score(self.yt, self.clf.decision_function(self.Xt))


def write_vw(rows: Rows, path: str) -> None:
    with open(path, "w") as f:
        for i in range(len(rows)):
            ks = rows.keys[rows.indptr[i]:rows.indptr[i + 1]]
            f.write(("1" if rows.y[i] > 0 else "-1") + " |f " + " ".join(map(str, ks.tolist())) + "\n")


class VWTrainer:
    name = "Vowpal Wabbit (1 pass)"

    def __init__(self, train, test):
        import vowpalwabbit  # the optional bench extra: ImportError if missing
        self.vw = vowpalwabbit
        d = tempfile.mkdtemp(prefix="pslab-vw-")
        self.tr, self.te, self.model, self.preds = (os.path.join(d, n) for n in
                                                    ("train.vw", "test.vw", "model.vw", "preds.txt"))
        write_vw(train, self.tr)
        write_vw(test, self.te)
        self.yt = test.y

    def run(self) -> float:
        t = time.perf_counter()
        # Feature names are numbers: VW hashes them into 2^b like everyone else here.
        ws = self.vw.Workspace(f"-d {self.tr} --loss_function logistic -b {BITS} -f {self.model} --quiet --noconstant")
        ws.finish()
        return time.perf_counter() - t

    def auc(self) -> float:
        ws = self.vw.Workspace(f"-d {self.te} -t -i {self.model} -p {self.preds} --link logistic --quiet")
        ws.finish()
        return roc_auc_score(self.yt, np.loadtxt(self.preds))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--test-rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=int(load_config([]).train.batch_size))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load0 = os.getloadavg()
    train, test = make_data(args.rows, args.test_rows)
    print(f"data: {len(train)} train / {len(test)} test rows, 39 nnz/row, 2^{BITS} keys; batch {args.batch}")
    print("pslab: its defaults (conf/optim/adagrad.yaml, conf/model/*.yaml)")
    PslabTrainer("warm-up", [], train.slice(0, 20000), test, args.batch).run()
    trainers = [PslabTrainer("pslab local LR (defaults)", [], train, test, args.batch),
                PslabTrainer("pslab local FM k=8 (defaults)", ["model=fm"], train, test, args.batch),
                SklearnTrainer(train, test)]
    try:
        trainers.append(VWTrainer(train, test))
        vw = True
    except ImportError:
        print("(Vowpal Wabbit not installed: pip install -e '.[bench]' to compare)")
        vw = False
    # Repeats go round the trainers, so a change in the machine's load (it may be shared)
    # falls on all of them alike rather than on whichever ran at the time.
    times = {t.name: [] for t in trainers}
    for _ in range(args.repeats):
        for t in trainers:
            times[t.name].append(t.run())
    results = [(t.name, len(train) / float(np.median(times[t.name])), t.auc()) for t in trainers]
    print("load average (1, 5, 15 min) before / after: " + " / ".join(" ".join(f"{x:.2f}" for x in la)
                                                          for la in (load0, os.getloadavg())))
    base = results[3] if vw else results[2]
    print(f"\n{'trainer':32s} {'examples/s':>12s} {'test AUC':>9s} {'x ' + base[0].split()[0]:>10s}")
    for name, eps, auc in results:
        print(f"{name:32s} {eps:12,.0f} {auc:9.4f} {eps / base[1]:10.2f}")
    lr, fm = results[0], results[1]
    print(f"\nLR vs {base[0]}: {lr[1] / base[1]:.2f}x examples/s (target >= 1.0), "
          f"AUC {lr[2]:.4f} vs {base[2]:.4f} (target: equal or better)")
    print(f"FM: {fm[1]:,.0f} examples/s (target >= 100,000)")


if __name__ == "__main__":
    main()
