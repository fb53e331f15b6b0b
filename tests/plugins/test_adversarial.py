"""Adversarial characteristic: pure metrics on hand-made outcomes, the TextAttack wrapper (over the model's
text scorer) against the cached outputs, a tiny model attacked end to end offline (through the pipeline, with
transfer), and resumption."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, tiny_overrides

from plugins.characteristics import adversarial as adv
from plugins.characteristics.adversarial import Adversarial, read_jsonl, reusable_under_budget, runner
from plugins.characteristics.adversarial import characteristic as adv_char
from trustequiv.data.sampling import sample_positions
from trustequiv.functional.adversarial import (
    attack_summary,
    attacked_set_jaccard,
    common_attacked,
    perturbed_word_overlap,
    success_rate,
    transfer_rate,
)
from trustequiv.models.scorer import TorchTextScorer
from trustequiv.outputs import ModelOutputs

FAST = ["trainer.max_epochs=8", "task.training.learning_rate=5e-3"]


# ---------------------------------------------------------------- pure metrics
def test_attack_summary_matches_textattack_definitions():
    st = ["success", "failed", "skipped", "success", "failed", "failed"]
    s = attack_summary(st, n_queries=[10, 20, 0, 30, 40, 50], perturbed_shares=[0.1, 0, 0, 0.3, 0, 0])
    assert s["success_rate"] == pytest.approx(2 / 5)
    assert s["accuracy_under_attack"] == pytest.approx(3 / 6)
    assert s["original_accuracy"] == pytest.approx(5 / 6)
    assert s["mean_perturbed_share"] == pytest.approx(0.2)
    assert s["mean_queries"] == pytest.approx(30.0)
    assert (s["n_success"], s["n_failed"], s["n_skipped"]) == (2, 3, 1)
    assert math.isnan(success_rate(0, 0))
    with pytest.raises(ValueError, match="unknown attack status"):
        attack_summary(["broken"])


def test_jaccard_and_transfer_on_hand_made_outcomes():
    from sklearn.metrics import jaccard_score

    a = {1: "success", 2: "success", 3: "failed", 4: "skipped", 5: "success", 6: "failed"}
    b = {1: "success", 2: "failed", 3: "success", 4: "success", 5: "skipped", 6: "failed"}
    common = common_attacked(a, b)
    assert common == [1, 2, 3, 6]  # 4 and 5 are skipped by one model
    ours = attacked_set_jaccard(a, b)
    ya = [a[i] == "success" for i in common]
    yb = [b[i] == "success" for i in common]
    assert ours == pytest.approx(jaccard_score(ya, yb)) == pytest.approx(1 / 3)
    assert transfer_rate([True, False, False, True]) == 0.5
    assert math.isnan(transfer_rate([]))
    assert perturbed_word_overlap([{1, 2}, {5}], [{2, 3}, {5}]) == pytest.approx((1 / 3 + 1) / 2)


def _rec(i, status, label=1, idx=(), queries=10):
    r = {"id": i, "label": label, "status": status, "n_queries": queries, "n_words": 5, "seconds": 0.1}
    if status == "success":
        r.update(adv_texts=[f"adv {i}"], perturbed_indices=list(idx), perturbed_share=len(idx) / 5)
    return r


def _outputs(name, records, replay=None):
    ids = torch.tensor([r["id"] for r in records])
    collected = {
        "records": records,
        "setup": {
            "recipe": "bert-attack",
            "substitute_mlm_is_paper": True,
            "sentence_encoder": "universal_sentence_encoder",
            "mlm_max_length": 512,
            "max_candidates": 8,
        },
    }
    if replay is not None:
        collected["replay"] = {"transfer": replay}
    return ModelOutputs(
        name=name,
        example_ids=ids,
        logits=torch.zeros(len(ids), 2),
        labels=torch.tensor([r["label"] for r in records]),
        label_names=("negative", "positive"),
        collected={"adversarial": collected},
    )


def test_compare_on_hand_made_outcomes():
    ref_recs = [
        _rec(1, "success", idx=(0, 1)),
        _rec(2, "success", idx=(3,)),
        _rec(3, "failed"),
        _rec(4, "skipped"),
    ]
    cand_recs = [
        _rec(1, "success", idx=(1, 2)),
        _rec(2, "failed"),
        _rec(3, "failed"),
        _rec(4, "success", idx=(0,)),
    ]
    # cand predicts gold (1) on ref's text for id 2 only -> ref->cand transfer = 1/2;
    # ref is fooled by cand's text for id 1 -> cand->ref = 1/1 (id 4 is skipped by ref: left out)
    ref = _outputs("ref", ref_recs, replay={"cand": {"ids": [1, 4], "predictions": [0, 0]}})
    cand = _outputs("cand", cand_recs, replay={"ref": {"ids": [1, 2], "predictions": [0, 1]}})
    res = Adversarial().evaluate(ref, [cand])
    m = res.metrics
    assert m["ref_vs_cand/n_common_attacked"] == 3
    assert m["ref_vs_cand/success_rate_reference"] == pytest.approx(2 / 3)
    assert m["ref_vs_cand/success_rate_candidate"] == pytest.approx(1 / 3)
    assert m["ref_vs_cand/success_rate_gap"] == pytest.approx(-1 / 3)
    assert m["ref_vs_cand/attacked_jaccard"] == pytest.approx(1 / 2)
    assert m["ref_vs_cand/transfer_ref_to_cand"] == pytest.approx(1 / 2)
    assert m["ref_vs_cand/transfer_cand_to_ref"] == pytest.approx(1.0)
    assert m["ref_vs_cand/perturbed_word_jaccard"] == pytest.approx(1 / 3)
    assert m["ref/success_rate"] == pytest.approx(2 / 3)  # per model: its own denominator
    assert m["cand/success_rate"] == pytest.approx(2 / 4)
    assert m["ref/departures_from_paper"] == 0
    rows = res.per_example["adversarial_ref_vs_cand"]
    assert rows["id"] == [1, 2, 3] and rows["ref_adv_fools_cand"] == [True, False, ""]


def test_examples_are_the_shared_sample_in_id_order():
    ids = [50, 10, 40, 30, 20]
    a = Adversarial(n_examples=3).examples(ids)
    assert sorted(a) == sample_positions(ids, 3) and [ids[k] for k in a] == sorted(ids[k] for k in a)
    assert Adversarial(n_examples=None).examples(ids) == [1, 4, 3, 2, 0]
    assert Adversarial(n_examples=3).cache_config()["sampler"] == "hash_unit"  # not the old sample's outcomes
    with pytest.raises(ValueError, match=r"^n_examples must be a positive number"):
        Adversarial(n_examples=0)


def test_wrapper_counts_queries_through_the_scorer(tiny_bert):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from trustequiv.models.handle import ModelHandle
    from trustequiv.models.loading import LoadedModel

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    loaded = LoadedModel(model, AutoTokenizer.from_pretrained(tiny_bert), [0, 1], tiny_bert, "fp", {})
    scorer_only = ModelHandle(  # e.g. an ONNX source: a scorer, no torch model
        name="m", fingerprint="fp", scorer=lambda task: TorchTextScorer.from_loaded(loaded, max_length=32)
    )
    pair_task = {"name": "toy", "pair": True, "max_length": 32}
    clf = Adversarial(batch_size=4)._classifier(scorer_only, pair_task)
    assert (clf.scorer.max_batch, clf.scorer.batch_tokens) == (4, 4 * 32)  # one forward per model call
    probs = clf([("good film", "bad film"), ("a", "b"), ("good film", "bad film")])
    assert probs.shape == (3, 2) and clf.n_calls == clf.scorer.n_texts == 3
    assert clf.predict([("a", "b")]) == [int(probs[1].argmax())] and clf.n_calls == 4
    with pytest.raises(ValueError, match="pair"):
        clf(["not a pair"])
    single = Adversarial()._classifier(scorer_only, {**pair_task, "pair": False})
    np.testing.assert_allclose(single(["good film"]), single([("good film",)]))


# ---------------------------------------------------------------- tiny models, offline, end to end
def write_tiny_mlm(directory: Path, tiny_bert: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig.from_pretrained(tiny_bert))
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(directory)
    return directory


def _test_split(cfg):
    from trustequiv.run.plan import load_task_data

    return load_task_data(cfg)["test"]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, tiny_bert, synthetic_data_dir):
    """Tiny reference + int8 candidate through the pipeline with the adversarial characteristic."""
    from trustequiv.run import pipeline

    tmp = tmp_path_factory.mktemp("adv")
    mlm = write_tiny_mlm(tmp / "mlm", tiny_bert)
    overrides = tiny_overrides(
        tmp,
        tiny_bert,
        synthetic_data_dir,
        "train_missing=true",
        "compressor=quantize_dynamic",
        "characteristic=[adversarial]",
        "characteristic.adversarial.n_examples=8",
        "characteristic.adversarial.masked_lm=not-a-local-model",
        f"characteristic.adversarial.offline_masked_lm={mlm}",
        "characteristic.adversarial.sentence_encoder=sbert",
        f"characteristic.adversarial.sbert_model={tiny_bert}",
        "characteristic.adversarial.similarity_threshold=0.0",
        *FAST,
    )
    cfg = compose("evaluate", overrides)
    result = pipeline.evaluate(cfg)
    return tmp, cfg, result


def test_wrapper_returns_the_cached_predictor_probabilities(attacked):
    from plugins.characteristics.adversarial.wrapper import textattack_wrapper
    from trustequiv.models.loading import load_classifier

    tmp, cfg, result = attacked
    split = _test_split(cfg)
    task = {"name": "sst2", "pair": False, "max_length": 32}
    # Full precision: batching-independent, so any batch size gives the cached numbers. Dynamic int8
    # quantization picks activation ranges per batch: same batches (64, length-sorted) -> same numbers.
    for name, batch_size, atol in (("tiny_ref", 7, 2e-6), ("tiny_cand+quantize_dynamic", 64, 2e-6)):
        rows = list(csv.DictReader((Path(result["output_dir"]) / "predictions" / f"{name}.csv").open()))
        cached = {int(r["example_id"]): [float(r["p_negative"]), float(r["p_positive"])] for r in rows}
        loaded = load_classifier(str(tmp / "models" / "sst2" / name), ["negative", "positive"])
        classifier = Adversarial(batch_size=batch_size)._classifier(TorchTextScorer.handle(loaded), task)
        wrapper = textattack_wrapper(classifier)
        probs = wrapper(list(split["text_a"]))
        expected = np.array([cached[int(i)] for i in split["id"]])
        np.testing.assert_allclose(probs, expected, atol=atol, err_msg=name)


def test_tiny_model_attacked_end_to_end_offline(attacked):
    tmp, _, result = attacked
    run = json.loads((Path(result["output_dir"]) / "results.json").read_text())
    m = run["metrics"]
    for model in ("tiny_ref", "tiny_cand+quantize_dynamic"):
        assert m[f"adversarial/{model}/n_examples"] == 8
        assert m[f"adversarial/{model}/n_success"] + m[f"adversarial/{model}/n_failed"] > 0
        assert m[f"adversarial/{model}/mean_queries"] > 0
    pair = "adversarial/tiny_ref_vs_tiny_cand+quantize_dynamic"
    assert m[f"{pair}/n_common_attacked"] > 0
    assert f"{pair}/transfer_ref_to_cand" in m and f"{pair}/transfer_cand_to_ref" in m
    notes = " ".join(run["notes"]["adversarial"])
    assert "word substitutes from" in notes and "sbert" in notes  # departures recorded in results.json
    assert len(list((tmp / "cache" / "attacks").glob("*.jsonl"))) == 2


def test_attack_summary_agrees_with_textattack_metrics(attacked, tiny_bert):
    """Our records summarised by trustequiv.functional equal TextAttack's own metrics on the same results."""
    from textattack.metrics import AttackQueries, AttackSuccessRate, WordsPerturbed

    from plugins.characteristics.adversarial.wrapper import TextClassifier, textattack_wrapper
    from trustequiv.models.loading import load_classifier

    tmp, cfg, _ = attacked
    split = _test_split(cfg).select(range(10))
    loaded = load_classifier(str(tmp / "models" / "sst2" / "tiny_ref"), ["negative", "positive"])
    attack, _ = adv.build_attack(
        textattack_wrapper(TextClassifier(TorchTextScorer.from_loaded(loaded, max_length=32))),
        masked_lm=str(tmp / "mlm"),
        mlm_max_length=32,
        sentence_encoder="sbert",
        sbert_model=str(tiny_bert),
        similarity_threshold=0.0,
    )
    results = [
        attack.attack(runner._example(t, None, False), int(y))
        for t, y in zip(split["text_a"], split["label"], strict=True)
    ]
    recs = [
        runner.result_record(r, k, int(y), 0.0)
        for k, (r, y) in enumerate(zip(results, split["label"], strict=True))
    ]
    ours = attack_summary(
        [r["status"] for r in recs],
        n_queries=[r["n_queries"] for r in recs],
        perturbed_shares=[r.get("perturbed_share", 0.0) for r in recs],
    )
    theirs = AttackSuccessRate().calculate(results)
    assert ours["success_rate"] * 100 == pytest.approx(theirs["attack_success_rate"], abs=0.01)
    assert ours["accuracy_under_attack"] * 100 == pytest.approx(theirs["attack_accuracy_perc"], abs=0.01)
    assert ours["n_skipped"] == theirs["skipped_attacks"]
    assert ours["mean_queries"] == pytest.approx(
        AttackQueries().calculate(results)["avg_num_queries"], abs=0.01
    )
    if ours["n_success"]:
        perc = WordsPerturbed().calculate(results)["avg_word_perturbed_perc"]
        assert ours["mean_perturbed_share"] * 100 == pytest.approx(perc, abs=0.01)


