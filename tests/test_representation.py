"""Mutual kNN overlap and linear CKA against direct implementations, known answers and their nulls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.characteristics.representation import RepresentationCharacteristic
from trustequiv.functional.representation import (
    knn_indices,
    linear_cka,
    linear_cka_null,
    mutual_knn,
    mutual_knn_from_indices,
    mutual_knn_null,
    neighbour_overlap,
    permute_neighbours,
)
from trustequiv.outputs import ModelOutputs


# ---------------------------------------------------------------- direct implementations
def huh_mutual_knn(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """platonic-rep metrics.py (Huh et al. 2024), dense: normalise, A A^T with the diagonal at -1e8, top-k,
    0/1 masks, mean of (mask_a * mask_b).sum(1) / k."""
    ta = torch.nn.functional.normalize(torch.as_tensor(a, dtype=torch.float64), dim=1)
    tb = torch.nn.functional.normalize(torch.as_tensor(b, dtype=torch.float64), dim=1)
    masks = []
    for t in (ta, tb):
        sim = t @ t.T
        sim.fill_diagonal_(-1e8)
        idx = sim.topk(k, dim=1).indices
        masks.append(torch.zeros_like(sim).scatter_(1, idx, 1.0))
    return float(((masks[0] * masks[1]).sum(1) / k).mean())


def kornblith_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """google-research/representation_similarity CKA.ipynb: gram_linear + center_gram + cka (N x N Grams)."""

    def center_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
        gram = gram.copy()
        if unbiased:
            n = gram.shape[0]
            np.fill_diagonal(gram, 0)
            means = np.sum(gram, 0) / (n - 2)
            means -= np.sum(means) / (2 * (n - 1))
            gram -= means[:, None]
            gram -= means[None, :]
            np.fill_diagonal(gram, 0)
        else:
            means = np.mean(gram, 0)
            means -= np.mean(means) / 2
            gram -= means[:, None]
            gram -= means[None, :]
        return gram

    gx, gy = center_gram(x @ x.T, debiased), center_gram(y @ y.T, debiased)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def song_unbiased_hsic(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. 2012, eq. (5): unbiased HSIC from Grams with zeroed diagonals."""
    n = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    one = np.ones(n)
    return float(
        (
            np.trace(k @ l_)
            + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l_ @ one)
        )
        / (n * (n - 3))
    )


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture
def emb():
    rng = np.random.default_rng(0)
    # clustered data: neighbourhoods carry structure
    centers = rng.standard_normal((8, 16)) * 3
    return centers[rng.integers(0, 8, 300)] + rng.standard_normal((300, 16))


# ---------------------------------------------------------------- kNN
def test_blocked_knn_matches_dense_search(emb):
    x = torch.as_tensor(emb, dtype=torch.float32)
    xn = torch.nn.functional.normalize(x, dim=1)
    sim = xn @ xn.T
    sim.fill_diagonal_(-torch.inf)
    dense = sim.topk(12, dim=1).indices
    blocked = knn_indices(x, 12, block_size=37)
    assert blocked.shape == (300, 12)
    assert torch.equal(blocked, dense)
    assert not (blocked == torch.arange(300)[:, None]).any()  # self excluded


def test_knn_keeps_self_when_asked(emb):
    idx = knn_indices(emb, 1, exclude_self=False, block_size=64)
    assert torch.equal(idx[:, 0], torch.arange(300))


@pytest.mark.parametrize("k", [1, 5, 20])
def test_mutual_knn_matches_platonic_rep(emb, k):
    rng = np.random.default_rng(1)
    other = emb @ rng.standard_normal((16, 24)) + 2.0 * rng.standard_normal((300, 24))
    assert mutual_knn(emb, other, [k], block_size=64)[k] == pytest.approx(
        huh_mutual_knn(emb, other, k), abs=1e-12
    )


def test_neighbour_overlap_matches_sets():
    rng = np.random.default_rng(2)
    a = torch.as_tensor(np.stack([rng.permutation(50)[:7] for _ in range(40)]))
    b = torch.as_tensor(np.stack([rng.permutation(50)[:7] for _ in range(40)]))
    expected = [len(set(r.tolist()) & set(s.tolist())) for r, s in zip(a, b, strict=True)]
    assert neighbour_overlap(a, b).tolist() == expected


def test_rotated_copy_gives_overlap_and_cka_one(emb):
    rng = np.random.default_rng(3)
    rotated = 2.5 * emb @ random_rotation(16, rng)  # cosine neighbours unchanged, CKA invariant
    scores = mutual_knn(emb, rotated, [1, 5, 10, 50])
    assert all(v == pytest.approx(1.0) for v in scores.values())
    assert linear_cka(emb, rotated) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(emb, rotated, debiased=True) == pytest.approx(1.0, abs=1e-10)


def test_permuted_neighbours_equal_a_new_search(emb):
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    idx = knn_indices(emb, 6)
    assert torch.equal(permute_neighbours(idx, perm), knn_indices(emb[perm.numpy()], 6))


