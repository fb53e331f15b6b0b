"""The verdict: decision arithmetic (against statsmodels' TOST and a hand-written loop bootstrap), the pair
statistics of errors and calibration, the worst-of / overall rules, and the settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

from plugins.characteristics.calibration import CalibrationCharacteristic
from plugins.characteristics.errors import ErrorsCharacteristic
from trustequiv.characteristic import Characteristic, PairStatistic, pair_name
from trustequiv.functional.calibration import calibration_bins_from_confidences, top_label
from trustequiv.functional.equivalence import (
    joint_resamples,
    noninferiority,
    one_sided,
    percentile_interval,
    shortfall,
    tost,
    worst,
)
from trustequiv.outputs import CharacteristicResult, ModelOutputs
from trustequiv.user_errors import ConfigError
from trustequiv.verdict.verdict import VerdictSettings, judge, judge_statistic, verdict_table

N_BOOT = 200
LABELS = ("entailment", "neutral", "contradiction")


def make_outputs(name: str, n: int = 600, seed: int = 0, noise: float = 0.3, ids=None) -> ModelOutputs:
    """A shared 'true' logit per example plus model-specific noise: small noise = a reseeded reference."""
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(0, 3, (n,), generator=g)
    base = torch.randn(n, 3, generator=g) * 1.5
    base[torch.arange(n), labels] += 1.5
    g.manual_seed(seed)
    logits = base + torch.randn(n, 3, generator=g) * noise
    example_ids = torch.arange(n) + 100 if ids is None else ids
    return ModelOutputs(name, example_ids, logits, labels, LABELS)


def renamed(out: ModelOutputs, name: str) -> ModelOutputs:
    return ModelOutputs(name, out.example_ids, out.logits.clone(), out.labels, out.label_names)


CHARS = (CalibrationCharacteristic(n_bootstrap=20), ErrorsCharacteristic(n_bootstrap=20))
#: absolute thresholds as conf/evaluate.yaml's defaults (the settings here stand alone)
ABSOLUTE = {"errors": {"error_jaccard": 0.5, "flip_rate": 0.10, "agreement": 0.90}}
# min_examples 0: these tests decide on a few dozen examples on purpose (the minimum has its own test)
SETTINGS = {"n_bootstrap": N_BOOT, "seed": 3, "absolute": ABSOLUTE, "min_examples": 0}


# --------------------------------------------------------------------------------------------------------
# decision arithmetic against independent implementations


def _mean_diff_rows(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    return np.mean(cand, axis=-1) - np.mean(ref, axis=-1)


def _bootstrap_tost(x_ref: np.ndarray, x_cand: np.ndarray, margin: float, n_boot: int = 1000):
    n = x_ref.shape[0]
    est, res = joint_resamples([lambda i: _mean_diff_rows(x_ref[i], x_cand[i])], n, n_boot, seed=0)
    return tost(est[0], res[0], margin, confidence=0.95)


@pytest.mark.parametrize(
    ("shift", "margin", "expected"),
    [
        (0.0, 0.2, "equivalent"),
        (0.02, 0.25, "equivalent"),
        (0.6, 0.1, "not_equivalent"),
        (-0.6, 0.1, "not_equivalent"),
    ],
)
def test_tost_decision_agrees_with_statsmodels(shift: float, margin: float, expected: str) -> None:
    rng = np.random.default_rng(7)
    x_ref = rng.normal(size=2000)
    x_cand = x_ref + shift + rng.normal(scale=0.8, size=2000)
    ours = _bootstrap_tost(x_ref, x_cand, margin)
    p_equiv = ttost_paired(x_cand, x_ref, -margin, margin)[0]
    d = DescrStatsW(x_cand - x_ref)
    # outside the margin: one one-sided t test beyond the nearer bound rejects "inside" at alpha = 0.05
    p_beyond = min(
        d.ttest_mean(margin, alternative="larger")[1], d.ttest_mean(-margin, alternative="smaller")[1]
    )
    sm = "equivalent" if p_equiv < 0.05 else "not_equivalent" if p_beyond < 0.05 else "inconclusive"
    assert ours.decision == sm == expected
    assert ours.level == pytest.approx(0.90)


def test_tost_bounds_close_to_t_interval_for_large_n() -> None:
    rng = np.random.default_rng(11)
    x_ref = rng.normal(size=5000)
    x_cand = x_ref + 0.05 + rng.normal(scale=0.7, size=5000)
    ours = _bootstrap_tost(x_ref, x_cand, margin=0.1, n_boot=2000)
    d = DescrStatsW(x_cand - x_ref)
    low, high = d.tconfint_mean(alpha=0.10)  # the 90% interval TOST at alpha 0.05 reads
    se = d.std_mean
    assert abs(ours.low - low) < 0.15 * se
    assert abs(ours.high - high) < 0.15 * se
    assert ours.estimate == pytest.approx(d.mean, rel=1e-12)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Plain-loop multiset Jaccard of two error masks (a resample may repeat an example)."""
    inter = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    union = sum(1 for x, y in zip(a, b, strict=True) if x or y)
    return 1.0 if union == 0 else inter / union


