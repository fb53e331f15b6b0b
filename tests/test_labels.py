"""trustequiv.labels: label names matched by name, never by position."""

import numpy as np
import pytest

from trustequiv.labels import (
    DEFAULT_ALIASES,
    LabelMismatchError,
    id2label_names,
    label_permutation,
    normalize_label,
    resolve_label,
)


@pytest.mark.parametrize("name", ["Not_Entailment", "not entailment", "NOT-ENTAILMENT", "  not_entailment\n"])
def test_normalize_label_spellings_match(name):
    assert normalize_label(name) == "notentailment"


def test_normalize_label_rejects_non_str():
    with pytest.raises(TypeError):
        normalize_label(1)


def test_permutation_reorders_logits_by_name():
    source = ["contradiction", "entailment", "neutral"]  # e.g. roberta-large-mnli order
    canonical = ["entailment", "neutral", "contradiction"]
    perm = label_permutation(source, canonical)
    assert perm == [1, 2, 0]
    logits = np.array([[0.1, 0.7, 0.2], [0.9, 0.05, 0.05]])  # columns in source order
    canon = logits[:, perm]
    for j, name in enumerate(canonical):
        np.testing.assert_array_equal(canon[:, j], logits[:, source.index(name)])


def test_identity_and_spelling_insensitive():
    assert label_permutation(["ENTAILMENT", "Not-Entailment"], ["entailment", "not_entailment"]) == [0, 1]


def test_default_aliases_both_directions():
    assert label_permutation(["neg", "pos"], ["negative", "positive"]) == [0, 1]
    assert label_permutation(["positive", "negative"], ["neg", "pos"]) == [1, 0]
    assert label_permutation(["not_duplicate", "is_duplicate"], ["not_duplicate", "duplicate"]) == [0, 1]
    assert label_permutation(
        ["contradictory", "entailment", "neutral"], ["entailment", "neutral", "contradiction"]
    ) == [
        1,
        2,
        0,
    ]
    assert all(k == normalize_label(k) and v == normalize_label(v) for k, v in DEFAULT_ALIASES.items())


def test_custom_aliases():
    assert label_permutation(
        ["Same", "Different"],
        ["not_equivalent", "equivalent"],
        {"same": "equivalent", "different": "not equivalent"},
    ) == [1, 0]
    assert resolve_label("Same", {"same": "equivalent"}) == "equivalent"


@pytest.mark.parametrize(
    "source", [["LABEL_0", "LABEL_1", "LABEL_2"], ["0", "1", "2"], ["label 0", "x", "y"]]
)
def test_generic_names_raise_with_fix(source):
    with pytest.raises(LabelMismatchError) as err:
        label_permutation(source, ["entailment", "neutral", "contradiction"])
    msg = str(err.value)
    assert "carries no label names" in msg
    assert "model.label_names=[" in msg
    assert "entailment" in msg


def test_mismatch_names_both_lists():
    with pytest.raises(LabelMismatchError) as err:
        label_permutation(["entailment", "non_contradiction"], ["entailment", "not_entailment"])
    msg = str(err.value)
    assert "non_contradiction" in msg and "not_entailment" in msg
    assert "model.label_names" in msg


def test_different_sizes_raise():
    with pytest.raises(LabelMismatchError):
        label_permutation(["entailment", "not_entailment"], ["entailment", "neutral", "contradiction"])


def test_duplicates_raise():
    with pytest.raises(LabelMismatchError, match="duplicate"):
        label_permutation(["neg", "negative"], ["negative", "positive"])
    with pytest.raises(LabelMismatchError, match="duplicate"):
        label_permutation(["negative", "positive"], ["negative", "Negative"])


def test_is_a_value_error():
    assert issubclass(LabelMismatchError, ValueError)


def test_id2label_names_str_keys_any_order():
    assert id2label_names({"2": "contradiction", "0": "entailment", "1": "neutral"}) == [
        "entailment",
        "neutral",
        "contradiction",
    ]
    assert id2label_names({0: "neg", 1: "pos"}) == ["neg", "pos"]


@pytest.mark.parametrize("bad", [{0: "a", 2: "b"}, {"x": "a"}, {1: "a"}])
def test_id2label_names_bad_keys(bad):
    with pytest.raises(ValueError):
        id2label_names(bad)