def test_independent_noise_sits_at_the_null():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
    idx_a, idx_b = knn_indices(a, 20), knn_indices(b, 20)
    res = mutual_knn_null(idx_a, idx_b, [5, 20], n_permutations=50, seed=0)
    for k, s in res.items():
        chance = k / 399
        assert s.null_mean == pytest.approx(chance, rel=0.2)
        assert abs(s.observed - s.null_mean) < 5 * s.null_std + 1e-3
        assert s.p_value > 0.01
    cka = linear_cka_null(a, b, n_permutations=50, seed=0)
    assert abs(cka.observed - cka.null_mean) < 5 * cka.null_std
    deb = linear_cka_null(a, b, debiased=True, n_permutations=50, seed=0)
    assert abs(deb.observed) < 0.02 and abs(deb.null_mean) < 0.01  # unbiased: centred on 0
    assert cka.null_mean > 0.05  # the biased estimator is not (32 dims, 400 rows)


def test_shared_structure_beats_the_null(emb):
    rng = np.random.default_rng(5)
    noisy = emb + 0.5 * rng.standard_normal(emb.shape)
    res = mutual_knn_null(knn_indices(emb, 10), knn_indices(noisy, 10), [10], n_permutations=30, seed=1)
    assert res[10].observed > res[10].null_q95 and res[10].p_value == pytest.approx(1 / 31)


# ---------------------------------------------------------------- CKA
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_gram_implementation(debiased):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((60, 10))
    y = x @ rng.standard_normal((10, 7)) + rng.standard_normal((60, 7))
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(kornblith_cka(x, y, debiased), abs=1e-10)


def test_debiased_cka_is_ratio_of_song_unbiased_hsic():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 8))
    x, y = x - x.mean(0), y - y.mean(0)
    k, l_ = x @ x.T, y @ y.T
    expected = song_unbiased_hsic(k, l_) / np.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l_, l_))
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, abs=1e-10)


def test_cka_known_values():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / np.sqrt(2))  # one of two equal-variance axes
    assert np.isnan(linear_cka(x, np.ones((4, 3))))


def test_bad_inputs_raise(emb):
    with pytest.raises(ValueError, match="same rows"):
        mutual_knn(emb, emb[:-1])
    with pytest.raises(ValueError, match="N - 1"):
        mutual_knn(emb[:5], emb[:5], [5])
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, emb)
    with pytest.raises(ValueError, match="N >= 4"):
        linear_cka(emb[:3], emb[:3], debiased=True)
    with pytest.raises(ValueError, match="every k"):
        mutual_knn_from_indices(knn_indices(emb, 3), knn_indices(emb, 3), [4])


# ---------------------------------------------------------------- characteristic
def _outputs(name: str, emb: np.ndarray, ids=None) -> ModelOutputs:
    n = emb.shape[0]
    return ModelOutputs(
        name=name,
        example_ids=torch.arange(n) if ids is None else torch.as_tensor(ids),
        logits=torch.zeros(n, 2),
        labels=torch.zeros(n, dtype=torch.long),
        label_names=("a", "b"),
        embeddings=torch.as_tensor(emb, dtype=torch.float32),
    )


def test_characteristic_on_rotated_and_noise_candidates(emb):
    rng = np.random.default_rng(8)
    ref = _outputs("ref", emb)
    rot = _outputs("rot", emb @ random_rotation(16, rng))
    noise = _outputs("noise", rng.standard_normal((300, 16)))
    char = RepresentationCharacteristic(ks=[1, 10, 500], n_permutations=20)
    res = char.evaluate(ref, [rot, noise])
    m = res.metrics
    assert m["ref_vs_rot/knn_k10"] == pytest.approx(1.0)
    assert m["ref_vs_rot/cka_linear"] == pytest.approx(1.0, abs=1e-5)
    assert m["ref_vs_rot/cka_linear_debiased"] == pytest.approx(1.0, abs=1e-5)
    assert m["ref_vs_noise/knn_k10"] < m["ref_vs_noise/knn_k10_null_q95"] + 0.02
    assert m["ref_vs_noise/knn_k10_chance"] == pytest.approx(10 / 299)
    assert "ref_vs_rot/knn_k500" not in m and any("dropped" in n for n in res.notes)
    assert m["ref/embedding_dim"] == 16.0
    assert [r["k"] for r in res.tables["knn_curve_ref_vs_rot"]] == [1, 10]
    assert {"knn_curve", "knn_matrix", "cka_matrix"} <= set(res.figures)
    knn_matrix = {r["model"]: r for r in res.tables["knn_matrix"]}
    assert knn_matrix["rot"]["ref"] == pytest.approx(1.0) and knn_matrix["rot"]["noise"] < 0.3


def test_characteristic_aligns_by_id(emb):
    ref = _outputs("ref", emb)
    order = np.random.default_rng(9).permutation(300)[:200]
    cand = _outputs("cand", emb[order], ids=order)  # same vectors, other order, fewer rows
    res = RepresentationCharacteristic(ks=[5], n_permutations=5).compare(ref, cand)
    assert res.metrics["ref_vs_cand/knn_k5"] == pytest.approx(1.0)
    assert res.metrics["ref_vs_cand/n_examples"] == 200.0


def test_characteristic_needs_embeddings():
    out = ModelOutputs(
        name="m",
        example_ids=torch.arange(4),
        logits=torch.zeros(4, 2),
        labels=torch.zeros(4, dtype=torch.long),
        label_names=("a", "b"),
    )
    with pytest.raises(ValueError, match="no embeddings"):
        RepresentationCharacteristic().per_model(out)
