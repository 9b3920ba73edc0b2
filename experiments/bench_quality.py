"""Model quality with defaults: pslab LR, FM and FTRL against Vowpal Wabbit and scikit-learn.

    .venv/bin/python experiments/bench_quality.py                      # the suite
    .venv/bin/python experiments/bench_quality.py --sets criteo,a9a    # part of it
    .venv/bin/python experiments/bench_quality.py --csv clicks.csv --label clicked --categorical site,ad,device
    .venv/bin/python experiments/bench_quality.py --libsvm train.svm --test test.svm
    .venv/bin/python experiments/bench_quality.py --data data=synthetic data.rows=50000   # any hydra overrides

For each data set: pslab (`python -m pslab.launch -n 1`, backend=local) with nothing set
but the data: LR (the default optimizer), FM and FTRL; Vowpal Wabbit one pass with its
defaults (logistic loss; its own constant feature instead of pslab's bias key; 2^18
hashed weights), from the `bench` extra, skipped with the reason when it cannot be
imported; scikit-learn's LogisticRegression with its defaults (C=1, lbfgs; max_iter
raised to 1000 so it converges). All read the same rows through pslab's readers, with
the same train/test split. Prints test AUC, log-loss and examples/s side by side and
writes results/benchmarks/quality.json and quality.md.

VW and scikit-learn see pslab's keys (hashed into 2^data.hash_bits where the data sets it).
examples/s: pslab's is its training compute (gradients and updates; the rows are parsed
before), VW's one pass over its text file (parsing included: that is how VW is used),
scikit-learn's rows / fit time (many passes). They measure different things; the AUC is
the comparison.

The suite: the shipped Criteo sample and a9a, and synthetic sets (pslab.data.synthetic,
seeded): 1% and 0.1% positives, 2^24 keys with a heavy power-law tail, a label drift
between train and test, and an RTB-like set (1% positives, 64-bit keys, heavy tail, the
test rows at a quarter of the base rate).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks"

SUITE = {
    "criteo": ["data=criteo_sample"],
    "a9a": ["data=a9a"],
    "synth-1pct": ["data=synthetic", "data.positive_rate=0.01"],
    "synth-0.1pct": ["data=synthetic", "data.positive_rate=0.001", "data.rows=200000"],
    "synth-heavy": ["data=synthetic", "data.n_keys=16777216", "data.alpha=0.8"],
    "synth-drift": ["data=synthetic", "data.drift_keys=0.2", "data.drift_bias=-1.0"],
    "synth-rtb": ["data=synthetic", "data.positive_rate=0.01", "data.drift_bias=-1.4", "data.n_keys=16777216",
                  "data.alpha=0.9", "data.hash_bits=null", "data.rows=60000"],
}
PSLAB_ARMS = {"pslab LR": [], "pslab FM": ["model=fm"], "pslab FTRL": ["optim=ftrl"]}


def load_rows(overrides: list[str]):
    """(train Rows, test Rows, cfg) through pslab's own config and readers: the rows,
    hashing (data.hash_bits) and split every pslab run of these overrides sees."""
    from pslab.config import load_config
    from pslab.data import Rows, load_dataset

    cfg = load_config(overrides)
    data = load_dataset(cfg.data)
    return Rows.concat([data.block(b) for b in range(data.n_blocks)]), data.test, cfg


def bias_keys(cfg) -> set[int]:
    """pslab's bias keys (VW adds a constant feature of its own), folded as the data is."""
    from pslab.data.ctr import BIAS_TOKEN
    from pslab.data.hashing import hash_str
    from pslab.data.libsvm import BIAS_KEY

    keys = {int(BIAS_KEY), hash_str(BIAS_TOKEN, int(cfg.data.get("hash_seed", 0) or 0))}
    bits = cfg.data.get("hash_bits")
    return keys if bits is None else {k & ((1 << int(bits)) - 1) for k in keys}


def run_pslab(overrides: list[str], run_dir: Path, deadline: int) -> dict:
    cmd = [sys.executable, "-m", "pslab.launch", "-n", "1", "--run-dir", str(run_dir), "--deadline", str(deadline),
           *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=deadline + 60)
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return {"error": f"no summary.json: {proc.stderr[-500:]}"}
    if s.get("status") != "succeeded":
        return {"error": f"{s.get('status')}: {s.get('reason')}"}
    rank = json.loads((run_dir / "ranks" / "rank-0.json").read_text())
    compute = rank.get("seconds", {}).get("compute") or s["train_s"]
    return {"auc": s["test_auc"], "logloss": s["test_logloss"], "examples_per_s": s["examples"] / compute,
            "steps": s["steps"]}


