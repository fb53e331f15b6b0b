"""Magnitude pruning, attention-head pruning and weight-only quantization: on tiny models, then each through
the real pipeline (fine-tuned reference -> compressed candidate -> evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose, tiny_overrides
from torch import nn
from torch.nn.utils import prune

from plugins.compressors.prune import MagnitudePrune, prunable_linears, weight_sparsity
from plugins.compressors.prune_heads import PruneHeads, head_importance, least_important_heads
from plugins.compressors.quantize_weight import QuantizeWeight
from trustequiv.models.compressor import CalibrationData, build_compressor
from trustequiv.models.loading import load_classifier
from trustequiv.run import pipeline
from trustequiv.train import fine_tune as training

# ---------------------------------------------------------------- tiny models


def tiny_classifier(heads: int = 4, layers: int = 2, hidden: int = 32, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=2,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # logits of order 1, so output tolerances are not trivially met
        model.classifier.weight.mul_(30.0)
    return model


def batch(seed: int = 1, n: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, length), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def calibration(model, n_batches: int = 3) -> CalibrationData:
    return CalibrationData([batch(seed=s) for s in range(n_batches)], lambda b: model(**b).loss)


def logits(model, b) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


# ---------------------------------------------------------------- prune_magnitude


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_magnitude_pruning_reaches_the_global_sparsity(sparsity):
    model = tiny_classifier()
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    compressor = MagnitudePrune(sparsity=sparsity)
    compressor.compress(model)
    pruned = prunable_linears(model)
    assert model.classifier not in pruned and model.bert.pooler.dense in pruned
    assert weight_sparsity(pruned) == pytest.approx(sparsity, abs=0.01)
    assert compressor.recipe()["measured_sparsity"] == pytest.approx(sparsity, abs=0.01)
    assert int((model.classifier.weight == 0).sum()) == 0  # the head is left alone by default
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)
    # global, not per layer: the layers end with different sparsities
    per_layer = [float((m.weight == 0).float().mean()) for m in pruned]
    assert max(per_layer) - min(per_layer) > 0.01


def test_include_head_prunes_the_classifier_too():
    model = tiny_classifier()
    MagnitudePrune(sparsity=0.5, include_head=True).compress(model)
    assert model.classifier in prunable_linears(model, include_head=True)
    assert weight_sparsity(prunable_linears(model, include_head=True)) == pytest.approx(0.5, abs=0.01)


def test_pruned_model_saves_plain_weights_and_reloads_sparse(tmp_path):
    from transformers import BertForSequenceClassification

    model = tiny_classifier()
    compressor = MagnitudePrune(sparsity=0.5)
    compressor.compress(model)
    saved = compressor.before_save(model)
    assert saved is not model and not prune.is_pruned(saved)
    assert prune.is_pruned(model)  # the live model keeps its masks for fine-tuning
    assert not any(k.endswith(("_orig", "_mask")) for k in saved.state_dict())
    saved.save_pretrained(tmp_path, safe_serialization=True)
    again = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert weight_sparsity(prunable_linears(again)) == pytest.approx(0.5, abs=0.01)
    b = batch()
    torch.testing.assert_close(logits(again, b), logits(model, b), rtol=1e-5, atol=1e-5)


def test_fine_tuning_with_the_mask_keeps_the_zeros():
    model = tiny_classifier()
    compressor = MagnitudePrune(sparsity=0.5)
    compressor.compress(model)
    zeros = {id(m): m.weight == 0 for m in prunable_linears(model)}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for s in range(3):
        optimizer.zero_grad()
        model(**batch(seed=s)).loss.backward()
        optimizer.step()
    folded = compressor.before_save(model)
    for before, after in zip(prunable_linears(model), prunable_linears(folded), strict=True):
        assert bool((after.weight[zeros[id(before)]] == 0).all())
    assert weight_sparsity(prunable_linears(folded)) == pytest.approx(0.5, abs=0.01)


def test_magnitude_pruning_refuses_a_bad_sparsity():
    with pytest.raises(ValueError, match="sparsity must be in"):
        MagnitudePrune(sparsity=1.5)


# ---------------------------------------------------------------- prune_heads

#: heads whose value projection is zeroed: their output is 0 whatever the mask, so their importance is 0
DEAD = {0: [1, 2], 1: [0, 3]}


def with_dead_heads(model, dead: dict[int, list[int]]):
    size = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer, heads in dead.items():
            value = model.bert.encoder.layer[layer].attention.self.value
            for h in heads:
                value.weight[h * size : (h + 1) * size] = 0
                value.bias[h * size : (h + 1) * size] = 0
    return model


def test_head_importance_is_zero_exactly_for_dead_heads():
    model = with_dead_heads(tiny_classifier(), DEAD)
    importance = head_importance(model, calibration(model))
    assert importance.shape == (2, 4)
    dead = torch.zeros(2, 4, dtype=torch.bool)
    for layer, heads in DEAD.items():
        dead[layer, heads] = True
    assert bool((importance[dead] == 0).all()) and bool((importance[~dead] > 0).all())
    # each layer normalised to unit l2 norm (Michel et al. 2019, section 4.2)
    torch.testing.assert_close(importance.norm(dim=-1), torch.ones(2))
    # the model is left as it was: no hook, no parameter gradient, eval mode
    assert not model._forward_pre_hooks and all(p.grad is None for p in model.parameters())


def test_prune_heads_removes_the_least_important_and_reloads(tmp_path):
    from transformers import BertForSequenceClassification

    model = with_dead_heads(tiny_classifier(), DEAD)
    b = batch(seed=7)
    before = logits(model, b)
    compressor = PruneHeads(heads_to_prune=0.5, calibration_batches=3)
    compressor.compress(model, data=calibration(model))
    assert compressor.pruned == DEAD
    assert compressor.recipe()["pruned_heads"] == {"0": [1, 2], "1": [0, 3]}
    assert {int(k): sorted(v) for k, v in model.config.pruned_heads.items()} == DEAD
    attn = model.bert.encoder.layer[0].attention
    assert attn.self.query.out_features == 16 and attn.output.dense.in_features == 16
    # the removed heads contributed nothing: the outputs are unchanged
    torch.testing.assert_close(logits(model, b), before, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    again = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.bert.encoder.layer[1].attention.self.value.out_features == 16
    torch.testing.assert_close(logits(again, b), before, rtol=1e-4, atol=1e-5)


def test_least_important_heads_keeps_one_head_per_layer():
    importance = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.1, 0.9, 0.7]])
    assert least_important_heads(importance, 0.5) == {0: [0, 1, 2], 1: [1]}
    assert least_important_heads(importance, 0.0) == {}
    # more than all but one head per layer is capped there
    assert least_important_heads(importance, 0.99) == {0: [0, 1, 2], 1: [0, 1, 3]}


def test_prune_heads_refuses_bad_settings_and_missing_data():
    with pytest.raises(ValueError, match="heads_to_prune"):
        PruneHeads(heads_to_prune=1.0)
    with pytest.raises(ValueError, match="needs data"):
        PruneHeads().compress(tiny_classifier())


def test_calibration_batches_leave_the_training_order_unchanged():
    """A train loader given to Trainer.fit itself (extractive QA's) shuffles with its own generator: drawing
    calibration batches from it must not shift the batches fine-tuning then sees."""

    def loader():
        g = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(range(20), batch_size=4, shuffle=True, generator=g)

    used, fresh = loader(), loader()
    recipe = training.Recipe(
        new_model=None,
        load_base=None,
        make_module=lambda model, task_cfg: None,
        fit_inputs=None,
    )
    data = training._calibration_data(recipe, None, {"train_dataloaders": used}, {}, 2)
    assert len(data.batches) == 2
    assert [b.tolist() for b in used] == [b.tolist() for b in fresh]


# ---------------------------------------------------------------- quantize_weight


@pytest.mark.parametrize(("bits", "group_size", "rel_tol"), [(8, None, 0.03), (4, 32, 0.4)])
def test_weight_quantization_is_close_to_fp32(bits, group_size, rel_tol):
    pytest.importorskip("torchao")
    model = tiny_classifier()
    b = batch()
    reference = logits(model, b)
    quantized = QuantizeWeight(bits=bits, group_size=group_size).on_load(model)
    linears = [m for m in quantized.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m.weight).__name__ == "IntxUnpackedToInt8Tensor" for m in linears)
    assert all(m.weight.target_dtype == getattr(torch, f"int{bits}") for m in linears)
    out = logits(quantized, b)
    scale = float(reference.abs().max())
    assert float((out - reference).abs().max()) <= rel_tol * scale
    assert float((out - reference).abs().max()) > 0  # it did quantize
    assert float((out.argmax(-1) == reference.argmax(-1)).float().mean()) >= (0.9 if bits == 8 else 0.6)


def test_weight_quantization_refuses_bad_settings():
    pytest.importorskip("torchao")
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        QuantizeWeight(bits=3)
    with pytest.raises(ValueError, match="does not divide"):
        QuantizeWeight(bits=4, group_size=24).on_load(tiny_classifier())


def test_new_compressors_build_by_name():
    assert isinstance(build_compressor({"name": "prune_magnitude", "sparsity": 0.7}), MagnitudePrune)
    assert isinstance(build_compressor({"name": "prune_heads"}), PruneHeads)
    int4 = build_compressor({"name": "quantize_weight_int4", "bits": 4, "group_size": 32})
    assert isinstance(int4, QuantizeWeight) and int4.recipe()["bits"] == 4


# ---------------------------------------------------------------- through the pipeline

#: no reference replicas (noise floor) and no trust callback: only what these tests check is trained
LEAN = ["++noise_floor.seeds=[]", "++callbacks.trust.enabled=false"]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, tiny_bert, synthetic_data_dir) -> Path:
    """A fine-tuned tiny reference (``tiny_ref``) the candidates are compressed from."""
    tmp = tmp_path_factory.mktemp("compressors")
    overrides = tiny_overrides(tmp, tiny_bert, synthetic_data_dir, *LEAN, candidate="tiny_ref")
    pipeline.train(
        compose("train", [o for o in overrides if not o.startswith(("model@reference", "reference."))])
    )
    return tmp


def evaluate_candidate(
    root: Path, tiny_bert, data_dir, compressor: str, tmp: Path, *extra: str
) -> tuple[dict, Path]:
    """Evaluate ``tiny_ref+<compressor>`` against ``tiny_ref`` (from ``root``), compressing it first."""
    extra = ("train_missing=true", f"compressor={compressor}", *LEAN, *extra)
    overrides = [
        o if not o.startswith("paths.models_dir=") else f"paths.models_dir={root / 'models'}"
        for o in tiny_overrides(tmp, tiny_bert, data_dir, *extra, candidate="tiny_ref")
    ]
    result = pipeline.evaluate(compose("evaluate", overrides))
    pair = f"tiny_ref_vs_tiny_ref+{compressor}"
    assert f"errors/{pair}/error_jaccard" in result["metrics"]
    return result, root / "models" / "sst2" / f"tiny_ref+{compressor}"


def test_prune_magnitude_candidate_through_the_pipeline(models_root, tiny_bert, synthetic_data_dir, tmp_path):
    _, ckpt = evaluate_candidate(
        models_root, tiny_bert, synthetic_data_dir, "prune_magnitude", tmp_path, "trainer.max_epochs=1"
    )
    meta = json.loads((ckpt / "trustequiv.json").read_text())
    assert meta["compression"]["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert meta["epochs_run"] >= 1  # re-fine-tuned
    reference = load_classifier(str(models_root / "models" / "sst2" / "tiny_ref"), ["negative", "positive"])
    candidate = load_classifier(str(ckpt), ["negative", "positive"])
    ref_linears, cand_linears = prunable_linears(reference.model), prunable_linears(candidate.model)
    assert weight_sparsity(cand_linears) == pytest.approx(0.5, abs=0.01)
    # the zeros are the reference's smallest weights, kept through fine-tuning, which moved the others
    MagnitudePrune(sparsity=0.5).compress(reference.model)
    for r, c in zip(ref_linears, cand_linears, strict=True):
        assert torch.equal(c.weight == 0, r.weight == 0)
    assert any(not torch.equal(r.weight, c.weight) for r, c in zip(ref_linears, cand_linears, strict=True))


def test_prune_heads_candidate_through_the_pipeline(models_root, tiny_bert, synthetic_data_dir, tmp_path):
    # fine-tuning after compress is the path prune_magnitude takes above: here only the calibration batches
    _, ckpt = evaluate_candidate(
        models_root, tiny_bert, synthetic_data_dir, "prune_heads", tmp_path, "compressor.finetune=false"
    )
    config = json.loads((ckpt / "config.json").read_text())
    # 2 layers x 2 heads, half pruned, one head kept per layer: one head per layer goes
    assert {k: len(v) for k, v in config["pruned_heads"].items()} == {"0": 1, "1": 1}
    meta = json.loads((ckpt / "trustequiv.json").read_text())
    assert meta["compression"]["pruned_heads"] == config["pruned_heads"]
    assert meta["compressor"]["name"] == "prune_heads"  # rebuilt by name at load (a no-op on_load)
    candidate = load_classifier(str(ckpt), ["negative", "positive"])
    assert candidate.model.bert.encoder.layer[0].attention.self.query.out_features == 16


def test_quantize_weight_candidate_through_the_pipeline(models_root, tiny_bert, synthetic_data_dir, tmp_path):
    pytest.importorskip("torchao")
    result, ckpt = evaluate_candidate(models_root, tiny_bert, synthetic_data_dir, "quantize_weight", tmp_path)
    candidate = load_classifier(str(ckpt), ["negative", "positive"])
    assert type(candidate.model.classifier.weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert not candidate.cpu_only
    # int8 weights barely move the predictions of a fine-tuned model
    assert result["metrics"]["errors/tiny_ref_vs_tiny_ref+quantize_weight/flip_rate"] <= 0.05
