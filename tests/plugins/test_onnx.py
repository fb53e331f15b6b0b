"""Model source ``onnx`` on the tiny BERT: export (fp32 and onnxruntime int8) through the pipeline, outputs
equal to torch's, the scorer, the cache, path mode, attribution, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose, forbid, tiny_overrides, write_classifier

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import onnxruntime

from plugins.sources.onnx import runtime as onnx_runtime
from plugins.sources.onnx import source as onnx_source
from trustequiv.models.source import build_source
from trustequiv.run import pipeline
from trustequiv.run.plan import make_plan

ONNX_CANDIDATES = ("tiny_ref+onnx", "tiny_ref+onnx_int8")


def overrides(tmp: Path, tiny: Path, data: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        tmp,
        tiny,
        data,
        "experiment=offline_minilm_onnx",
        "characteristic=[errors,representation]",  # calibration's bootstrap and figures: 30 s more
        "characteristic.errors.n_bootstrap=50",
        "characteristic.representation.n_permutations=20",
        *extra,
        candidate="tiny_ref",
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, synthetic_data_dir):
    """The experiment offline_minilm_onnx on the tiny model: reference tiny_ref (torch), candidates ONNX fp32,
    ONNX int8 and torch.ao int8, evaluated once."""
    tmp = tmp_path_factory.mktemp("onnx")
    write_classifier(tiny_bert, tmp / "models" / "sst2" / "tiny_ref")
    cfg = compose("evaluate", overrides(tmp, tiny_bert, synthetic_data_dir))
    return tmp, cfg, pipeline.evaluate(cfg)


def outputs_of(cfg, split: str = "test"):
    """Every model's outputs on ``split`` and whether each came from the cache, with the sources."""
    plan = make_plan(cfg)
    ctx = pipeline.run_context(cfg, plan.task_cfg, dataset=plan.dataset)
    got = {}
    for src in plan.models:
        src.prepare(ctx)
        got[src.name] = (src, *src.outputs(plan.splits[split], plan.task_cfg, split, ctx))
    return plan, ctx, got