@pytest.mark.parametrize("replica_resampling", [True, False])
def test_noise_floor_interval_matches_a_hand_written_loop_bootstrap(replica_resampling: bool) -> None:
    """The multi-bootstrap (replicas drawn with replacement, spread-corrected) and the examples-only
    bootstrap, each against a plain loop over resamples."""
    rng = np.random.default_rng(5)
    n, n_boot, seed, margin = 300, 150, 9, 0.05
    wrong_ref = rng.random(n) < 0.2
    cand = wrong_ref ^ (rng.random(n) < 0.15)
    reps = [wrong_ref ^ (rng.random(n) < 0.08) for _ in range(2)]
    ids = np.arange(n) + 1000

    def stat(a, b):
        return PairStatistic("error_jaccard", "higher", ids, (a, b), _jaccard_rows_for_test)

    # the second replica's rows come shuffled: the verdict must align them by id
    perm = rng.permutation(n)
    rep2 = PairStatistic(
        "error_jaccard", "higher", ids[perm], (wrong_ref[perm], reps[1][perm]), _jaccard_rows_for_test
    )
    settings = VerdictSettings(
        n_bootstrap=n_boot,
        seed=seed,
        margins={"errors/error_jaccard": margin},
        replica_resampling=replica_resampling,
    )
    entry, notes = judge_statistic(
        "errors/error_jaccard", stat(wrong_ref, cand), {"r1": stat(wrong_ref, reps[0]), "r2": rep2}, settings
    )
    assert notes == []

    # the loop: one index vector per resample, every pair evaluated on it
    draw = np.random.default_rng(seed)
    replica_draws = np.random.default_rng([seed, 1]).integers(0, 2, size=(n_boot, 2))
    shortfalls, floors = [], []
    for r in range(n_boot):
        i = draw.integers(0, n, size=n)
        c = _jaccard(wrong_ref[i], cand[i])
        each = [_jaccard(wrong_ref[i], reps[0][i]), _jaccard(wrong_ref[i], reps[1][i])]
        f = sum(each) / 2
        if replica_resampling:  # the drawn replicas' mean, its deviation scaled by sqrt(k / (k - 1))
            f = f + np.sqrt(2.0) * (sum(each[j] for j in replica_draws[r]) / 2 - f)
        shortfalls.append(f - c)
        floors.append(f)
    low, high = np.percentile(shortfalls, [2.5, 97.5])
    floor_est = (_jaccard(wrong_ref, reps[0]) + _jaccard(wrong_ref, reps[1])) / 2
    assert entry["mode"] == "noise_floor" and entry["tested"] == "shortfall"
    assert entry["floor"] == pytest.approx(floor_est, rel=1e-12)
    assert entry["shortfall"] == pytest.approx(floor_est - _jaccard(wrong_ref, cand), rel=1e-12)
    assert entry["low"] == pytest.approx(low, rel=1e-9)
    assert entry["high"] == pytest.approx(high, rel=1e-9)
    assert entry["floor_low"] == pytest.approx(np.percentile(floors, 2.5), rel=1e-9)
    decision = "equivalent" if high <= margin else "not_equivalent" if low > margin else "inconclusive"
    assert entry["decision"] == decision
    assert entry["n_examples"] == n and entry["n_resamples"] == n_boot
    assert entry["resampling"] == ("examples+replicas" if replica_resampling else "examples")


