"""Adversarial vulnerability: TextAttack attacks (BERT-Attack by default) on each model, and how alike their
weaknesses are (paper B, Rai, Pal & Awekar, arXiv 2407.13174: BERT-ATTACK on IMDB through TextAttack).

Per model (:meth:`Adversarial.collect`, cached by the pipeline; every finished example is also appended to a
JSONL file under ``attack_dir`` so a killed run resumes where it stopped): the same ``n_examples`` examples of
the split (a seeded sample, identical for every model) are attacked through a TextAttack model wrapper over
the model (:mod:`adversarial_wrapper`). Metrics: attack success rate, accuracy under attack, mean share of
words perturbed, mean queries, skipped count (TextAttack's definitions;
:mod:`trustequiv.functional.adversarial`).

Transfer needs the other model. After every model's ``collect``, the pipeline calls :meth:`Adversarial.replay`
once per model with the other models' cached outcomes (``needs_replay``): each model scores the adversarial
texts found against every other model. :meth:`compare` stays pure and reads both directions from the extras.

BERT-Attack construction (TextAttack 0.3.11 ``BERTAttackLi2020``): ``WordSwapMaskedLM(method="bert-attack",
max_candidates=8)``, ``RepeatModification``, ``StopwordModification`` (NLTK list), ``MaxWordsPerturbed(0.4)``,
``UniversalSentenceEncoder(threshold=0.2, metric="cosine", compare_against_original=True, window_size=None)``,
``UntargetedClassification``, ``GreedyWordSwapWIR("unk")``. Built here by hand so that each part can be local:

- the word swap is TextAttack's, in :mod:`adversarial_swap`'s subclass that gives the same substitutes without
  enumerating every sub-word combination of a long word (which stalled IMDB attacks for many minutes);
- substitutes: ``masked_lm`` (default ``bert-base-uncased`` from the hub); when it cannot be loaded
  (offline), ``offline_masked_lm`` (a local ``BertForMaskedLM`` dir, e.g. the one :mod:`adversarial_mlm`
  fits from MiniLM);
- similarity: the Universal Sentence Encoder when ``tensorflow_hub`` loads it, else TextAttack's ``SBERT``
  constraint over a local sentence-transformers model (all-MiniLM-L6-v2 from its pip package);
- the MLM reads at most ``mlm_max_length`` tokens (default: the task's ``max_length``; TextAttack pads to
  512);
- pair tasks (MNLI): only the hypothesis is attacked (``InputColumnModification``).

Every departure from the paper's setup is listed in the notes (report and ``results.json``) and in the
``setup`` table. Other recipes (``recipe=textfooler`` ...) are TextAttack's own builds; most need downloads.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustequiv.cache import content_key
from trustequiv.characteristic import Characteristic, pair_name
from trustequiv.functional.adversarial import (
    attack_summary,
    attacked_set_jaccard,
    common_attacked,
    perturbed_word_overlap,
    success_set,
    transfer_rate,
)
from trustequiv.outputs import CharacteristicResult, ModelOutputs

log = logging.getLogger(__name__)
# sentence-transformers draws a progress bar per encode() call when its logger is at INFO (Hydra's default):
# the SBERT constraint encodes once per candidate swap, which would flood the log.
logging.getLogger("sentence_transformers").setLevel(logging.WARNING)

PAPER_MLM = "bert-base-uncased"
STATUS_OF = {
    "SuccessfulAttackResult": "success",
    "FailedAttackResult": "failed",
    "SkippedAttackResult": "skipped",
    "MaximizedAttackResult": "success",
}


# ---------------------------------------------------------------- attack construction
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def load_masked_lm(masked_lm: str, offline_masked_lm: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) of the substitute masked LM: ``masked_lm``, else ``offline_masked_lm``.

    Raises:
        OSError: neither can be loaded (the message names both and the script that fits a local one).
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

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
        "`python -m plugins.characteristics.adversarial_mlm --out models/mlm/minilm-mlm` and set "
        "characteristic.adversarial.offline_masked_lm to it"
    )


def sentence_encoder_constraint(kind: str, sbert_model: str | None, threshold: float):
    """The sentence-similarity constraint and its name: ``"use"``, ``"sbert"`` or ``"auto"`` (USE when
    ``tensorflow_hub`` loads it, else SBERT over ``sbert_model``; default the local all-MiniLM-L6-v2).

    Raises:
        ValueError: unknown kind.
    """
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
        from trustequiv.config import minilm_path

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
    from plugins.characteristics.adversarial_env import import_textattack

    import_textattack()
    from textattack import Attack
    from textattack.attack_args import ATTACK_RECIPE_NAMES
    from textattack.constraints.overlap import MaxWordsPerturbed
    from textattack.constraints.pre_transformation import (
        InputColumnModification,
        RepeatModification,
        StopwordModification,
    )
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
    from plugins.characteristics.adversarial_swap import lazy_bert_attack_swap_class

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


# ---------------------------------------------------------------- one example
def _example(text_a: str, text_b: str | None, pair: bool):
    if pair:
        return OrderedDict([("premise", text_a), ("hypothesis", text_b)])
    return OrderedDict([("text", text_a)])


def _texts(attacked_text: Any) -> list[str]:
    return list(attacked_text._text_input.values())


def result_record(result: Any, example_id: int, label: int, seconds: float) -> dict[str, Any]:
    """A JSON-serialisable record of one TextAttack result."""
    status = STATUS_OF.get(type(result).__name__, "failed")
    orig = result.original_result
    rec: dict[str, Any] = {
        "id": int(example_id),
        "label": int(label),
        "status": status,
        "original_pred": int(orig.output),
        "n_queries": int(result.perturbed_result.num_queries),
        "n_words": len(orig.attacked_text.words),
        "seconds": round(seconds, 3),
    }
    if status == "success":
        adv = result.perturbed_result.attacked_text
        changed = sorted(int(i) for i in orig.attacked_text.all_words_diff(adv))
        rec.update(
            adv_texts=_texts(adv),
            adv_pred=int(result.perturbed_result.output),
            perturbed_indices=changed,
            perturbed_words=[orig.attacked_text.words[i] for i in changed],
            perturbed_share=len(changed) / max(1, len(orig.attacked_text.words)),
        )
    return rec


# ---------------------------------------------------------------- parallel workers (fork)
_WORKER: dict[str, Any] = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    # The parent's tokenizer thread pool does not survive fork: encode serially in the child (else deadlock).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_attack(job: tuple[int, int, str, str | None]) -> dict[str, Any]:
    example_id, label, text_a, text_b = job
    started = time.time()
    attack = _WORKER["attack"]
    result = attack.attack(_example(text_a, text_b, _WORKER["pair"]), label)
    rec = result_record(result, example_id, label, time.time() - started)
    # All queries spent (the perturbed result's count stops at the best text found, less for a failed search).
    total = getattr(getattr(attack, "goal_function", None), "num_queries", None)
    if isinstance(total, int):
        rec["n_queries_total"] = max(total, rec["n_queries"])
    return rec


def reusable_under_budget(rec: Mapping[str, Any], budget: int) -> bool:
    """Whether an outcome found with no query budget is exactly what a run with ``budget`` finds.

    TextAttack's goal function only cuts a query list once the running count would pass the budget, so a
    search that spent fewer than ``budget`` queries in all never met it: same trajectory, same outcome.
    A success's count is its total (the search stops there); a skipped example costs one query; a failed
    search's total is known only from records that store ``n_queries_total``.
    """
    status = rec.get("status")
    if status == "skipped":
        return True
    if status == "success":
        return int(rec["n_queries"]) < budget
    total = rec.get("n_queries_total")
    return total is not None and int(total) < budget


def read_jsonl(path: Path) -> dict[int, dict[str, Any]]:
    """Records already finished in ``path`` (a truncated last line from a killed run is ignored)."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[int(rec["id"])] = rec
    return done


