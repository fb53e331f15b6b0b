"""Mutual kNN overlap and linear CKA against direct implementations, known answers and their nulls."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

import trustequiv.functional.knn as rep
from plugins.characteristics.representation import RepresentationCharacteristic
from trustequiv.functional.cka import linear_cka, linear_cka_null
from trustequiv.functional.knn import (
    faiss_available,
    knn_indices,
    knn_search,
    mutual_knn,
    mutual_knn_from_indices,
    mutual_knn_null,
    neighbour_overlap,
    permute_neighbours,
    resolve_knn_backend,
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
def _assert_same_neighbours(got: torch.Tensor, want: torch.Tensor, sim: torch.Tensor) -> None:
    """Same neighbour lists up to float near-ties: matmuls of other shapes (blocks, row orders) round the
    cosine similarities (<= 1) differently across CPUs, which may swap neighbours a few ulps apart."""
    assert got.shape == want.shape
    torch.testing.assert_close(sim.gather(1, got), sim.gather(1, want), rtol=0.0, atol=1e-5)
    assert (got == want).float().mean() >= 0.99


def test_blocked_knn_matches_dense_search(emb):
    x = torch.as_tensor(emb, dtype=torch.float32)
    xn = torch.nn.functional.normalize(x, dim=1)
    sim = xn @ xn.T
    sim.fill_diagonal_(-torch.inf)
    dense = sim.topk(12, dim=1).indices
    blocked = knn_indices(x, 12, block_size=37)
    assert blocked.shape == (300, 12)
    _assert_same_neighbours(blocked, dense, sim)
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
    xn = torch.nn.functional.normalize(torch.as_tensor(emb, dtype=torch.float32)[perm], dim=1)
    sim = xn @ xn.T
    _assert_same_neighbours(permute_neighbours(idx, perm), knn_indices(emb[perm.numpy()], 6), sim)


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


# ---------------------------------------------------------------- kNN backends (torch blocked vs faiss)
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="optional faiss not installed")


def _dense_sim(x: np.ndarray) -> torch.Tensor:
    """float64 cosine similarities with the diagonal at -inf (the reference for both float32 backends)."""
    t = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)
    sim = t @ t.T
    sim.fill_diagonal_(-torch.inf)
    return sim


def _check_exact(vals: torch.Tensor, idx: torch.Tensor, sim: torch.Tensor) -> None:
    """A valid top-k: no self, no repeats, returned similarities are the true ones and the k largest."""
    n, k = idx.shape
    assert not (idx == torch.arange(n)[:, None]).any()
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()
    torch.testing.assert_close(vals.double(), sim.gather(1, idx), rtol=0.0, atol=1e-5)
    torch.testing.assert_close(vals.double(), sim.topk(k, dim=1).values, rtol=0.0, atol=1e-5)


@needs_faiss
def test_faiss_equals_blocked_search_on_random_data():
    x = np.random.default_rng(10).standard_normal((700, 24))
    k = 15
    sim = _dense_sim(x)
    tv, ti = knn_search(x, k, backend="torch", block_size=64)
    fv, fi = knn_search(x, k, backend="faiss", query_block=97)  # several query blocks, a ragged last one
    for v, i in ((tv, ti), (fv, fi)):
        assert v.dtype == torch.float32 and i.dtype == torch.int64 and i.shape == (700, k)
        _check_exact(v, i, sim)
    torch.testing.assert_close(fv, tv, rtol=0.0, atol=1e-5)
    # where no two similarities are within float32 rounding of each other, the lists must be identical
    top = sim.topk(k + 1, dim=1).values
    gaps = top[:, :-1] - top[:, 1:]  # gaps[:, j]: between neighbour j and j + 1
    clear_set = gaps[:, k - 1] > 1e-5
    assert clear_set.float().mean() > 0.95
    for r in torch.nonzero(clear_set).flatten().tolist():
        assert set(fi[r].tolist()) == set(ti[r].tolist())
    clear_pos = (
        torch.cat([torch.full((700, 1), torch.inf, dtype=gaps.dtype), gaps[:, :-1]], 1).minimum(gaps[:, :k])
        > 1e-5
    )  # neighbour j separated from j - 1 and j + 1
    assert torch.equal(fi[clear_pos], ti[clear_pos])


@needs_faiss
@pytest.mark.parametrize("k", [2, 6])
def test_faiss_equals_blocked_search_on_clustered_data_with_ties(k):
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((6, 16)) * 3
    points = centers[rng.integers(0, 6, 60)] + rng.standard_normal((60, 16))
    x = np.repeat(points, 5, axis=0) * rng.uniform(0.5, 2.0, (300, 1))  # 5 scaled copies: exact cosine ties
    x[-3:] = 0.0  # zero rows: similarity 0 to everything
    group = torch.arange(300) // 5
    sim = _dense_sim(x)
    tv, ti = knn_search(x, k, backend="torch", block_size=64)
    fv, fi = knn_search(x, k, backend="faiss", query_block=64)
    for v, i in ((tv, ti), (fv, fi)):
        _check_exact(v, i, sim)
        if k < 5:  # fewer neighbours than copies: the tied copies fill the list, self or not among the k + 1
            copies = (group[i] == group[:, None]).all(dim=1)
            assert copies[:295].all()
    torch.testing.assert_close(fv, tv, rtol=0.0, atol=1e-5)  # the same similarities, ties in any order


@needs_faiss
def test_mutual_knn_identical_via_both_backends():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 8))
    b = a @ rng.standard_normal((8, 12)) + rng.standard_normal((200, 12))
    ks = [1, 5, 20]
    for x in (a, b):  # precondition: no near-ties at any k boundary (seed chosen), so both must agree exactly
        top = _dense_sim(x).topk(21, dim=1).values
        assert (top[:, [k - 1 for k in ks]] - top[:, ks]).min() > 5e-5
    by_torch = mutual_knn(a, b, ks, backend="torch", block_size=64)
    by_faiss = mutual_knn(a, b, ks, backend="faiss", query_block=50)
    assert by_faiss == by_torch
    assert 0.2 < by_faiss[5] < 0.9  # neither trivial nor chance
    assert by_faiss[5] == pytest.approx(huh_mutual_knn(a, b, 5), abs=1e-12)


@needs_faiss
def test_faiss_keeps_self_when_asked(emb):
    vals, idx = knn_search(emb, 3, backend="faiss", exclude_self=False)
    assert torch.equal(idx[:, 0], torch.arange(300))
    torch.testing.assert_close(vals[:, 0], torch.ones(300), rtol=0.0, atol=1e-5)


def _faiss_gpus() -> int:
    faiss = rep._import_faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


@pytest.mark.skipif(_faiss_gpus() < 1, reason="needs a GPU build of faiss and a GPU")
def test_faiss_gpu_equals_cpu():
    x = np.random.default_rng(13).standard_normal((2000, 64))
    gv, gi = knn_search(x, 10, backend="faiss", faiss_gpu=True)
    cv, ci = knn_search(x, 10, backend="faiss", faiss_gpu=False)
    torch.testing.assert_close(gv, cv, rtol=0.0, atol=1e-5)
    assert (gi == ci).float().mean() > 0.99


def test_auto_picks_backend_by_size(monkeypatch):
    calls: list[str] = []

    def fake(name):
        def run(x, k, *args):
            calls.append(name)
            return torch.zeros(x.shape[0], k), torch.zeros(x.shape[0], k, dtype=torch.long)

        return run

    monkeypatch.setattr(rep, "_import_faiss", lambda: object())  # "installed", whether or not it is
    monkeypatch.setattr(rep, "_knn_torch", fake("torch"))
    monkeypatch.setattr(rep, "_knn_faiss", fake("faiss"))
    x = np.random.default_rng(14).standard_normal((300, 8))
    knn_search(x, 5, faiss_min_n=301)
    knn_search(x, 5, faiss_min_n=300)
    knn_search(x, 5, backend="torch", faiss_min_n=0)
    knn_search(x, 5, backend="faiss", faiss_min_n=10**9)
    assert calls == ["torch", "faiss", "torch", "faiss"]
    assert resolve_knn_backend("auto", 9_999) == "torch" and resolve_knn_backend("auto", 10_000) == "faiss"
    with pytest.raises(ValueError, match="one of"):
        resolve_knn_backend("annoy", 10)
    with pytest.raises(ValueError, match="faiss_min_n"):
        resolve_knn_backend("auto", 10, -1)


def test_missing_faiss(monkeypatch, caplog, emb):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    monkeypatch.setattr(rep, "_warned_no_faiss", False)
    assert not faiss_available()
    with pytest.raises(ImportError, match="pip install faiss-cpu") as err:
        knn_search(emb, 5, backend="faiss")
    assert "\n" not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        RepresentationCharacteristic(knn_backend="faiss")
    with caplog.at_level(logging.WARNING, logger=rep.__name__):
        got = [knn_indices(emb, 5, faiss_min_n=100) for _ in range(2)]  # auto at N >= faiss_min_n: torch
        knn_indices(emb, 5)  # below the threshold: faiss not wanted, nothing to say
    assert torch.equal(got[0], knn_indices(emb, 5, backend="torch"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "pip install faiss-cpu" in lines[0]


@needs_faiss
def test_characteristic_passes_search_settings(emb):
    rng = np.random.default_rng(15)
    ref, cand = _outputs("ref", emb), _outputs("cand", emb + 0.3 * rng.standard_normal(emb.shape))
    res = {
        b: RepresentationCharacteristic(ks=[10], n_permutations=5, cka=False, knn_backend=b).compare(
            ref, cand
        )
        for b in ("torch", "faiss")
    }
    assert res["faiss"].metrics["ref_vs_cand/knn_k10"] == pytest.approx(
        res["torch"].metrics["ref_vs_cand/knn_k10"], abs=2 / 300
    )
    with pytest.raises(ValueError, match="one of"):
        RepresentationCharacteristic(knn_backend="hnsw")


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
