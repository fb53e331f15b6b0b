"""Characteristic.pair_statistics of attribution, representation, distribution, adversarial and QA: each
estimate equals the compare() metric of the same name, and each vectorized statistic equals a plain loop of
the metric's definition over random resamples (duplicated rows included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from test_adversarial import _outputs as adversarial_outputs
from test_adversarial import _rec
from test_representation import random_rotation

from plugins.characteristics.adversarial import Adversarial
from plugins.characteristics.attribution import LimeAttribution
from plugins.characteristics.distribution import DistributionCharacteristic
from plugins.characteristics.qa import QACharacteristic
from plugins.characteristics.representation import RepresentationCharacteristic, resampled_linear_cka
from trustequiv.characteristic import PairStatistic, pair_name
from trustequiv.functional.adversarial import transfer_rate
from trustequiv.functional.cka import linear_cka
from trustequiv.outputs import ModelOutputs, align

N_LOOP = 5  # resamples checked against the loop


def _resamples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(N_LOOP, n))


def _check(stat: PairStatistic, compare_metrics: dict[str, float], pair: str) -> np.ndarray:
    """The shared contract; returns the statistic on :func:`_resamples` for the caller's loop."""
    n = stat.example_ids.shape[0]
    assert stat.example_ids.dtype == np.int64 and np.unique(stat.example_ids).size == n
    assert all(a.shape[0] == n for a in stat.arrays)
    want = compare_metrics[f"{pair}/{stat.name}"]
    assert stat.estimate() == pytest.approx(want, rel=1e-9, abs=1e-12), stat.name
    idx = _resamples(n)
    got = np.asarray(stat.statistic(*(a[idx] for a in stat.arrays)))
    assert got.shape == (N_LOOP,) and got.dtype == np.float64
    return got


def _by_name(stats: list[PairStatistic]) -> dict[str, PairStatistic]:
    return {s.name: s for s in stats}


# ---------------------------------------------------------------- attribution
ATTR = LimeAttribution.name


