"""Trust logged while a compressed candidate trains (issue 12): TrustCallback compares the model being
fine-tuned with its base (the reference) at each validation epoch; logger=csv writes the metrics.csv read
back here."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, tiny_overrides

from trustequiv.models.source import build_source
from trustequiv.outputs import ModelOutputs
from trustequiv.plain import plain
from trustequiv.report.trust_curves import plot_trust_curves, read_trust_curves
from trustequiv.run import pipeline
from trustequiv.tracking import make_csv_logger
from trustequiv.train.checkpoints import build_checkpoint
from trustequiv.train.lightning_module import SequenceClassifier
from trustequiv.train.trust_callbacks import (
    TrustCallback,
    build_trust_characteristics,
    scoped_metrics,
    trust_settings,
)

HEADLINE = (
    "trust/calibration/ece_uniform_diff",
    "trust/errors/error_jaccard",
    "trust/errors/flip_rate",
    "trust/representation/knn_k10",
    "trust/representation/cka_linear",
)
CONTEXT = {"task": {"eval_split": "test", "name": "sst2"}, "paths": {"cache_dir": "/tmp/unused"}}


def _cfg(tmp: Path, tiny: Path, data: Path, *extra: str, epochs: int = 2):
    overrides = tiny_overrides(
        tmp,
        tiny,
        data,
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "callbacks.trust.enabled=true",
        *extra,
        candidate="tiny",
    )
    drop = ("model@reference", "reference.", "logger=none")
    return compose("train", [o for o in overrides if not o.startswith(drop)])


def _train(cfg):
    """What pipeline.train does, with the CSV logger of ``logger=csv``: ``(checkpoint, metrics.csv, ctx)``."""
    spec = build_source(cfg.model, cfg.get("compressor")).fine_tune_spec()
    logger = make_csv_logger(cfg.get("logger"), save_dir=cfg.paths.output_dir, name="train")
    ctx = pipeline.run_context(cfg, plain(cfg.task), logger=logger)
    path = build_checkpoint(spec, ctx)
    return path, Path(logger.log_dir) / "metrics.csv", ctx


def _trust_rows(metrics_csv: Path) -> list[dict[str, str]]:
    if not metrics_csv.exists():
        return []
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if any(k.startswith("trust/") and v not in ("", None) for k, v in r.items())]


@pytest.fixture(scope="module")
def base_models(tiny_bert, synthetic_data_dir, tmp_path_factory) -> Path:
    """The fine-tuned base (the reference), made once: ``<dir>/sst2/tiny``."""
    tmp = tmp_path_factory.mktemp("base")
    path, _, _ = _train(_cfg(tmp, tiny_bert, synthetic_data_dir, epochs=1))
    return path.parent.parent


def _with_base(tmp: Path, base_models: Path) -> None:
    shutil.copytree(base_models, tmp / "models")


def test_compressed_fine_tuning_logs_trust_each_epoch(tiny_bert, synthetic_data_dir, base_models, tmp_path):
    """layer_drop re-fine-tuned from its base for 2 epochs: metrics.csv has one row per validation epoch
    with the trust/ metrics, and the best epoch's row equals the characteristics' compare of the base's
    cached outputs with the saved checkpoint's own predictions (what evaluate.py would compute)."""
    _with_base(tmp_path, base_models)
    cfg = _cfg(tmp_path, tiny_bert, synthetic_data_dir, "compressor=layer_drop")
    path, metrics_csv, ctx = _train(cfg)
    rows = _trust_rows(metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        for key in HEADLINE:
            assert row[key] not in ("", None), key
        assert 0.0 <= float(row["trust/errors/error_jaccard"]) <= 1.0
        assert 0.0 <= float(row["trust/errors/flip_rate"]) <= 1.0
        assert 0.0 <= float(row["trust/representation/knn_k10"]) <= 1.0
    assert all(
        k.split("/")[1] in {"calibration", "errors", "representation"} for k in rows[0] if "trust/" in k
    )
    assert plot_trust_curves(metrics_csv, tmp_path / "trust_curves.png").stat().st_size > 0

    # A later evaluate of the base on the validation split reuses the outputs the callback predicted.
    data = ctx.dataset()["validation"]
    base = build_source(cfg.model)
    base.prepare(ctx)
    reference, cached = base.outputs(data, ctx.task_cfg, "validation", ctx)
    assert cached
    candidate = build_source(cfg.model, cfg.compressor)
    assert candidate.prepare(ctx)["checkpoint"] == str(path)
    cand, _ = candidate.outputs(data, ctx.task_cfg, "validation", ctx)

    chars = build_trust_characteristics(
        ["calibration", "errors", "representation"],
        context={"task": ctx.task_cfg, "paths": {}},
        overrides=cfg.callbacks.trust.overrides,
    )
    expected = TrustCallback(reference, chars).compare(cand)
    best = next(r for r in rows if int(r["epoch"]) == int(_metadata(path)["best_epoch"]))
    n = len(data)
    for key in HEADLINE:
        # knn: one neighbour of one example moves the mean by 1 / (K n); the rest are continuous
        tol = 1.0 / (10 * n) if "knn" in key else 1e-4 * max(1.0, abs(expected[key]))
        assert float(best[key]) == pytest.approx(expected[key], abs=tol), key


def _metadata(path: Path) -> dict:
    import json

    return json.loads((path / "trustequiv.json").read_text())


def test_reference_outputs_are_predicted_once(
    tiny_bert, synthetic_data_dir, base_models, tmp_path, monkeypatch
):
    """A second fine-tuning against the same base takes the reference's validation outputs from the cache:
    nothing is predicted."""
    _with_base(tmp_path, base_models)
    cfg = _cfg(tmp_path, tiny_bert, synthetic_data_dir, "compressor=layer_drop", epochs=1)
    _train(cfg)
    entries = sorted((tmp_path / "cache" / "outputs").rglob("*.safetensors"))
    assert len(entries) == 1

    def boom(*args, **kwargs):
        raise AssertionError("the reference's validation outputs were predicted again")

    monkeypatch.setattr(SequenceClassifier, "predict_step", boom)
    _, metrics_csv, _ = _train(
        _cfg(tmp_path, tiny_bert, synthetic_data_dir, "compressor=layer_drop", epochs=1)
    )
    assert len(_trust_rows(metrics_csv)) == 1
    assert sorted((tmp_path / "cache" / "outputs").rglob("*.safetensors")) == entries


def test_disabled_logs_no_trust(tiny_bert, synthetic_data_dir, base_models, tmp_path):
    """callbacks.trust.enabled=false: no trust/ column, and the base is not predicted."""
    _with_base(tmp_path, base_models)
    cfg = _cfg(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        "compressor=layer_drop",
        "callbacks.trust.enabled=false",
        epochs=1,
    )
    _, metrics_csv, _ = _train(cfg)
    with metrics_csv.open(newline="") as f:
        header = next(csv.reader(f))
    assert "val/acc" in header and not [c for c in header if c.startswith("trust/")]
    assert not (tmp_path / "cache" / "outputs").exists()


def test_attribution_on_a_small_sample(tiny_bert, synthetic_data_dir, base_models, tmp_path):
    """callbacks.trust.attribution=true: IG alignment on the seeded sample of 4 examples, each epoch."""
    _with_base(tmp_path, base_models)
    cfg = _cfg(
        tmp_path,
        tiny_bert,
        synthetic_data_dir,
        "compressor=layer_drop",
        "callbacks.trust.characteristics=[errors]",
        "callbacks.trust.attribution=true",
        "callbacks.trust.attribution_examples=4",
        "++callbacks.trust.overrides.attribution_ig.n_steps=8",
    )
    _, metrics_csv, _ = _train(cfg)
    rows = _trust_rows(metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= float(row["trust/attribution_ig/jaccard"]) <= 1.0
        assert float(row["trust/attribution_ig/n_examples"]) == 4


def test_trust_curves_figure(tmp_path):
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text(
        "epoch,step,val/acc,trust/errors/error_jaccard,trust/errors/error_jaccard_ci_low,"
        "trust/errors/error_jaccard_ci_high,trust/calibration/ece_uniform_diff\n"
        "0,10,0.8,,,,\n"
        "0,10,,0.5,0.4,0.6,0.02\n"
        "1,20,,0.6,0.5,0.7,0.01\n"
    )
    curves = read_trust_curves(metrics_csv)
    assert curves["trust/errors/error_jaccard"] == [(0, 0.5), (1, 0.6)]
    out = plot_trust_curves(metrics_csv, tmp_path / "fig" / "trust.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "none.csv").write_text("epoch,step,val/acc\n0,10,0.8\n")
    with pytest.raises(ValueError, match="no trust/ metrics"):
        read_trust_curves(tmp_path / "none.csv")


def _outputs(name: str, logits, labels, emb) -> ModelOutputs:
    return ModelOutputs(
        name=name,
        example_ids=torch.arange(len(labels)),
        logits=logits,
        labels=labels,
        label_names=("negative", "positive"),
        embeddings=emb,
    )


def test_callback_compare_is_the_characteristics_compare():
    """The logged numbers are each characteristic's own compare, scoped trust/<name>/<metric>."""
    g = torch.Generator().manual_seed(0)
    n = 40
    labels = torch.randint(0, 2, (n,), generator=g)
    ref = _outputs("base", torch.randn(n, 2, generator=g), labels, torch.randn(n, 8, generator=g))
    cand = _outputs("tiny", torch.randn(n, 2, generator=g), labels, torch.randn(n, 6, generator=g))
    few = {"n_bootstrap": 20}
    chars = build_trust_characteristics(
        ["errors", "calibration"], context=CONTEXT, overrides={"errors": few, "calibration": few}
    )
    got = TrustCallback(ref, chars).compare(cand)
    named = dataclasses.replace(ref, name="reference"), dataclasses.replace(cand, name="candidate")
    for char in chars:
        want = scoped_metrics(char.name, char.compare(*named).metrics)
        assert want and {k: got[k] for k in want} == pytest.approx(want)
    assert "trust/errors/error_jaccard" in got and "trust/calibration/ece_uniform_diff" in got


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown characteristic 'nope'"):
        build_trust_characteristics(["nope"], context=CONTEXT)
    with pytest.raises(ValueError, match="adversarial needs the model run again"):
        build_trust_characteristics(["adversarial"], context=CONTEXT)
    with pytest.raises(ValueError, match="distribution needs out-of-distribution sets"):
        build_trust_characteristics(["distribution"], context=CONTEXT)
    with pytest.raises(ValueError, match="_target_ cannot be set"):
        build_trust_characteristics(
            ["errors"], context=CONTEXT, overrides={"errors": {"_target_": "os.system"}}
        )
    with pytest.raises(ValueError, match=r"callbacks\.trust has no setting colour"):
        trust_settings({"trust": {"colour": 1}})
    assert trust_settings({})["enabled"] is True
    (calibration,) = build_trust_characteristics(
        ["calibration"], context=CONTEXT, overrides={"calibration": {"n_bootstrap": 7}}
    )
    assert calibration.n_bootstrap == 7
