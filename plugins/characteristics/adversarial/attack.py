"""How the attack is built: BERT-Attack assembled from TextAttack's parts, or another TextAttack recipe.

BERT-Attack construction (TextAttack 0.3.11 ``BERTAttackLi2020``): ``WordSwapMaskedLM(method="bert-attack",
max_candidates=8)``, ``RepeatModification``, ``StopwordModification`` (NLTK list), ``MaxWordsPerturbed(0.4)``,
``UniversalSentenceEncoder(threshold=0.2, metric="cosine", compare_against_original=True, window_size=None)``,
``UntargetedClassification``, ``GreedyWordSwapWIR("unk")``. Built here by hand so that each part can be local:

- the word swap is TextAttack's, in :mod:`.swap`'s subclass that gives the same substitutes without
  enumerating every sub-word combination of a long word (which stalled IMDB attacks for many minutes);
- substitutes: ``masked_lm`` (default ``bert-base-uncased`` from the hub); when it cannot be loaded
  (offline), ``offline_masked_lm`` (a local ``BertForMaskedLM`` dir, e.g. the one ``scripts/fit_masked_lm.py``
  fits from MiniLM);
- similarity: the Universal Sentence Encoder when ``tensorflow_hub`` loads it, else TextAttack's ``SBERT``
  constraint over a local sentence-transformers model (all-MiniLM-L6-v2 from its pip package);
- the MLM reads at most ``mlm_max_length`` tokens (default: the task's ``max_length``; TextAttack pads to
  512);
- pair tasks (MNLI): only the hypothesis is attacked (``InputColumnModification``).

:func:`departures` lists every way a built attack departs from the paper's setup. Other recipes
(``recipe=textfooler`` ...) are TextAttack's own builds; most need downloads.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoModelForMaskedLM, AutoTokenizer

from plugins.characteristics.adversarial.env import import_textattack
from plugins.characteristics.adversarial.swap import lazy_bert_attack_swap_class
from trustequiv.config import minilm_path

log = logging.getLogger(__name__)

PAPER_MLM = "bert-base-uncased"
#: how to make the local masked LM that ``offline_masked_lm`` points at (named in load_masked_lm's error).
FIT_MASKED_LM = "python -m scripts.fit_masked_lm --out models/mlm/minilm-mlm"


def load_masked_lm(masked_lm: str, offline_masked_lm: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) of the substitute masked LM: ``masked_lm``, else ``offline_masked_lm``.

    Raises:
        OSError: neither can be loaded (the message names both and the script that fits a local one).
    """

    tried = []
    for source in [masked_lm, offline_masked_lm]:
        if not source or source in tried:
            continue
        tried.append(source)
        try:
            model = AutoModelForMaskedLM.from_pretrained(source)
            tok = AutoTokenizer.from_pretrained(source, use_fast=True)
        except (OSError, ValueError) as err:
            log.warning("masked LM %s not loadable (%s)", source, str(err).splitlines()[0])
            continue
        info: dict[str, Any] = {"substitute_mlm": str(source), "substitute_mlm_is_paper": source == PAPER_MLM}
        meta = Path(source) / "trustequiv_mlm.json"
        if meta.exists():
            info["substitute_mlm_fit"] = json.loads(meta.read_text())
        return model.eval(), tok, info
    raise OSError(
        f"no masked LM for word substitutes: tried {tried}. Offline, fit one with "
        f"`{FIT_MASKED_LM}` (from the repository root) and set "
        "characteristic.adversarial.offline_masked_lm to it"
    )


def sentence_encoder_constraint(kind: str, sbert_model: str | None, threshold: float):
    """The sentence-similarity constraint and its name: ``"use"``, ``"sbert"`` or ``"auto"`` (USE when
    ``tensorflow_hub`` loads it, else SBERT over ``sbert_model``; default the local all-MiniLM-L6-v2).

    Raises:
        ValueError: unknown kind.
    """
    # optional dependency (the [attack] extra): imported when used
    from textattack.constraints.semantics.sentence_encoders import SBERT, UniversalSentenceEncoder

    common = {
        "threshold": threshold,
        "metric": "cosine",
        "compare_against_original": True,
        "window_size": None,
    }
    if kind not in ("auto", "use", "sbert"):
        raise ValueError(f"sentence_encoder must be auto, use or sbert, got {kind!r}")
    if kind in ("auto", "use"):
        if importlib.util.find_spec("tensorflow_hub") is not None:
            use = UniversalSentenceEncoder(**common)
            try:
                use.encode(["probe"])
                return use, "universal_sentence_encoder"
            except Exception as err:
                if kind == "use":
                    raise
                log.warning("Universal Sentence Encoder unavailable (%s); using SBERT", err)
        elif kind == "use":
            raise ImportError("sentence_encoder=use needs tensorflow_hub (and network for the model)")
    if sbert_model is None:
        sbert_model = minilm_path()
    enc = SBERT(model_name=sbert_model, **common)
    return enc, f"sbert:{sbert_model}"