def _reference_on_test(tmp, cfg):
    """The test split, the tiny reference's handle, and placeholder outputs in the split's order."""
    from trustequiv.models.loading import load_classifier

    split = _test_split(cfg)
    model = TorchTextScorer.handle(
        load_classifier(str(tmp / "models" / "sst2" / "tiny_ref"), ["negative", "positive"]), name="tiny_ref"
    )
    out = ModelOutputs(
        name="tiny_ref",
        example_ids=torch.tensor(split["id"]),
        logits=torch.zeros(len(split), 2),
        labels=torch.tensor(split["label"]),
        label_names=("negative", "positive"),
    )
    return split, model, out


def test_killed_attack_resumes_without_redoing_finished_examples(attacked, tiny_bert, monkeypatch):
    tmp, cfg, _ = attacked
    split, model, out = _reference_on_test(tmp, cfg)
    char = Adversarial(
        n_examples=6,
        seed=3,
        masked_lm=str(tmp / "mlm"),
        sentence_encoder="sbert",
        sbert_model=str(tiny_bert),
        attack_dir=str(tmp / "resume"),
    )
    task = {"name": "sst2", "pair": False, "max_length": 32}
    calls: list[int] = []
    real_build = adv_char.build_attack

    def counting_build(*args, **kwargs):
        attack, info = real_build(*args, **kwargs)
        real_attack = attack.attack

        def attack_once(example, label):
            calls.append(1)
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt("killed")
            return real_attack(example, label)

        attack.attack = attack_once
        return attack, info

    monkeypatch.setattr(adv_char, "build_attack", counting_build)
    fail_after = 4
    with pytest.raises(KeyboardInterrupt):
        char.collect(model, out, split, task)
    (jsonl,) = (tmp / "resume").glob("*.jsonl")
    assert len(read_jsonl(jsonl)) == 4
    with jsonl.open("a") as fh:
        fh.write('{"id": 12, "trunc')  # a line cut off by the kill is ignored
    calls.clear()
    fail_after = None
    collected = char.collect(model, out, split, task)
    assert len(calls) == 2  # only the two unfinished examples are attacked
    assert len(collected["records"]) == 6
    assert [r["id"] for r in collected["records"]] == sorted(r["id"] for r in collected["records"])


