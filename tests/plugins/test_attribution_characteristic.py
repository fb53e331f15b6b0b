"""The attribution characteristics: collect on a tiny model, compare, self-comparison, explained class."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from matplotlib.figure import Figure
from test_attribution_perturb import HYPOTHESIS, PREMISE, tiny_classifier

from plugins.characteristics.attribution import IgAttribution, LimeAttribution, ShapAttribution
from trustequiv.data.sampling import sample_positions
from trustequiv.functional.attribution import ALIGNMENT_METRICS
from trustequiv.models.handle import ModelHandle
from trustequiv.models.loading import LoadedModel
from trustequiv.models.scorer import TorchTextScorer
from trustequiv.outputs import ModelOutputs

TASK = {"name": "toy_pair", "label_names": ["negative", "positive"], "pair": True, "max_length": 32}
FAST = {"n_bootstrap": 50, "n_figure_examples": 2}


def loaded(tiny_bert, seed):
    model, tok = tiny_classifier(tiny_bert, seed)
    return LoadedModel(model, tok, [0, 1], tiny_bert, f"fp{seed}", {})


def data():
    n = len(PREMISE)
    return Dataset.from_dict(
        {"id": [10, 11, 12][:n], "text_a": PREMISE, "text_b": HYPOTHESIS, "label": [1, 0, 1][:n]}
    )


def outputs(name, pred):
    ds = data()
    return ModelOutputs(
        name=name,
        example_ids=torch.tensor(ds["id"]),
        logits=torch.log(torch.tensor(pred)),
        labels=torch.tensor(ds["label"]),
        label_names=tuple(TASK["label_names"]),
    )


def collect_for(char, tiny_bert, seed, name, handle=None):
    m = loaded(tiny_bert, seed)
    handle = handle or TorchTextScorer.handle(m, name=name)
    probs = handle.scorer(TASK)(list(zip(PREMISE, HYPOTHESIS, strict=True)))
    out = outputs(name, probs.astype(np.float32))
    return out.with_collected(char.name, char.collect(handle, out, data(), TASK))


@pytest.mark.parametrize(
    "char",
    [
        LimeAttribution(num_samples=40, seeds=[42, 43], **FAST),
        ShapAttribution(seeds=[42], **FAST),
        IgAttribution(n_steps=8, **FAST),
    ],
    ids=["lime", "shap", "ig"],
)
def test_collect_and_compare(tiny_bert, char):
    ref = collect_for(char, tiny_bert, 0, "ref")
    cand = collect_for(char, tiny_bert, 1, "cand")
    ex = ref.collected[char.name]
    assert len(ex["examples"]) == 3 and ex["error"] is None
    assert set(ex["runs"]) == ({"0"} if char.deterministic else {str(s) for s in char.seeds})
    first = next(iter(ex["runs"].values()))[0]
    assert np.asarray(first).shape == (2, len(ex["examples"][0]["words"]))  # every class stored

    same = char.compare(ref, dataclasses.replace(ref, name="ref_copy"))
    for m in ALIGNMENT_METRICS:
        assert same.metrics[f"ref_vs_ref_copy/{m}"] == pytest.approx(1.0), m

    res = char.compare(ref, cand)
    for m in ALIGNMENT_METRICS:
        v = res.metrics[f"ref_vs_cand/{m}"]
        assert -1.0 <= v <= 1.0
        assert res.metrics[f"ref_vs_cand/{m}_ci_low"] <= res.metrics[f"ref_vs_cand/{m}_ci_high"]
        assert f"ref_vs_cand/{m}_var" in res.metrics
    table = res.per_example[f"{char.name}_ref_vs_cand"]
    assert len(table["example_id"]) == 3 and "reference_confidence" in table and "jaccard" in table
    assert isinstance(res.figures["jaccard_hist_ref_vs_cand"], Figure)
    assert isinstance(res.figures["heatmaps_ref_vs_cand"], Figure)
    assert "<span" in res.tables["heatmaps_ref_vs_cand"][0]["html"]
    assert char.per_model(ref).metrics["ref/seconds"] >= 0


def test_explained_class_modes(tiny_bert):
    base = LimeAttribution(num_samples=30, seeds=[42], **FAST)
    ref = collect_for(base, tiny_bert, 0, "ref")
    cand = collect_for(base, tiny_bert, 1, "cand")
    classes = {}
    for mode in ("gold", "prediction", "reference_prediction"):
        char = LimeAttribution(num_samples=30, seeds=[42], explained_class=mode, **FAST)
        assert char.cache_config() == base.cache_config()  # the mode does not change what is collected
        t = char.compare(ref, cand).per_example["attribution_lime_ref_vs_cand"]
        classes[mode] = (list(t["reference_class"]), list(t["candidate_class"]))
    gold = list(ref.labels.numpy())
    assert classes["gold"] == (gold, gold)
    assert classes["prediction"] == (list(ref.predictions.numpy()), list(cand.predictions.numpy()))
    assert classes["reference_prediction"] == (list(ref.predictions.numpy()),) * 2


def test_selection_and_config_errors():
    ids = list(range(100))
    rev = ids[::-1]  # the same examples whatever the file order
    assert {ids[k] for k in sample_positions(ids, 10)} == {rev[k] for k in sample_positions(rev, 10)}
    assert set(sample_positions(ids, 10)) <= set(sample_positions(ids, 20))  # samples nest
    with pytest.raises(ValueError):
        LimeAttribution(explained_class="mine")
    with pytest.raises(ValueError):
        ShapAttribution(rank_by="square")
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"^n_examples must be a positive number") as err:
            LimeAttribution(n_examples=bad)
        assert "\n" not in str(err.value)


def test_n_examples_draws_the_shared_sample(tiny_bert):
    """Attribution explains sample_positions' examples, in file order."""
    char = LimeAttribution(n_examples=2, num_samples=20, seeds=[42], **FAST)
    ex = collect_for(char, tiny_bert, 0, "ref").collected[char.name]
    ids = data()["id"]
    assert [e["id"] for e in ex["examples"]] == [ids[k] for k in sample_positions(ids, 2)]
    assert char.cache_config()["sampler"] == "hash_unit"  # results of the earlier sampler are not reused
    assert "sampler" not in LimeAttribution(n_examples=None).cache_config()


