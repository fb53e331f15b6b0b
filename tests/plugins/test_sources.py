"""Model sources and task kinds: registries, the zoo fallback of the HF source, and the label-order warning
after prediction (a checkpoint whose label order is declared wrong)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, tiny_overrides

from trustequiv.data.task_kind import available_kinds, task_kind
from trustequiv.models.source import available_sources, build_source
from trustequiv.run import pipeline

FAST = ["trainer.max_epochs=8", "task.training.learning_rate=5e-3"]


def test_registries_list_the_plugins():
    assert {"classification", "extractive_qa"} <= set(available_kinds())
    assert "hf" in available_sources()
    assert task_kind({"name": "x"}).name == "classification"  # absent kind = classification
    with pytest.raises(ValueError, match=r"unknown task kind 'nope'; available: .*classification"):
        task_kind({"name": "x", "kind": "nope"})
    with pytest.raises(ValueError, match="unknown task kind"):
        task_kind({"name": "x", "kind": "os.path"})  # never a dotted import
    with pytest.raises(ValueError, match=r"unknown model source 'nope'; available: .*hf"):
        build_source({"name": "m", "pretrained": "x", "source": "nope"})


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory, tiny_bert, synthetic_data_dir):
    """A fine-tuned tiny reference on the synthetic SST-2 task."""
    tmp = tmp_path_factory.mktemp("sources")
    from trustequiv.plain import plain
    from trustequiv.run.plan import model_sources
    from trustequiv.train.checkpoints import ensure_checkpoint

    cfg = compose("evaluate", tiny_overrides(tmp, tiny_bert, synthetic_data_dir, *FAST))
    ref, _ = model_sources(cfg)
    ctx = pipeline.run_context(cfg, plain(cfg.task))
    return tmp, Path(ensure_checkpoint(ref.spec, ctx, allow_train=True))


def _permuted_copy(src: Path, dst: Path) -> Path:
    """The checkpoint with its two logit columns swapped and id2label left as it was: a wrong label order."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(src)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, dst)
    return dst


def test_zoo_checkpoint_runs_without_fine_tuning_and_a_wrong_label_order_warns(
    tiny_ref, tiny_bert, synthetic_data_dir, tmp_path
):
    tmp, ref_dir = tiny_ref
    permuted = _permuted_copy(ref_dir, tmp_path / "permuted")
    # the candidate has no local checkpoint and no train_missing: its zoo entry for sst2 is used
    zoo = f"{{sst2: {{checkpoint: {permuted}, label_names: [negative, positive]}}}}"
    overrides = [
        *tiny_overrides(tmp, tiny_bert, synthetic_data_dir, "model.name=zoo_cand"),
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/run",
        f"+model.zoo={zoo}",
    ]
    result = pipeline.evaluate(compose("evaluate", overrides))
    results = json.loads((Path(result["output_dir"]) / "results.json").read_text())
    assert results["models"]["zoo_cand"]["checkpoint"] == str(permuted.resolve())
    warnings = results["notes"]["zoo_cand/warnings"]
    assert len(warnings) == 1 and "model.label_names=[positive,negative]" in warnings[0]
    assert "Warning" in (Path(result["output_dir"]) / "report.md").read_text()
    assert "tiny_ref/warnings" not in results["notes"]  # the right order does not warn
    # declaring the order the warning names fixes it: the candidate now agrees with the reference
    fixed = [o for o in overrides if not o.startswith("+model.zoo")]
    fixed += [f"+model.zoo={{sst2: {{checkpoint: {permuted}, label_names: [positive, negative]}}}}"]
    fixed = [o.replace(f"{tmp_path}/run", f"{tmp_path}/run2") for o in fixed]
    again = pipeline.evaluate(compose("evaluate", fixed))
    assert again["metrics"]["errors/tiny_ref_vs_zoo_cand/agreement"] == 1.0
