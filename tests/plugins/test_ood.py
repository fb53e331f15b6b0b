"""OOD scores, detection metrics (against sklearn) and decision agreement; the distribution characteristic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score, roc_curve

from plugins.characteristics.distribution import DistributionCharacteristic
from trustequiv.functional.ood import (
    aupr,
    auroc,
    decision_agreement,
    detection_metrics,
    energy_score,
    fpr_at_tpr,
    id_threshold,
    msp_score,
    ood_score,
)
from trustequiv.outputs import ModelOutputs


@pytest.fixture(params=[0, 1, 2])
def scores(request):
    rng = np.random.default_rng(request.param)
    s_in = rng.normal(1.0, 1.0, 200)
    s_out = rng.normal(0.0, 1.0, 150)
    if request.param == 2:  # heavy ties
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    return s_in, s_out


def _sk(s_in, s_out):
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    return y, np.r_[s_in, s_out]


def test_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert np.allclose(msp_score(logits), torch.softmax(logits, 1).max(1).values.numpy())
    assert np.allclose(energy_score(logits), torch.logsumexp(logits, 1).numpy())
    assert np.allclose(energy_score(logits, 2.0), 2.0 * torch.logsumexp(logits / 2.0, 1).numpy())
    assert msp_score(logits)[1] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_score(logits, "odin")
    with pytest.raises(ValueError, match="temperature"):
        energy_score(logits, 0.0)


def test_auroc_and_aupr_match_sklearn(scores):
    s_in, s_out = scores
    y, s = _sk(s_in, s_out)
    assert auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr(s_in, s_out, "in") == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr(s_in, s_out, "out") == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5, 1.0])
def test_fpr_at_tpr_matches_sklearn_roc_curve(scores, tpr):
    s_in, s_out = scores
    y, s = _sk(s_in, s_out)
    fpr, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(s_in, s_out, tpr) == pytest.approx(fpr[np.argmax(tprs >= tpr - 1e-12)])
    t = id_threshold(s_in, tpr)
    assert np.mean(s_in >= t) >= tpr and (tpr == 1.0 or np.mean(s_in > t) < tpr)


def test_known_answers():
    m = detection_metrics(np.arange(10, 30), np.arange(0, 10))  # perfectly separated
    assert (m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_tpr, m.flagged_ood) == (1.0, 1.0, 1.0, 0.0, 1.0)
    assert m.threshold == 11.0 and m.flagged_id == pytest.approx(0.05)  # keeps 19 of 20
    same = detection_metrics(np.ones(5), np.ones(7))
    assert same.auroc == 0.5 and same.fpr_at_tpr == 1.0


def test_decision_agreement_against_sklearn_and_scipy():
    rng = np.random.default_rng(3)
    sa = rng.standard_normal(300)
    sb = sa + rng.standard_normal(300)
    fa, fb = sa < -0.5, sb < -0.7
    d = decision_agreement(fa, fb, sa, sb)
    assert d.cohen_kappa == pytest.approx(cohen_kappa_score(fa, fb))
    assert d.score_spearman == pytest.approx(spearmanr(sa, sb).statistic)
    assert d.flag_jaccard == pytest.approx(np.sum(fa & fb) / np.sum(fa | fb))
    assert d.agreement == pytest.approx(np.mean(fa == fb))
    pa, pb = fa.mean(), fb.mean()
    assert d.flag_jaccard_independent == pytest.approx(pa * pb / (pa + pb - pa * pb))
    none = decision_agreement(np.zeros(4, bool), np.zeros(4, bool), np.arange(4.0), np.arange(4.0))
    assert (none.flag_jaccard, none.cohen_kappa, none.agreement) == (1.0, 1.0, 1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([np.nan], [1.0])
    with pytest.raises(ValueError, match="tpr"):
        id_threshold([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="four"):
        decision_agreement([True], [True, False], [1.0], [1.0])


# ---------------------------------------------------------------- characteristic
def _outputs(name: str, logits: np.ndarray, offset: int, ood: dict | None = None) -> ModelOutputs:
    n = logits.shape[0]
    return ModelOutputs(
        name=name,
        example_ids=torch.arange(offset, offset + n),
        logits=torch.as_tensor(logits, dtype=torch.float32),
        labels=torch.zeros(n, dtype=torch.long),
        label_names=("a", "b", "c"),
        ood={} if ood is None else ood,
    )


def _model(name: str, rng: np.random.Generator, base_in: np.ndarray, base_out: np.ndarray, noise: float):
    lin = base_in + noise * rng.standard_normal(base_in.shape)
    lout = base_out + noise * rng.standard_normal(base_out.shape)
    ood = {"other/test": _outputs(name, lout, 10_000)}
    return _outputs(name, lin, 0, ood)


def test_characteristic_same_model_agrees_fully_and_noisy_one_less():
    rng = np.random.default_rng(0)
    base_in = rng.standard_normal((400, 3)) * 3  # confident
    base_out = rng.standard_normal((200, 3)) * 0.8  # less confident
    ref = _model("ref", rng, base_in, base_out, 0.0)
    twin = _model("twin", rng, base_in, base_out, 0.0)
    noisy = _model("noisy", rng, base_in, base_out, 1.5)
    res = DistributionCharacteristic().evaluate(ref, [twin, noisy])
    m = res.metrics
    for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "threshold", "flagged_id", "n_ood"):
        assert f"ref/other_test/{key}" in m
    assert m["ref/other_test/auroc"] > 0.7 and m["ref/other_test/n_ood"] == 200.0
    assert m["ref/other_test/flagged_id"] == pytest.approx(0.05, abs=0.003)
    assert m["ref_vs_twin/other_test/flag_agreement"] == 1.0
    assert m["ref_vs_twin/other_test/flag_kappa"] == pytest.approx(1.0)
    assert m["ref_vs_twin/other_test/score_spearman"] == pytest.approx(1.0)
    assert m["ref_vs_twin/other_test/auroc_diff"] == 0.0
    assert m["ref_vs_noisy/other_test/flag_kappa"] < 0.9
    assert 0 < m["ref_vs_noisy/other_test/ood_only_flag_jaccard"] < 1
    per = res.per_example["distribution_ref_vs_noisy_other_test"]
    assert len(per["example_id"]) == 600 and per["is_ood"].sum() == 200
    assert {"scatter_ref_vs_noisy_other_test", "roc_other_test"} <= set(res.figures)
    energy = DistributionCharacteristic(score="energy").per_model(ref).metrics
    assert energy["ref/other_test/auroc"] != m["ref/other_test/auroc"]


def test_characteristic_without_ood_sets_says_so():
    out = _outputs("m", np.zeros((5, 3)), 0)
    res = DistributionCharacteristic().evaluate(out, [_outputs("n", np.zeros((5, 3)), 0)])
    assert not res.metrics and any("no out-of-distribution" in n for n in res.notes)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="score"):
        DistributionCharacteristic(score="odin")
    with pytest.raises(ValueError, match="tpr"):
        DistributionCharacteristic(tpr=1.5)


# ---------------------------------------------------------------- through the pipeline
def test_pipeline_runs_representation_and_distribution(tiny_bert, synthetic_data_dir, tmp_path):
    from conftest import compose, tiny_overrides

    from trustequiv.run import pipeline

    cfg = compose(
        "evaluate",
        tiny_overrides(
            tmp_path,
            tiny_bert,
            synthetic_data_dir,
            "train_missing=true",
            "compressor=quantize_dynamic",
            "trainer.max_epochs=1",
            "characteristic=[representation,distribution]",
            "characteristic.representation.ks=[1,5,10]",
            "characteristic.representation.n_permutations=10",
            "ood=[validation]",
        ),
    )
    result = pipeline.evaluate(cfg)
    metrics = json.loads((Path(result["output_dir"]) / "results.json").read_text())["metrics"]
    pair = "tiny_ref_vs_tiny_cand+quantize_dynamic"
    for key in (
        f"representation/{pair}/knn_k10",
        f"representation/{pair}/knn_k10_null_mean",
        f"representation/{pair}/cka_linear",
        f"representation/{pair}/cka_linear_debiased_p",
        "distribution/tiny_ref/sst2_validation/auroc",
        f"distribution/{pair}/sst2_validation/flag_kappa",
    ):
        assert key in metrics, key
    assert metrics[f"representation/{pair}/knn_k10"] > metrics[f"representation/{pair}/knn_k10_null_q95"]