def test_a_source_without_a_torch_model(tiny_bert):
    """Scorer only (e.g. ONNX): LIME runs through the scorer; IG says in one line why it cannot."""
    m = loaded(tiny_bert, 0)
    scorer_only = ModelHandle(
        name="ref",
        fingerprint="fp-onnx",
        scorer=lambda task: TorchTextScorer.from_loaded(m, max_length=task["max_length"]),
        source="onnx",
    )
    lime = LimeAttribution(num_samples=20, seeds=[42], **FAST)
    ex = collect_for(lime, tiny_bert, 0, "ref", handle=scorer_only).collected[lime.name]
    assert ex["error"] is None and ex["perturbed_texts"] > 0
    out = outputs("ref", np.full((3, 2), 0.5, dtype=np.float32))
    with pytest.raises(ValueError) as err:
        IgAttribution(n_steps=4, **FAST).collect(scorer_only, out, data(), TASK)
    assert str(err.value) == (
        "IG needs gradients: a onnx model has none; LIME and SHAP run through its scorer"
    )


def test_compare_without_collect_fails():
    out = ModelOutputs("a", torch.tensor([1]), torch.zeros(1, 2), torch.tensor([0]), ("x", "y"))
    with pytest.raises(ValueError, match="collect"):
        LimeAttribution().compare(out, dataclasses.replace(out, name="b"))


