"""The parameter server under MPI: every run goes through `python -m pslab.launch` in a
subprocess, and the tests assert on the records it leaves (summary.json, model.npz, the
servers' per-pull records under ps/), never on stdout.

The reference models come from backend=local run in this process (it needs no MPI), with
the same data, block order and optimizer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, Run
from pslab.backends import local
from pslab.config import load_config
from pslab.models import make_model
from pslab.observe import Recorder

pytestmark = pytest.mark.mpi

DEADLINE = 90


def launch_into(run_dir: Path, n: int, *overrides: str) -> Run:
    cmd = [sys.executable, "-m", "pslab.launch", "-n", str(n), "--run-dir", str(run_dir),
           "--deadline", str(DEADLINE), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE + 60, cwd=ROOT)
    assert (run_dir / "summary.json").exists(), f"no summary.json:\n{proc.stdout}\n{proc.stderr}"
    run = Run(run_dir, proc)
    assert run["status"] == "succeeded", f"{run.summary.get('reason')}\n{run.summary.get('log_tail')}"
    return run


class _OneRank:
    size, rank = 1, 0


class _NoFaults:
    def on_step(self, step):
        pass

    def slow_down(self, s):
        pass


def local_model(tmp_path: Path, *overrides: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """backend=local in-process: (keys, W, result)."""
    cfg = load_config(["backend=local", "run.save_model=true", *overrides])
    d = tmp_path / ("local-" + "-".join(o.replace("/", "_") for o in overrides))
    rec = Recorder(d, 0, "worker", 0)
    try:
        res = local.run(cfg, _OneRank(), rec, lambda roles, steps: _NoFaults())
    finally:
        rec.close()
    z = np.load(d / "model.npz")
    return z["keys"], z["W"], res


def assert_same_model(ps: Run, ref_keys, ref_W, model_overrides, atol: float, rtol: float = 0.0):
    keys, W = ps.model()
    pos = np.searchsorted(ref_keys, keys)
    assert (pos < len(ref_keys)).all() and (ref_keys[pos] == keys).all(), "PS holds keys local never saw"
    np.testing.assert_allclose(W, ref_W[pos], atol=atol, rtol=rtol)
    # keys the PS never stored must still be at their initial rows in the local model
    rest = np.ones(len(ref_keys), bool)
    rest[pos] = False
    model = make_model(load_config(list(model_overrides)).model)
    np.testing.assert_array_equal(ref_W[rest], model.init_rows(ref_keys[rest]))


@pytest.fixture(scope="module")
def bsp_2x2(tmp_path_factory):
    """The shared BSP reference: 2 servers, 2 workers, LR, AdaGrad, criteo_sample."""
    return launch_into(tmp_path_factory.mktemp("ps") / "bsp", 5, "backend=ps", "backend.servers=2",
                       "run.save_model=true")


# ---------------------------------------------------------------- same models, same answer

SLOW = pytest.mark.slow


# Three combinations by default (each optimizer, each model); the rest with -m slow. The
# server's update code is checked for all six against the oracle in test_ps_unit.py.
@pytest.mark.parametrize("model,optim", [("lr", "sgd"), ("fm", "adagrad"), ("lr", "ftrl"),
                                         pytest.param("lr", "adagrad", marks=SLOW),
                                         pytest.param("fm", "sgd", marks=SLOW),
                                         pytest.param("fm", "ftrl", marks=SLOW)])
def test_bsp_1x1_equals_local(tmp_path, model, optim):
    over = (f"model={model}", f"optim={optim}")
    ps = launch_into(tmp_path / "ps", 3, "backend=ps", "run.save_model=true", *over)
    keys, W, res = local_model(tmp_path, *over)
    assert ps["steps"] == res["steps"] and ps["examples"] == res["examples"]
    assert_same_model(ps, keys, W, over, atol=0.0)  # one worker, one server: bit for bit
    assert ps["test_auc"] == pytest.approx(res["test_auc"], abs=1e-9)


def test_bsp_2x2_equals_local_two_lanes(tmp_path, bsp_2x2):
    keys, W, res = local_model(tmp_path, "backend.lanes=2")
    assert bsp_2x2["steps"] == res["steps"] and bsp_2x2["workers"] == 2 and bsp_2x2["servers"] == 2
    # two partial sums instead of one: float32 rounding, nothing more
    assert_same_model(bsp_2x2, keys, W, (), atol=2e-5, rtol=1e-3)
    assert bsp_2x2["test_auc"] == pytest.approx(res["test_auc"], abs=1e-4)
    assert bsp_2x2["staleness_max"] == 0
    k = bsp_2x2["keys_by_server"]
    assert abs(k["0"] - k["1"]) <= 0.1 * (k["0"] + k["1"]) / 2


def test_64bit_keys_fm_2x2_with_chunked_messages(tmp_path):
    over = ("model=fm", "data.hash_bits=null")
    ps = launch_into(tmp_path / "ps", 5, "backend=ps", "backend.servers=2", "run.save_model=true",
                     "backend.chunk_bytes=16384", *over)
    keys, W, res = local_model(tmp_path, "backend.lanes=2", *over)
    assert keys.max() > 2**40  # really 64-bit keys
    assert_same_model(ps, keys, W, over, atol=2e-5, rtol=1e-3)
    assert ps["test_auc"] == pytest.approx(res["test_auc"], abs=1e-4)


# ---------------------------------------------------------------- consistency

def pull_records(run: Run) -> dict:
    recs = [np.load(p) for p in sorted((run.dir / "ps").glob("pulls-server-*.npz"))]
    return {k: np.concatenate([r[k] for r in recs]) for k in recs[0].files}


@pytest.mark.parametrize("mode,s", [("ssp", 1), ("asp", 0)])
def test_ssp_asp_bound_auc_and_identical_replicas(tmp_path, bsp_2x2, mode, s):
    # R=2: each range's backup installs what its primary applied, in the primary's order
    run = launch_into(tmp_path / mode, 5, "backend=ps", "backend.servers=2", f"backend.consistency={mode}",
                      f"backend.staleness={s}", "backend.replication=2")
    assert run["replicas_identical"] is True
    assert run["rows_applied"] == run["rows_applied_max"] == run["rows_planned"] > 0
    rec = pull_records(run)
    assert len(rec["clock"]) == run["pulls"] > 0
    if mode == "ssp":
        assert rec["staleness"].max() <= s, "SSP served a pull staler than its bound"
        assert (rec["progress"] >= rec["clock"] - s).all()
    assert run["staleness_max"] == rec["staleness"].max()
    assert run["staleness_mean"] == pytest.approx(rec["staleness"].mean())
    assert abs(run["test_auc"] - bsp_2x2["test_auc"]) <= 0.01


# ---------------------------------------------------------------- compression

def test_compression_factors_and_auc(tmp_path):
    # L1 2 per example: at the default 0.25 the KKT filter finds next to nothing to drop here
    base = ("backend=ps", "backend.servers=2", "optim=ftrl", "optim.l1=2")
    off = launch_into(tmp_path / "off", 5, *base)
    on = launch_into(tmp_path / "on", 5, *base, "backend.compression.fp16=true",
                     "backend.compression.delta_keys=true", "backend.compression.key_cache=true",
                     "backend.compression.kkt_filter=true")
    c = on["compression"]
    # each factor is (bytes with the others on and this one off) / (bytes with all on):
    # key caching saves little once delta coding has shrunk the keys it would replace
    for switch in ("fp16", "delta_keys", "key_cache", "kkt_filter"):
        assert c[switch] > 1.02, (switch, c)
    assert c["all"] > 2.5
    assert c["data_bytes_uncompressed"] == off["compression"]["data_bytes"]  # same traffic, counted two ways
    assert sum(on["bytes_by_kind"][k] for k in ("pull", "push", "pull_reply")) == c["data_bytes"]
    assert abs(on["test_auc"] - off["test_auc"]) <= 0.005


# ---------------------------------------------------------------- checkpoints

def test_stop_and_resume_gives_the_same_model(tmp_path, bsp_2x2):
    common = ("backend=ps", "backend.servers=2", "run.save_model=true")
    first = launch_into(tmp_path / "first", 5, *common, "backend.stop_at_clock=11", "backend.checkpoint_every=4")
    assert first["checkpoints"] == [4, 8, 11] and first["steps"] == 11
    man = json.loads((tmp_path / "first" / "checkpoints" / "clock-00000011" / "manifest.json").read_text())
    assert man["clock"] == 11 and len(man["shards"]) == 2
    second = launch_into(tmp_path / "second", 5, *common, f"backend.resume_from={tmp_path / 'first'}")
    assert second["start_clock"] == 11 and second["steps"] == bsp_2x2["steps"]
    k1, W1 = second.model()
    k0, W0 = bsp_2x2.model()
    assert (k1 == k0).all()
    np.testing.assert_array_equal(W1, W0)
    assert second["test_auc"] == bsp_2x2["test_auc"]


# ---------------------------------------------------------------- evaluation schedule

def test_evaluation_due_on_the_last_clock_with_a_straggler(tmp_path):
    # 32 clocks, an evaluation every 16: the one due at clock 32 used to be left pending
    # and run after `stop`, so the coordinator waited on stopped servers and aborted.
    run = launch_into(tmp_path / "ev", 4, "backend=ps", "backend.servers=1", "faults=straggler",
                      "train.eval_every=16")
    assert run["status"] == "succeeded", run.summary.get("error")
    steps = [r["step"] for r in run.metrics() if r.get("kind") == "eval"]
    assert steps[-1] == run["steps"] == 32
    assert steps == sorted(set(steps)), f"an evaluation point was taken twice: {steps}"