def _attr_outputs(name: str, ids: list[int], rng: np.random.Generator, constant: int | None = None):
    """Outputs with hand-made collected LIME attributions on ``ids`` (2 classes, 2 runs); words are drawn
    from the id (the same for every model), id 39 has none (every metric undefined), and the example at
    position ``constant`` has constant attributions in run 43 (Spearman undefined there)."""
    n = len(ids)
    examples, runs = [], {"42": [], "43": []}
    for j, i in enumerate(ids):
        draw = np.random.default_rng(i)
        n_words = 0 if i == 39 else int(draw.integers(3, 14))
        words = [f"w{int(draw.integers(0, 9))}" for _ in range(n_words)]
        examples.append(
            {"id": i, "words": words, "segments": [int(k >= n_words // 2) for k in range(n_words)]}
        )
        for seed in runs:
            attr = rng.standard_normal((2, n_words))
            if j == constant and seed == "43":
                attr[:] = 0.5
            runs[seed].append(attr.tolist())
    out = ModelOutputs(
        name=name,
        example_ids=torch.tensor(ids),
        logits=torch.as_tensor(rng.standard_normal((n, 2)), dtype=torch.float32),
        labels=torch.tensor([i % 2 for i in ids]),
        label_names=("negative", "positive"),
    )
    collected = {"method": "lime", "examples": examples, "runs": runs, "error": None, "seconds": 0.0}
    return out.with_collected(ATTR, {**collected, "perturbed_texts": 0, "unique_texts": 0})


@pytest.mark.parametrize("explained_class", ["gold", "prediction"])
def test_attribution_jaccard_and_spearman(explained_class):
    rng = np.random.default_rng(1)
    ref = _attr_outputs("ref", list(range(10, 40)), rng, constant=3)
    cand = _attr_outputs("cand", list(range(12, 40)), rng)  # explains fewer examples
    char = LimeAttribution(seeds=[42, 43], explained_class=explained_class, top_k=4, n_bootstrap=10)
    char.n_figure_examples = 0
    metrics = char.compare(ref, cand).metrics
    stats = _by_name(char.pair_statistics(ref, cand))
    assert set(stats) == {"jaccard", "spearman"}
    for stat in stats.values():
        assert stat.alike == "higher" and stat.signed is None
        assert stat.example_ids.tolist() == list(range(12, 40))
        values = stat.arrays[0]  # (n, runs), NaN where undefined
        assert values.shape == (28, 2) and np.isnan(values[-1]).all()
        got = _check(stat, metrics, "ref_vs_cand")
        want = [np.nanmean([np.nanmean(values[i, r]) for r in range(2)]) for i in _resamples(28)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(stats["spearman"].arrays[0][1, 1])  # example 13: constant attributions in run 43


def test_attribution_statistics_left_out_when_not_computable():
    rng = np.random.default_rng(2)
    ref = _attr_outputs("ref", list(range(10, 20)), rng)
    char = LimeAttribution(seeds=[42, 43])
    failed = ref.with_collected(ATTR, {**ref.collected[ATTR], "error": "RuntimeError: no"})
    assert char.pair_statistics(ref, failed) == []
    bare = ModelOutputs(ref.name, ref.example_ids, ref.logits, ref.labels, ref.label_names)
    assert char.pair_statistics(ref, bare) == []
    other_seeds = ref.with_collected(
        ATTR, {**ref.collected[ATTR], "runs": {"7": ref.collected[ATTR]["runs"]["42"]}}
    )
    assert char.pair_statistics(ref, other_seeds) == []


# ---------------------------------------------------------------- representation
def _emb_outputs(name: str, emb: np.ndarray, ids=None) -> ModelOutputs:
    n = emb.shape[0]
    return ModelOutputs(
        name=name,
        example_ids=torch.arange(n) if ids is None else torch.as_tensor(ids),
        logits=torch.zeros(n, 2),
        labels=torch.zeros(n, dtype=torch.long),
        label_names=("a", "b"),
        embeddings=torch.as_tensor(emb, dtype=torch.float32),
    )


@pytest.fixture
def clustered():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 16)) * 3
    return centers[rng.integers(0, 8, 200)] + rng.standard_normal((200, 16)) + 4.0  # off-centre on purpose


def test_representation_knn_and_cka(clustered):
    rng = np.random.default_rng(3)
    ref = _emb_outputs("ref", clustered)
    order = rng.permutation(200)[:150]
    noisy = clustered @ random_rotation(16, rng) + 0.8 * rng.standard_normal((200, 16))
    cand = _emb_outputs("cand", noisy[order][:, :12], ids=order)  # other order, fewer rows and columns
    char = RepresentationCharacteristic(ks=[5, 10, 20], n_permutations=3)
    metrics = char.compare(ref, cand).metrics
    stats = _by_name(char.pair_statistics(ref, cand))
    assert set(stats) == {"knn_k10", "cka_linear"}
    assert all(s.alike == "higher" for s in stats.values())
    a, b = align(ref, cand)
    ea, eb = a.embeddings.double().numpy(), b.embeddings.double().numpy()
    idx = _resamples(150)

    knn = stats["knn_k10"]
    got = _check(knn, metrics, "ref_vs_cand")
    overlap = knn.arrays[0]
    # the per-example overlaps against neighbour sets found directly (cosine, self excluded)
    nb = [np.argsort(-_cos(e), axis=1, kind="stable")[:, :10] for e in (ea, eb)]
    direct = np.array([len(set(nb[0][i]) & set(nb[1][i])) / 10 for i in range(150)])
    np.testing.assert_allclose(overlap, direct)
    np.testing.assert_allclose(got, [overlap[i].mean() for i in idx], rtol=1e-12)

    cka = stats["cka_linear"]
    got = _check(cka, metrics, "ref_vs_cand")
    np.testing.assert_allclose(got, [linear_cka(ea[i], eb[i]) for i in idx], rtol=1e-9)


def _cos(e: np.ndarray) -> np.ndarray:
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def test_resampled_cka_on_subsets_blocks_and_degenerate_rows(clustered):
    rng = np.random.default_rng(4)
    y = clustered @ rng.standard_normal((16, 6)) + rng.standard_normal((200, 6))
    rows = rng.integers(0, 200, size=(4, 37))  # fewer rows than the features have: a subset
    want = [linear_cka(clustered[r], y[r]) for r in rows]
    for block in (16, 64, 4096):
        np.testing.assert_allclose(resampled_linear_cka(clustered, y, rows, block), want, rtol=1e-9)
    one_row = resampled_linear_cka(clustered, y, np.full((2, 5), 7))  # no variance in the resample
    assert np.isnan(one_row).all()
    with pytest.raises(ValueError, match="indices"):
        resampled_linear_cka(clustered, y, np.array([[0, 200]]))


def test_representation_statistics_left_out_when_not_computable(clustered):
    ref = _emb_outputs("ref", clustered)
    cand = _emb_outputs("cand", clustered[:, ::-1].copy())
    assert [s.name for s in RepresentationCharacteristic(ks=[5]).pair_statistics(ref, cand)] == ["cka_linear"]
    assert RepresentationCharacteristic(ks=[5], cka=False).pair_statistics(ref, cand) == []
    small = _emb_outputs("small", clustered[:8])
    assert [s.name for s in RepresentationCharacteristic().pair_statistics(small, small)] == ["cka_linear"]
    bare = ModelOutputs("bare", ref.example_ids, ref.logits, ref.labels, ref.label_names)
    assert RepresentationCharacteristic().pair_statistics(ref, bare) == []
    flat = _emb_outputs("flat", np.ones((200, 4)))
    assert [s.name for s in RepresentationCharacteristic().pair_statistics(ref, flat)] == ["knn_k10"]


# ---------------------------------------------------------------- distribution
def _ood_outputs(name: str, logits_in: np.ndarray, ood: dict[str, np.ndarray]) -> ModelOutputs:
    def out(logits: np.ndarray, sets: dict) -> ModelOutputs:
        n = logits.shape[0]
        return ModelOutputs(
            name=name,
            example_ids=torch.arange(n),  # OOD rows numbered from 0 too: ids collide with ID ids
            logits=torch.as_tensor(logits, dtype=torch.float32),
            labels=torch.zeros(n, dtype=torch.long),
            label_names=("a", "b", "c"),
            ood=sets,
        )

    return out(logits_in, {k: out(v, {}) for k, v in ood.items()})


def test_distribution_flag_kappa_per_ood_set():
    rng = np.random.default_rng(5)
    base_in = rng.standard_normal((300, 3)) * 3
    sets = {"snli/test": rng.standard_normal((120, 3)), "other/validation": rng.standard_normal((80, 3)) * 2}

    def model(name, noise):
        return _ood_outputs(
            name,
            base_in + noise * rng.standard_normal(base_in.shape),
            {k: v + noise * rng.standard_normal(v.shape) for k, v in sets.items()},
        )

    ref, cand = model("ref", 0.0), model("cand", 1.0)
    char = DistributionCharacteristic()
    metrics = char.compare(ref, cand).metrics
    stats = _by_name(char.pair_statistics(ref, cand))
    assert set(stats) == {"snli_test/flag_kappa", "other_validation/flag_kappa"}
    for name, stat in stats.items():
        n_ood = sets[name.split("/")[0].replace("_", "/", 1)].shape[0]
        assert stat.alike == "higher" and stat.example_ids.shape == (300 + n_ood,)
        # ID rows 2 * id, OOD rows 2 * id + 1: unique although both splits number rows from 0
        np.testing.assert_array_equal(stat.example_ids, np.r_[2 * np.arange(300), 2 * np.arange(n_ood) + 1])
        got = _check(stat, metrics, "ref_vs_cand")
        fa, fb = stat.arrays
        want = [cohen_kappa_score(fa[i], fb[i]) for i in _resamples(fa.shape[0])]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    same = char.pair_statistics(ref, model("twin", 0.0))[0]
    assert same.estimate() == 1.0


def test_distribution_without_ood_sets_and_constant_flags():
    char = DistributionCharacteristic()
    ref = _ood_outputs("ref", np.zeros((5, 3)), {})
    assert char.pair_statistics(ref, ref) == []
    ref = _ood_outputs("ref", np.eye(3)[[0, 1, 2, 0]] * 5, {"o/x": np.zeros((2, 3))})
    kappa = char.pair_statistics(ref, ref)[0].statistic
    none, some = np.zeros((1, 6), bool), np.eye(6, dtype=bool)[:1]
    assert kappa(none, none)[0] == 1.0  # both flag nothing: identical decisions (sklearn: NaN)
    assert kappa(none, some)[0] == pytest.approx(cohen_kappa_score(none[0], some[0]))


# ---------------------------------------------------------------- adversarial
def _attacked(rng: np.random.Generator, n: int = 40):
    statuses = ["success", "failed", "skipped"]
    ref_recs = [_rec(i, statuses[rng.choice(3, p=[0.5, 0.4, 0.1])], label=int(i % 2)) for i in range(n)]
    cand_recs = [_rec(i, statuses[rng.choice(3, p=[0.3, 0.6, 0.1])], label=int(i % 2)) for i in range(n)]
    broken_r = [r["id"] for r in ref_recs if r["status"] == "success"]
    broken_c = [r["id"] for r in cand_recs if r["status"] == "success"]
    # the candidate replays the reference's texts (some left out), and the other way round
    shown = broken_r[:-2]
    ref_on_cand = {"ids": shown, "predictions": [int(rng.integers(0, 2)) for _ in shown]}
    cand_on_ref = {"ids": broken_c, "predictions": [int(rng.integers(0, 2)) for _ in broken_c]}
    ref = adversarial_outputs("ref", ref_recs, replay={"cand": cand_on_ref})
    cand = adversarial_outputs("cand", cand_recs, replay={"ref": ref_on_cand})
    return ref, cand


def test_adversarial_gap_and_transfer():
    ref, cand = _attacked(np.random.default_rng(6))
    char = Adversarial()
    metrics = char.compare(ref, cand).metrics
    pair = pair_name("ref", "cand")
    assert metrics[f"{pair}/abs_success_rate_gap"] == pytest.approx(abs(metrics[f"{pair}/success_rate_gap"]))
    stats = _by_name(char.pair_statistics(ref, cand))
    assert set(stats) == {"abs_success_rate_gap", "transfer_ref_to_cand"}
    n = int(metrics[f"{pair}/n_common_attacked"])
    idx = _resamples(n)

    gap = stats["abs_success_rate_gap"]
    assert gap.alike == "lower" and gap.example_ids.shape == (n,)
    got = _check(gap, metrics, pair)
    br, bc = gap.arrays
    np.testing.assert_allclose(got, [abs(bc[i].mean() - br[i].mean()) for i in idx], rtol=1e-12)
    signed = gap.signed(*(a[idx] for a in gap.arrays))
    np.testing.assert_allclose(signed, [bc[i].mean() - br[i].mean() for i in idx], rtol=1e-12)
    identity = np.arange(n)[None]
    assert gap.signed(br[identity], bc[identity])[0] == pytest.approx(metrics[f"{pair}/success_rate_gap"])

    transfer = stats["transfer_ref_to_cand"]
    assert transfer.alike == "higher"
    got = _check(transfer, metrics, pair)
    replayed, fools = transfer.arrays
    assert replayed.sum() == metrics[f"{pair}/transfer_ref_to_cand_n"]
    want = [transfer_rate(fools[i][replayed[i]]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_adversarial_statistics_left_out_when_not_computable():
    char = Adversarial()
    ref = adversarial_outputs("ref", [_rec(1, "success"), _rec(2, "skipped")])
    no_replay = adversarial_outputs("cand", [_rec(1, "failed"), _rec(2, "success")])
    assert [s.name for s in char.pair_statistics(ref, no_replay)] == ["abs_success_rate_gap"]
    skipped = adversarial_outputs("cand", [_rec(1, "skipped"), _rec(2, "success")], replay={"ref": {}})
    assert char.pair_statistics(ref, skipped) == []  # no example attacked on both
    failed_ref = adversarial_outputs("ref", [_rec(1, "failed")])
    replay = {"ref": {"ids": [], "predictions": []}}
    cand = adversarial_outputs("cand", [_rec(1, "success")], replay=replay)
    assert [s.name for s in char.pair_statistics(failed_ref, cand)] == ["abs_success_rate_gap"]
    bare = ModelOutputs("bare", ref.example_ids, ref.logits, ref.labels, ref.label_names)
    assert char.pair_statistics(ref, bare) == []
    stat = char.pair_statistics(ref, no_replay)[0]
    assert not math.isnan(stat.estimate())


# ---------------------------------------------------------------- QA
def _qa_outputs(name: str, ids: list[int], exact: list[int]) -> ModelOutputs:
    n = len(ids)
    return ModelOutputs(
        name=name,
        example_ids=torch.tensor(ids),
        logits=torch.zeros(n, 2),
        labels=torch.ones(n, dtype=torch.long),
        label_names=("no_answer", "answer"),
        correct=torch.tensor(exact, dtype=torch.bool),
        columns={
            "prediction": [str(e) for e in exact],
            "exact": exact,
            "f1": [0.5 * e for e in exact],
            "has_answer": [True] * n,
        },
    )


def test_qa_exact_agreement():
    rng = np.random.default_rng(7)
    ref = _qa_outputs("r", list(range(50)), rng.integers(0, 2, 50).tolist())
    order = rng.permutation(50)[:40].tolist()
    cand = _qa_outputs("c", order, rng.integers(0, 2, 40).tolist())
    char = QACharacteristic(n_bootstrap=10)
    metrics = char.compare(ref, cand).metrics
    (stat,) = char.pair_statistics(ref, cand)
    assert stat.name == "exact_agreement" and stat.alike == "higher"
    got = _check(stat, metrics, "r_vs_c")
    ea, eb = stat.arrays
    np.testing.assert_allclose(got, [np.mean(ea[i] == eb[i]) for i in _resamples(40)], rtol=1e-12)
    assert sorted(stat.example_ids.tolist()) == sorted(order)
    plain = ModelOutputs("p", ref.example_ids, ref.logits, ref.labels, ref.label_names)
    assert char.pair_statistics(ref, plain) == []
