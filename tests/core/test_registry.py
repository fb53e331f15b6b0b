"""trustequiv.registry: every plugin reached by a declared name; the declarations and conf/ agree."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from plugins import PLUGINS
from trustequiv import registry
from trustequiv.conf_tree import CONF_DIR, available
from trustequiv.data.task_kind import TaskKind
from trustequiv.models.compressor import Compressor
from trustequiv.models.source import ModelSource


@pytest.mark.parametrize("group", sorted(PLUGINS))
def test_every_declared_entry_imports_as_its_kind(group):
    kinds = {"source": ModelSource, "compressor": Compressor}
    for name in registry.names(group):
        obj = registry.lookup(group, name)
        if group == "task_kind":
            assert isinstance(obj, TaskKind)
        else:
            assert isinstance(obj, type) and issubclass(obj, kinds[group])


def test_compressor_configs_and_declarations_agree():
    assert available("compressor") == registry.names("compressor")
    for name in available("compressor"):
        node = OmegaConf.load(CONF_DIR / "compressor" / f"{name}.yaml")
        assert node["_target_"] == registry.target("compressor", name), name


def test_unknown_names_are_refused_with_the_declared_ones():
    with pytest.raises(LookupError, match=r"unknown model\.source 'os'; available: hf, onnx, predictions"):
        registry.lookup("source", "os")
    with pytest.raises(LookupError, match=r"unknown task\.kind"):
        registry.lookup("task_kind", "../../etc")
    with pytest.raises(KeyError, match="unknown plugin group"):
        registry.names("nope")
