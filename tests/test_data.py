"""Readers, splits, bad input, the synthetic generator and the batch de-duplication."""
import bz2
import gzip
import lzma

import numpy as np
import pytest
from omegaconf import OmegaConf

from pslab.data import DataError, Deduper, Rows, load_dataset, shipped
from pslab.data.ctr import read_criteo
from pslab.data.libsvm import BIAS_KEY, read_libsvm
from pslab.data.synthetic import make_block
from pslab.schedule import Stream, block_order, deal

CRITEO_LINE = "0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t7b4723c4\t25c83c98\t7e0ccccf\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7\te5ba7672\tf54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t9727dd16\n"


def cfg(**kw):
    return OmegaConf.create(kw)


def test_criteo_sample_standard_split():
    ds = load_dataset(cfg(format="criteo", path="shipped:criteo_sample/criteo_train_head10k.tsv.xz",
                          test_fraction=0.2, hash_bits=None, block_rows=500))
    assert ds.n_train == 8000 and len(ds.test) == 2000
    assert ds.n_blocks == 16
    b0 = ds.block(0)
    assert len(b0) == 500 and b0.keys.dtype == np.uint64
    assert (np.diff(b0.indptr) == 40).all()  # 39 fields + bias
    assert abs(float(ds.test.y.mean()) - 0.227) < 0.005  # rows 8001-10000 are 22.7% positive
    assert ds.n_features is None and int(b0.keys.max()) > 2**40  # 64-bit keys kept


def test_criteo_missing_values_and_first_row(tmp_path):
    p = tmp_path / "one.tsv"
    p.write_text(CRITEO_LINE)
    rows = read_criteo(p)
    assert len(rows) == 1 and rows.y[0] == 0 and rows.nnz == 40
    # I12 missing and C22 missing still produce (per-field) keys; same token, different field -> different key
    assert len(np.unique(rows.keys)) == 40


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz"), (open, "")])
def test_compressed_inputs(tmp_path, opener, suffix):
    p = tmp_path / f"d.tsv{suffix}"
    with opener(p, "wt") as f:
        f.write(CRITEO_LINE * 3)
    assert len(read_criteo(p)) == 3


def test_malformed_tsv_names_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text(CRITEO_LINE + "1\t2\t3\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 40 fields"):
        read_criteo(p)
    p.write_text(CRITEO_LINE.replace("\t1382\t", "\tabc\t"))
    with pytest.raises(DataError, match=r"bad.tsv:1: column 'I5' value 'abc' is not a number"):
        read_criteo(p)


def test_malformed_libsvm_names_file_and_line(tmp_path):
    p = tmp_path / "bad.svm"
    p.write_text("+1 1:1 3:1\n-1 2:1 x:1\n")
    with pytest.raises(DataError, match=r"bad.svm:2: malformed feature 'x:1'"):
        read_libsvm(p)
    p.write_text("+1 0:1 3:1\n")
    with pytest.raises(DataError, match=r"bad.svm:1: feature index 0 is invalid with zero_based=False"):
        read_libsvm(p)
    assert len(read_libsvm(p, zero_based=True)) == 1


def test_missing_file_is_named():
    with pytest.raises(DataError, match=r"data.path: no such file: /nonexistent/x.tsv"):
        load_dataset(cfg(format="criteo", path="/nonexistent/x.tsv", test_fraction=0.2, hash_bits=None))


def test_a9a_shipped():
    rows = read_libsvm(shipped("a9a/a9a.xz"))
    assert len(rows) == 32561 and abs(float(rows.y.mean()) - 0.2408) < 1e-3
    assert rows.keys[np.diff(rows.indptr).cumsum() - 1].tolist().count(0xFFFFFFFFFFFFFFFE) == len(rows)


def test_csv_reader_with_header(tmp_path):
    p = tmp_path / "clicks.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("clicked,site,ad,hour\n")
        for i in range(50):
            f.write(f"{i % 2},s{i % 3},a{i % 5},{i}\n")
    ds = load_dataset(cfg(format="csv", path=str(p), label="clicked", categorical=["site", "ad"], numeric=["hour"],
                          sep=",", test_fraction=0.2, hash_bits=10, block_rows=16))
    assert ds.n_train == 40 and len(ds.test) == 10 and ds.n_blocks == 3
    assert int(ds.block(0).keys.max()) < 1024
    with pytest.raises(DataError, match=r"no column 'dwell'"):
        load_dataset(cfg(format="csv", path=str(p), label="clicked", categorical=["dwell"], numeric=[],
                         sep=",", test_fraction=0.2, hash_bits=None))


def test_synthetic_blocks_are_reproducible_and_power_law():
    a = make_block(3, rows=2000, nnz=39, n_keys=1 << 22, alpha=1.0, seed=7)
    b = make_block(3, rows=2000, nnz=39, n_keys=1 << 22, alpha=1.0, seed=7)
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.y, b.y)
    feats = a.keys.reshape(2000, 40)[:, :39]  # every row ends with the bias key
    assert int(feats.max()) < 2**63 and (a.keys.reshape(2000, 40)[:, 39] == BIAS_KEY).all()
    _, counts = np.unique(feats, return_counts=True)
    assert counts.max() > 50 and (counts == 1).mean() > 0.5  # a hot head and a long tail
    assert 0.05 < a.y.mean() < 0.5


def test_dedupe_lookup_table_equals_np_unique():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 1 << 12, 3000).astype(np.uint64)
    rows = Rows(np.arange(301) * 10, keys, np.ones(3000), np.zeros(300))
    fast, ref = Deduper(12)(rows), Deduper(None)(rows)
    assert sorted(fast.uniq.tolist()) == ref.uniq.tolist()
    np.testing.assert_array_equal(fast.uniq[fast.cols], keys)
    np.testing.assert_array_equal(ref.uniq[ref.cols], keys)


def test_lanes_cover_every_row_once():
    ds = load_dataset(cfg(format="criteo", path="shipped:criteo_sample/criteo_train_head10k.tsv.xz",
                          test_fraction=0.2, hash_bits=18, block_rows=700))
    order = block_order(ds.n_blocks, 0, seed=1)
    assert sorted(order) == list(range(ds.n_blocks))
    lanes = [Stream(ds, blocks) for blocks in deal(order, 3)]
    seen = 0
    while True:
        parts = [lane.next(64) for lane in lanes]
        if not sum(len(p) for p in parts):
            break
        seen += sum(len(p) for p in parts)
    assert seen == ds.n_train
    assert sorted(b for lane in lanes for b, _, _ in lane.segs) == list(range(ds.n_blocks))


def test_a_stream_hands_back_its_unfinished_rows():
    ds = load_dataset(cfg(format="criteo", path="shipped:criteo_sample/criteo_train_head10k.tsv.xz",
                          test_fraction=0.2, hash_bits=18, block_rows=700))
    lane = Stream(ds, [3, 5, 7])
    assert lane.unfinished() == [(3, 0, 700), (5, 0, 700), (7, 0, 700)] and lane.left == 3 * 700
    lane.next(700 + 10)  # block 3 done, block 5 begun
    assert lane.unfinished() == [(5, 10, 700), (7, 0, 700)]
    taken = Stream(ds)  # another rank takes them over, block 5 from its first unread row
    taken.add(lane.unfinished())
    assert taken.left == 2 * 700 - 10
    assert (taken.next(5).keys == ds.block(5).slice(10, 15).keys).all()