def test_parallel_workers_give_the_in_process_records(attacked, tiny_bert):
    """num_workers=2 (forked attack processes) attacks every example once and finds the same outcomes."""
    tmp, cfg, _ = attacked
    split, model, out = _reference_on_test(tmp, cfg)
    task = {"name": "sst2", "pair": False, "max_length": 32}
    records = {}
    for workers in (1, 2):
        char = Adversarial(
            n_examples=6,
            seed=5,
            masked_lm=str(tmp / "mlm"),
            sentence_encoder="sbert",
            sbert_model=str(tiny_bert),
            attack_dir=str(tmp / f"workers{workers}"),
            num_workers=workers,
        )
        records[workers] = char.collect(model, out, split, task)["records"]
    keep = ("id", "status", "adv_texts", "n_queries", "perturbed_words")
    assert [{k: r.get(k) for k in keep} for r in records[2]] == [
        {k: r.get(k) for k in keep} for r in records[1]
    ]
    assert len({r["id"] for r in records[2]}) == 6


def test_reusable_under_budget_on_hand_made_records():
    assert reusable_under_budget({"status": "skipped", "n_queries": 1}, 10)
    assert reusable_under_budget({"status": "success", "n_queries": 9}, 10)
    assert not reusable_under_budget({"status": "success", "n_queries": 10}, 10)
    # a failed search's best text can be found early: without its total, reuse is unsafe
    assert not reusable_under_budget({"status": "failed", "n_queries": 3}, 10)
    assert reusable_under_budget({"status": "failed", "n_queries": 3, "n_queries_total": 9}, 10)
    assert not reusable_under_budget({"status": "failed", "n_queries": 3, "n_queries_total": 12}, 10)


