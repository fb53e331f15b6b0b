"""End to end on a tiny model: train -> evaluate, the cache, resumption, label remapping and bad input."""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest
import torch
from conftest import compose, forbid, tiny_overrides

from plugins.tasks import classification
from trustequiv.cache import OutputCache
from trustequiv.outputs import ModelOutputs
from trustequiv.run import pipeline, plan
from trustequiv.train import fine_tune as training
from trustequiv.user_errors import LabelMismatchError

FAST = ["trainer.max_epochs=8", "task.training.learning_rate=5e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, synthetic_data_dir):
    """One fine-tuned tiny reference + layer-dropped candidate, evaluated once (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = compose(
        "evaluate",
        tiny_overrides(
            tmp, tiny_bert, synthetic_data_dir, "train_missing=true", "compressor=layer_drop", *FAST
        ),
    )
    result = pipeline.evaluate(cfg)
    return tmp, cfg, result


def test_end_to_end_outputs(trained):
    tmp, _, result = trained
    run = Path(result["output_dir"])
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert metrics["calibration/tiny_ref/accuracy"] > 0.9  # the keyword task is learnable
    for key in (
        "calibration/tiny_ref/ece_uniform",
        "calibration/tiny_ref/ece_quantile",
        "calibration/tiny_ref/mce_uniform",
        "calibration/tiny_ref/brier",
        "calibration/tiny_ref/brier_positive",
        "calibration/tiny_ref/nll",
        "calibration/tiny_ref_vs_tiny_cand+layer_drop/ece_uniform_diff_ci_low",
        "errors/tiny_ref_vs_tiny_cand+layer_drop/error_jaccard",
        "errors/tiny_ref_vs_tiny_cand+layer_drop/flip_rate",
        "errors/tiny_ref_vs_tiny_cand+layer_drop/mcnemar_p",
    ):
        assert key in metrics, key
    results = json.loads((run / "results.json").read_text())
    assert results["models"]["tiny_ref"]["fingerprint"]
    assert results["config"]["task"]["name"] == "sst2"
    header = (run / "predictions" / "tiny_ref.csv").read_text().splitlines()[0]
    assert header == "example_id,gold_label,predicted_label,p_negative,p_positive"
    assert (run / "figures" / "test" / "calibration_reliability_uniform.png").stat().st_size > 1000
    report = (run / "report.md").read_text()
    assert "calibration_reliability_uniform.png" in report and "error_jaccard" in report
    # checkpoints in Hugging Face format with label names
    ckpt = tmp / "models" / "sst2" / "tiny_cand+layer_drop"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["id2label"] == {"0": "negative", "1": "positive"}
    assert (ckpt / "model.safetensors").exists() and (ckpt / "trustequiv.json").exists()


def test_cache_hit_does_no_forward_pass(trained, monkeypatch):
    _, cfg, first = trained

    forbid(monkeypatch, classification, "load_classifier")
    forbid(monkeypatch, training, "fine_tune")
    again = pipeline.evaluate(cfg)
    assert all(again["cached"].values())
    assert again["metrics"] == pytest.approx(first["metrics"], nan_ok=True)


def test_corrupt_cache_entry_is_recomputed(trained, tmp_path):
    tmp, cfg, first = trained
    cache_copy = tmp_path / "cache"
    shutil.copytree(tmp / "cache", cache_copy)
    entries = sorted((cache_copy / "outputs").rglob("*.safetensors"))
    entries[0].write_bytes(b"not a safetensors file")
    cfg2 = compose(
        "evaluate", [*_overrides_of(cfg), f"paths.cache_dir={cache_copy}", f"paths.output_dir={tmp_path}/run"]
    )
    again = pipeline.evaluate(cfg2)
    assert not all(again["cached"].values())
    assert again["metrics"]["errors/tiny_ref/accuracy"] == first["metrics"]["errors/tiny_ref/accuracy"]
    assert list((cache_copy / "corrupt").iterdir())


def test_interrupted_prediction_resumes(trained, tmp_path, monkeypatch):
    """Kill prediction after two batches; the rerun predicts only the rest and matches a clean run."""
    _, cfg, first = trained
    from trustequiv import cache as cache_mod

    real = cache_mod.PartialPredictionWriter.write_on_batch_end
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")  # a crash mid-run (Lightning turns Ctrl-C into SystemExit)

    overrides = [
        *_overrides_of(cfg),
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        "predict.batch_size=8",
    ]
    cfg2 = compose("evaluate", overrides)
    monkeypatch.setattr(cache_mod.PartialPredictionWriter, "write_on_batch_end", dying)
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.evaluate(cfg2)
    partial = list((tmp_path / "cache" / "outputs").rglob("*.partial/*.safetensors"))
    assert len(partial) == 2
    monkeypatch.setattr(cache_mod.PartialPredictionWriter, "write_on_batch_end", real)
    again = pipeline.evaluate(cfg2)
    # batches of 8, not the first run's: float32 logits differ in the last bits across batch shapes and CPUs,
    # which may flip one near-tied prediction (one example = 1/n of accuracy)
    n = first["metrics"]["errors/tiny_ref/n_examples"]
    assert again["metrics"]["errors/tiny_ref/accuracy"] == pytest.approx(
        first["metrics"]["errors/tiny_ref/accuracy"], abs=1.01 / n
    )
    assert not list((tmp_path / "cache" / "outputs").rglob("*.partial"))


def _overrides_of(cfg, compressor: bool = True) -> list[str]:
    """Re-create the overrides of a composed tiny config (paths and models reused)."""
    return [
        "task=sst2",
        "model=minilm",
        "model@reference=minilm",
        f"model.pretrained={cfg.model.pretrained}",
        f"reference.pretrained={cfg.reference.pretrained}",
        "reference.name=tiny_ref",
        "model.name=tiny_cand",
        f"paths.data_dir={cfg.paths.data_dir}",
        f"paths.models_dir={cfg.paths.models_dir}",
        "logger=none",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "task.max_length=32",
        *(["compressor=layer_drop"] if compressor else []),
    ]


def test_label_remapping_by_name(trained, tmp_path):
    """A checkpoint whose id2label lists the classes in the other order gives the same canonical logits."""
    from transformers import AutoModelForSequenceClassification

    tmp, cfg, _ = trained
    src = tmp / "models" / "sst2" / "tiny_ref"
    flipped = tmp_path / "flipped"
    model = AutoModelForSequenceClassification.from_pretrained(src)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))
    model.config.id2label = {0: "POSITIVE", 1: "NEGATIVE"}
    model.config.label2id = {"POSITIVE": 0, "NEGATIVE": 1}
    model.save_pretrained(flipped)
    for f in src.glob("*.txt"):
        shutil.copy(f, flipped)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, flipped)
    overrides = [
        *_overrides_of(cfg, compressor=False),
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        f"model.checkpoint={flipped}",
        "model.name=flipped",
    ]
    result = pipeline.evaluate(compose("evaluate", overrides))
    m = result["metrics"]
    assert m["errors/tiny_ref_vs_flipped/agreement"] == 1.0
    # same weights, head rows swapped: equal up to float32 rounding of logits of the NLL's size
    nll = abs(m["calibration/tiny_ref/nll"])
    assert m["calibration/tiny_ref_vs_flipped/nll_diff"] == pytest.approx(0.0, abs=1e-5 * max(1.0, nll))


def test_mismatched_labels_raise(trained, tmp_path):
    from transformers import AutoConfig

    tmp, cfg, _ = trained
    src = tmp / "models" / "sst2" / "tiny_ref"
    other = tmp_path / "other"
    shutil.copytree(src, other)
    config = AutoConfig.from_pretrained(other)
    config.id2label = {0: "entailment", 1: "contradiction"}
    config.label2id = {"entailment": 0, "contradiction": 1}
    config.save_pretrained(other)
    overrides = [
        *_overrides_of(cfg, compressor=False),
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        f"model.checkpoint={other}",
        "model.name=other",
    ]
    with pytest.raises(LabelMismatchError, match="entailment"):
        pipeline.evaluate(compose("evaluate", overrides))


def test_missing_checkpoint_names_the_command(tiny_bert, synthetic_data_dir, tmp_path):
    cfg = compose("evaluate", tiny_overrides(tmp_path, tiny_bert, synthetic_data_dir))
    with pytest.raises(FileNotFoundError, match=r"python train.py model=tiny_ref task=sst2"):
        pipeline.evaluate(cfg)


def test_missing_data_file_names_the_path(tiny_bert, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = compose("evaluate", tiny_overrides(tmp_path, tiny_bert, tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        pipeline.evaluate(cfg)


def test_same_model_twice_is_refused(tiny_bert, synthetic_data_dir, tmp_path):
    cfg = compose(
        "evaluate", [*tiny_overrides(tmp_path, tiny_bert, synthetic_data_dir), "model.name=tiny_ref"]
    )
    with pytest.raises(ValueError, match="model names must differ"):
        plan.model_sources(cfg)


def test_nan_logits_are_refused():
    with pytest.raises(ValueError, match="NaN/inf logits"):
        ModelOutputs(
            name="m",
            example_ids=torch.arange(3),
            logits=torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 0.0]]),
            labels=torch.tensor([0, 1, 0]),
            label_names=("a", "b"),
        )


def test_empty_text_is_refused(tiny_bert):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trustequiv.data.batches import encode_split

    split = Dataset.from_dict({"id": [1, 2], "text_a": ["good movie", "  "], "label": [1, 0]})
    with pytest.raises(ValueError, match=r"empty text \(ids \[2\]"):
        encode_split(split, AutoTokenizer.from_pretrained(tiny_bert), pair=False, max_length=16)


def test_train_entry_refuses_to_overwrite(trained):
    tmp, cfg, _ = trained
    overrides = [o for o in _overrides_of(cfg) if not o.startswith(("model@reference", "reference."))]
    overrides = [
        o.replace("model.name=tiny_cand", "model.name=tiny_ref") for o in overrides if "compressor" not in o
    ]
    with pytest.raises(FileExistsError, match="overwrite=true"):
        pipeline.train(compose("train", [*overrides, f"paths.output_dir={tmp}/train_run"]))


def test_cache_roundtrip_keeps_tensors(tmp_path):
    cache = OutputCache(tmp_path)
    out = ModelOutputs(
        name="m",
        example_ids=torch.tensor([5, 3]),
        logits=torch.randn(2, 3),
        labels=torch.tensor([0, 2]),
        label_names=("a", "b", "c"),
        embeddings=torch.randn(2, 4),
    )
    cache.save("ab" * 32, out, {"model": "m"})
    back = cache.load("ab" * 32, "renamed")
    assert (
        back.name == "renamed"
        and torch.equal(back.logits, out.logits)
        and back.label_names == out.label_names
    )


class _Recorder:
    """A characteristic that needs the model and OOD outputs, and records what it was given."""

    from trustequiv.characteristic import Characteristic as _Base

    class Impl(_Base):
        name = "recorder"
        needs_model = True
        needs_ood = True
        seen: typing.ClassVar[list] = []

        def collect(self, model, outputs, data, task):
            assert list(data["id"]) == outputs.example_ids.tolist()  # aligned to the outputs' order
            return {"n_texts": len(data), "first": data["text_a"][0], "task": task["name"]}

        def compare(self, reference, candidate):
            from trustequiv.outputs import CharacteristicResult

            self.seen.append((reference, candidate))
            return CharacteristicResult(metrics={"x/y": 1.0})


def test_collect_and_ood_outputs_reach_characteristics(trained, tmp_path, monkeypatch):
    _, cfg, _ = trained
    char = _Recorder.Impl()
    monkeypatch.setattr(plan, "build_characteristics", lambda cfg: [char])
    overrides = [
        *_overrides_of(cfg),
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        "ood=[validation]",
    ]
    result = pipeline.evaluate(compose("evaluate", overrides))
    ref, _ = char.seen[0]
    assert ref.collected["recorder"]["task"] == "sst2" and ref.collected["recorder"]["n_texts"] == 64
    assert set(ref.ood) == {"sst2/validation"} and len(ref.ood["sst2/validation"]) > 0
    assert result["metrics"]["recorder/x/y"] == 1.0
    # the second run takes collect's result from the cache
    monkeypatch.setattr(
        _Recorder.Impl, "collect", lambda *a: (_ for _ in ()).throw(AssertionError("recollected"))
    )
    pipeline.evaluate(compose("evaluate", overrides))


def test_extra_split_and_per_characteristic_splits(trained, tmp_path, monkeypatch):
    """An available optional extra split (AdvGLUE) is scored; a characteristic with ``splits`` skips it;
    ``limit_ood_examples`` limits OOD sets apart from the splits."""
    _, cfg, _ = trained
    data = tmp_path / "data"
    shutil.copytree(cfg.paths.data_dir, data)
    rows = [{"idx": i, "label": i % 2, "sentence": f"a fine film number {i} ."} for i in range(6)]
    (data / "advglue").mkdir()
    (data / "advglue" / "dev.json").write_text(json.dumps({"sst2": rows}))
    only_test, everywhere = _Recorder.Impl(), _Recorder.Impl()
    only_test.splits = ["test"]
    only_test.name = "recorder_test"
    everywhere.seen = []
    built = plan.build_characteristics
    monkeypatch.setattr(plan, "build_characteristics", lambda c: [*built(c), only_test, everywhere])
    overrides = [
        *_overrides_of(cfg),
        f"paths.data_dir={data}",
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        "ood=[validation]",
        "limit_ood_examples={sst2/validation:5}",
    ]
    metrics = pipeline.evaluate(compose("evaluate", overrides))["metrics"]
    assert "test_advglue/calibration/tiny_ref/accuracy" in metrics
    assert any(k.startswith("test_advglue/errors/tiny_ref_vs_") and k.endswith("/agreement") for k in metrics)
    assert "recorder_test/x/y" in metrics and "test_advglue/recorder_test/x/y" not in metrics
    assert "test_advglue/recorder/x/y" in metrics
    assert {len(ref.ood["sst2/validation"]) for ref, _ in everywhere.seen} == {5}


def test_ood_set_with_other_labels_is_refused(trained, tmp_path):
    _, cfg, _ = trained
    bad = compose("evaluate", [*_overrides_of(cfg), f"paths.output_dir={tmp_path}/run", "ood=[mnli/test]"])
    with pytest.raises(ValueError, match="must share the task's label names"):
        plan.ood_sets(bad, dict(bad.task))


def test_killed_training_leaves_no_checkpoint(tiny_bert, synthetic_data_dir, tmp_path, monkeypatch):
    """A fine-tuning run that dies after saving a best checkpoint must not look finished to evaluate.py."""
    from trustequiv.train import fine_tune as training

    real = training.BestHFCheckpoint.on_validation_end

    def dying(self, trainer, module):
        real(self, trainer, module)
        raise RuntimeError("killed")

    monkeypatch.setattr(training.BestHFCheckpoint, "on_validation_end", dying)
    cfg = compose("evaluate", tiny_overrides(tmp_path, tiny_bert, synthetic_data_dir, "train_missing=true"))
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.evaluate(cfg)
    assert not (tmp_path / "models" / "sst2" / "tiny_ref").exists()
    assert (tmp_path / "models" / "sst2" / "tiny_ref.training" / "config.json").exists()


def test_pair_findings_need_a_ci_excluding_zero_and_a_real_size():
    from trustequiv.report.run_report import pair_findings

    m = {
        "calibration/a_vs_b/ece_uniform_diff": 0.03,
        "calibration/a_vs_b/ece_uniform_diff_ci_low": 0.01,
        "calibration/a_vs_b/ece_uniform_diff_ci_high": 0.05,
        "calibration/a_vs_b/brier_diff": 0.0001,  # certain but negligible
        "calibration/a_vs_b/brier_diff_ci_low": 0.00005,
        "calibration/a_vs_b/brier_diff_ci_high": 0.0002,
        "calibration/a_vs_b/nll_diff": 0.2,  # large but uncertain
        "calibration/a_vs_b/nll_diff_ci_low": -0.1,
        "calibration/a_vs_b/nll_diff_ci_high": 0.5,
        "errors/a_vs_b/error_jaccard": 0.4,
        "errors/a_vs_b/flip_rate": 0.1,
    }
    lines = pair_findings(m, "a_vs_b")
    assert len(lines) == 2 and lines[0].startswith("ece_uniform (calibration) differs: +0.0300")
    assert "err on different examples" in lines[1]


def test_limit_examples_is_a_hash_sample_not_the_first_ids():
    from datasets import Dataset

    ids = list(range(1000))
    split = Dataset.from_dict({"id": ids, "label": [1] * 500 + [0] * 500})  # sorted by label, like IMDB
    sample = plan.limit(split, 100)
    assert len(sample) == 100 and 20 < sum(sample["label"]) < 80
    shuffled = split.shuffle(seed=3)
    assert sorted(plan.limit(shuffled, 100)["id"]) == sorted(sample["id"])


def test_offline_hub_error_names_the_fix(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = compose("evaluate", ["task=mrpc", f"paths.output_dir={tmp_path}", "logger=none"])
    with pytest.raises(ConnectionError, match=r"set paths.data_dir to a folder of local task files"):
        pipeline.load_task_data(cfg)


def test_changed_data_is_not_served_stale_outputs(trained, tmp_path):
    """Every label of the test file flipped: the rerun on the same cache predicts again (the key holds the
    split's content) and reports the accuracy on the new labels."""
    tmp, cfg, first = trained
    data = tmp_path / "data"
    shutil.copytree(cfg.paths.data_dir, data)
    dev = data / "sst2" / "dev.tsv"
    header, *rows = dev.read_text().splitlines()
    flipped = [f"{text}\t{1 - int(label)}" for text, label in (r.rsplit("\t", 1) for r in rows)]
    dev.write_text("\n".join([header, *flipped]) + "\n")
    overrides = [*_overrides_of(cfg), f"paths.data_dir={data}", f"paths.output_dir={tmp_path}/run"]
    overrides += [f"paths.cache_dir={tmp}/cache"]  # the cache of the first run
    again = pipeline.evaluate(compose("evaluate", overrides))
    assert not again["cached"]["tiny_ref/test"]
    before = first["metrics"]["errors/tiny_ref/accuracy"]
    assert again["metrics"]["errors/tiny_ref/accuracy"] == pytest.approx(1 - before)
