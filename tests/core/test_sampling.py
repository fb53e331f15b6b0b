"""The one seeded example sampler: the rows limit_examples always picked, nested samples, one-line errors."""

from __future__ import annotations

import random

import pytest

from trustequiv.data.sampling import sample_positions
from trustequiv.data.splits import hash_unit


def old_limit_positions(ids, n, seed=0):
    """What the pipeline's ``_limit`` chose before the sampler existed (its exact code)."""
    keep = sorted(range(len(ids)), key=lambda i: hash_unit(ids[i], seed))[:n]
    return sorted(keep)


def test_same_rows_as_limit_examples_before():
    rng = random.Random(0)
    ids = rng.sample(range(10**6), 500)
    for n in (1, 7, 100, 499):
        for seed in (0, 3):
            assert sample_positions(ids, n, seed=seed) == old_limit_positions(ids, n, seed)


def test_all_rows_nesting_and_file_order_independence():
    ids = [50, 10, 40, 30, 20]
    for n in (None, 5, 9):
        assert sample_positions(ids, n) == [0, 1, 2, 3, 4]
    big = list(range(200))
    assert set(sample_positions(big, 20)) <= set(sample_positions(big, 60))
    rev = big[::-1]
    assert {big[k] for k in sample_positions(big, 20)} == {rev[k] for k in sample_positions(rev, 20)}
    assert sample_positions(["3", "4"], 1) == sample_positions([3, 4], 1)  # "3" and 3 hash alike


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "ten"])
def test_bad_n_raises_one_line_naming_the_key(bad):
    with pytest.raises(ValueError) as err:
        sample_positions([1, 2, 3], bad, key="limit_examples")
    msg = str(err.value)
    assert msg.startswith("limit_examples must be a positive number of examples or null") and "\n" not in msg


def test_attribution_and_adversarial_draw_the_same_examples():
    from plugins.characteristics.adversarial import Adversarial
    from plugins.characteristics.attribution import LimeAttribution

    ids = random.Random(2).sample(range(10**5), 300)
    n = 25
    attacked = {ids[k] for k in Adversarial(n_examples=n).examples(ids)}
    explained = {ids[k] for k in LimeAttribution(n_examples=n).examples(ids)}
    assert attacked == explained and len(attacked) == n
    assert Adversarial(n_examples=n, seed=7).examples(ids) == Adversarial(n_examples=n).examples(ids)
