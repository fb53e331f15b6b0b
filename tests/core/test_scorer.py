"""The one text scorer: its probabilities are the softmax of the cached logits, its counters, its settings,
the ModelHandle builder, and the one padding path it shares with cached prediction."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import synthetic_sentence
from datasets import Dataset

from trustequiv.data.batches import PadCollator, TaskDataModule, encode_split, pad_features
from trustequiv.models.handle import ModelHandle
from trustequiv.models.loading import LoadedModel
from trustequiv.models.scorer import TextScorer, TorchTextScorer
from trustequiv.train.lightning_module import SequenceClassifier

PERM = [1, 0]  # the checkpoint's classes in the opposite order to the task's


def tiny_loaded(tiny_bert, *, int8: bool = False) -> LoadedModel:
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    return LoadedModel(model, tok, PERM, tiny_bert, "fp-tiny", {}, cpu_only=int8)


def split(pair: bool, n: int = 150) -> Dataset:
    rng = random.Random(1)
    labels = [rng.randint(0, 1) for _ in range(n)]
    cols = {
        "id": rng.sample(range(1000, 5000), n),  # ids out of order: rows are matched by id
        "text_a": [synthetic_sentence(rng, y) for y in labels],
        "label": labels,
    }
    if pair:
        cols["text_b"] = [synthetic_sentence(rng, 1 - y) for y in labels]
    return Dataset.from_dict(cols)


def cached_logits(loaded: LoadedModel, ds: Dataset, pair: bool) -> dict[int, torch.Tensor]:
    """Logits as trustequiv.prediction computes them: encode_split, length-sorted padded batches of 64,
    SequenceClassifier.predict_step (label permutation applied)."""
    enc = encode_split(ds, loaded.tokenizer, pair=pair, max_length=32)
    dm = TaskDataModule({"test": enc}, loaded.tokenizer, eval_batch_size=64, predict_split="test")
    module = SequenceClassifier(loaded.model, num_labels=2, label_permutation=loaded.label_permutation)
    rows: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        for batch in dm.predict_dataloader():
            out = module.predict_step(batch, 0)
            rows.update(zip(out["example_id"].tolist(), out["logits"], strict=True))
    return rows


@pytest.mark.parametrize(
    ("pair", "int8"), [(False, False), (True, False), (False, True)], ids=["single", "pair", "int8"]
)
def test_scorer_gives_the_softmax_of_the_cached_logits(tiny_bert, pair, int8):
    loaded = tiny_loaded(tiny_bert, int8=int8)
    ds = split(pair)
    logits = cached_logits(loaded, ds, pair)
    # Dynamic int8 picks activation ranges per batch: the cached batches (64, longest first) give its numbers.
    scorer = TorchTextScorer.from_loaded(loaded, max_length=32, max_batch=64, batch_tokens=64 * 32)
    texts = list(zip(ds["text_a"], ds["text_b"], strict=True)) if pair else [(t,) for t in ds["text_a"]]
    probs = scorer(texts)
    want = torch.stack([logits[i] for i in ds["id"]])
    expected = torch.softmax(want.double(), dim=-1).numpy()  # ModelOutputs.probs
    assert probs.dtype == np.float64 and probs.shape == (len(ds), 2)
    # float32 forward passes: a few ulps of the logits' size (dynamic padding changes summation order)
    tol = 64 * float(np.finfo(np.float32).eps) * max(1.0, float(want.abs().max()))
    np.testing.assert_allclose(probs, expected, rtol=0, atol=tol)
    assert scorer.n_calls == 1 and scorer.n_texts == len(ds) and scorer.cpu_only == int8


def test_counters_dedup_and_input_checks(tiny_bert):
    scorer = TorchTextScorer.from_loaded(tiny_loaded(tiny_bert), max_length=32)
    assert isinstance(scorer, TextScorer)
    probs = scorer([("good film",), ("bad film",), ("good film",)])
    assert (scorer.n_calls, scorer.n_texts, scorer.n_unique) == (1, 3, 2)
    assert scorer.n_tokens == 2 * 4  # [CLS] word word [SEP], unique texts only
    np.testing.assert_array_equal(probs[0], probs[2])
    assert scorer([]).shape == (0, 2)
    with pytest.raises(ValueError, match="tuples of one text"):
        scorer([("a",), ("a", "b")])


def test_configure_batching_and_devices(tiny_bert):
    scorer = TorchTextScorer.from_loaded(tiny_loaded(tiny_bert), max_length=32, devices=["cpu"])
    assert scorer.batch_tokens == 4096 and scorer.max_batch == 1024  # CPU defaults
    assert scorer.configure(batch_tokens=100, max_batch=7) is scorer
    assert (scorer.batch_tokens, scorer.max_batch) == (100, 7)
    assert scorer.configure() is scorer and scorer.batch_tokens == 100  # None keeps each setting
    int8 = TorchTextScorer.from_loaded(tiny_loaded(tiny_bert, int8=True), max_length=32, devices=["cuda:0"])
    assert int8.devices == [torch.device("cpu")]  # an int8 model has CPU kernels only
    int8.configure(devices=["cuda:0"])
    assert int8.devices == [torch.device("cpu")]


def test_replicas_on_several_devices_give_the_same_probabilities(tiny_bert):
    """Batches round-robin over a replica per device (two CPU 'devices' here), same numbers as one."""
    loaded = tiny_loaded(tiny_bert)
    texts = [(t,) for t in split(False, 40)["text_a"]]
    one = TorchTextScorer.from_loaded(loaded, max_length=32, batch_tokens=64)
    two = TorchTextScorer.from_loaded(loaded, max_length=32, batch_tokens=64)
    two.configure(devices=["cpu", "cpu"])
    np.testing.assert_allclose(two(texts), one(texts), rtol=0, atol=1e-6)
    assert len(two.models) == 2 and two.models[1] is not two.models[0] and len(two.batches([8] * 40)) == 5


def test_handle_builder(tiny_bert):
    loaded = tiny_loaded(tiny_bert)
    handle = TorchTextScorer.handle(loaded, name="tiny", batch_tokens=512)
    assert isinstance(handle, ModelHandle)
    assert (handle.name, handle.fingerprint, handle.source) == ("tiny", "fp-tiny", "hf")
    assert handle.loaded is loaded and not handle.cpu_only
    assert handle.tokenizer is loaded.tokenizer  # LoadedModel attributes fall through
    scorer = handle.scorer({"name": "toy", "max_length": 16})
    assert isinstance(scorer, TorchTextScorer) and scorer.max_length == 16 and scorer.batch_tokens == 512
    assert TorchTextScorer.handle(loaded).name == tiny_bert.name  # default: the checkpoint dir's name


def test_one_padding_path():
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [5], "attention_mask": [1]}]
    batch = pad_features(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "token_type_ids" not in batch and batch["input_ids"].dtype == torch.long

    class Tok:
        pad_token_id = 9

    examples = [{**r, "label": 1, "example_id": k} for k, r in enumerate(rows)]
    collated = PadCollator(Tok())(examples)
    assert collated["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert collated["labels"].tolist() == [1, 1] and collated["example_id"].tolist() == [0, 1]