def test_budgeted_rerun_reuses_exactly_the_outcomes_a_fresh_budgeted_attack_finds(
    attacked, tiny_bert, monkeypatch
):
    tmp, cfg, _ = attacked
    split, model, out = _reference_on_test(tmp, cfg)
    task = {"name": "sst2", "pair": False, "max_length": 32}
    common = dict(
        n_examples=8, seed=7, masked_lm=str(tmp / "mlm"), sentence_encoder="sbert", sbert_model=str(tiny_bert)
    )
    free = Adversarial(**common, attack_dir=str(tmp / "budget")).collect(model, out, split, task)["records"]
    attacked_totals = sorted(r["n_queries_total"] for r in free if r["status"] != "skipped")
    assert attacked_totals, "the tiny model must leave something to attack"
    budget = attacked_totals[len(attacked_totals) // 2]  # some searches end below it, some reach it
    calls: list[int] = []
    real_build = adv_char.build_attack

    def counting_build(*args, **kwargs):
        attack, info = real_build(*args, **kwargs)
        real_attack = attack.attack
        attack.attack = lambda example, label: calls.append(1) or real_attack(example, label)
        return attack, info

    monkeypatch.setattr(adv_char, "build_attack", counting_build)
    reused = Adversarial(**common, query_budget=budget, attack_dir=str(tmp / "budget")).collect(
        model, out, split, task
    )
    n_reusable = sum(reusable_under_budget(r, budget) for r in free)
    assert reused["setup"]["n_reused"] == n_reusable
    assert len(calls) == len(free) - n_reusable
    fresh = Adversarial(**common, query_budget=budget, attack_dir=str(tmp / "fresh")).collect(
        model, out, split, task
    )
    keep = ("id", "status", "adv_texts", "n_queries", "perturbed_words")
    assert [{k: r.get(k) for k in keep} for r in reused["records"]] == [
        {k: r.get(k) for k in keep} for r in fresh["records"]
    ]


def test_lazy_bert_attack_swap_gives_textattacks_substitutes(tmp_path):
    """Same substitutes as TextAttack's WordSwapMaskedLM (bert-attack), multi-sub-word words included."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from plugins.characteristics.adversarial.env import import_textattack
    from plugins.characteristics.adversarial.swap import lazy_bert_attack_swap_class

    import_textattack()
    from textattack.shared import AttackedText
    from textattack.transformations import WordSwapMaskedLM

    pieces = ["un", "##believ", "##ab", "##ly", "good", "bad", "movie", "x", "##y", "##z", "##zz", ".", ","]
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]) + "\n"
    )
    tok = BertTokenizerFast.from_pretrained(tmp_path, do_lower_case=True)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=len(pieces) + 5,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).eval()
    kwargs = dict(
        method="bert-attack", masked_language_model=mlm, tokenizer=tok, max_candidates=4, max_length=32
    )
    ours, theirs = lazy_bert_attack_swap_class()(**kwargs), WordSwapMaskedLM(**kwargs)
    text = AttackedText("good unbelievably movie xyzzz bad")
    assert [len(tok.encode(w, add_special_tokens=False)) for w in text.words] == [1, 4, 1, 4, 1]
    every = list(range(len(text.words)))
    want = [t.text for t in theirs._get_transformations(text, every)]
    got = [t.text for t in ours._get_transformations(text, every)]
    assert got == want and len(want) > 8
