"""Word features with pair structure, the text scorer attributions run through, per-example seeding, sub-token
aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.characteristics.attribution import explainers
from plugins.characteristics.attribution.perturb import WordFeatures, example_seed
from trustequiv.models.scorer import TorchTextScorer

PREMISE = ["the movie was good and the plot was great", "a dull film", "it is a lovely story , really"]
HYPOTHESIS = ["the film was good", "the movie is awful and the acting poor", "nice"]


def tiny_classifier(tiny_bert: Path, seed: int):
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(tiny_bert)


def feats(order=(0, 1, 2)) -> list[WordFeatures]:
    return [WordFeatures.from_texts(100 + i, PREMISE[i], HYPOTHESIS[i]) for i in order]


class Recorder:
    """Wraps a scorer and records every text it is asked for."""

    def __init__(self, predict):
        self.predict, self.texts = predict, []

    def __call__(self, texts):
        self.texts.extend(texts)
        return self.predict(texts)


def test_word_features_keep_pair_structure():
    f = WordFeatures.from_texts(1, "The cat, sat.", "the cat")
    assert f.words == ["The", "cat", ",", "sat", ".", "the", "cat"]
    assert f.segments == [0, 0, 0, 0, 0, 1, 1]
    keys = f.keys()
    assert keys[1] == "a:cat" and keys[6] == "b:cat" and keys[1] != keys[6]  # premise word != hypothesis word
    assert f.masked(np.ones(7, bool)) == ("The cat, sat.", "the cat")
    keep = np.array([1, 0, 0, 1, 1, 1, 0], bool)
    assert f.masked(keep) == ("The sat.", "the")
    assert f.masked(keep, "[MASK]") == ("The [MASK] [MASK] sat.", "the [MASK]")
    assert f.masked(np.zeros(7, bool)) == ("", "")  # every word hidden: two empty texts, still a pair


def test_example_seed_is_order_free():
    assert example_seed(42, 7) == example_seed(42, 7)
    assert len({example_seed(42, 7), example_seed(43, 7), example_seed(42, 8)}) == 3


def test_scorer_matches_plain_forward_and_dedups(tiny_bert):
    model, tok = tiny_classifier(tiny_bert, 0)
    pred = TorchTextScorer(model, tok, [1, 0], max_length=32, batch_tokens=40)
    texts = [(a, b) for a, b in zip(PREMISE, HYPOTHESIS, strict=True)]
    probs = pred(texts + texts[:2])
    assert pred.n_texts == 5 and pred.n_unique == 3
    with torch.inference_mode():
        for i, (a, b) in enumerate(texts):
            logits = model(**tok(a, b, return_tensors="pt")).logits[0]
            want = torch.softmax(logits, -1)[[1, 0]].numpy()  # label permutation applied
            np.testing.assert_allclose(probs[i], want, atol=1e-5)
    np.testing.assert_allclose(probs[3:], probs[:2])
    pred.batch_tokens = 20
    batches = pred.batches([3, 10, 5, 10, 2])
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0, 4]]  # longest first, <= 20 padded tokens


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_separator_is_never_masked(tiny_bert, method):
    model, tok = tiny_classifier(tiny_bert, 0)
    rec = Recorder(TorchTextScorer(model, tok, max_length=32))
    run = explainers.lime_attributions if method == "lime" else explainers.shap_attributions
    kwargs = {"num_samples": 60} if method == "lime" else {}
    attrs = run(feats(), rec, seed=42, n_classes=2, **kwargs)
    assert [a.shape for a in attrs] == [(2, f.n_features) for f in feats()]
    assert len(rec.texts) > 30
    for texts in rec.texts:
        assert len(texts) == 2  # always a (text_a, text_b) pair
        assert "~" not in texts[0] + texts[1]
        ids = rec.predict.encode([texts])["input_ids"][0]  # what the model receives
        assert ids.count(tok.sep_token_id) == 2  # both separators survive every perturbation


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_two_models_receive_identical_perturbations(tiny_bert, method):
    run = explainers.lime_attributions if method == "lime" else explainers.shap_attributions
    kwargs = {"num_samples": 50} if method == "lime" else {}
    seen = []
    for model_seed, order in ((0, (0, 1, 2)), (1, (2, 1))):  # other model, other order, fewer examples
        model, tok = tiny_classifier(tiny_bert, model_seed)
        per_example = {}
        fs = feats(order)
        for f in fs:  # record per example
            rec = Recorder(TorchTextScorer(model, tok, max_length=32))
            run([f], rec, seed=43, n_classes=2, **kwargs)
            per_example[f.example_id] = sorted(rec.texts)
        seen.append(per_example)
    for eid in seen[1]:
        assert seen[0][eid] == seen[1][eid]
    # and attributions of one example do not depend on the other examples in the run (same model)
    model, tok = tiny_classifier(tiny_bert, 0)
    pred = TorchTextScorer(model, tok, max_length=32)
    alone = run(feats((1,)), pred, seed=44, n_classes=2, **kwargs)[0]
    among = run(feats((2, 0, 1)), pred, seed=44, n_classes=2, **kwargs)[2]
    # Same perturbations (checked exactly above), but float32 forward passes of differently composed batches
    # are not bit-identical across CPUs: compare at a tolerance scaled to the attributions' size.
    np.testing.assert_allclose(alone, among, rtol=0, atol=1e-3 * float(np.abs(alone).max()))


def test_subtokens_sum_to_words(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "cat", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast.from_pretrained(tmp_path)
    f = WordFeatures.from_texts(1, "unbelievable cat.", "cat")
    enc = tok(*f.texts, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "[CLS]", "un", "##believ", "##able", "cat", ".", "[SEP]", "cat", "[SEP]",
    ]  # fmt: skip
    word_of = f.token_words(enc["offset_mapping"], enc.sequence_ids())
    assert word_of.tolist() == [-1, 0, 0, 0, 1, 2, -1, 3, -1]


def test_ig_gives_word_attributions(tiny_bert):
    model, tok = tiny_classifier(tiny_bert, 0)
    fs = feats()
    with torch.enable_grad():
        attrs = explainers.ig_attributions(fs, model, tok, [0, 1], n_classes=2, n_steps=16, batch_size=2)
    for f, a in zip(fs, attrs, strict=True):
        assert a.shape == (2, f.n_features) and np.isfinite(a).all()
        np.testing.assert_allclose(a[0], -a[1], atol=1e-4)  # two-class probabilities: p0 = 1 - p1
    # completeness: word attributions sum to p(x) - p(baseline) (captum's approximation, 16 steps)
    pred = TorchTextScorer(model, tok, max_length=32)
    p_x = pred([fs[0].texts])[0, 1]
    enc = tok(*fs[0].texts, return_tensors="pt")
    base = enc["input_ids"].clone()
    base[(base != tok.cls_token_id) & (base != tok.sep_token_id)] = tok.pad_token_id
    with torch.inference_mode():
        p_b = torch.softmax(model(input_ids=base, attention_mask=enc["attention_mask"]).logits, -1)[0, 1]
    assert attrs[0][1].sum() == pytest.approx(float(p_x - p_b), abs=0.02)