def test_export_and_int8_end_to_end(run):
    tmp, _, result = run
    metrics = result["metrics"]
    for cand in (*ONNX_CANDIDATES, "tiny_ref+quantize_dynamic"):
        assert f"errors/tiny_ref_vs_{cand}/flip_rate" in metrics, cand
        assert f"representation/tiny_ref_vs_{cand}/cka_linear" in metrics or any(
            k.startswith(f"representation/tiny_ref_vs_{cand}/") for k in metrics
        ), cand
    fp32, int8 = (tmp / "models" / "sst2" / n for n in ONNX_CANDIDATES)
    for d in (fp32, int8):
        assert {"model.onnx", "config.json", "trustequiv.json", "tokenizer.json"} <= {
            p.name for p in d.iterdir()
        }
        assert json.loads((d / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    meta = json.loads((int8 / "trustequiv.json").read_text())
    assert meta["export"]["quantize"]["weight_type"] == "QInt8"
    assert meta["export"]["exported_from"]["name"] == "tiny_ref"
    assert json.loads((fp32 / "trustequiv.json").read_text())["export"]["quantize"] is None
    ops = {n.op_type for n in __import__("onnx").load(str(int8 / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops  # int8 matmuls
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    assert not [p for p in fp32.parent.iterdir() if p.name.startswith(".")]  # no temporary dirs left
    results = json.loads((Path(result["output_dir"]) / "results.json").read_text())
    assert results["models"]["tiny_ref+onnx"]["fingerprint"]


def test_fp32_logits_and_embeddings_equal_torch(run):
    _, cfg, _ = run
    _, _, got = outputs_of(cfg)
    _, ref, ref_cached = got["tiny_ref"]
    _, onnx32, onnx_cached = got["tiny_ref+onnx"]
    assert ref_cached and onnx_cached
    assert torch.equal(ref.example_ids, onnx32.example_ids) and torch.equal(ref.labels, onnx32.labels)
    scale = max(1.0, float(ref.logits.abs().max()))
    assert float((ref.logits - onnx32.logits).abs().max()) <= 1e-4 * scale
    scale = max(1.0, float(ref.embeddings.abs().max()))
    assert float((ref.embeddings - onnx32.embeddings).abs().max()) <= 1e-4 * scale
    assert float(ref.logits[:, 1].std()) > 1e-3  # the random head's logits vary between examples
    _, onnx8, _ = got["tiny_ref+onnx_int8"]
    assert not torch.equal(onnx8.logits, onnx32.logits)  # int8 is another model
    assert float((onnx8.logits - onnx32.logits).abs().max()) <= 0.2 * scale


def test_scorer_probabilities_equal_cached_softmax(run):
    _, cfg, _ = run
    plan, ctx, got = outputs_of(cfg)
    src, out, _ = got["tiny_ref+onnx"]
    handle = src.handle(ctx)
    assert handle.loaded is None and handle.cpu_only and handle.source == "onnx"
    scorer = handle.scorer(plan.task_cfg, batch_tokens=128, devices=["cuda:0"])
    assert isinstance(scorer, onnx_runtime.OnnxTextScorer) and scorer.cpu_only
    data = plan.splits["test"]
    order = {int(i): k for k, i in enumerate(data["id"])}
    texts = [(data["text_a"][order[int(i)]],) for i in out.example_ids.tolist()]
    probs = scorer([*texts, texts[0]])  # a repeated text runs once
    assert scorer.n_texts == len(texts) + 1 and scorer.n_unique == len(texts)
    assert probs.shape == (len(texts) + 1, 2)
    assert abs(probs[:-1] - out.probs.numpy()).max() < 1e-5
    assert abs(probs[-1] - probs[0]).max() < 1e-12
    with pytest.raises(AttributeError, match="onnx model has no torch model"):
        _ = handle.model  # what gradient code would reach for


def test_second_run_is_served_from_the_cache(run, monkeypatch):
    _, cfg, _ = run
    forbid(monkeypatch, onnx_runtime, "open_session")
    forbid(monkeypatch, onnx_source, "export_classifier")
    forbid(monkeypatch, onnxruntime, "InferenceSession")
    plan = make_plan(cfg)
    runners = pipeline.run_models(plan, pipeline.run_context(cfg, plan.task_cfg, dataset=plan.dataset))
    cached = {k: v for r in runners for k, v in r.cached.items()}
    assert cached and all(cached.values()), cached
    assert {r.identity["source"] for r in runners} == {"hf", "onnx"}


def test_path_mode_reads_an_export(run, tmp_path):
    tmp, cfg, _ = run
    export = tmp / "models" / "sst2" / "tiny_ref+onnx"
    _, _, got = outputs_of(cfg)
    fp = got["tiny_ref+onnx"][0].fingerprint
    plan = make_plan(cfg)
    ctx = pipeline.run_context(cfg, plan.task_cfg, dataset=plan.dataset)
    for path in (export, export / "model.onnx"):
        src = build_source({"source": "onnx", "path": str(path)})
        assert src.name == "tiny_ref+onnx"
        assert src.prepare(ctx)["fingerprint"] == fp  # same files, same cache entries
        _, cached = src.outputs(plan.splits["test"], plan.task_cfg, "test", ctx)
        assert cached


def test_attribution_lime_runs_and_ig_says_one_line(run):
    _, cfg, _ = run
    plan, ctx, got = outputs_of(cfg)
    src, out, _ = got["tiny_ref+onnx"]
    handle = src.handle(ctx)
    data = plan.splits["test"]
    small = ["n_examples=4", "seeds=[42]", "n_bootstrap=50", "runs_dir=null"]
    lime = _characteristic("attribution_lime", [*small, "num_samples=20"])
    ig = _characteristic("attribution_ig", [*small, "n_steps=4"])
    from trustequiv.outputs import aligned_rows

    collected = lime.collect(handle, out, aligned_rows(data, out), plan.task_cfg)
    assert len(collected["examples"]) == 4 and collected["unique_texts"] > 0
    with pytest.raises(ValueError) as err:
        ig.collect(handle, out, aligned_rows(data, out), plan.task_cfg)
    message = str(err.value)
    assert "\n" not in message and "onnx" in message.lower()


def _characteristic(name: str, settings: list[str]):
    from trustequiv.run.plan import build_characteristics

    cfg = compose(
        "evaluate",
        ["paths.output_dir=/tmp/trustequiv-test-run", "logger=none", "task=sst2", f"characteristic=[{name}]"]
        + [f"characteristic.{name}.{s}" for s in settings],
    )
    (char,) = build_characteristics(cfg)
    return char


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"source": "onnx", "path": "x.onnx", "export_from": {"name": "m"}}, r"exactly one of model\.path"),
        (
            {"source": "onnx", "export_from": {"name": "m"}, "quantize": "int4"},
            "quantize must be null or int8",
        ),
        ({"source": "onnx", "path": "x.onnx", "quantize": "int8"}, "quantize applies to export_from"),
        ({"source": "onnx", "path": "x.onnx", "name": "../x"}, "not a valid name"),
    ],
)
def test_config_errors_are_one_line(node, message):
    with pytest.raises(ValueError, match=message) as err:
        build_source(node)
    assert "\n" not in str(err.value)


def test_compressor_and_other_task_kinds_are_refused():
    with pytest.raises(ValueError, match="takes no compressor"):
        build_source({"source": "onnx", "path": "x.onnx"}, {"name": "layer_drop"})
    src = build_source({"source": "onnx", "path": "x.onnx"})
    with pytest.raises(ValueError, match="classification tasks only") as err:
        src._check_kind("extractive_qa", "squad2")
    assert "\n" not in str(err.value)


def test_missing_files_and_layers(run, tmp_path):
    tmp, cfg, _ = run
    plan = make_plan(cfg)
    ctx = pipeline.run_context(cfg, plan.task_cfg, dataset=plan.dataset)
    with pytest.raises(ValueError, match=r"exactly one of model\.path") as err:
        build_source({"source": "onnx"}).prepare(ctx)  # the template builds; running it says what to set
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"neither an \.onnx file"):
        build_source({"source": "onnx", "path": str(tmp_path / "none.onnx")}).prepare(ctx)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.onnx").write_bytes(
        (tmp / "models" / "sst2" / "tiny_ref+onnx" / "model.onnx").read_bytes()
    )
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        build_source({"source": "onnx", "path": str(lonely)}).prepare(ctx)
    model = onnx_runtime.OnnxModel.load(
        tmp / "models" / "sst2" / "tiny_ref+onnx" / "model.onnx", ["negative", "positive"]
    )
    assert model.hidden_output(-1) == "hidden_states.2" and model.hidden_output(0) == "hidden_states.0"
    with pytest.raises(ValueError, match=r"has hidden layers 0\.\.2"):
        model.hidden_output(5)


