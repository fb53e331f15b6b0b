"""CalibrationCharacteristic and ErrorsCharacteristic on synthetic ModelOutputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from plugins.characteristics.calibration import CalibrationCharacteristic
from plugins.characteristics.errors import ErrorsCharacteristic
from trustequiv.characteristic import pair_name
from trustequiv.functional import expected_calibration_error
from trustequiv.outputs import ModelOutputs

ROOT = Path(__file__).resolve().parents[2]
N_BOOT = 100


def make_outputs(name: str, n: int = 400, c: int = 3, seed: int = 0, noise: float = 1.0) -> ModelOutputs:
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(0, c, (n,), generator=g)  # same gold labels for every model
    g.manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * noise
    logits[torch.arange(n), labels] += 1.5
    names = ("entailment", "neutral", "contradiction")[:c] if c == 3 else tuple(f"c{i}" for i in range(c))
    return ModelOutputs(
        name=name, example_ids=torch.arange(n) + 10, logits=logits, labels=labels, label_names=names
    )


def shuffled(out: ModelOutputs, seed: int = 0) -> ModelOutputs:
    perm = torch.randperm(len(out), generator=torch.Generator().manual_seed(seed))
    return out.select(out.example_ids[perm])


@pytest.fixture
def cal() -> CalibrationCharacteristic:
    return CalibrationCharacteristic(n_bootstrap=N_BOOT)


@pytest.fixture
def err() -> ErrorsCharacteristic:
    return ErrorsCharacteristic(n_bootstrap=N_BOOT)


# --------------------------------------------------------------------------------------------------------
# calibration


def test_calibration_per_model_keys(cal: CalibrationCharacteristic) -> None:
    res = cal.per_model(make_outputs("bert"))
    expected = {
        f"bert/{k}" for k in ("accuracy", "ece_uniform", "ece_quantile", "mce_uniform", "mce_quantile")
    }
    expected |= {"bert/brier", "bert/nll"}
    assert set(res.metrics) == expected  # no brier_positive on a 3-class task
    assert set(res.tables) == {"calibration_bins_bert_uniform", "calibration_bins_bert_quantile"}
    rows = res.tables["calibration_bins_bert_uniform"]
    assert len(rows) == 10 and sum(r["count"] for r in rows) == 400
    assert rows[0]["accuracy"] is None  # top-label confidence >= 1/3: first bin empty
    assert any("quantile" in n for n in res.notes)
    binary = cal.per_model(make_outputs("tiny", c=2))
    assert "tiny/brier_positive" in binary.metrics


def test_calibration_matches_functional(cal: CalibrationCharacteristic) -> None:
    out = make_outputs("bert")
    res = cal.per_model(out)
    assert res.metrics["bert/ece_quantile"] == pytest.approx(
        expected_calibration_error(out.probs, out.labels, 10, "quantile"), abs=1e-12
    )


def test_calibration_compare_self_is_zero(cal: CalibrationCharacteristic) -> None:
    out = make_outputs("bert")
    res = cal.compare(out, out)
    pair = pair_name("bert", "bert")
    assert res.metrics[f"{pair}/ece_quantile_diff"] == 0.0
    assert all(v == 0.0 for v in res.metrics.values())


def test_calibration_compare_keys_and_intervals(cal: CalibrationCharacteristic) -> None:
    ref, cand = make_outputs("bert"), make_outputs("mini", seed=1, noise=2.0)
    res = cal.compare(ref, cand)
    pair = pair_name("bert", "mini")
    metrics = ["accuracy", "ece_uniform", "ece_quantile", "mce_uniform", "mce_quantile", "brier", "nll"]
    for m in metrics:
        est, lo, hi = (res.metrics[f"{pair}/{m}_diff{s}"] for s in ("", "_ci_low", "_ci_high"))
        assert lo <= est <= hi, m
    assert len(res.metrics) == 3 * len(metrics)
    per = {k: cal.per_model(o).metrics for k, o in (("bert", ref), ("mini", cand))}
    assert res.metrics[f"{pair}/brier_diff"] == pytest.approx(
        per["mini"]["mini/brier"] - per["bert"]["bert/brier"]
    )


def test_calibration_compare_handles_misaligned_order(cal: CalibrationCharacteristic) -> None:
    ref, cand = make_outputs("bert"), make_outputs("mini", seed=1)
    aligned = cal.compare(ref, cand).metrics
    extra = ModelOutputs(  # shuffled, with ids the reference lacks
        name="mini",
        example_ids=torch.cat([cand.example_ids, torch.tensor([99999])]),
        logits=torch.cat([cand.logits, torch.zeros(1, 3)]),
        labels=torch.cat([cand.labels, torch.tensor([0])]),
        label_names=cand.label_names,
    )
    assert cal.compare(ref, shuffled(extra)).metrics == pytest.approx(aligned)


def test_calibration_unlabelled_rows_excluded(cal: CalibrationCharacteristic) -> None:
    out = make_outputs("bert")
    labels = out.labels.clone()
    labels[::4] = -1
    partial = ModelOutputs("bert", out.example_ids, out.logits, labels, out.label_names)
    keep = labels >= 0
    res = cal.per_model(partial).metrics
    assert res["bert/ece_uniform"] == pytest.approx(expected_calibration_error(out.probs[keep], labels[keep]))
    none = ModelOutputs("bert", out.example_ids, out.logits, torch.full_like(labels, -1), out.label_names)
    with pytest.raises(ValueError, match="gold label"):
        cal.per_model(none)
    with pytest.raises(ValueError, match="gold label"):
        cal.compare(none, none)


def test_calibration_summarize_figures(cal: CalibrationCharacteristic) -> None:
    outs = [make_outputs("bert"), make_outputs("mini", seed=1, noise=2.0)]
    res = cal.summarize(outs)
    assert set(res.figures) == {"reliability_uniform", "reliability_quantile"}
    fig = res.figures["reliability_quantile"]
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("bert (ECE") for t in legend) and any(t.startswith("mini (ECE") for t in legend)


def test_calibration_config_args_validated() -> None:
    with pytest.raises(ValueError, match="strategies"):
        CalibrationCharacteristic(strategies=["kmeans"])
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationCharacteristic(n_bins=0)
    only = CalibrationCharacteristic(strategies=["quantile"], n_bootstrap=10)
    assert "bert/ece_uniform" not in only.per_model(make_outputs("bert")).metrics


# --------------------------------------------------------------------------------------------------------
# errors


def test_errors_per_model(err: ErrorsCharacteristic) -> None:
    out = make_outputs("bert")
    m = err.per_model(out).metrics
    wrong = int((out.predictions != out.labels).sum())
    assert m == pytest.approx(
        {"bert/accuracy": 1 - wrong / 400, "bert/n_errors": wrong, "bert/n_examples": 400}
    )


def test_errors_compare_self(err: ErrorsCharacteristic) -> None:
    out = make_outputs("bert")
    m = err.compare(out, out).metrics
    p = pair_name("bert", "bert")
    assert m[f"{p}/error_jaccard"] == 1.0 and m[f"{p}/agreement"] == 1.0
    assert m[f"{p}/cohen_kappa"] == pytest.approx(1.0) and m[f"{p}/flip_rate"] == 0.0
    assert m[f"{p}/mcnemar_p"] == 1.0 and m[f"{p}/js_distance"] == pytest.approx(0.0, abs=1e-7)
    assert m[f"{p}/correct_to_wrong"] == 0 and m[f"{p}/wrong_to_correct"] == 0
    assert m[f"{p}/error_jaccard_ci_low"] == m[f"{p}/error_jaccard_ci_high"] == 1.0


def test_errors_compare_pair(err: ErrorsCharacteristic) -> None:
    ref, cand = make_outputs("bert"), make_outputs("mini", seed=1, noise=2.0)
    res = err.compare(ref, cand)
    p = pair_name("bert", "mini")
    expected = {
        "error_jaccard", "error_jaccard_ci_low", "error_jaccard_ci_high", "agreement", "agreement_ci_low",
        "agreement_ci_high", "flip_rate", "correct_to_wrong", "wrong_to_correct", "cohen_kappa", "mcnemar_p",
        "js_distance",
    }  # fmt: skip
    assert set(res.metrics) == {f"{p}/{k}" for k in expected}
    for k in ("error_jaccard", "agreement"):
        assert res.metrics[f"{p}/{k}_ci_low"] <= res.metrics[f"{p}/{k}"] <= res.metrics[f"{p}/{k}_ci_high"]
    cols = res.per_example[f"errors_{p}"]
    assert set(cols) == {"example_id", "reference_correct", "candidate_correct"}
    flips = np.sum(cols["reference_correct"] != cols["candidate_correct"])
    assert res.metrics[f"{p}/flip_rate"] == pytest.approx(flips / 400)


def test_errors_misaligned_and_unlabelled(err: ErrorsCharacteristic) -> None:
    ref, cand = make_outputs("bert"), make_outputs("mini", seed=1)
    base = err.compare(ref, cand)
    moved = err.compare(ref, shuffled(cand, seed=3))
    assert moved.metrics == pytest.approx(base.metrics)
    labels = ref.labels.clone()
    labels[:100] = -1
    ref_u = ModelOutputs("bert", ref.example_ids, ref.logits, labels, ref.label_names)
    cand_u = ModelOutputs("mini", cand.example_ids, cand.logits, labels, cand.label_names)
    res = err.compare(ref_u, cand_u)
    p = pair_name("bert", "mini")
    assert len(res.per_example[f"errors_{p}"]["example_id"]) == 300
    assert res.metrics[f"{p}/agreement"] == base.metrics[f"{p}/agreement"]  # needs no gold label: all rows
    none = torch.full_like(labels, -1)
    with pytest.raises(ValueError, match="gold label"):
        err.compare(
            ModelOutputs("bert", ref.example_ids, ref.logits, none, ref.label_names),
            ModelOutputs("mini", cand.example_ids, cand.logits, none, cand.label_names),
        )


def test_errors_summarize_matrix(err: ErrorsCharacteristic) -> None:
    outs = [make_outputs("bert"), make_outputs("mini", seed=1), make_outputs("tiny", seed=2, noise=2.0)]
    res = err.summarize(outs)
    assert set(res.tables) == {"error_jaccard_matrix", "agreement_matrix"}
    rows = res.tables["error_jaccard_matrix"]
    assert [r["model"] for r in rows] == ["bert", "mini", "tiny"]
    assert all(r[r["model"]] == 1.0 for r in rows)
    assert (
        rows[0]["mini"]
        == rows[1]["bert"]
        == err.compare(outs[0], outs[1]).metrics["bert_vs_mini/error_jaccard"]
    )
    assert isinstance(res.figures["error_jaccard_matrix"], Figure)
    assert err.summarize(outs[:1]).tables == {}


# --------------------------------------------------------------------------------------------------------
# configs and imports


@pytest.mark.parametrize("name", ["calibration", "errors"])
def test_config_instantiates(name: str) -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "characteristic" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == f"# @package characteristic.{name}"
    obj = hydra_utils.instantiate(OmegaConf.load(path))
    assert obj.name == name and obj.seed == 42 and obj.n_bootstrap == 1000


def test_plugins_import_no_framework() -> None:
    code = (
        "import sys, plugins.characteristics.calibration, plugins.characteristics.errors; "
        "bad = {'lightning', 'pytorch_lightning', 'wandb', 'hydra'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
