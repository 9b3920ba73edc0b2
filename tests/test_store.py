import numpy as np
import pytest

from pslab.store import DenseTable, KeyIndex
from pslab.models import LR
from pslab.optim import SGD


def test_key_index_matches_a_dict():
    rng = np.random.default_rng(0)
    ki, ref = KeyIndex(capacity=16), {}
    for _ in range(20):
        keys = np.unique(rng.integers(0, 2**64 - 2, 500, dtype=np.uint64, endpoint=False) % np.uint64(5000))
        slots, new = ki.insert(keys)
        for k, s, n in zip(keys.tolist(), slots.tolist(), new.tolist()):
            assert n == (k not in ref)
            ref.setdefault(k, s)
            assert ref[k] == s
    assert len(ki) == len(ref)
    probe = np.array(list(ref) + [10**12], np.uint64)
    assert ki.lookup(probe).tolist() == [ref[k] for k in ref] + [-1]
    assert sorted(ki.keys_by_slot().tolist()) == sorted(ref)


def test_key_index_full_64_bit_keys():
    keys = np.array([0, 1, 2**63, 2**64 - 2], np.uint64)
    ki = KeyIndex()
    slots, _ = ki.insert(keys)
    assert ki.lookup(keys[::-1]).tolist() == slots[::-1].tolist()
    with pytest.raises(ValueError, match="reserved"):
        ki.insert(np.array([2**64 - 1], np.uint64))


def test_dense_table_refuses_unfolded_keys():
    t = DenseTable(16, LR(), SGD())
    with pytest.raises(ValueError, match="data.hash_bits"):
        t.slots(np.array([2**40], np.uint64))


@pytest.mark.parametrize("kind", ["random", "sequential", "high_bits"])
def test_key_index_large_batches_and_growth(kind):
    """Batches big enough for the vectorized probe rounds, keys that share their low bits,
    growth in the middle of an insert, and misses mixed with hits."""
    rng = np.random.default_rng(1)
    n = 60_000
    base = {"random": rng.integers(0, 2**64 - 2, n, dtype=np.uint64),
            "sequential": np.arange(n, dtype=np.uint64),
            "high_bits": np.arange(n, dtype=np.uint64) << np.uint64(44)}[kind]
    keys = np.unique(base)
    rng.shuffle(keys)
    ki = KeyIndex(capacity=16)
    first, new = ki.insert(keys[: n // 3])
    assert new.all() and (first == np.arange(n // 3)).all()  # slots in insertion order
    slots, new = ki.insert(keys)  # a third known, the rest new: grows while inserting
    assert (slots[: n // 3] == first).all() and not new[: n // 3].any() and new[n // 3:].all()
    assert (slots[n // 3:] == np.arange(n // 3, len(keys))).all()
    assert len(ki) == len(keys) and len(np.unique(slots)) == len(keys)
    assert (ki.lookup(keys) == slots).all()
    absent = np.setdiff1d(rng.integers(0, 2**64 - 2, 5000, dtype=np.uint64), keys)
    mixed = np.concatenate([absent, keys[::7]])
    assert (ki.lookup(mixed) == np.concatenate([np.full(len(absent), -1), slots[::7]])).all()
    assert (ki.keys_by_slot() == keys).all()