def test_mean_pooling_and_another_layer_match_torch(run, tmp_path):
    tmp, cfg, _ = run
    cfg2 = compose(
        "evaluate",
        overrides(
            tmp,
            Path(cfg.model.pretrained),
            Path(cfg.paths.data_dir),
            f"paths.cache_dir={tmp_path / 'cache'}",
            "predict.pooling=mean",
            "predict.layer=-2",
        ),
    )
    _, _, got = outputs_of(cfg2)
    ref, onnx32 = got["tiny_ref"][1], got["tiny_ref+onnx"][1]
    scale = max(1.0, float(ref.embeddings.abs().max()))
    assert float((ref.embeddings - onnx32.embeddings).abs().max()) <= 1e-4 * scale


def test_interrupted_prediction_resumes(run, tmp_path, monkeypatch):
    """Kill the ONNX prediction after two batches: the rerun predicts only the rest, as a clean run does."""
    tmp, cfg, _ = run
    clean = outputs_of(cfg)[2]["tiny_ref+onnx"][1]
    cfg2 = compose(
        "evaluate",
        overrides(
            tmp,
            Path(cfg.model.pretrained),
            Path(cfg.paths.data_dir),
            f"paths.cache_dir={tmp_path / 'cache'}",
            "predict.batch_size=8",
        ),
    )
    plan = make_plan(cfg2)
    ctx = pipeline.run_context(cfg2, plan.task_cfg, dataset=plan.dataset)
    src = next(s for s in plan.candidates if s.name == "tiny_ref+onnx")
    src.prepare(ctx)
    real_save, saved = onnx_source.atomic_save, []

    def dying(tensors, path):
        real_save(tensors, path)
        saved.append(len(tensors["example_id"]))
        if len(saved) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(onnx_source, "atomic_save", dying)
    data = plan.splits["test"]
    with pytest.raises(RuntimeError, match="killed"):
        src.outputs(data, plan.task_cfg, "test", ctx)
    assert len(list((tmp_path / "cache" / "outputs").rglob("*.partial/*.safetensors"))) == 2
    monkeypatch.setattr(onnx_source, "atomic_save", real_save)
    rows = []
    real_run = onnx_runtime.OnnxModel.run

    def counting(self, features, outputs):
        rows.append(len(features))
        return real_run(self, features, outputs)

    monkeypatch.setattr(onnx_runtime.OnnxModel, "run", counting)
    out, cached = src.outputs(data, plan.task_cfg, "test", ctx)
    assert not cached and sum(rows) == len(data) - 16
    assert torch.equal(out.example_ids, clean.example_ids)
    assert torch.allclose(out.logits, clean.logits, atol=1e-5)
    assert not list((tmp_path / "cache" / "outputs").rglob("*.partial"))
