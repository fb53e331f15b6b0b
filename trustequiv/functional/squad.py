"""Extractive question answering: SQuAD 2.0 exact match and F1, and span post-processing.

Metrics follow the official SQuAD 2.0 evaluation script (``evaluate-v2.0.py``, Rajpurkar et al. 2018):
answers are normalised (lower case, punctuation removed, the articles a/an/the removed, whitespace
collapsed); EM is 1 when the normalised strings are equal; F1 is the harmonic mean of token precision and
recall over the bag of normalised tokens; when either side is empty (no answer), F1 is 1 if both are empty
and 0 otherwise; gold answers that normalise to "" are dropped and an unanswerable question's only gold
answer is ""; a question scores the maximum over its gold answers. With no-answer probabilities, a
prediction counts as "no answer" when its probability exceeds the threshold (``apply_no_ans_threshold``).

Post-processing follows the Hugging Face question-answering example (``utils_qa.postprocess_qa_predictions``):
the n best start and end logits, spans inside the context, ``end >= start``, length <= ``max_answer_length``;
span score = start logit + end logit; null score = start + end logit of the [CLS] token; predict "" when
``null_score - best_span_score > null_score_diff_threshold``.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> int:
    """1 if the normalised answers are equal, else 0 (official ``compute_exact``)."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    """Token-bag F1 of the normalised answers (official ``compute_f1``); 1/0 agreement if either is empty."""
    g, p = _tokens(gold), _tokens(pred)
    if not g or not p:
        return float(g == p)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The gold answers the official script scores against: non-empty after normalisation, or ``[""]``."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


@dataclass(frozen=True)
class SquadScores:
    """SQuAD 2.0 scores over N questions (in percent, as the official script prints them).

    Attributes:
        exact, f1: mean over all questions.
        has_ans_exact, has_ans_f1, no_ans_exact, no_ans_f1: the same over answerable / unanswerable
            questions (NaN when there are none).
        exact_per_example: ``(N,)`` int 0/1; f1_per_example: ``(N,)`` float in [0, 1].
        has_answer: ``(N,)`` bool.
    """

    exact: float
    f1: float
    has_ans_exact: float
    has_ans_f1: float
    no_ans_exact: float
    no_ans_f1: float
    exact_per_example: np.ndarray
    f1_per_example: np.ndarray
    has_answer: np.ndarray


def squad_v2_scores(
    answers: Sequence[Sequence[str]],
    predictions: Sequence[str],
    na_probs: Sequence[float] | None = None,
    na_prob_thresh: float = 1.0,
) -> SquadScores:
    """EM and F1 as the official SQuAD 2.0 script computes them.

    Args:
        answers: per question, its gold answer texts (empty list = unanswerable).
        predictions: per question, the predicted text ("" = no answer).
        na_probs: optional per-question no-answer probabilities; a question with ``na_prob > na_prob_thresh``
            is scored as a no-answer prediction (official ``apply_no_ans_threshold``; the default 1.0 never
            triggers).
        na_prob_thresh: the threshold.

    Raises:
        ValueError: lengths differ or no question.
    """
    n = len(predictions)
    if n == 0 or len(answers) != n or (na_probs is not None and len(na_probs) != n):
        raise ValueError(
            f"answers ({len(answers)}), predictions ({n}) and na_probs must be non-empty and equally long"
        )
    em = np.empty(n, dtype=np.int64)
    f1 = np.empty(n)
    has = np.empty(n, dtype=bool)
    for i, (golds, pred) in enumerate(zip(answers, predictions, strict=True)):
        g = gold_answers(golds)
        has[i] = g != [""]
        if na_probs is not None and na_probs[i] > na_prob_thresh:
            em[i] = f1[i] = float(not has[i])
            continue
        em[i] = max(exact_match(a, pred) for a in g)
        f1[i] = max(f1_score(a, pred) for a in g)

    def pct(x: np.ndarray, mask: np.ndarray) -> float:
        return float(100.0 * x[mask].mean()) if mask.any() else float("nan")

    everything = np.ones(n, dtype=bool)
    return SquadScores(
        exact=pct(em, everything),
        f1=pct(f1, everything),
        has_ans_exact=pct(em, has),
        has_ans_f1=pct(f1, has),
        no_ans_exact=pct(em, ~has),
        no_ans_f1=pct(f1, ~has),
        exact_per_example=em,
        f1_per_example=f1,
        has_answer=has,
    )


@dataclass(frozen=True)
class SpanPrediction:
    """One question's post-processed answer.

    Attributes:
        text: the predicted answer ("" = no answer).
        start_char, end_char: character span in the context (-1, -1 for no answer).
        best_span_score: start + end logit of the best non-null span (-inf if none is valid).
        null_score: start + end logit at [CLS] (the minimum over the question's features).
        score_diff: ``null_score - best_span_score`` (higher = more confident there is no answer).
        span_text: the best non-null span's text even when the answer is "" ("" if no span is valid); what
            a lower threshold would answer (:func:`best_null_threshold` needs it).
    """

    text: str
    start_char: int
    end_char: int
    best_span_score: float
    null_score: float
    score_diff: float
    span_text: str = ""


def postprocess_question(
    context: str,
    start_logits: Any,
    end_logits: Any,
    offsets: Sequence[Sequence[tuple[int, int] | None]],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> SpanPrediction:
    """Best answer span of one question over its features (overflowing windows of a long context).

    Args:
        context: the context text.
        start_logits, end_logits: ``(F, L)`` logits per feature and token; token 0 is [CLS].
        offsets: per feature, per token, ``(start_char, end_char)`` in ``context`` or None for tokens outside
            the context (question, special tokens, padding).
        n_best: start and end candidates per feature.
        max_answer_length: longest span in tokens.
        null_score_diff_threshold: predict "" when ``null_score - best_span_score`` exceeds it.

    Raises:
        ValueError: shapes of logits and offsets differ.
    """
    starts, ends = (
        np.atleast_2d(np.asarray(start_logits, float)),
        np.atleast_2d(np.asarray(end_logits, float)),
    )
    if starts.shape != ends.shape or starts.shape[0] != len(offsets):
        raise ValueError(f"logits {starts.shape}, {ends.shape} and {len(offsets)} offset lists do not match")
    null = float("inf")
    best = (-float("inf"), -1, -1)
    for s_log, e_log, off in zip(starts, ends, offsets, strict=True):
        null = min(null, float(s_log[0] + e_log[0]))
        for i in np.argsort(s_log)[::-1][:n_best]:
            for j in np.argsort(e_log)[::-1][:n_best]:
                if i >= len(off) or j >= len(off) or off[i] is None or off[j] is None:
                    continue
                if j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(s_log[i] + e_log[j])
                if score > best[0]:
                    best = (score, off[i][0], off[j][1])
    diff = null - best[0]
    span = context[best[1] : best[2]] if best[1] >= 0 else ""
    if best[1] < 0 or diff > null_score_diff_threshold:
        return SpanPrediction("", -1, -1, best[0], null, diff, span)
    return SpanPrediction(span, best[1], best[2], best[0], null, diff, span)


def best_null_threshold(
    score_diff: Sequence[float],
    span_scores: Sequence[float],
    has_answer: Sequence[bool],
    span_nonempty: Sequence[bool],
) -> tuple[float, float]:
    """The no-answer threshold that maximises a SQuAD 2.0 score, as the official evaluation's
    ``find_best_thresh`` finds it (``evaluate-v2.0.py``, Rajpurkar et al. 2018).

    A question is answered with its best span when ``score_diff <= threshold`` and abstains otherwise. Start
    from "abstain on everything" (score = the unanswerable questions), switch questions to answered in order
    of increasing ``score_diff`` and keep the best running score; ties keep the lower threshold, and 0.0 stays
    the threshold when no switch helps.

    Args:
        score_diff: ``(N,)`` null score - best span score per question (the official ``na_prob``).
        span_scores: ``(N,)`` EM or F1 (in [0, 1]) of the best non-null span against the gold answers.
        has_answer: ``(N,)`` whether the question is answerable.
        span_nonempty: ``(N,)`` whether a valid span exists (answering "" on an unanswerable question is
            still right).

    Returns:
        ``(best_score, threshold)``: the score in [0, 1] over all N questions and the threshold.

    Raises:
        ValueError: lengths differ or N = 0.
    """
    diff = np.asarray(score_diff, dtype=float)
    n = diff.shape[0]
    if n == 0 or not (len(span_scores) == len(has_answer) == len(span_nonempty) == n):
        raise ValueError(
            "score_diff, span_scores, has_answer and span_nonempty must be non-empty, equal length"
        )
    has = np.asarray(has_answer, dtype=bool)
    gain = np.where(has, np.asarray(span_scores, dtype=float), -np.asarray(span_nonempty, dtype=float))
    cur = best = float((~has).sum())
    threshold = 0.0
    for k in np.argsort(diff, kind="stable"):
        cur += gain[k]
        if cur > best:
            best, threshold = cur, float(diff[k])
    return best / n, threshold
