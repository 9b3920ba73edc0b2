"""Defaults that learn on data pslab has never seen: the base-rate start, the optimizers'
per-example units and published settings, the synthetic quality sets, and pslab LR
against Vowpal Wabbit one pass on a small set (experiments/bench_quality.py)."""
import importlib.util
import sys

import numpy as np
import pytest

from conftest import ROOT
from pslab.backends.common import Setup, base_rate
from pslab.config import load_config
from pslab.data import DataError, load_dataset
from pslab.metrics import predict
from pslab.optim import FTRL, AdaGrad, make_optimizer
from pslab.store import make_table

SMALL_SYNTH = ["data=synthetic", "data.rows=8192", "data.test_rows=4096", "data.block_rows=1024"]


def fresh_predictions(overrides):
    s = Setup.build(load_config(overrides))
    table = make_table(s.data.n_features, s.model, s.opt)
    return s, predict(s.model, s.data.test, table.gather, s.data.hash_bits)


@pytest.mark.parametrize("data", [["data=criteo_sample"], SMALL_SYNTH + ["data.positive_rate=0.02"]],
                         ids=["criteo", "synthetic-2pct"])
@pytest.mark.parametrize("model", ["lr", "fm"])
def test_an_untrained_model_predicts_the_training_base_rate(data, model):
    s, p = fresh_predictions(data + [f"model={model}"])
    y = np.concatenate([s.data.block(b).y for b in range(s.data.n_blocks)])
    rate = (y.sum() + 0.5) / (len(y) + 1)
    # FM's random factors (std init_std) add a small pairwise term
    np.testing.assert_allclose(p, rate, rtol=5e-3 if model == "fm" else 1e-6)
    assert s.model.offset == pytest.approx(np.log(rate / (1 - rate)))


def test_offset_zero_starts_at_one_half_and_a_bad_setting_is_named():
    _, p = fresh_predictions(["data=criteo_sample", "model.offset=0"])
    np.testing.assert_allclose(p, 0.5)
    with pytest.raises(ValueError, match=r"model.offset='median'"):
        Setup.build(load_config(["data=criteo_sample", "model.offset=median"]))


def test_base_rate_of_generated_data_samples_blocks_spread_over_the_set():
    data = load_dataset(load_config(SMALL_SYNTH + ["data.rows=40960"]).data)
    y = np.concatenate([data.train_labels(b) for b in range(data.n_blocks)])
    assert base_rate(data) == pytest.approx((y.sum() + 0.5) / (len(y) + 1))
    sampled = base_rate(data, max_rows=10 * 1024)  # 10 of 40 blocks
    assert sampled == pytest.approx(y.mean(), abs=0.02) and not data._cache  # no block kept


def test_ftrl_defaults_are_the_published_ones():
    cfg = load_config(["optim=ftrl"])
    opt = make_optimizer(cfg.optim)
    assert isinstance(opt, FTRL) and opt.batch == cfg.train.batch_size
    # McMahan et al. 2013: beta = 1; alpha 0.1 as in the usual implementations of Algorithm 1
    assert (opt.alpha, opt.beta) == (0.1, 1.0)
    assert opt.l1 > 0 and opt.l2 >= 0  # L1: exact zeros (the KKT filter relies on it)


@pytest.mark.parametrize("batch", [1, 64, 4096])
def test_ftrl_step_is_the_papers_per_example_step_whatever_the_batch(batch):
    """A key seen in one row of a batch: the paper's closed form with that row's gradient
    (p - y), not a gradient divided by the batch size."""
    opt = FTRL(alpha=0.1, beta=1.0, l1=0.5, l2=1.0, batch=batch)
    w = np.zeros((3, 1), np.float32)
    state = opt.init_state(w)
    g_row = np.array([[0.9], [-0.3], [0.8]])  # one occurrence each
    opt.update(w, state, (g_row / batch).astype(np.float32))
    z, n = g_row, g_row ** 2
    want = np.where(np.abs(z) <= 0.5, 0.0, -(z - np.sign(z) * 0.5) / ((1.0 + np.sqrt(n)) / 0.1 + 1.0))
    np.testing.assert_allclose(w, want, rtol=1e-5)
    assert w[1, 0] == 0 and w[0, 0] < 0  # inside the L1 ball: exactly zero


