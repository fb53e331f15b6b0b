"""trustequiv.data.splits.hash_split: seeded, order- and size-independent splits."""

import logging
import random

import pytest

from trustequiv.data.splits import hash_split, hash_unit

FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def _membership(ids, out):
    return {ids[p]: split for split, pos in out.items() for p in pos}


def test_partition_and_sizes():
    ids = list(range(20_000))
    out = hash_split(ids, FRACTIONS, seed=3)
    assert list(out) == list(FRACTIONS)
    positions = sorted(p for pos in out.values() for p in pos)
    assert positions == list(range(len(ids)))
    for split, frac in FRACTIONS.items():
        assert abs(len(out[split]) / len(ids) - frac) < 0.015
        assert out[split] == sorted(out[split])


def test_stable_under_shuffle_and_subset():
    ids = [f"ex{i}" for i in range(3000)] + list(range(3000))
    full = _membership(ids, hash_split(ids, FRACTIONS, seed=7))
    rng = random.Random(0)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    assert _membership(shuffled, hash_split(shuffled, FRACTIONS, seed=7)) == full
    subset = rng.sample(ids, 500)
    sub = _membership(subset, hash_split(subset, FRACTIONS, seed=7))
    assert all(full[i] == s for i, s in sub.items())


def test_seed_changes_assignment_and_is_deterministic():
    ids = list(range(2000))
    a = hash_split(ids, FRACTIONS, seed=0)
    assert a == hash_split(ids, FRACTIONS, seed=0)
    assert a != hash_split(ids, FRACTIONS, seed=1)


def test_hash_unit_is_blake2b_of_seed_and_id():
    import hashlib

    digest = hashlib.blake2b(b"5:abc", digest_size=8).digest()
    assert hash_unit("abc", 5) == int.from_bytes(digest, "big") / 2**64
    assert hash_unit(3) == hash_unit("3")


@pytest.mark.parametrize("fractions", [{"train": 0.7, "test": 0.2}, {"a": 1.2, "b": -0.2}, {}])
def test_bad_fractions(fractions):
    with pytest.raises(ValueError):
        hash_split([1, 2, 3], fractions)


def test_single_split_and_zero_fraction():
    out = hash_split(list(range(100)), {"train": 1.0, "validation": 0.0})
    assert len(out["train"]) == 100 and out["validation"] == []


def test_logs_sizes(caplog):
    with caplog.at_level(logging.INFO, logger="trustequiv.data.splits"):
        out = hash_split(list(range(50)), {"train": 0.5, "test": 0.5})
    assert any(
        "derived" in r.getMessage() and str(len(out["train"])) in r.getMessage() for r in caplog.records
    )
