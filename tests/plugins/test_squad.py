"""SQuAD 2.0 EM / F1 on hand-made cases against the official evaluation script's definitions."""

from __future__ import annotations

import collections
import json
import re
import string

import numpy as np
import pytest

from trustequiv.functional.squad import (
    best_null_threshold,
    exact_match,
    f1_score,
    normalize_answer,
    postprocess_question,
    squad_v2_scores,
)


# The official evaluate-v2.0.py functions, verbatim in substance (direct implementation to compare against).
def official_normalize(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(a_gold, a_pred):
    gold_toks = official_normalize(a_gold).split() if a_gold else []
    pred_toks = official_normalize(a_pred).split() if a_pred else []
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


CASES = [
    ("Denver Broncos", "the Denver Broncos."),
    ("Denver Broncos", "Broncos"),
    ("Saint Bernadette Soubirous", "Bernadette"),
    ("a", ""),
    ("", ""),
    ("", "something"),
    ("the the", "an"),
    ("1,000 years", "1000 years"),
    ("New York City, New York", "New York"),
    ("Ça va", "ça  va!"),
]


@pytest.mark.parametrize(("gold", "pred"), CASES)
def test_metrics_match_official_definitions(gold, pred):
    assert normalize_answer(pred) == official_normalize(pred)
    assert exact_match(gold, pred) == int(official_normalize(gold) == official_normalize(pred))
    assert f1_score(gold, pred) == pytest.approx(official_f1(gold, pred))


def test_known_values():
    assert normalize_answer("The  Cat, the hat!") == "cat hat"
    assert exact_match("Denver Broncos", "the denver broncos.") == 1
    assert f1_score("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    assert f1_score("New York City, New York", "New York") == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0


def test_squad_v2_aggregate():
    answers = [["Denver Broncos", "Broncos"], [], ["a"], ["Paris"], ["1066"]]
    preds = ["Denver", "", "", "London", "1066"]
    s = squad_v2_scores(answers, preds)
    # q0: EM 0, F1 max(2/3 vs "Denver Broncos", 0 vs "Broncos") = 2/3; q1 unanswerable, "" -> 1;
    # q2: gold "a" normalises to "" -> unanswerable, "" -> 1; q3: 0; q4: 1.
    assert s.exact_per_example.tolist() == [0, 1, 1, 0, 1]
    assert np.allclose(s.f1_per_example, [2 / 3, 1, 1, 0, 1])
    assert s.exact == pytest.approx(60.0) and s.f1 == pytest.approx(100 * (2 / 3 + 3) / 5)
    assert s.has_answer.tolist() == [True, False, False, True, True]
    assert s.no_ans_exact == 100.0 and s.has_ans_exact == pytest.approx(100 / 3)
    # official apply_no_ans_threshold: na_prob > thresh -> scored as predicting no answer
    t = squad_v2_scores(
        answers, ["x", "x", "x", "Paris", "1066"], na_probs=[0.9, 0.9, 0.9, 0.1, 0.1], na_prob_thresh=0.5
    )
    assert t.exact_per_example.tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="equally long"):
        squad_v2_scores([["a"]], ["a", "b"])


def test_postprocess_picks_best_valid_span_and_null():
    context = "Paris is the capital of France."
    # tokens: [CLS] q [SEP] Paris is the capital of France . [SEP]
    offsets = [[None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31), None]]
    start = np.full((1, 11), -5.0)
    end = np.full((1, 11), -5.0)
    start[0, 8], end[0, 8] = 4.0, 4.0  # "France"
    start[0, 1], end[0, 1] = 9.0, 9.0  # question token: invalid, must be skipped
    start[0, 0], end[0, 0] = 1.0, 1.0  # null score 2 < span score 8
    p = postprocess_question(context, start, end, offsets)
    assert p.text == "France" and p.best_span_score == 8.0 and p.null_score == 2.0
    start[0, 0], end[0, 0] = 5.0, 5.0  # null 10 > 8 -> no answer
    q = postprocess_question(context, start, end, offsets)
    assert q.text == "" and q.score_diff == pytest.approx(2.0)
    assert q.span_text == "France"  # what a threshold >= 2 would answer
    assert postprocess_question(context, start, end, offsets, null_score_diff_threshold=3.0).text == "France"
    end[0, 8], end[0, 3] = -5.0, 6.0  # end before start is invalid; best is then start 3 ("Paris") to end 3
    start[0, 3] = 3.0
    r = postprocess_question(context, start, end, offsets, null_score_diff_threshold=100.0)
    assert r.text == "Paris"


