"""trustequiv.models.zoo: the published fine-tuned checkpoints listed per model and task in
conf/model/*.yaml."""

from __future__ import annotations

import pytest
from conftest import CONF, compose
from omegaconf import OmegaConf

from trustequiv.conf_tree import available
from trustequiv.data.labels import label_permutation
from trustequiv.models.zoo import zoo_entry

BASE = ["paths.output_dir=/tmp/trustequiv-test-run", "logger=none"]
# The papers' tasks; squad2 lives in the qa/ subgroup.
TASK_OVERRIDE = {t: t for t in ("mnli", "snli", "qqp", "mrpc", "sst2", "imdb")} | {"squad2": "qa/squad2"}


def _zoo_pairs() -> list[tuple[str, str]]:
    pairs = []
    for model in available("model"):
        zoo = OmegaConf.load(CONF / "model" / f"{model}.yaml").get("zoo") or {}
        pairs += [(model, task) for task in zoo]
    return pairs


PAIRS = _zoo_pairs()


def test_zoo_covers_the_reference_and_candidates():
    models = {m for m, _ in PAIRS}
    assert {"bert_base", "bert_large", "distilbert", "bert_mini", "bert_tiny"} <= models
    assert ("bert_base", "mnli") in PAIRS and ("distilbert", "mnli") in PAIRS


@pytest.mark.parametrize(("model", "task"), PAIRS, ids=[f"{m}-{t}" for m, t in PAIRS])
def test_zoo_entry_composes_with_its_task(model, task):
    assert task in TASK_OVERRIDE, f"zoo.{task} of {model}: not a paper task {sorted(TASK_OVERRIDE)}"
    cfg = compose("evaluate", [*BASE, f"model={model}", f"task={TASK_OVERRIDE[task]}"])
    assert cfg.task.name == task
    entry = zoo_entry(cfg.model, cfg.task.name)
    assert entry is not None and entry == zoo_entry(cfg.model, TASK_OVERRIDE[task])
    assert set(entry) <= {"checkpoint", "label_names", "revision"}
    assert entry["checkpoint"].count("/") == 1, "a hub id owner/name"
    if cfg.task.get("kind") not in (None, "classification"):  # extractive QA ("qa" or "extractive_qa")
        assert entry["label_names"] is None, "extractive QA checkpoints have no class head"
    else:
        names = entry["label_names"]
        assert names is not None, "declare label_names: many hub heads are LABEL_0..n"
        assert sorted(names) == sorted(cfg.task.label_names), "a permutation of the task's label_names"
        perm = label_permutation(names, list(cfg.task.label_names))
        assert sorted(perm) == list(range(len(names)))


def test_textattack_mnli_order_is_not_glue_order():
    cfg = compose("evaluate", [*BASE, "model=bert_base", "task=mnli"])
    entry = zoo_entry(cfg.model, "mnli")
    assert entry["checkpoint"] == "textattack/bert-base-uncased-MNLI"
    assert entry["label_names"] == ["contradiction", "entailment", "neutral"]
    # canonical [entailment, neutral, contradiction] = checkpoint columns [1, 2, 0]
    assert label_permutation(entry["label_names"], list(cfg.task.label_names)) == [1, 2, 0]


def test_unknown_task_or_no_zoo_is_none():
    cfg = compose("evaluate", [*BASE, "model=bert_base", "task=rte"])
    assert zoo_entry(cfg.model, "rte") is None
    assert zoo_entry(cfg.model, "no_such_task") is None
    assert zoo_entry({"name": "x"}, "mnli") is None
    assert zoo_entry({"name": "x", "zoo": {}}, "mnli") is None
    assert zoo_entry({"name": "x", "zoo": None}, "mnli") is None


def test_entry_forms():
    cfg = {
        "name": "m",
        "zoo": {
            "sst2": "owner/ckpt",
            "mnli": {"checkpoint": " owner/nli ", "label_names": ["a", "b", "c"], "revision": "v1"},
        },
    }
    assert zoo_entry(cfg, "sst2") == {"checkpoint": "owner/ckpt", "label_names": None}
    expected = {"checkpoint": "owner/nli", "label_names": ["a", "b", "c"], "revision": "v1"}
    assert zoo_entry(cfg, "mnli") == expected


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"label_names": ["a", "b"]}, "checkpoint"),
        ({"checkpoint": ""}, "checkpoint"),
        ({"checkpoint": "o/c", "labels": ["a"]}, "unknown keys"),
        ({"checkpoint": "o/c", "label_names": "a,b"}, "list of class names"),
        ({"checkpoint": "o/c", "label_names": ["a", "a"]}, "repeats"),
        (["o/c"], "expected"),
    ],
)
def test_malformed_entries_raise(entry, match):
    with pytest.raises(ValueError, match=match) as err:
        zoo_entry({"name": "m", "zoo": {"mnli": entry}}, "mnli")
    assert "model m, zoo.mnli" in str(err.value)
