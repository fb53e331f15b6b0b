"""trustequiv.data.labels: label names matched by name, never by position."""

import numpy as np
import pytest

from trustequiv.data.labels import (
    DEFAULT_ALIASES,
    LabelMismatchError,
    best_label_permutation,
    id2label_names,
    label_order_warning,
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


# --- best_label_permutation / label_order_warning: the safety net for a wrongly declared class order ---

NLI = ["entailment", "neutral", "contradiction"]  # canonical (conf/task/mnli.yaml)


def _scores(gold: np.ndarray, n_classes: int, accuracy: float, seed: int = 0) -> np.ndarray:
    """(N, C) logits in canonical order whose argmax is right on about ``accuracy`` of the rows."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.3, size=(gold.size, n_classes))
    hit = rng.random(gold.size) < accuracy
    wrong = (gold + rng.integers(1, n_classes, size=gold.size)) % n_classes
    logits[np.arange(gold.size), np.where(hit, gold, wrong)] += 3.0
    return logits.astype(np.float32)


def _outputs(logits: np.ndarray, gold: np.ndarray, names=NLI, name="cand"):
    import torch

    from trustequiv.outputs import ModelOutputs

    return ModelOutputs(
        name=name,
        example_ids=torch.arange(gold.size),
        logits=torch.from_numpy(logits),
        labels=torch.from_numpy(gold.astype(np.int64)),
        label_names=tuple(names),
    )


def test_best_permutation_recovers_shuffled_columns():
    gold = np.random.default_rng(1).integers(0, 3, size=300)
    canon = _scores(gold, 3, accuracy=0.85)
    shuffled = canon[:, [2, 0, 1]]  # column k of shuffled holds class [2, 0, 1][k]
    perm, best, as_is = best_label_permutation(shuffled, gold, 3)
    np.testing.assert_array_equal(shuffled[:, perm], canon)
    assert best == pytest.approx((canon.argmax(1) == gold).mean())
    assert as_is == pytest.approx((shuffled.argmax(1) == gold).mean()) and as_is < 0.3
    # predictions and torch tensors work alike; unlabelled rows are ignored
    import torch

    labels = gold.copy()
    labels[:40] = -1
    p2, b2, a2 = best_label_permutation(torch.from_numpy(shuffled.argmax(1)), torch.from_numpy(labels), 3)
    assert p2 == perm
    assert b2 == pytest.approx((canon.argmax(1)[40:] == gold[40:]).mean())
    assert a2 == pytest.approx((shuffled.argmax(1)[40:] == gold[40:]).mean())


def test_best_permutation_keeps_a_correct_order():
    gold = np.random.default_rng(2).integers(0, 3, size=200)
    perm, best, as_is = best_label_permutation(_scores(gold, 3, accuracy=0.9), gold, 3)
    assert perm == [0, 1, 2] and best == as_is
    # a constant predictor scores the same under every permutation: the order as given is kept
    perm, best, as_is = best_label_permutation(np.zeros(50, dtype=int), np.zeros(50, dtype=int), 3)
    assert perm == [0, 1, 2] and best == as_is == 1.0


@pytest.mark.parametrize(
    ("preds", "labels", "match"),
    [
        (np.zeros((4, 2)), np.zeros(4), "columns"),
        (np.zeros(4), np.zeros(5), "labels"),
        (np.zeros(3), -np.ones(3), "no labelled"),
        (np.array([0, 3]), np.array([0, 1]), "range"),
        (np.zeros((2, 3, 1)), np.zeros(2), "shape"),
    ],
)
def test_best_permutation_rejects_bad_input(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        best_label_permutation(preds, labels, 3)


def test_warning_names_the_label_names_to_declare():
    # A textattack-style MNLI head: columns [contradiction, entailment, neutral], read as if in GLUE order.
    gold = np.random.default_rng(3).integers(0, 3, size=400)
    canon = _scores(gold, 3, accuracy=0.84)
    truth = ["contradiction", "entailment", "neutral"]
    checkpoint = canon[:, [NLI.index(n) for n in truth]]  # the checkpoint's own column order
    msg = label_order_warning(_outputs(checkpoint, gold), None)  # read in canonical order: wrong
    assert msg is not None and "\n" not in msg
    assert "model.label_names=[contradiction,entailment,neutral]" in msg
    assert msg.startswith("cand:") and "n=400" in msg

    # Declared wrongly as [neutral, contradiction, entailment]: the loader reorders by those names, and the
    # warning still names the checkpoint's true order.
    declared = ["neutral", "contradiction", "entailment"]
    read = checkpoint[:, label_permutation(declared, NLI)]
    msg = label_order_warning(_outputs(read, gold), declared)
    assert "model.label_names=[contradiction,entailment,neutral]" in msg

    # Declaring that order fixes it.
    fixed = checkpoint[:, label_permutation(truth, NLI)]
    np.testing.assert_array_equal(fixed, canon)
    assert label_order_warning(_outputs(fixed, gold), truth) is None


def test_warning_binary_swap():
    names = ["negative", "positive"]
    gold = np.random.default_rng(4).integers(0, 2, size=120)
    swapped = _scores(gold, 2, accuracy=0.9)[:, [1, 0]]
    msg = label_order_warning(_outputs(swapped, gold, names), None)
    assert "model.label_names=[positive,negative]" in msg and "negative->positive" in msg


def test_no_warning_for_a_correct_or_weak_model_or_few_examples():
    gold = np.random.default_rng(5).integers(0, 3, size=300)
    assert label_order_warning(_outputs(_scores(gold, 3, accuracy=0.8), gold), None) is None
    # near-chance model: permutations differ by little, below min_gap
    assert label_order_warning(_outputs(_scores(gold, 3, accuracy=0.36), gold), None) is None
    few = gold[:30]
    shuffled = _scores(few, 3, accuracy=0.9)[:, [1, 2, 0]]
    assert label_order_warning(_outputs(shuffled, few), None) is None
    assert label_order_warning(_outputs(shuffled, few), None, min_examples=10) is not None


def test_no_warning_without_argmax_correctness():
    gold = np.random.default_rng(6).integers(0, 2, size=100)
    outputs = _outputs(_scores(gold, 2, accuracy=0.9)[:, [1, 0]], gold, ["no_answer", "answer"])
    import dataclasses

    import torch

    qa = dataclasses.replace(outputs, correct=torch.ones(100, dtype=torch.bool))  # extractive QA: EM decides
    assert label_order_warning(qa, None) is None