class _Progress:
    """A log line at most every ``every`` seconds (and at the end): attacks on long texts take minutes
    each, and the line reaches log files, where a terminal progress bar would not."""

    def __init__(self, total: int, every: float = 60.0) -> None:
        self.total, self.every, self.n = total, every, 0
        self.counts: dict[str, int] = {}
        self.started = self.last = time.time()

    def update(self, rec: Mapping[str, Any]) -> None:
        self.n += 1
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        now = time.time()
        if now - self.last >= self.every or self.n == self.total:
            self.last = now
            rate = (now - self.started) / self.n
            log.info(
                "attack: %d of %d (%s), %.1f s per example, ~%.0f min to go",
                self.n,
                self.total,
                ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())),
                rate,
                rate * (self.total - self.n) / 60,
            )


def run_attack(
    attack: Any,
    jobs: Sequence[tuple[int, int, str, str | None]],
    *,
    pair: bool,
    jsonl: Path,
    num_workers: int = 1,
    reuse: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Attack every ``(id, label, text_a, text_b)`` job not already in ``jsonl``; append each finished record
    to ``jsonl`` at once; return all records in job order. ``reuse``: records by id that are valid for this
    attack without running it (copied into ``jsonl``, marked ``"reused": true``)."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = read_jsonl(jsonl)
    todo = [j for j in jobs if j[0] not in done]
    log.info("attack: %d of %d examples done before, %d to go", len(jobs) - len(todo), len(jobs), len(todo))
    _WORKER.update(attack=attack, pair=pair)
    with jsonl.open("a") as fh:
        if reuse:
            copied = [j for j in todo if j[0] in reuse]
            for job in copied:
                rec = {**reuse[job[0]], "reused": True}
                fh.write(json.dumps(rec) + "\n")
                done[job[0]] = rec
            fh.flush()
            todo = [j for j in todo if j[0] not in reuse]
            if copied:
                log.info(
                    "attack: %d outcomes reused from the unbudgeted run, %d to go",
                    len(copied),
                    len(todo),
                )
        progress = _Progress(len(todo))
        if num_workers > 1 and len(todo) > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(num_workers, initializer=_worker_init) as pool:
                for rec in pool.imap_unordered(_worker_attack, todo):
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    done[rec["id"]] = rec
                    progress.update(rec)
        else:
            for job in todo:
                rec = _worker_attack(job)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[rec["id"]] = rec
                progress.update(rec)
    return [done[j[0]] for j in jobs]


def select_examples(ids: Sequence[int], n: int | None, seed: int) -> list[int]:
    """Positions of ``n`` examples drawn with ``seed`` from the id-sorted split (all when ``n`` is None or too
    large), in id order: the same examples for every model of a split."""
    order = sorted(range(len(ids)), key=lambda k: int(ids[k]))
    if n is None or n >= len(order):
        return order
    chosen = random.Random(seed).sample(order, int(n))
    return sorted(chosen, key=lambda k: int(ids[k]))


# ---------------------------------------------------------------- the characteristic
class Adversarial(Characteristic):
    """Adversarial vulnerability through TextAttack (BERT-Attack by default); see the module docstring.

    Args:
        recipe: ``"bert-attack"`` (assembled, offline-capable) or another TextAttack recipe name.
        n_examples: examples attacked per model (seeded sample of the split; null = all).
        seed: sample and attack seed.
        query_budget: model queries per example (null = unlimited, as in the paper).
        masked_lm / offline_masked_lm: substitute source (hub id or dir) and the local fallback.
        max_candidates, mlm_max_length (null = task max_length), sentence_encoder (auto|use|sbert),
        sbert_model (null = local all-MiniLM-L6-v2), similarity_threshold, max_percent_words: the
            recipe's knobs.
        batch_size: texts per model forward pass.
        num_workers: attack processes (fork); 1 = in process.
        attack_dir: where per-example outcomes are appended (JSONL per model and config).
    """

    name = "adversarial"
    needs_model = True
    needs_replay = True

    def __init__(
        self,
        recipe: str = "bert-attack",
        n_examples: int | None = 200,
        seed: int = 0,
        query_budget: int | None = None,
        masked_lm: str = PAPER_MLM,
        offline_masked_lm: str | None = None,
        max_candidates: int = 8,
        mlm_max_length: int | None = None,
        sentence_encoder: str = "auto",
        sbert_model: str | None = None,
        similarity_threshold: float = 0.2,
        max_percent_words: float = 0.4,
        batch_size: int = 32,
        num_workers: int = 1,
        attack_dir: str | None = None,
    ):
        if sentence_encoder not in ("auto", "use", "sbert"):
            raise ValueError(f"sentence_encoder must be auto, use or sbert, got {sentence_encoder!r}")
        if n_examples is not None and n_examples < 1:
            raise ValueError("n_examples must be >= 1 or null")
        self.recipe, self.n_examples, self.seed, self.query_budget = (
            recipe,
            n_examples,
            int(seed),
            query_budget,
        )
        self.masked_lm, self.offline_masked_lm = masked_lm, offline_masked_lm
        self.max_candidates, self.mlm_max_length = int(max_candidates), mlm_max_length
        self.sentence_encoder, self.sbert_model = sentence_encoder, sbert_model
        self.similarity_threshold, self.max_percent_words = (
            float(similarity_threshold),
            float(max_percent_words),
        )
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.attack_dir = Path(attack_dir) if attack_dir else Path(".cache/trustequiv/attacks")

    def cache_config(self) -> Mapping[str, Any]:
        return {
            "recipe": self.recipe,
            "n_examples": self.n_examples,
            "seed": self.seed,
            "query_budget": self.query_budget,
            "masked_lm": self.masked_lm,
            "offline_masked_lm": self.offline_masked_lm,
            # a refit of the local MLM at the same path must not reuse old outcomes
            "offline_masked_lm_fit": _read_json(Path(self.offline_masked_lm) / "trustequiv_mlm.json")
            if self.offline_masked_lm
            else None,
            "max_candidates": self.max_candidates,
            "mlm_max_length": self.mlm_max_length,
            "sentence_encoder": self.sentence_encoder,
            "sbert_model": self.sbert_model,
            "similarity_threshold": self.similarity_threshold,
            "max_percent_words": self.max_percent_words,
        }

    # -- per model, with the model
    def collect(
        self, model: Any, outputs: ModelOutputs, data: Any, task: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Attack the selected examples; returns ``{"records": [...], "setup": {...}, "seconds": s}``."""
        import torch
        import transformers

        from plugins.characteristics.adversarial_wrapper import TextClassifier, textattack_wrapper

        pair = bool(task.get("pair"))
        ids = [int(i) for i in data["id"]]
        pos = select_examples(ids, self.n_examples, self.seed)

        def outcomes_file(query_budget: int | None) -> Path:
            key = content_key(
                config={**self.cache_config(), "query_budget": query_budget},
                checkpoint=model.fingerprint,
                task=task["name"],
                max_length=int(task["max_length"]),
                ids=[ids[k] for k in pos],
            )
            return self.attack_dir / f"{key}.jsonl"

        jsonl = outcomes_file(self.query_budget)
        reuse = None
        if self.query_budget is not None:
            # A budgeted rerun keeps the unbudgeted run's outcomes that never came near the budget.
            unbudgeted = read_jsonl(outcomes_file(None))
            reuse = {i: r for i, r in unbudgeted.items() if reusable_under_budget(r, int(self.query_budget))}
        labels = outputs.labels.tolist()
        text_a = data["text_a"]
        text_b = data["text_b"] if pair else None
        jobs = [(ids[k], int(labels[k]), text_a[k], text_b[k] if pair else None) for k in pos]
        started = time.time()
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        transformers.set_seed(self.seed)
        classifier = TextClassifier(
            model, max_length=int(task["max_length"]), pair=pair, batch_size=self.batch_size
        )
        attack, info = build_attack(
            textattack_wrapper(classifier),
            recipe=self.recipe,
            pair=pair,
            masked_lm=self.masked_lm,
            offline_masked_lm=self.offline_masked_lm,
            max_candidates=self.max_candidates,
            mlm_max_length=int(self.mlm_max_length or task["max_length"]),
            sentence_encoder=self.sentence_encoder,
            sbert_model=self.sbert_model,
            similarity_threshold=self.similarity_threshold,
            query_budget=self.query_budget,
            max_percent_words=self.max_percent_words,
            model_batch_size=self.batch_size,
        )
        records = run_attack(attack, jobs, pair=pair, jsonl=jsonl, num_workers=self.num_workers, reuse=reuse)
        info.update(
            n_examples=len(jobs),
            seed=self.seed,
            jsonl=str(jsonl),
            n_reused=sum(bool(r.get("reused")) for r in records),
        )
        return {"records": records, "setup": info, "seconds": round(time.time() - started, 1)}

    def replay(
        self,
        model: Any,
        outputs: ModelOutputs,
        others: Mapping[str, ModelOutputs],
        data: Any,
        task: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """This model's predictions on the adversarial texts found against each other model:
        ``{"transfer": {other: {"ids": [...], "predictions": [...]}}}``."""
        from plugins.characteristics.adversarial_wrapper import TextClassifier

        pair = bool(task.get("pair"))
        classifier = TextClassifier(
            model, max_length=int(task["max_length"]), pair=pair, batch_size=self.batch_size
        )
        transfer: dict[str, Any] = {}
        for name, other in others.items():
            recs = [
                r for r in (other.extras.get(self.name) or {}).get("records", []) if r["status"] == "success"
            ]
            texts = [tuple(r["adv_texts"]) if pair else r["adv_texts"][0] for r in recs]
            preds = classifier.predict(texts) if texts else []
            transfer[name] = {"ids": [r["id"] for r in recs], "predictions": preds}
        return {"transfer": transfer}

    # -- pure
    @staticmethod
    def _records(out: ModelOutputs, name: str) -> dict[int, dict[str, Any]]:
        extras = out.extras.get(name)
        if not extras or "records" not in extras:
            raise ValueError(
                f"{out.name}: no adversarial outcomes in extras['{name}']: run through the pipeline "
                "(needs_model) or attach Adversarial.collect()'s result"
            )
        return {int(r["id"]): r for r in extras["records"]}

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        recs = list(self._records(outputs, self.name).values())
        summary = attack_summary(
            [r["status"] for r in recs],
            n_queries=[r["n_queries"] for r in recs],
            perturbed_shares=[r.get("perturbed_share", math.nan) for r in recs],
        )
        extras = outputs.extras[self.name]
        summary["seconds"] = float(extras.get("seconds", math.nan))
        summary["seconds_per_attacked"] = (
            float(np.mean([r["seconds"] for r in recs if r["status"] != "skipped"]))
            if any(r["status"] != "skipped" for r in recs)
            else math.nan
        )
        setup = extras.get("setup", {})
        res = CharacteristicResult(metrics={f"{outputs.name}/{k}": v for k, v in summary.items()})
        res.notes += [f"Departure from paper B's BERT-Attack: {d}." for d in departures(setup)]
        res.tables[f"setup_{outputs.name}"] = [
            {"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in setup.items()
        ]
        res.metrics[f"{outputs.name}/departures_from_paper"] = float(len(departures(setup)))
        return res

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        ra, ca = self._records(reference, self.name), self._records(candidate, self.name)
        st_r = {i: r["status"] for i, r in ra.items()}
        st_c = {i: r["status"] for i, r in ca.items()}
        common = common_attacked(st_r, st_c)
        scope = pair_name(reference.name, candidate.name)
        succ_r, succ_c = success_set(st_r, common), success_set(st_c, common)
        m: dict[str, float] = {"n_common_attacked": float(len(common))}
        sr_r = len(succ_r) / len(common) if common else math.nan
        sr_c = len(succ_c) / len(common) if common else math.nan
        m.update(
            success_rate_reference=sr_r,
            success_rate_candidate=sr_c,
            success_rate_gap=sr_c - sr_r,
            attacked_jaccard=attacked_set_jaccard(st_r, st_c),
            n_both_broken=float(len(succ_r & succ_c)),
        )
        both = sorted(succ_r & succ_c)
        m["perturbed_word_jaccard"] = perturbed_word_overlap(
            [ra[i]["perturbed_indices"] for i in both], [ca[i]["perturbed_indices"] for i in both]
        )
        notes = []
        rows: dict[int, dict[str, Any]] = {
            i: {
                "id": i,
                "reference": st_r[i],
                "candidate": st_c[i],
                "ref_adv_fools_cand": None,
                "cand_adv_fools_ref": None,
            }
            for i in common
        }
        for direction, source, target, src_set in (
            ("transfer_ref_to_cand", reference, candidate, succ_r),
            ("transfer_cand_to_ref", candidate, reference, succ_c),
        ):
            replay = (
                ((target.extras.get(self.name) or {}).get("replay") or {})
                .get("transfer", {})
                .get(source.name)
            )
            if replay is None:
                m[direction] = math.nan
                notes.append(f"{direction}: no replay of {source.name}'s adversarial texts on {target.name}")
                continue
            pred = dict(zip(replay["ids"], replay["predictions"], strict=True))
            labels = {i: ra[i]["label"] for i in common}
            fooled = {i: pred[i] != labels[i] for i in sorted(src_set) if i in pred}
            m[direction] = transfer_rate(list(fooled.values()))
            m[f"{direction}_n"] = float(len(fooled))
            col = "ref_adv_fools_cand" if direction.endswith("to_cand") else "cand_adv_fools_ref"
            for i, f in fooled.items():
                rows[i][col] = bool(f)
        res = CharacteristicResult(metrics={f"{scope}/{k}": float(v) for k, v in m.items()}, notes=notes)
        ordered = [rows[i] for i in common]
        cols = ("id", "reference", "candidate", "ref_adv_fools_cand", "cand_adv_fools_ref")
        res.per_example[f"adversarial_{scope}"] = {
            k: ["" if r[k] is None else r[k] for r in ordered] for k in cols
        }
        res.tables[f"{scope}_summary"] = [{"metric": k, "value": round(float(v), 4)} for k, v in m.items()]
        return res
