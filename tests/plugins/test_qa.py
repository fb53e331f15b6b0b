"""Extractive QA (task kind extractive_qa): features, post-processing into outputs, and train -> evaluate end
to end on a tiny BERT and a synthetic SQuAD 2.0 file (answerable and unanswerable questions, contexts longer
than one window)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FILLER, POSITIVE, compose, forbid, tiny_overrides

from plugins.tasks import extractive_qa
from plugins.tasks.extractive_qa import (
    apply_null_threshold,
    choose_null_threshold,
    encode_qa,
    qa_outputs_from_logits,
    qa_settings,
)
from trustequiv.plain import plain
from trustequiv.run import pipeline, plan
from trustequiv.train import fine_tune as training

MAX_LENGTH, DOC_STRIDE = 40, 12


def write_synthetic_squad(root: Path, n: int = 60, seed: int = 0) -> Path:
    """``<root>/squad2/dev-v2.0.cs224n-half.json``: each context is 35-60 filler words; answerable ones hold
    one "positive" word (the answer), the rest none (``is_impossible``)."""
    rng = random.Random(seed)
    paragraphs = []
    for q in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(35, 60))]
        qa = {"id": f"q{q}", "question": "the story is", "answers": [], "is_impossible": True}
        if q % 3:
            pos = rng.randint(0, len(words))
            words.insert(pos, rng.choice(POSITIVE))
            start = len(" ".join(words[:pos])) + (1 if pos else 0)
            qa.update(answers=[{"text": words[pos], "answer_start": start}], is_impossible=False)
        paragraphs.append({"context": " ".join(words), "qas": [qa]})
    folder = root / "squad2"
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"version": "v2.0", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}
    (folder / "dev-v2.0.cs224n-half.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory) -> Path:
    return write_synthetic_squad(tmp_path_factory.mktemp("qa_data"))


def _split(squad_dir, name="test"):
    from plugins.tasks.squad import QALoader

    fr = {"train": 0.7, "validation": 0.1, "test": 0.2}
    return QALoader("squad2", "squad_json", "dev-v2.0.cs224n-half.json", fractions=fr).load(squad_dir)[name]


def test_encode_qa_windows_and_positions(squad_dir, tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = _split(squad_dir, "train")
    feats = encode_qa(data, tok, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_positions=True)
    assert len(feats) > len(data)  # long contexts overflow into several windows
    assert all(len(f["input_ids"]) <= MAX_LENGTH for f in feats)
    for f in feats:
        row = data[f["example"]]
        s, e = f["start_positions"], f["end_positions"]
        if s == 0:
            assert e == 0
            if row["answers"]:  # the answer lies outside this window
                start = row["answer_starts"][0]
                inside = [o for o in f["offsets"] if o is not None]
                assert not (inside[0][0] <= start and inside[-1][1] >= start + len(row["answers"][0]))
        else:
            text = row["context"][f["offsets"][s][0] : f["offsets"][e][1]]
            assert text == row["answers"][0]
    examples_with_answer_found = {f["example"] for f in feats if f["start_positions"] > 0}
    assert examples_with_answer_found == {i for i in range(len(data)) if data[i]["answers"]}


def test_outputs_from_hand_made_logits(squad_dir):
    """Known best span across windows; null wins when null - best > threshold; EM drives correct."""
    import datasets

    data = datasets.Dataset.from_dict(
        {
            "id": [5, 9],
            "question": ["q", "q"],
            "context": ["aa bb cc dd", "aa bb cc dd"],
            "answers": [["cc"], []],
            "answer_starts": [[6], []],
        }
    )
    offs = [None, None, (0, 2), (3, 5), (6, 8), (9, 11), None]
    # question 0: two windows; best span "cc" (token 4) is in the second one (score 5 + 5 = 10 > null 1)
    # question 1: one window; best span "bb" scores 2 + 2 = 4 < null 3 + 3 = 6 -> no answer
    features = [
        {"example": 0, "offsets": offs, "input_ids": [0] * 7},
        {"example": 0, "offsets": offs, "input_ids": [0] * 7},
        {"example": 1, "offsets": offs, "input_ids": [0] * 7},
    ]
    s = [
        np.array([0.5, 0, 1, 0, 0, 0, 0.0]),
        np.array([0.5, 0, 0, 0, 5, 0, 9.0]),
        np.array([3, 0, 0, 2, 0, 0, 0.0]),
    ]
    e = [
        np.array([0.5, 0, 1, 0, 0, 0, 0.0]),
        np.array([0.5, 0, 0, 0, 5, 0, 9.0]),
        np.array([3, 0, 0, 2, 0, 0, 0.0]),
    ]
    emb = torch.arange(6.0).reshape(3, 2)
    settings = qa_settings({})
    out = qa_outputs_from_logits("m", data, features, s, e, emb, ("no_answer", "answer"), settings)
    assert out.columns["prediction"] == ["cc", ""]
    assert out.correct.tolist() == [True, True] and out.labels.tolist() == [1, 0]
    assert out.logits.tolist() == [[1.0, 10.0], [6.0, 4.0]]
    assert out.predictions.tolist() == [1, 0]
    assert out.embeddings.tolist() == [[0.0, 1.0], [4.0, 5.0]]  # first window's [CLS]
    # with a threshold above null - best (6 - 4 = 2) the span is answered, and wrong (EM 0) on question 1
    out = qa_outputs_from_logits(
        "m",
        data,
        features,
        s,
        e,
        emb,
        ("no_answer", "answer"),
        {**settings, "null_score_diff_threshold": 2.5},
    )
    assert out.columns["prediction"] == ["cc", "bb"]
    assert out.correct.tolist() == [True, False] and out.columns["f1"] == [1.0, 0.0]
    # thresholding the threshold-0 outputs afterwards is the same decision
    later = apply_null_threshold(
        qa_outputs_from_logits("m", data, features, s, e, emb, ("no_answer", "answer"), settings), 2.5
    )
    assert later.columns["prediction"] == ["cc", "bb"] and later.correct.tolist() == [True, False]
    assert later.predictions.tolist() == [1, 1]  # the answer logit carries the threshold
    # best F1 on these two: answer q0 (diff -9), abstain on q1 (diff 2): threshold -9, F1 1
    chosen = choose_null_threshold(out)
    assert chosen["null_score_diff_threshold"] == -9.0 and chosen["validation_f1"] == 1.0


QA_CHARS = (
    "characteristic=[errors,qa,calibration]",
    "characteristic.errors.n_bootstrap=50",
    "characteristic.qa.n_bootstrap=50",
)


def _overrides(tmp, tiny, data_dir, *extra, chars=QA_CHARS):
    # the candidate is tiny_ref+<compressor>: its base is the reference
    return tiny_overrides(
        tmp,
        tiny,
        data_dir,
        "trainer.max_epochs=8",
        "task.training.learning_rate=5e-3",
        f"task.max_length={MAX_LENGTH}",
        f"task.doc_stride={DOC_STRIDE}",
        *chars,
        *extra,
        task="qa/squad2",
        candidate="tiny_ref",
    )


def test_qa_train_evaluate_and_cache(squad_dir, tiny_bert, tmp_path, monkeypatch):
    cfg = compose(
        "evaluate", _overrides(tmp_path, tiny_bert, squad_dir, "train_missing=true", "compressor=layer_drop")
    )
    first = pipeline.evaluate(cfg)
    m = first["metrics"]
    n = len(_split(squad_dir))
    for name in ("tiny_ref", "tiny_ref+layer_drop"):
        assert m[f"qa/{name}/n_examples"] == n and m[f"errors/{name}/n_examples"] == n
        # the errors characteristic's error set is exact match = 0
        assert m[f"errors/{name}/n_errors"] == pytest.approx(n * (1 - m[f"qa/{name}/exact"]))
        assert m[f"errors/{name}/accuracy"] == pytest.approx(m[f"qa/{name}/exact"])
        assert 0 <= m[f"qa/{name}/exact"] <= m[f"qa/{name}/f1"] <= 1
    assert m["qa/tiny_ref/exact"] > 0.5  # the keyword answers are learnable
    pair = "tiny_ref_vs_tiny_ref+layer_drop"
    for key in (f"errors/{pair}/error_jaccard", f"qa/{pair}/f1_diff", f"qa/{pair}/answer_agreement"):
        assert key in m, key
    ckpt = tmp_path / "models" / "squad2" / "tiny_ref+layer_drop"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["BertForQuestionAnswering"]
    header = (Path(first["output_dir"]) / "predictions" / "tiny_ref.csv").read_text().splitlines()[0]
    assert header == "example_id,gold_label,predicted_label,p_no_answer,p_answer,predicted_answer,exact,f1"
    meta = json.loads((tmp_path / "models" / "squad2" / "tiny_ref" / "trustequiv.json").read_text())
    assert meta["kind"] == "extractive_qa" and meta["best_val_loss"] is not None

    forbid(monkeypatch, extractive_qa, "load_qa_model")
    forbid(monkeypatch, training, "fine_tune")
    again = pipeline.evaluate(cfg)
    assert all(again["cached"].values())
    assert again["metrics"] == pytest.approx(m, nan_ok=True)
    monkeypatch.undo()

    # by default the no-answer threshold is chosen per model on validation (official best-F1 threshold)
    assert not first["cached"]["tiny_ref/validation"]
    for name in ("tiny_ref", "tiny_ref+layer_drop"):
        assert f"qa/{name}/null_threshold" in m and 0 <= m[f"qa/{name}/answered_share"] <= 1
        assert 0 <= m[f"qa/{name}/validation_f1"] <= 1
    results = json.loads((Path(first["output_dir"]) / "results.json").read_text())
    assert "chosen on the validation split" in json.dumps(results)
    # a fixed threshold needs no validation pass and reuses the threshold-free cached outputs
    fixed = pipeline.evaluate(
        compose(
            "evaluate",
            _overrides(
                tmp_path, tiny_bert, squad_dir, "compressor=layer_drop", "task.null_score_diff_threshold=0"
            ),
        )
    )
    assert all(fixed["cached"].values()) and "tiny_ref/validation" not in fixed["cached"]
    assert fixed["metrics"]["qa/tiny_ref/null_threshold"] == 0.0

    # the same checkpoints on an OOD QA set (COVID-QA layout): distribution (best span vs no-answer score)
    # and representation ([CLS] of the first window)
    ood = write_synthetic_squad(tmp_path / "ood_data", n=12, seed=1)
    covid = ood / "covid_qa"
    covid.mkdir()
    (ood / "squad2" / "dev-v2.0.cs224n-half.json").rename(covid / "200423_covidQA.json")
    for f in (squad_dir / "squad2").iterdir():
        (ood / "squad2" / f.name).write_bytes(f.read_bytes())
    cfg = compose(
        "evaluate",
        _overrides(
            tmp_path,
            tiny_bert,
            ood,
            "compressor=layer_drop",
            "ood=[qa/covid_qa/test]",
            chars=(
                "characteristic=[distribution,representation]",
                "characteristic.representation.ks=[1,5]",
                "characteristic.representation.n_permutations=10",
            ),
        ),
    )
    res = pipeline.evaluate(cfg)
    assert res["cached"]["tiny_ref/test"] and not res["cached"]["tiny_ref/covid_qa/test"]
    for key in (
        "distribution/tiny_ref/covid_qa_test/auroc",
        f"distribution/{pair}/covid_qa_test/flag_kappa",
        f"representation/{pair}/knn_k5",
        f"representation/{pair}/cka_linear",
    ):
        assert key in res["metrics"], key


@pytest.mark.parametrize("name", ["squad2", "subjqa", "covid_qa", "newsqa"])
def test_qa_task_configs(name):
    import hydra

    cfg = compose("evaluate", ["paths.output_dir=/tmp/trustequiv-test-run", "logger=none", f"task=qa/{name}"])
    assert cfg.task.name == name and cfg.task.kind == "extractive_qa"
    assert list(cfg.task.label_names) == ["no_answer", "answer"]
    assert hasattr(hydra.utils.instantiate(cfg.task.loader), "load")


def test_squad2_ood_sets_on_real_data():
    from conftest import DATA_DIR

    if not (DATA_DIR / "squad2").is_dir():
        pytest.skip(f"no real data at {DATA_DIR}")
    cfg = compose(
        "evaluate",
        [
            "paths.output_dir=/tmp/trustequiv-test-run",
            "logger=none",
            "task=qa/squad2",
            f"paths.data_dir={DATA_DIR}",
        ],
    )
    dd = pipeline.load_task_data(cfg)
    assert {k: len(v) for k, v in dd.items()} == {"train": 4450, "validation": 486, "test": 1142}
    sets = plan.ood_sets(cfg, plain(cfg.task))
    assert {k: len(v[1]) for k, v in sets.items()} == {"subjqa/test": 2362, "covid_qa/test": 1380}


def test_qa_hub_sources(monkeypatch):
    """paths.data_dir=null: SQuAD 2.0 (SQuAD layout, validation carved out of train) and NewsQA (MRQA layout,
    filtered by subset) from the hub, with a stand-in for datasets.load_dataset (no network here)."""
    import datasets

    def squad(n, prefix):
        ctx = [f"context {prefix} {i} alpha beta" for i in range(n)]
        return datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}{i}" for i in range(n)],
                "context": ctx,
                "question": [f"q{i} " for i in range(n)],
                "answers": [
                    {"text": ["alpha"], "answer_start": [c.index("alpha")]}
                    if i % 2
                    else {"text": [], "answer_start": []}
                    for i, c in enumerate(ctx)
                ],
            }
        )

    mrqa = datasets.Dataset.from_dict(
        {
            "subset": ["NewsQA", "SQuAD", "NewsQA"],
            "qid": ["n1", "s1", "n2"],
            "context": ["a storm hit the coast", "x", "the mayor said no"],
            "question": ["what hit?", "?", "who said no?"],
            "answers": [["a storm", "a storm", "storm"], ["x"], ["the mayor"]],
        }
    )
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, split))
        if path == "mrqa-workshop/mrqa":
            return mrqa
        return squad(200, "t") if split == "train" else squad(30, "v")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    overrides = ["paths.output_dir=/tmp/trustequiv-test-run", "logger=none", "paths.data_dir=null"]
    cfg = compose("evaluate", [*overrides, "task=qa/squad2"])
    dd = pipeline.load_task_data(cfg)
    sizes = {k: len(v) for k, v in dd.items()}
    assert sizes["test"] == 30 and sizes["train"] + sizes["validation"] == 200 and sizes["validation"] > 0
    ids = [i for split in dd.values() for i in split["id"]]
    assert len(set(ids)) == len(ids) == 230
    row = dd["test"][1]
    assert row["answers"] == ["alpha"] and row["context"][row["answer_starts"][0] :].startswith("alpha")
    assert dd["test"][0]["answers"] == []  # unanswerable
    news = pipeline.load_task_data(compose("evaluate", [*overrides, "task=qa/newsqa"]))["test"]
    assert news["qid"] == ["n1", "n2"] and news["answers"][0] == ["a storm", "storm"]
    assert news["answer_starts"][0] == [0, 2]
    assert ("mrqa-workshop/mrqa", "validation") in calls


def test_optional_ood_set_is_skipped_when_missing(squad_dir):
    """NewsQA has no local file: listed with '?' it is skipped with a warning, else the error names it."""
    base = [
        "paths.output_dir=/tmp/trustequiv-test-run",
        "logger=none",
        "task=qa/squad2",
        f"paths.data_dir={squad_dir}",
    ]
    cfg = compose("evaluate", [*base, "ood=[qa/newsqa/test?]"])
    assert plan.ood_sets(cfg, plain(cfg.task)) == {}
    cfg = compose("evaluate", [*base, "ood=[qa/newsqa/test]"])
    with pytest.raises(FileNotFoundError, match="newsqa"):
        plan.ood_sets(cfg, plain(cfg.task))


def test_qa_characteristic_aligns_rows_by_id():
    from plugins.characteristics.qa import QACharacteristic
    from trustequiv.outputs import ModelOutputs

    def out(name, ids, preds, exact):
        n = len(ids)
        return ModelOutputs(
            name=name,
            example_ids=torch.tensor(ids),
            logits=torch.zeros(n, 2),
            labels=torch.ones(n, dtype=torch.long),
            label_names=("no_answer", "answer"),
            correct=torch.tensor(exact, dtype=torch.bool),
            columns={"prediction": preds, "exact": exact, "f1": exact, "has_answer": [True] * n},
        )

    ref = out("r", [1, 2, 3], ["a", "b", "c"], [1, 1, 0])
    cand = out("c", [3, 1, 2], ["c", "a", "x"], [0, 1, 0])  # same answers on ids 1 and 3, in another order
    res = QACharacteristic(n_bootstrap=20).evaluate(ref, [cand])
    assert res.metrics["r_vs_c/answer_agreement"] == pytest.approx(2 / 3)
    assert res.metrics["r_vs_c/exact_diff"] == pytest.approx(-1 / 3)
    assert res.metrics["r/exact"] == pytest.approx(2 / 3) and res.metrics["c/f1"] == pytest.approx(1 / 3)


def test_killed_qa_prediction_resumes(squad_dir, tiny_bert, tmp_path, monkeypatch):
    """Kill QA prediction after two batches of windows; the rerun predicts only the other windows and gives
    the outputs of an uninterrupted run."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from trustequiv import cache as cache_mod
    from trustequiv.cache import OutputCache

    ckpt = tmp_path / "qa_model"
    torch.manual_seed(0)
    AutoModelForQuestionAnswering.from_pretrained(tiny_bert).save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(ckpt)
    split = _split(squad_dir)
    task = compose("evaluate", ["task=qa/squad2", "logger=none"]).task
    task = {**dict(task), "max_length": MAX_LENGTH, "doc_stride": DOC_STRIDE}
    trainer_cfg = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False}
    windows = []

    def run(cache):
        def load():
            return extractive_qa.load_qa_model(str(ckpt))

        return extractive_qa.predict_qa_outputs(
            "m", "fp", load, split, task_cfg=task, split="test", cache=cache,
            trainer_cfg=trainer_cfg, predict_cfg={"batch_size": 2}, key_extra={"data": "d"},
        )  # fmt: skip

    clean, _ = run(OutputCache(tmp_path / "clean"))
    real = cache_mod.PartialPredictionWriter.write_on_batch_end
    calls = {"n": 0}

    def dying(self, trainer, module, prediction, *args, **kwargs):
        real(self, trainer, module, prediction, *args, **kwargs)
        windows.extend(prediction["feature"].tolist())
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(cache_mod.PartialPredictionWriter, "write_on_batch_end", dying)
    cache = OutputCache(tmp_path / "resumed")
    with pytest.raises(RuntimeError, match="killed"):
        run(cache)
    first_run = list(windows)
    assert len(first_run) == 4
    out, was_cached = run(cache)
    assert not was_cached and not set(windows[4:]) & set(first_run)  # finished windows not redone
    assert torch.equal(out.example_ids, clean.example_ids) and torch.equal(out.correct, clean.correct)
    # float32 forward passes of the resumed windows need not be bit-identical to the clean run's (batch
    # shapes, CPU kernels): compare within a tolerance scaled to the values' size
    for got, want in ((out.logits, clean.logits), (out.embeddings, clean.embeddings)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max())))
    assert not list((tmp_path / "resumed").rglob("*.partial"))
