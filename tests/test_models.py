"""LR and FM gradients against finite differences; optimizers' defining properties."""
import numpy as np
import pytest

from pslab.data import Deduper, Rows
from pslab.models import FM, LR, make_model
from pslab.optim import FTRL, SGD, AdaGrad
from pslab.store import DenseTable, SparseTable, apply_gradient


def random_batch(rng, n=12, nnz=5, n_keys=40):
    keys = rng.integers(0, n_keys, n * nnz).astype(np.uint64)
    rows = Rows(np.arange(n + 1) * nnz, keys, rng.normal(size=n * nnz), (rng.random(n) < 0.4))
    return Deduper(None)(rows)


@pytest.mark.parametrize("model", [LR(), FM(k=3, init_std=0.3)], ids=["lr", "fm"])
def test_gradient_matches_finite_differences(model):
    rng = np.random.default_rng(1)
    batch = random_batch(rng)
    params = model.init_rows(batch.uniq, np.float64) + rng.normal(scale=0.3, size=(len(batch.uniq), model.dim))
    loss, grad = model.loss_grad(batch, params)
    eps = 1e-6
    num = np.zeros_like(params)
    for i in range(params.shape[0]):
        for j in range(params.shape[1]):
            p, m = params.copy(), params.copy()
            p[i, j] += eps
            m[i, j] -= eps
            num[i, j] = (model.loss_grad(batch, p)[0] - model.loss_grad(batch, m)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)
    assert loss > 0


def test_logloss_stable_for_huge_margins():
    model = LR()
    batch = random_batch(np.random.default_rng(0))
    params = np.full((len(batch.uniq), 1), 1e4)
    loss, grad = model.loss_grad(batch, params)
    assert np.isfinite(loss) and np.isfinite(grad).all()


def test_fm_init_is_deterministic_per_key():
    fm = FM(k=4, seed=3)
    a = fm.init_rows(np.array([5, 7, 9], np.uint64))
    b = fm.init_rows(np.array([9, 5], np.uint64))
    np.testing.assert_array_equal(a[[2, 0]], b)
    assert (a[:, 0] == 0).all() and np.abs(a[:, 1:]).max() > 0


def test_fm_rejects_bad_k():
    with pytest.raises(ValueError, match="model.k"):
        FM(k=0)


def test_unknown_model_named():
    from omegaconf import OmegaConf
    with pytest.raises(ValueError, match="'svm'"):
        make_model(OmegaConf.create({"name": "svm"}))


def test_ftrl_strong_l1_gives_exact_zeros():
    rng = np.random.default_rng(0)
    opt = FTRL(alpha=0.1, beta=1.0, l1=3.0, l2=0.0)  # noise sums to ~0.7 over 50 steps
    w = np.zeros((100, 1))
    st = opt.init_state(w)
    for _ in range(50):
        g = rng.normal(scale=0.1, size=w.shape)
        g[:10] += 1.0  # a few coordinates with a real signal
        opt.update(w, st, g)
    assert (w[10:] == 0.0).all(), "weak coordinates must be exactly zero under strong L1"
    assert (w[:10] != 0).all() and (w[:10] < 0).all()


def test_ftrl_keeps_fm_init():
    fm, opt = FM(k=2, init_std=0.1), FTRL(alpha=0.1, l1=0.0)
    w0 = fm.init_rows(np.arange(6, dtype=np.uint64), np.float64)
    w, st = w0.copy(), opt.init_state(w0)
    opt.update(w, st, np.zeros_like(w))
    np.testing.assert_allclose(w, w0, atol=1e-12)


def test_adagrad_and_sgd_steps():
    w = np.ones((2, 1))
    SGD(lr=0.1, l2=0.5).update(w, np.zeros((2, 0)), np.array([[1.0], [0.0]]))
    np.testing.assert_allclose(w, [[1 - 0.1 * 1.5], [1 - 0.1 * 0.5]])
    w = np.zeros((1, 1))
    ada = AdaGrad(lr=0.5)
    st = ada.init_state(w)
    ada.update(w, st, np.array([[2.0]]))
    np.testing.assert_allclose(w, [[-0.5]], rtol=1e-6)
    np.testing.assert_allclose(st, [[4.0]])


@pytest.mark.parametrize("opt", [SGD(lr=0.1), AdaGrad(lr=0.1), FTRL(alpha=0.1, l1=0.01)], ids=lambda o: o.name)
def test_dense_and_sparse_tables_agree(opt):
    model = FM(k=2)
    rng = np.random.default_rng(0)
    dense, sparse = DenseTable(64, model, opt), SparseTable(model, opt)
    for _ in range(5):
        keys = np.unique(rng.integers(0, 64, 20)).astype(np.uint64)
        g = rng.normal(size=(len(keys), model.dim)).astype(np.float32)
        apply_gradient(dense, keys, g)
        apply_gradient(sparse, keys, g)
    ks = sparse.keys()
    np.testing.assert_allclose(sparse.gather(ks), dense.gather(ks), rtol=1e-6)
    np.testing.assert_array_equal(sparse.gather(np.array([63], np.uint64)), dense.gather(np.array([63], np.uint64)))