def write_vw(rows, path: str, drop: set[int]) -> None:
    with open(path, "w") as f:
        for i in range(len(rows)):
            a, b = rows.indptr[i], rows.indptr[i + 1]
            feats = [k if v == 1 else f"{k}:{v:g}"
                     for k, v in zip(rows.keys[a:b].tolist(), rows.vals[a:b].tolist()) if k not in drop]
            f.write(("1" if rows.y[i] > 0 else "-1") + " |f " + " ".join(map(str, feats)) + "\n")


def run_vw(train, test, drop: set[int], tmp: str) -> dict:
    import vowpalwabbit

    tr, te, model, preds = (os.path.join(tmp, n) for n in ("train.vw", "test.vw", "model.vw", "preds.txt"))
    write_vw(train, tr, drop)
    write_vw(test, te, drop)
    t = time.perf_counter()
    vowpalwabbit.Workspace(f"-d {tr} --loss_function logistic -f {model} --quiet").finish()
    dt = time.perf_counter() - t
    vowpalwabbit.Workspace(f"-d {te} -t -i {model} -p {preds} --link logistic --quiet").finish()
    return {**score(test.y, np.loadtxt(preds, ndmin=1)), "examples_per_s": len(train) / dt}


def run_sklearn(train, test) -> dict:
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    # Columns: the training keys (test keys never seen in training carry no weight).
    uniq, inv = np.unique(train.keys, return_inverse=True)
    X = sp.csr_matrix((train.vals, inv.reshape(-1), train.indptr), shape=(len(train), len(uniq)))
    pos = np.searchsorted(uniq, test.keys).clip(0, len(uniq) - 1)
    seen = uniq[pos] == test.keys
    Xt = sp.csr_matrix((np.where(seen, test.vals, 0), pos, test.indptr), shape=(len(test), len(uniq)))
    clf = LogisticRegression(max_iter=1000)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, train.y)
    dt = time.perf_counter() - t
    return {**score(test.y, clf.predict_proba(Xt)[:, 1]), "examples_per_s": len(train) / dt}


def score(y, p) -> dict:
    from pslab.metrics import scores

    s = scores(np.asarray(y), np.asarray(p))
    return {"auc": s["auc"], "logloss": s["logloss"]}


def bench_set(name: str, overrides: list[str], work: Path, deadline: int, vw_ok: str | None) -> dict:
    res = {"name": name, "overrides": overrides}
    train, test, cfg = load_rows(overrides)
    res.update(train_rows=len(train), test_rows=len(test), train_positives=float(train.y.mean()),
               test_positives=float(test.y.mean()))
    print(f"\n== {name}: {len(train)} train / {len(test)} test rows, positives {train.y.mean():.2%} / "
          f"{test.y.mean():.2%}  ({' '.join(overrides)})", flush=True)
    arms = {}
    for arm, extra in PSLAB_ARMS.items():
        arms[arm] = run_pslab(overrides + extra, work / f"{name}-{arm.split()[-1].lower()}", deadline)
        show(arm, arms[arm])
    if vw_ok is None:
        with tempfile.TemporaryDirectory(prefix="pslab-vw-") as tmp:
            arms["VW one pass"] = run_vw(train, test, bias_keys(cfg), tmp)
    else:
        arms["VW one pass"] = {"skipped": vw_ok}
    show("VW one pass", arms["VW one pass"])
    arms["sklearn LogisticRegression"] = run_sklearn(train, test)
    show("sklearn LogisticRegression", arms["sklearn LogisticRegression"])
    res["arms"] = arms
    return res


def show(arm: str, r: dict) -> None:
    if "auc" in r:
        print(f"  {arm:28s} AUC {r['auc']:.4f}  log-loss {r['logloss']:.4f}  {r['examples_per_s']:12,.0f} examples/s",
              flush=True)
    else:
        print(f"  {arm:28s} {r.get('skipped') or r.get('error')}", flush=True)