def build_attack(
    model_wrapper: Any,
    *,
    recipe: str = "bert-attack",
    pair: bool = False,
    masked_lm: str = PAPER_MLM,
    offline_masked_lm: str | None = None,
    max_candidates: int = 8,
    mlm_max_length: int = 512,
    sentence_encoder: str = "auto",
    sbert_model: str | None = None,
    similarity_threshold: float = 0.2,
    max_percent_words: float = 0.4,
    query_budget: int | None = None,
    model_batch_size: int = 32,
) -> tuple[Any, dict[str, Any]]:
    """A ``textattack.Attack`` and a dict describing what was used (for the departures list).

    ``recipe="bert-attack"`` is BERTAttackLi2020 assembled by hand (module docstring); any other name of
    TextAttack's ``ATTACK_RECIPE_NAMES`` is built by TextAttack itself (with its own downloads).

    Raises:
        ValueError: unknown recipe.
    """

    import_textattack()
    # optional dependency (the [attack] extra): imported when used
    from textattack import Attack
    from textattack.attack_args import ATTACK_RECIPE_NAMES
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.constraints.pre_transformation import (
        InputColumnModification,
        RepeatModification,
        StopwordModification,
    )

    # optional dependency (the [attack] extra): imported when used
    from textattack.goal_functions import UntargetedClassification
    from textattack.search_methods import GreedyWordSwapWIR

    budget = float("inf") if query_budget is None else int(query_budget)
    info: dict[str, Any] = {"recipe": recipe, "query_budget": query_budget}
    if recipe != "bert-attack":
        if recipe not in ATTACK_RECIPE_NAMES:
            raise ValueError(f"unknown recipe {recipe!r}; TextAttack has {sorted(ATTACK_RECIPE_NAMES)}")
        module, _, cls = ATTACK_RECIPE_NAMES[recipe].rpartition(".")
        attack = getattr(importlib.import_module(module), cls).build(model_wrapper)
        attack.goal_function.query_budget = budget
        attack.goal_function.batch_size = model_batch_size
        info["construction"] = f"textattack {ATTACK_RECIPE_NAMES[recipe]}.build"
        return attack, info

    mlm, tok, mlm_info = load_masked_lm(masked_lm, offline_masked_lm)
    info.update(mlm_info)
    # TextAttack's WordSwapMaskedLM, same substitutes, without enumerating 8^n sub-word combinations
    transformation = lazy_bert_attack_swap_class()(
        method="bert-attack",
        masked_language_model=mlm,
        tokenizer=tok,
        max_candidates=max_candidates,
        max_length=mlm_max_length,
    )
    constraints = [RepeatModification(), StopwordModification()]
    if pair:
        constraints.append(InputColumnModification(["premise", "hypothesis"], {"premise"}))
    constraints.append(MaxWordsPerturbed(max_percent=max_percent_words))
    encoder, encoder_name = sentence_encoder_constraint(sentence_encoder, sbert_model, similarity_threshold)
    constraints.append(encoder)
    goal = UntargetedClassification(model_wrapper, query_budget=budget, model_batch_size=model_batch_size)
    attack = Attack(goal, constraints, transformation, GreedyWordSwapWIR(wir_method="unk"))
    info.update(
        construction="BERTAttackLi2020 parts assembled by trustequiv",
        sentence_encoder=encoder_name,
        similarity_threshold=similarity_threshold,
        max_candidates=max_candidates,
        mlm_max_length=mlm_max_length,
        max_percent_words=max_percent_words,
        attacked_column="hypothesis" if pair else "text",
    )
    return attack, info


def departures(info: Mapping[str, Any]) -> list[str]:
    """Sentences naming each way ``info`` (from :func:`build_attack`) departs from the paper's setup."""
    out = []
    if info.get("recipe") != "bert-attack":
        out.append(f"recipe {info.get('recipe')} instead of BERT-Attack (paper B)")
        return out
    if not info.get("substitute_mlm_is_paper"):
        fit = info.get("substitute_mlm_fit")
        how = (
            f" (MLM head fitted locally: {fit.get('steps')} steps on {fit.get('tasks', 'local')} train text)"
            if fit
            else ""
        )
        out.append(f"word substitutes from {info.get('substitute_mlm')}{how} instead of bert-base-uncased")
    if info.get("sentence_encoder") != "universal_sentence_encoder":
        out.append(
            f"sentence similarity by {info.get('sentence_encoder')} "
            f"(cosine >= {info.get('similarity_threshold')}) instead of the Universal Sentence Encoder"
        )
    if info.get("mlm_max_length") != 512:
        out.append(f"the masked LM reads {info.get('mlm_max_length')} tokens (TextAttack: 512)")
    if info.get("query_budget") is not None:
        out.append(f"query budget {info.get('query_budget')} per example (paper: none)")
    if info.get("max_candidates") != 8:
        out.append(f"{info.get('max_candidates')} substitute candidates per word (TextAttack default 8)")
    return out