def _jaccard_rows_for_test(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    union = np.sum(a | b, axis=-1)
    return np.where(union == 0, 1.0, np.sum(a & b, axis=-1) / np.maximum(union, 1))


def test_noninferiority_and_one_sided_rules() -> None:
    vals = np.linspace(0.0, 0.02, 101)  # percentiles 2.5% / 97.5%: 0.0005 / 0.0195
    assert noninferiority(0.01, vals, margin=0.02).decision == "equivalent"
    assert noninferiority(0.01, vals, margin=0.01).decision == "inconclusive"
    assert noninferiority(0.01, vals + 0.05, margin=0.02).decision == "not_equivalent"
    assert noninferiority(0.0, np.full(10, np.nan), margin=1.0).decision == "inconclusive"
    assert one_sided(0.7, vals + 0.7, 0.5, "higher").decision == "equivalent"
    assert one_sided(0.3, vals + 0.3, 0.5, "higher").decision == "not_equivalent"
    assert one_sided(0.01, vals, 0.05, "lower").decision == "equivalent"
    assert one_sided(0.01, vals, 0.01, "lower").decision == "inconclusive"
    assert tost(0.0, vals - 0.01, 0.011).decision == "equivalent"
    with pytest.raises(ValueError, match="margin"):
        tost(0.0, vals, -0.1)
    with pytest.raises(ValueError, match="confidence"):
        tost(0.0, vals, 0.1, confidence=0.4)
    np.testing.assert_allclose(shortfall(0.6, 0.7, "higher"), 0.1)
    np.testing.assert_allclose(shortfall(0.03, 0.01, "lower"), 0.02)
    low, high, ok, bad = percentile_interval(np.array([1.0, np.nan, 3.0]), 0.5)
    assert (ok, bad) == (2, 1) and low == pytest.approx(1.5) and high == pytest.approx(2.5)


def test_worst_order() -> None:
    assert worst(["equivalent", "inconclusive"]) == "inconclusive"
    assert worst(["inconclusive", "not_equivalent", "equivalent"]) == "not_equivalent"
    assert worst(["equivalent"]) == "equivalent"
    with pytest.raises(ValueError):
        worst([])


def test_joint_resamples_same_indices_for_every_statistic() -> None:
    x = np.arange(50, dtype=float)
    est, res = joint_resamples(
        [lambda i: x[i].mean(-1), lambda i: 2 * x[i].mean(-1)], 50, 37, seed=1, chunk=5
    )
    np.testing.assert_allclose(res[1], 2 * res[0])
    _, res_one_chunk = joint_resamples([lambda i: x[i].mean(-1)], 50, 37, seed=1)
    np.testing.assert_allclose(res_one_chunk[0], res[0])  # chunking does not change the resamples
    assert est[0] == pytest.approx(24.5)


# --------------------------------------------------------------------------------------------------------
# the pair statistics of errors and calibration


def test_pair_statistic_estimates_equal_compare_metrics() -> None:
    ref, cand = make_outputs("bert", seed=0), make_outputs("mini", seed=1, noise=1.5)
    pair = pair_name("bert", "mini")
    for char in CHARS:
        metrics = char.compare(ref, cand).metrics
        stats = {s.name: s for s in char.pair_statistics(ref, cand)}
        if char.name == "errors":
            assert set(stats) == {"error_jaccard", "flip_rate", "agreement"}
            for name in stats:
                assert stats[name].estimate() == pytest.approx(metrics[f"{pair}/{name}"], rel=1e-12)
        else:
            judged = {"ece_uniform_diff", "brier_diff", "nll_diff"}
            assert set(stats) == judged | {"abs_ece_uniform_diff", "abs_brier_diff"}
            assert {n for n, s in stats.items() if s.judged} == judged
            for name in judged:  # the judged statistics are the compare() differences themselves
                assert stats[name].estimate() == pytest.approx(metrics[f"{pair}/{name}"], rel=1e-9, abs=1e-12)
            for name, metric in (
                ("abs_ece_uniform_diff", "ece_uniform_diff"),
                ("abs_brier_diff", "brier_diff"),
            ):
                s = stats[name]
                signed = s.signed(*(a[None] for a in s.arrays))[0]
                assert signed == pytest.approx(metrics[f"{pair}/{metric}"], rel=1e-9, abs=1e-12)
                assert s.estimate() == pytest.approx(abs(metrics[f"{pair}/{metric}"]), rel=1e-9, abs=1e-12)


def test_vectorized_ece_equals_calibration_bins_on_resamples() -> None:
    ref, cand = make_outputs("bert", seed=0), make_outputs("mini", seed=1, noise=1.5)
    char = CalibrationCharacteristic(n_bins=15)
    s = next(x for x in char.pair_statistics(ref, cand) if x.name == "abs_ece_uniform_diff")
    idx = np.random.default_rng(0).integers(0, len(ref), size=(4, len(ref)))
    got = s.signed(*(a[idx] for a in s.arrays))
    probs = {o.name: o.probs.numpy() for o in (ref, cand)}
    y = ref.labels.numpy()
    for r in range(4):
        ece = {}
        for name, p in probs.items():
            conf, correct = top_label(p[idx[r]], y[idx[r]])
            ece[name] = calibration_bins_from_confidences(conf, correct, 15, "uniform").ece
        assert got[r] == pytest.approx(ece["mini"] - ece["bert"], rel=1e-9, abs=1e-12)


def test_errors_without_scores_have_no_agreement_statistic() -> None:
    ref = make_outputs("bert")
    correct = (ref.predictions == ref.labels).clone()
    correct[:40] = ~correct[:40]
    unscored = ModelOutputs("released", ref.example_ids, None, ref.labels, LABELS, correct=correct)
    names = [s.name for s in ErrorsCharacteristic().pair_statistics(ref, unscored)]
    assert names == ["error_jaccard", "flip_rate"]


# --------------------------------------------------------------------------------------------------------
# judge(): whole verdicts


def test_identical_copy_with_identical_floor_is_equivalent_everywhere() -> None:
    ref = make_outputs("bert")
    floor = [renamed(ref, "bert+seed1"), renamed(ref, "bert+seed2")]
    v = judge(CHARS, ref, [renamed(ref, "copy")], floor, SETTINGS)["copy"]
    assert v["overall"] == v["errors"] == v["calibration"] == "equivalent"
    assert all(e["resampling"] == "examples+replicas" for e in v["statistics"].values())
    assert not any("one replica" in n for n in v["notes"])
    # one replica: calibration (seed-dominated) is reported without a decision, errors still decide
    verdict = judge(CHARS, ref, [renamed(ref, "copy")], floor[:1], SETTINGS)
    v = verdict["copy"]
    assert "calibration" not in v and v["overall"] == v["errors"] == "equivalent"
    e = v["statistics"]["calibration/brier_diff"]
    assert e["decision"] is None and e["judged"] is False and "2 or more" in e["why_not_judged"]
    assert e["estimate"] == 0.0 and e["high"] == 0.0  # still resampled and reported
    verdict = judge(CHARS, ref, [renamed(ref, "copy")], floor[:1], SETTINGS)
    v = verdict["copy"]
    assert set(v["statistics"]) == {
        "errors/error_jaccard",
        "errors/flip_rate",
        "errors/agreement",
        "calibration/ece_uniform_diff",
        "calibration/brier_diff",
        "calibration/nll_diff",
        "calibration/abs_ece_uniform_diff",
        "calibration/abs_brier_diff",
    }
    for e in v["statistics"].values():
        assert e["mode"] == "noise_floor" and e["shortfall"] == 0.0 and e["high"] == 0.0
        assert e["floor_models"] == ["bert+seed1"] and e["resampling"] == "examples"
    for key in ("calibration/abs_ece_uniform_diff", "calibration/abs_brier_diff"):
        e = v["statistics"][key]
        assert e["judged"] is False and e["decision"] is None and "biased" in e["why_not_judged"]
    assert any("one replica" in n for n in v["notes"])


def test_identical_copy_without_floor_is_equivalent_in_absolute_mode() -> None:
    ref = make_outputs("bert")
    v = judge(CHARS, ref, [renamed(ref, "copy")], [], SETTINGS)["copy"]
    assert v["overall"] == "equivalent"
    for e in v["statistics"].values():
        assert e["mode"] == "absolute" and e["floor"] is None and e["shortfall"] is None
    assert v["statistics"]["calibration/abs_ece_uniform_diff"]["tested"] == "signed"
    assert v["statistics"]["errors/error_jaccard"]["tested"] == "statistic"
    assert v["statistics"]["errors/error_jaccard"]["margin"] == 0.5
    assert v["statistics"]["calibration/abs_ece_uniform_diff"]["level"] == pytest.approx(0.90)


def test_clearly_worse_candidate_is_not_equivalent_in_both_modes() -> None:
    ref = make_outputs("bert", seed=0)
    reps = [make_outputs("bert+seed1", seed=1), make_outputs("bert+seed2", seed=2)]
    good, bad = make_outputs("good", seed=3), make_outputs("bad", seed=4, noise=4.0)
    with_floor = judge(CHARS, ref, [good, bad], reps, SETTINGS)
    assert with_floor["bad"]["overall"] == "not_equivalent"
    assert with_floor["bad"]["errors"] == with_floor["bad"]["calibration"] == "not_equivalent"
    assert with_floor["good"]["errors"] != "not_equivalent"
    absolute = judge(CHARS, ref, [bad], [], SETTINGS)["bad"]
    assert absolute["overall"] == "not_equivalent"
    assert all(e["mode"] == "absolute" for e in absolute["statistics"].values())


class _Fixed(Characteristic):
    """Statistics with a fixed value on every resample: decisions known in advance."""

    def __init__(self, name: str, values: dict[str, float] | None, fail: bool = False) -> None:
        self.name, self.values, self.fail = name, values, fail

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        return CharacteristicResult()

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        if self.fail:
            raise ValueError("needs scores")
        ids = reference.example_ids.numpy()
        value = (self.values or {}) if candidate.name != "floor" else dict.fromkeys(self.values or {}, 0.0)
        return [
            PairStatistic(k, "lower", ids, (ids,), lambda i, v=v: np.full(i.shape[0], v))
            for k, v in value.items()
        ]


def test_worst_of_and_overall_rules() -> None:
    ref, cand, floor = make_outputs("ref", n=30), make_outputs("cand", n=30), make_outputs("floor", n=30)
    settings = {**SETTINGS, "default_margin": 0.1}
    chars = [
        _Fixed("a", {"s1": 0.0, "s2": 0.5}),  # equivalent + not equivalent -> not equivalent
        _Fixed("b", {"s1": 0.05}),  # equivalent
        _Fixed("empty", None),  # no statistics: noted, not judged
        _Fixed("broken", {"s": 0.0}, fail=True),  # raises: noted, not judged
    ]
    v = judge(chars, ref, [cand], [floor], settings)["cand"]
    assert (v["a"], v["b"], v["overall"]) == ("not_equivalent", "equivalent", "not_equivalent")
    assert "empty" not in v and "broken" not in v
    assert any(n.startswith("empty: not judged") for n in v["notes"])
    assert any("broken: not judged (needs scores)" in n for n in v["notes"])
    v = judge(chars[1:], ref, [cand], [floor], settings)["cand"]
    assert v["overall"] == "equivalent"
    v = judge(chars[2:], ref, [cand], [floor], settings)["cand"]
    assert v["overall"] == "inconclusive" and v["statistics"] == {}


def test_rows_aligned_by_id_and_dropped_rows_noted() -> None:
    ref = make_outputs("bert", n=400)
    short = make_outputs("bert+seed1", n=400, seed=1)
    short = short.select(short.example_ids[50:])  # the replica lacks 50 examples
    v = judge([ErrorsCharacteristic()], ref, [make_outputs("mini", seed=2)], [short], SETTINGS)["mini"]
    e = v["statistics"]["errors/error_jaccard"]
    assert e["n_examples"] == 350
    assert any("rows dropped: candidate pair 50" in n for n in v["notes"])


def test_unscored_floor_replica_falls_back_to_absolute_for_agreement() -> None:
    ref = make_outputs("bert")
    correct = ref.predictions == ref.labels
    rep = ModelOutputs("bert+seed1", ref.example_ids, None, ref.labels, LABELS, correct=correct)
    v = judge([ErrorsCharacteristic()], ref, [make_outputs("mini", seed=2)], [rep], SETTINGS)["mini"]
    assert v["statistics"]["errors/error_jaccard"]["mode"] == "noise_floor"
    assert v["statistics"]["errors/agreement"]["mode"] == "absolute"
    assert any("no floor replica has it" in n for n in v["notes"])


def test_disabled_and_bad_settings() -> None:
    ref = make_outputs("bert", n=50)
    assert judge(CHARS, ref, [renamed(ref, "c")], [], {"enabled": False}) == {}
    with pytest.raises(ConfigError, match="confidence"):
        judge(CHARS, ref, [renamed(ref, "c")], [], {"confidence": 1.5})
    with pytest.raises(ConfigError, match="margins"):
        VerdictSettings.from_mapping({"margins": {"errors": {"flip_rate": -0.1}}})
    with pytest.raises(ConfigError, match="not a number"):
        VerdictSettings.from_mapping({"absolute": {"errors": {"flip_rate": "low"}}})
    with pytest.raises(ConfigError, match="unknown verdict setting"):
        VerdictSettings.from_mapping({"margin": {}})
    with pytest.raises(ValueError, match="unique"):
        judge(CHARS, ref, [renamed(ref, "c"), renamed(ref, "c")], [], {})


def test_config_block_composes_and_overrides() -> None:
    from conftest import compose

    cfg = compose("evaluate", ["verdict.margins.errors.flip_rate=0.03"])
    s = VerdictSettings.from_mapping(cfg.verdict)
    assert s.enabled and s.confidence == 0.95 and s.n_bootstrap == 1000
    assert s.margin("errors/flip_rate") == 0.03
    assert s.margin("distribution/mnli_mm/flag_kappa") == s.margin("distribution/flag_kappa")
    assert s.margin("unknown/statistic") == s.default_margin
    assert s.absolute_bound("errors/error_jaccard", signed=False) == 0.5
    assert s.absolute_bound("unknown/similarity", signed=False) is None
    assert s.absolute_bound("unknown/diff", signed=True) == s.default_margin


def test_verdict_table_rows() -> None:
    ref = make_outputs("bert")
    verdict = judge(CHARS, ref, [renamed(ref, "copy")], [renamed(ref, "bert+seed1")], SETTINGS)
    rows = verdict_table(verdict)
    stat_rows = [r for r in rows if r.get("mode")]
    assert len(stat_rows) == 8
    r = next(r for r in stat_rows if r["statistic"] == "error_jaccard")
    assert r["characteristic"] == "errors" and r["decision"] == "equivalent"
    assert r["floor"].startswith("1.0000 [") and r["test"].startswith("shortfall 0.0000 [")
    assert rows[-1] == {"candidate": "copy", "characteristic": "(overall)", "decision": "equivalent"}
    assert not any(isinstance(v, float) and math.isnan(v) for row in rows for v in row.values())


def test_similarity_without_floor_or_threshold_is_inconclusive_with_note() -> None:
    ref = make_outputs("bert", n=200)
    v = judge([ErrorsCharacteristic()], ref, [renamed(ref, "copy")], [], {"n_bootstrap": 50})["copy"]
    e = v["statistics"]["errors/error_jaccard"]
    assert e["decision"] == "inconclusive" and e["margin"] is None and e["tested"] is None
    assert v["errors"] == v["overall"] == "inconclusive"
    assert any("+verdict.absolute.errors.error_jaccard=<threshold>" in n for n in v["notes"])


# --------------------------------------------------------------------------------------------------------
# several replicas (multi-bootstrap), the minimum number of examples


def test_replica_counts_and_floor_resamples() -> None:
    from trustequiv.functional.equivalence import floor_resamples, replica_counts

    counts = replica_counts(3, 500, seed=4)
    assert counts.shape == (500, 3) and (counts.sum(axis=1) == 3).all()
    assert np.array_equal(counts, replica_counts(3, 500, seed=4))  # deterministic given the seed
    # each replica is drawn 1/k of the time
    assert counts.mean(axis=0) == pytest.approx([1.0, 1.0, 1.0], abs=0.15)
    f = np.array([[0.6] * 500, [0.7] * 500, [0.8] * 500])  # replicas constant over example resamples
    plain = floor_resamples(f, counts, spread_correction=False)
    assert plain == pytest.approx((counts * np.array([0.6, 0.7, 0.8])).sum(axis=1) / 3)
    corrected = floor_resamples(f, counts, spread_correction=True)
    # the corrected draw has the unbiased variance of a mean of 3: s^2 / 3 with s^2 = 0.01
    assert np.var(corrected) == pytest.approx(0.01 / 3, rel=0.15)
    assert np.var(plain) == pytest.approx(0.01 / 3 * 2 / 3, rel=0.15)
    assert np.array_equal(floor_resamples(f, None), f.mean(axis=0))
    assert np.array_equal(floor_resamples(f[:1], counts[:, :1]), f[0])  # one replica: nothing to draw


def test_three_replicas_widen_the_floor_by_their_spread() -> None:
    """Replicas that disagree with each other put their spread into the interval (examples+replicas)."""
    rng = np.random.default_rng(2)
    n = 800
    wrong_ref = rng.random(n) < 0.2
    cand = wrong_ref ^ (rng.random(n) < 0.1)
    reps = {f"r{k}": wrong_ref ^ (rng.random(n) < p) for k, p in enumerate((0.03, 0.1, 0.2))}
    ids = np.arange(n)

    def stat(b: np.ndarray) -> PairStatistic:
        return PairStatistic("error_jaccard", "higher", ids, (wrong_ref, b), _jaccard_rows_for_test)

    floor = {k: stat(v) for k, v in reps.items()}
    entries = {}
    for resample in (True, False):
        settings = VerdictSettings(n_bootstrap=400, seed=1, replica_resampling=resample)
        entries[resample], _ = judge_statistic("errors/error_jaccard", stat(cand), floor, settings)
    new, old = entries[True], entries[False]
    assert new["resampling"] == "examples+replicas" and old["resampling"] == "examples"
    assert new["shortfall"] == pytest.approx(old["shortfall"], rel=1e-12)  # same estimate, wider interval
    assert new["high"] - new["low"] > 1.5 * (old["high"] - old["low"])
    assert new["floor_models"] == ["r0", "r1", "r2"]


def test_fewer_examples_than_the_minimum_decide_nothing() -> None:
    ref = make_outputs("bert", n=60)
    settings = {**SETTINGS, "min_examples": 100}
    v = judge(CHARS, ref, [renamed(ref, "copy")], [renamed(ref, "bert+seed1")], settings)["copy"]
    judged = [e for e in v["statistics"].values() if e["judged"]]
    assert judged and all(e["decision"] == "inconclusive" for e in judged)
    assert v["overall"] == "inconclusive"
    assert sum("verdict.min_examples = 100" in n for n in v["notes"]) == len(judged)
    # the same data with the minimum met: an identical copy is equivalent
    v = judge(CHARS, ref, [renamed(ref, "copy")], [renamed(ref, "bert+seed1")], SETTINGS)["copy"]
    assert v["overall"] == "equivalent"
    with pytest.raises(ConfigError, match="min_examples"):
        VerdictSettings.from_mapping({"min_examples": -1})


def test_candidate_seed_spread_adds_a_recipe_sized_spread() -> None:
    """The population question: one drawn replica's (spread-corrected) deviation, variance s², is added."""
    from trustequiv.functional.equivalence import seed_deviation

    f = np.array([[0.6] * 4000, [0.7] * 4000, [0.8] * 4000])
    dev = seed_deviation(f, seed=3)
    assert dev.mean() == pytest.approx(0.0, abs=0.01)
    assert np.var(dev) == pytest.approx(0.01, rel=0.1)  # s^2 of 0.6, 0.7, 0.8
    with pytest.raises(ValueError, match="2 or more"):
        seed_deviation(f[:1])
    rng = np.random.default_rng(2)
    n = 600
    wrong_ref = rng.random(n) < 0.2
    ids = np.arange(n)

    def stat(p: float) -> PairStatistic:
        return PairStatistic(
            "error_jaccard",
            "higher",
            ids,
            (wrong_ref, wrong_ref ^ (rng.random(n) < p)),
            _jaccard_rows_for_test,
        )

    cand, floor = stat(0.1), {f"r{k}": stat(p) for k, p in enumerate((0.03, 0.1, 0.2))}
    conditional, _ = judge_statistic("errors/error_jaccard", cand, floor, VerdictSettings(n_bootstrap=300))
    population, _ = judge_statistic(
        "errors/error_jaccard", cand, floor, VerdictSettings(n_bootstrap=300, candidate_seed_spread=True)
    )
    assert population["resampling"] == "examples+replicas+candidate_seed"
    assert population["shortfall"] == conditional["shortfall"]
    assert population["high"] - population["low"] > conditional["high"] - conditional["low"]