def table(results: list[dict]) -> str:
    arms = list(PSLAB_ARMS) + ["VW one pass", "sklearn LogisticRegression"]
    head = "| data | " + " | ".join(arms) + " |\n|---|" + "---|" * len(arms) + "\n"
    lines = []
    for r in results:
        cells = []
        for a in arms:
            x = r["arms"].get(a, {})
            cells.append(f"{x['auc']:.4f} / {x['logloss']:.4f} / {x['examples_per_s']:,.0f}" if "auc" in x
                         else "skipped" if "skipped" in x else "error")
        lines.append(f"| {r['name']} ({r['train_rows']} rows, {r['train_positives']:.2%} pos.) | "
                     + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def checks(results: list[dict]) -> list[str]:
    """The issue's bars: LR >= VW - 0.005, FM >= LR - 0.005, FTRL >= LR - 0.01."""
    out = []
    for r in results:
        a = {k: v.get("auc") for k, v in r["arms"].items()}
        lr = a.get("pslab LR")
        for name, ref, margin in (("LR", a.get("VW one pass"), 0.005), ("FM", lr, 0.005), ("FTRL", lr, 0.01)):
            got = a.get(f"pslab {name}")
            if got is None or ref is None:
                continue
            ok = got >= ref - margin
            out.append(f"{r['name']}: pslab {name} {got:.4f} {'>=' if ok else '<'} "
                       f"{'VW' if name == 'LR' else 'LR'} {ref:.4f} - {margin}: {'ok' if ok else 'FAIL'}")
    return out


def vw_available() -> str | None:
    """None if vowpalwabbit imports, else why not."""
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError as e:
        return f"skipped: vowpalwabbit not importable ({e}); pip install -e '.[bench]'"
    return None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help=f"comma-separated suite sets (default: all of {', '.join(SUITE)})")
    ap.add_argument("--csv", help="a click log with a header line (data=csv)")
    ap.add_argument("--label", help="--csv: the label column")
    ap.add_argument("--categorical", default="", help="--csv: comma-separated categorical columns")
    ap.add_argument("--numeric", default="", help="--csv: comma-separated numeric columns")
    ap.add_argument("--libsvm", help="a LIBSVM/SVMlight file (data=libsvm)")
    ap.add_argument("--test", help="--csv/--libsvm: a test file (else the last 20%% of the rows)")
    ap.add_argument("--data", nargs="+", help="hydra overrides naming any data set, e.g. data=synthetic data.rows=5e4")
    ap.add_argument("--name", help="the name of a user data set in the results")
    ap.add_argument("--deadline", type=int, default=600, help="seconds per pslab run")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of quality.json and quality.md")
    return ap.parse_args(argv)


def user_sets(args) -> dict[str, list[str]]:
    sets = {}
    if args.csv:
        if not args.label:
            raise SystemExit("--csv needs --label COLUMN")
        if not (args.categorical or args.numeric):
            raise SystemExit("--csv needs --categorical and/or --numeric columns")
        ov = ["data=csv", f"data.path={Path(args.csv).resolve()}", f"data.label={args.label}",
              f"data.categorical=[{args.categorical}]", f"data.numeric=[{args.numeric}]"]
        sets[args.name or Path(args.csv).name] = ov + test_overrides(args)
    if args.libsvm:
        sets[args.name or Path(args.libsvm).name] = ["data=libsvm", f"data.path={Path(args.libsvm).resolve()}",
                                                     *test_overrides(args)]
    if args.data:
        sets[args.name or "user"] = [x for o in args.data for x in shlex.split(o)]
    return sets


def test_overrides(args) -> list[str]:
    return [f"data.test_path={Path(args.test).resolve()}"] if args.test else []


def main(argv=None) -> int:
    args = parse_args(argv)
    sets = user_sets(args)
    if args.sets or not sets:
        names = args.sets.split(",") if args.sets else list(SUITE)
        unknown = [n for n in names if n not in SUITE]
        if unknown:
            raise SystemExit(f"--sets: unknown {', '.join(unknown)} (choose from {', '.join(SUITE)})")
        sets = {**{n: SUITE[n] for n in names}, **sets}
    vw = vw_available()
    if vw:
        print(f"Vowpal Wabbit {vw}")
    load0 = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="pslab-quality-") as work:
        for name, ov in sets.items():
            results.append(bench_set(name, ov, Path(work), args.deadline, vw))
    md = ("AUC / log-loss / examples/s (pslab: training compute; VW: one pass incl. parsing; "
          "sklearn: rows / fit time)\n\n" + table(results) + "\n" + "\n".join(checks(results)) + "\n")
    print("\n" + md)
    print("load average (1, 5, 15 min) before / after: " + " / ".join(
        " ".join(f"{x:.2f}" for x in la) for la in (load0, os.getloadavg())))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=1))
    (args.out / "quality.md").write_text(md)
    print(f"-> {args.out / 'quality.json'}, {args.out / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