@pytest.mark.slow  # trains two tiny models (about 15 s idle, more under load)
def test_pipeline_single_text_task_and_cache(tmp_path, tiny_bert, synthetic_data_dir, monkeypatch):
    import json
    from pathlib import Path

    from conftest import compose, forbid, tiny_overrides

    from plugins.characteristics import attribution
    from trustequiv.run import pipeline

    cfg = compose(
        "evaluate",
        tiny_overrides(
            tmp_path,
            tiny_bert,
            synthetic_data_dir,
            "train_missing=true",
            "compressor=layer_drop",
            "trainer.max_epochs=1",
            "characteristic=[attribution_lime,attribution_ig]",
            "characteristic.attribution_lime.n_examples=4",
            "characteristic.attribution_lime.num_samples=20",
            "characteristic.attribution_lime.seeds=[42,43]",
            "characteristic.attribution_lime.n_bootstrap=20",
            "characteristic.attribution_ig.n_examples=4",
            "characteristic.attribution_ig.n_steps=4",
        ),
    )
    first = pipeline.evaluate(cfg)
    pair = "tiny_ref_vs_tiny_cand+layer_drop"
    for name in ("attribution_lime", "attribution_ig"):
        assert 0.0 <= first["metrics"][f"{name}/{pair}/jaccard"] <= 1.0
        assert first["metrics"][f"{name}/{pair}/n_examples"] == 4
    run = Path(first["output_dir"])
    assert (run / "per_example" / "test" / f"attribution_lime_{pair}.csv").exists()
    assert (run / "figures" / "test" / f"attribution_lime_heatmaps_{pair}.png").stat().st_size > 1000
    assert "attribution_lime" in json.loads((run / "results.json").read_text())["config"]["characteristic"]

    why = "attributions were computed again although cached"
    forbid(monkeypatch, attribution.explainers, "lime_attributions", "ig_attributions", why=why)
    again = pipeline.evaluate(cfg)
    assert (
        again["metrics"][f"attribution_lime/{pair}/jaccard"]
        == first["metrics"][f"attribution_lime/{pair}/jaccard"]
    )


def test_killed_run_resumes_with_the_seeds_not_done(tiny_bert, tmp_path, monkeypatch):
    """Each finished seed is kept: a rerun after a kill explains only the other seeds: same result."""
    kwargs = dict(num_samples=30, seeds=[42, 43, 44], **FAST)
    whole = collect_for(LimeAttribution(**kwargs), tiny_bert, 0, "ref").collected["attribution_lime"]
    char = LimeAttribution(**kwargs, runs_dir=str(tmp_path))
    real, calls = char._attribute, []

    def dies_on_third(feats, model, task, seed, *args):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(feats, model, task, seed, *args)

    monkeypatch.setattr(char, "_attribute", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        collect_for(char, tiny_bert, 0, "ref")
    files = {json.loads(p.read_text())["seed"]: p for p in tmp_path.glob("extras/*/*.json")}
    assert sorted(files) == [42, 43]
    calls.clear()
    resumed = collect_for(char, tiny_bert, 0, "ref").collected["attribution_lime"]
    assert calls == [44]
    assert resumed["runs"] == whole["runs"]
    assert resumed["perturbed_texts"] == whole["perturbed_texts"]
    # an unreadable seed file is set aside and recomputed
    files[43].write_text("{not json")
    calls.clear()
    again = collect_for(char, tiny_bert, 0, "ref").collected["attribution_lime"]
    assert calls == [43] and again["runs"] == whole["runs"]


def test_ig_of_an_int8_model_runs_through_its_dequantized_weights(tiny_bert):
    """Dynamic int8 Linear has no autograd: IG uses an fp32 twin holding the int8 weights."""
    from plugins.characteristics.attribution.explainers import differentiable_twin

    model, tok = tiny_classifier(tiny_bert, 0)
    int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    assert differentiable_twin(model) == (model, False)
    twin, made = differentiable_twin(int8)
    assert made and not any("quantized" in type(m).__module__ for m in twin.modules())
    enc = tok(PREMISE, HYPOTHESIS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        p_int8 = torch.softmax(int8(**enc).logits, -1)
        p_twin = torch.softmax(twin(**enc).logits, -1)
    assert torch.allclose(p_twin, p_int8, atol=0.05)  # the same weights; only activation rounding differs
    m = LoadedModel(int8, tok, [0, 1], tiny_bert, "fp-int8", {}, cpu_only=True)
    probs = np.full((3, 2), 0.5, dtype=np.float32)
    handle = TorchTextScorer.handle(m, name="int8")
    ex = IgAttribution(n_steps=4, **FAST).collect(handle, outputs("int8", probs), data(), TASK)
    assert ex["error"] is None and len(ex["runs"]["0"]) == 3