def official_find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    """evaluate-v2.0.py's find_best_thresh, verbatim."""
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            if preds[qid]:  # noqa: SIM108 (verbatim)
                diff = -1
            else:
                diff = 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


@pytest.mark.parametrize("seed", range(20))
def test_best_null_threshold_matches_official(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    diff = rng.normal(size=n).round(1)  # ties included
    has = rng.random(n) < 0.5
    f1 = np.where(rng.random(n) < 0.3, 0.0, rng.random(n)).round(2)
    nonempty = rng.random(n) < 0.9
    qids = [f"q{i}" for i in range(n)]
    want = official_find_best_thresh(
        {q: "x" if nonempty[i] else "" for i, q in enumerate(qids)},
        {q: float(f1[i]) for i, q in enumerate(qids)},
        {q: float(diff[i]) for i, q in enumerate(qids)},
        {q: bool(has[i]) for i, q in enumerate(qids)},
    )
    score, threshold = best_null_threshold(diff, f1, has, nonempty)
    assert score * 100 == pytest.approx(want[0]) and threshold == want[1]


def test_best_null_threshold_known_answer():
    # answerable q0 (diff -1, F1 1), unanswerable q1 (diff 0.5, has a span), answerable q2 (diff 2, F1 1):
    # answering q0 only and answering all both get 2 of 3 right; the tie keeps the lower threshold
    score, threshold = best_null_threshold([-1.0, 0.5, 2.0], [1.0, 0.0, 1.0], [True, False, True], [True] * 3)
    assert threshold == -1.0 and score == pytest.approx(2 / 3)
    score, threshold = best_null_threshold(
        [-1.0, 0.5, 2.0], [1.0, 0.0, 0.5], [True, False, False], [True] * 3
    )
    assert threshold == -1.0 and score == pytest.approx(3 / 3)
    with pytest.raises(ValueError):
        best_null_threshold([], [], [], [])


# ---------------------------------------------------------------- local loaders
def test_squad_json_and_subjqa_loaders(tmp_path):
    from plugins.tasks.squad import QALoader

    (tmp_path / "sq").mkdir()
    paras = [
        {
            "context": f"Context {i:02d} mentions Paris.",
            "qas": [
                {"id": f"q{i}a", "question": "Where? ", "answers": [{"text": "Paris", "answer_start": 20}]},
                {"id": f"q{i}b", "question": "Who?", "answers": [], "is_impossible": True},
            ],
        }
        for i in range(40)
    ]
    (tmp_path / "sq" / "d.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": paras}]}))
    fr = {"train": 0.7, "validation": 0.1, "test": 0.2}
    ds = QALoader("sq", "squad_json", "d.json", fractions=fr).load(tmp_path)
    assert sum(len(s) for s in ds.values()) == 80
    for split in ds.values():  # both questions of a paragraph stay in one split
        assert len(split) % 2 == 0 and all(c.startswith("Context") for c in split["context"])
    again = QALoader("sq", "squad_json", "d.json", fractions=fr).load(tmp_path)
    assert again["test"]["qid"] == ds["test"]["qid"]
    row = next(r for r in ds["train"] if r["qid"].endswith("a"))
    assert row["answers"] == ["Paris"] and row["context"][20:25] == "Paris" and row["question"] == "Where?"

    folder = tmp_path / "subj" / "books" / "splits"
    folder.mkdir(parents=True)
    header = "question,review_id,q_reviews_id,review,human_ans_spans,human_ans_indices\n"
    rows = [
        '"Is it good?",r1,q1,"Great read. ANSWERNOTFOUND","Great read","(0, 10)"\n',
        '"Is it good?",r1,q1,"Great read. ANSWERNOTFOUND","Great read","(0, 10)"\n',
        '"Is it long?",r1,q2,"Great read. ANSWERNOTFOUND",ANSWERNOTFOUND,"(12, 26)"\n',
    ]
    (folder / "test.csv").write_text(header + "".join(rows))
    sj = QALoader("subj", "subjqa_csv", "test.csv", id_offset=7).load(tmp_path)["test"]
    assert sj["id"] == [7, 8] and sj["context"] == ["Great read.", "Great read."]
    assert sj["answers"] == [["Great read"], []]
    with pytest.raises(FileNotFoundError, match="nothere"):
        QALoader("nothere", "squad_json", "x.json").load(tmp_path)
