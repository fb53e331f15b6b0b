"""Every file in every config group composes, and those with a _target_ instantiate."""

from __future__ import annotations

import hydra
import pytest
from conftest import CONF, compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from trustequiv.characteristic import Characteristic
from trustequiv.conf_tree import available
from trustequiv.models.compressor import Compressor
from trustequiv.run.plan import build_characteristics, model_node, model_sources

BASE = ["paths.output_dir=/tmp/trustequiv-test-run", "logger=none"]


def test_groups_listed():
    for group in ("model", "task", "characteristic", "compressor", "trainer", "logger", "experiment"):
        assert available(group), group


@pytest.mark.parametrize("name", available("model"))
def test_model_files(name):
    cfg = compose("evaluate", [*BASE, f"model={name}", f"model@reference={name}"])
    if cfg.model.get("source", "hf") != "hf":  # ONNX, predictions: built as they are, no compressor
        cfg.reference.name = "other"
        try:
            _, (cand,) = model_sources(cfg)
        except ValueError as err:  # a template that needs its file: one line naming the key
            assert "model.path" in str(err) and "\n" not in str(err)
        else:
            assert cand.kind == cfg.model.source
        return
    cfg = compose("evaluate", [*BASE, f"model={name}", f"model@reference={name}", "compressor=layer_drop"])
    ref, (cand,) = model_sources(cfg)
    assert ref.name == name and cand.name == f"{name}+layer_drop"
    assert cand.spec.base.pretrained == ref.spec.pretrained
    assert cfg.model.trust_remote_code is False


def test_nested_groups_listed():
    assert {"qa/squad2", "qa/subjqa", "qa/covid_qa", "qa/newsqa"} <= set(available("task"))


@pytest.mark.parametrize("name", available("task"))
def test_task_files(name):
    cfg = compose("evaluate", [*BASE, f"task={name}"])
    loader = hydra.utils.instantiate(cfg.task.loader)
    assert hasattr(loader, "load")
    assert cfg.task.eval_split
    assert len(cfg.task.label_names) >= 2


@pytest.mark.parametrize("name", available("characteristic"))
def test_characteristic_files(name):
    cfg = compose("evaluate", [*BASE, f"characteristic=[{name}]"])
    (obj,) = build_characteristics(cfg)  # as the pipeline builds it (the `splits` key is the pipeline's)
    assert isinstance(obj, Characteristic) and obj.name == name
    assert obj.splits is None or obj.splits == [cfg.task.eval_split]


@pytest.mark.parametrize("name", available("compressor"))
def test_compressor_files(name):
    cfg = compose("evaluate", [*BASE, f"compressor={name}"])
    obj = hydra.utils.instantiate(cfg.compressor)
    assert isinstance(obj, Compressor) and obj.name == name


@pytest.mark.parametrize("name", available("trainer"))
def test_trainer_files(name):
    cfg = compose("train", [*BASE, f"trainer={name}"])
    assert "accelerator" in cfg.trainer


@pytest.mark.parametrize("name", available("logger"))
def test_logger_files(name):
    compose("evaluate", [*BASE.copy()[:1], f"logger={name}"])


@pytest.mark.parametrize("name", available("experiment"))
def test_experiment_files(name):
    cfg = compose("evaluate", [*BASE, f"experiment={name}"])
    _, cands = model_sources(cfg)
    assert len(cands) >= 1
    OmegaConf.to_container(cfg, resolve=True)


def test_offline_minilm_experiment_is_offline():
    cfg = compose("evaluate", [*BASE, "experiment=offline_minilm", "task=mrpc"])
    ref, cands = model_sources(cfg)
    assert ref.name == "minilm"
    assert [c.name for c in cands] == ["minilm+quantize_dynamic", "minilm+layer_drop"]
    assert (CONF.parent / "conf").exists()
    from pathlib import Path

    assert (Path(ref.spec.pretrained) / "config.json").exists()  # the pip package's local dir, no hub id


def test_train_config_composes():
    cfg = compose("train", [*BASE, "model=bert_tiny", "task=mnli"])
    assert cfg.trainer.max_epochs == cfg.task.training.epochs


@pytest.mark.parametrize("override", ["model=no_such_model", "task=no_such_task", "characteristic=[nope]"])
def test_unknown_names_fail_with_options(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose("evaluate", [*BASE, override])
    assert any(s in str(err.value) for s in ("Available options", "Could not find", "Could not load"))


def test_reference_by_bare_name():
    assert model_node("bert_large").name == "bert_large"
    with pytest.raises(ValueError, match="unknown model 'nope'; available: bert_base"):
        model_node("nope")