@pytest.mark.parametrize("batch", [1, 256])
def test_adagrad_does_not_jolt_a_one_off_key(batch):
    """Without a prior accumulator the first step is lr * sign(g) for any g; with the
    default prior of one squared unit gradient it is lr * g / sqrt(1 + g^2)."""
    cfg = load_config([f"train.batch_size={batch}"]).optim
    opt = make_optimizer(cfg)
    assert isinstance(opt, AdaGrad) and opt.batch == batch
    g = np.array([[0.02], [0.5], [-1.0]])
    w = np.zeros((3, 1), np.float32)
    opt.update(w, opt.init_state(w), (g / batch).astype(np.float32))
    np.testing.assert_allclose(w, -cfg.lr * g / np.sqrt(1 + g ** 2), rtol=1e-4)
    jolt = AdaGrad(lr=cfg.lr, batch=batch)
    w0 = np.zeros((3, 1), np.float32)
    jolt.update(w0, jolt.init_state(w0), (g / batch).astype(np.float32))
    np.testing.assert_allclose(np.abs(w0), cfg.lr, rtol=1e-3)  # what the prior avoids


def test_optimizer_batch_must_be_positive():
    with pytest.raises(ValueError, match=r"optim.batch=0"):
        AdaGrad(batch=0)


def test_synthetic_positive_rate_drift_and_bad_values():
    y = lambda d: np.concatenate([d.train_labels(b) for b in range(d.n_blocks)])  # noqa: E731
    rare = load_dataset(load_config(SMALL_SYNTH + ["data.rows=32768", "data.positive_rate=0.01"]).data)
    assert 0.006 < y(rare).mean() < 0.014
    drift = load_dataset(load_config(SMALL_SYNTH + ["data.drift_bias=-1.5", "data.drift_keys=0.3"]).data)
    same = load_dataset(load_config(SMALL_SYNTH).data)
    np.testing.assert_array_equal(y(drift), y(same))  # the train rows do not move
    assert drift.test.y.mean() < 0.7 * same.test.y.mean()
    np.testing.assert_array_equal(drift.test.keys, same.test.keys)
    for bad, key in (("data.positive_rate=1.5", "data.positive_rate"), ("data.drift_keys=2", "data.drift_keys"),
                     ("data.truth=svm", "data.truth"), ("data.alpha=abc", "data.alpha")):
        with pytest.raises(DataError, match=key):
            load_dataset(load_config(SMALL_SYNTH + [bad]).data)


def bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "experiments" / "bench_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.mpi
def test_pslab_lr_defaults_reach_vw_one_pass_on_a_small_set(tmp_path):
    pytest.importorskip("vowpalwabbit", reason="vowpalwabbit (the bench extra) is not installed")
    bq = bench_quality()
    data = ["data=synthetic", "data.rows=16384", "data.test_rows=8192", "data.positive_rate=0.05"]
    train, test, cfg = bq.load_rows(data)
    vw = bq.run_vw(train, test, bq.bias_keys(cfg), str(tmp_path))
    lr = bq.run_pslab(data, tmp_path / "lr", deadline=120)
    assert "error" not in lr, lr
    assert lr["auc"] >= vw["auc"] - 0.005, (lr, vw)
    assert lr["examples_per_s"] > 0 and vw["examples_per_s"] > 0


def test_bench_quality_names_what_a_user_set_lacks():
    bq = bench_quality()
    with pytest.raises(SystemExit, match="--label"):
        bq.user_sets(bq.parse_args(["--csv", "x.csv", "--categorical", "a"]))
    with pytest.raises(SystemExit, match="unknown nope"):
        bq.main(["--sets", "nope"])
