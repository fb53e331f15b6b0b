"""Adversarial vulnerability: TextAttack attacks (BERT-Attack by default) on each model, and how alike their
weaknesses are (paper B, Rai, Pal & Awekar, arXiv 2407.13174: BERT-ATTACK on IMDB through TextAttack).

Per model (:meth:`Adversarial.collect`, cached by the pipeline; every finished example is also appended to a
JSONL file under ``attack_dir`` so a killed run resumes where it stopped): the same ``n_examples`` examples of
the split (the project's seeded sample, :func:`trustequiv.data.sampling.sample_positions`, identical for every
model and the ones attribution explains) are attacked through a TextAttack model wrapper over the model's
text scorer (:mod:`.wrapper`; any model source with a scorer, ONNX included). Metrics: attack success rate,
accuracy under attack, mean share of words perturbed, mean queries, skipped count (TextAttack's definitions;
:mod:`trustequiv.functional.adversarial`).

Transfer needs the other model. After every model's ``collect``, the pipeline calls :meth:`Adversarial.replay`
once per model with the other models' collected outcomes (``needs_replay``): each model scores the adversarial
texts found against every other model. :meth:`compare` stays pure and reads both directions from
``outputs.collected`` (the replay under ``collected["adversarial"]["replay"]``).

How the attack is built: :mod:`.attack`; how it is run and resumed: :mod:`.runner`. Every departure from the
paper's setup is listed in the notes (report and ``results.json``) and in the ``setup`` table.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from plugins.characteristics.adversarial.attack import PAPER_MLM, build_attack, departures
from plugins.characteristics.adversarial.runner import read_jsonl, reusable_under_budget, run_attack
from plugins.characteristics.adversarial.wrapper import TextClassifier, textattack_wrapper
from trustequiv.cache import content_key
from trustequiv.characteristic import Characteristic, PairStatistic, pair_name
from trustequiv.data.sampling import SAMPLER, sample_positions
from trustequiv.functional.adversarial import (
    attack_summary,
    attacked_set_jaccard,
    common_attacked,
    perturbed_word_overlap,
    success_set,
    transfer_rate,
)
from trustequiv.models.handle import ModelHandle
from trustequiv.outputs import CharacteristicResult, ModelOutputs

log = logging.getLogger(__name__)
# sentence-transformers draws a progress bar per encode() call when its logger is at INFO (Hydra's default):
# the SBERT constraint encodes once per candidate swap, which would flood the log.
logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


class Adversarial(Characteristic):
    """Adversarial vulnerability through TextAttack (BERT-Attack by default); see the module docstring.

    Args:
        recipe: ``"bert-attack"`` (assembled, offline-capable) or another TextAttack recipe name.
        n_examples: examples attacked per model: the seeded sample of
            :func:`trustequiv.data.sampling.sample_positions`, the examples attribution explains (null = all).
            Since that sampler replaced the attack's own (``random.Random(seed)``), earlier runs' numbers
            came from other examples.
        seed: the attack's random seed (Python, NumPy, torch, transformers); it no longer picks the examples.
        query_budget: model queries per example (null = unlimited, as in the paper).
        masked_lm / offline_masked_lm: substitute source (hub id or dir) and the local fallback.
        max_candidates, mlm_max_length (null = task max_length), sentence_encoder (auto|use|sbert),
        sbert_model (null = local all-MiniLM-L6-v2), similarity_threshold, max_percent_words: the
            recipe's knobs.
        batch_size: texts per model forward pass (and per TextAttack model call).
        num_workers: attack processes (fork); 1 = in process.
        attack_dir: where per-example outcomes are appended (JSONL per model and config).

    Raises:
        ValueError: an unknown ``sentence_encoder``, or ``n_examples`` that is not a positive number.
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
        sample_positions([0], n_examples, key="n_examples")  # a bad n_examples fails at construction
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
            # outcomes on the attack's earlier sample (drawn with `seed`) are not reused
            **({} if self.n_examples is None else {"sampler": SAMPLER}),
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
    def _classifier(self, model: ModelHandle, task: Mapping[str, Any]) -> TextClassifier:
        """The model's text scorer as TextAttack's classifier, batched as before the scorer existed."""
        max_length = int(task["max_length"])
        scorer = model.scorer(task).configure(
            # one forward pass per model call of <= batch_size texts (any length up to max_length): with
            # int8 dynamic quantization, which picks activation ranges per batch, the batches set the numbers
            max_batch=self.batch_size,
            batch_tokens=self.batch_size * max_length,
            # forked attack workers cannot use CUDA initialised in the parent
            devices=["cpu"] if self.num_workers > 1 else None,
        )
        return TextClassifier(scorer, pair=bool(task.get("pair")))

    def examples(self, ids: Sequence[int]) -> list[int]:
        """Positions of the attacked examples (the shared sample), in id order (the records' order)."""
        pos = sample_positions(ids, self.n_examples, key="n_examples")
        return sorted(pos, key=lambda k: int(ids[k]))

    def collect(
        self, model: ModelHandle, outputs: ModelOutputs, data: Any, task: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Attack the selected examples through ``model.scorer(task)``.

        Returns:
            ``{"records": [...], "setup": {...}, "seconds": s}`` (JSON-serialisable; records in id order).

        Raises:
            OSError: no masked LM for BERT-Attack's substitutes (the message names the script that fits one).
        """

        pair = bool(task.get("pair"))
        ids = [int(i) for i in data["id"]]
        pos = self.examples(ids)

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
        classifier = self._classifier(model, task)
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
        model: ModelHandle,
        outputs: ModelOutputs,
        others: Mapping[str, ModelOutputs],
        data: Any,
        task: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """This model's predictions (through its scorer) on the adversarial texts found against each other
        model (``others[name].collected[self.name]``): ``{"transfer": {other: {"ids": [...],
        "predictions": [...]}}}``."""
        pair = bool(task.get("pair"))
        classifier = self._classifier(model, task)
        transfer: dict[str, Any] = {}
        for name, other in others.items():
            recs = [
                r
                for r in (other.collected.get(self.name) or {}).get("records", [])
                if r["status"] == "success"
            ]
            texts = [tuple(r["adv_texts"]) if pair else r["adv_texts"][0] for r in recs]
            preds = classifier.predict(texts) if texts else []
            transfer[name] = {"ids": [r["id"] for r in recs], "predictions": preds}
        return {"transfer": transfer}

    # -- pure
    @staticmethod
    def _records(out: ModelOutputs, name: str) -> dict[int, dict[str, Any]]:
        collected = out.collected.get(name)
        if not collected or "records" not in collected:
            raise ValueError(
                f"{out.name}: no adversarial outcomes in collected['{name}']: run through the pipeline "
                "(needs_model) or attach Adversarial.collect()'s result (ModelOutputs.with_collected)"
            )
        return {int(r["id"]): r for r in collected["records"]}

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        recs = list(self._records(outputs, self.name).values())
        summary = attack_summary(
            [r["status"] for r in recs],
            n_queries=[r["n_queries"] for r in recs],
            perturbed_shares=[r.get("perturbed_share", math.nan) for r in recs],
        )
        collected = outputs.collected[self.name]
        summary["seconds"] = float(collected.get("seconds", math.nan))
        summary["seconds_per_attacked"] = (
            float(np.mean([r["seconds"] for r in recs if r["status"] != "skipped"]))
            if any(r["status"] != "skipped" for r in recs)
            else math.nan
        )
        setup = collected.get("setup", {})
        res = CharacteristicResult(metrics={f"{outputs.name}/{k}": v for k, v in summary.items()})
        res.notes += [f"Departure from paper B's BERT-Attack: {d}." for d in departures(setup)]
        res.tables[f"setup_{outputs.name}"] = [
            {"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
            for k, v in setup.items()
        ]
        res.metrics[f"{outputs.name}/departures_from_paper"] = float(len(departures(setup)))
        return res

    def _fooled(
        self,
        source: ModelOutputs,
        target: ModelOutputs,
        broken: set[int],
        records: Mapping[int, Mapping[str, Any]],
    ) -> dict[int, bool] | None:
        """For each id in ``broken`` (attacks that succeeded on ``source``) whose adversarial text ``target``
        replayed: whether it fools ``target`` (prediction != gold label from ``records``); None without a
        replay of ``source``'s texts on ``target``."""
        replay = (
            ((target.collected.get(self.name) or {}).get("replay") or {}).get("transfer", {}).get(source.name)
        )
        if replay is None:
            return None
        pred = dict(zip(replay["ids"], replay["predictions"], strict=True))
        return {i: pred[i] != records[i]["label"] for i in sorted(broken) if i in pred}

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """The verdict's statistics over the examples both models attacked (neither skipped), ids as in the
        data:

        - ``abs_success_rate_gap`` (alike = lower): ``|success rate_cand - success rate_ref|``; signed
          version ``success_rate_gap`` (candidate - reference). Arrays: both models' success per example.
        - ``transfer_ref_to_cand`` (alike = higher): share of the reference's successful adversarial texts
          that also fool the candidate. Arrays: whether the reference's attack succeeded and its text was
          replayed on the candidate, and whether it fooled it; the statistic is the share among the
          resampled rows of the first kind (NaN in a resample with none).

        Both are left out without attack outcomes or a common attacked example; transfer also without the
        candidate's replay of the reference's texts or a successful reference attack among them.
        """
        try:
            ra, ca = self._records(reference, self.name), self._records(candidate, self.name)
            st_r = {i: r["status"] for i, r in ra.items()}
            st_c = {i: r["status"] for i, r in ca.items()}
            common = common_attacked(st_r, st_c)
        except ValueError:
            return []
        if not common:
            return []
        ids = np.asarray(common, dtype=np.int64)
        broken_r = np.array([st_r[i] == "success" for i in common])
        broken_c = np.array([st_c[i] == "success" for i in common])
        stats = [
            PairStatistic(
                name="abs_success_rate_gap",
                alike="lower",
                example_ids=ids,
                arrays=(broken_r, broken_c),
                statistic=_abs_rate_gap,
                signed=_rate_gap,
            )
        ]
        fooled = self._fooled(reference, candidate, success_set(st_r, common), ra)
        if fooled:
            replayed = np.array([i in fooled for i in common])
            fools = np.array([bool(fooled.get(i, False)) for i in common])
            stats.append(
                PairStatistic(
                    name="transfer_ref_to_cand",
                    alike="higher",
                    example_ids=ids,
                    arrays=(replayed, fools),
                    statistic=_share_fooled,
                )
            )
        return stats

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
            abs_success_rate_gap=abs(sr_c - sr_r),
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
            fooled = self._fooled(source, target, src_set, ra)
            if fooled is None:
                m[direction] = math.nan
                notes.append(f"{direction}: no replay of {source.name}'s adversarial texts on {target.name}")
                continue
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


def _rate_gap(broken_ref: np.ndarray, broken_cand: np.ndarray) -> np.ndarray:
    """``(R, n)`` per-example attack success of each model -> ``(R,)`` success rate_cand - rate_ref."""
    return broken_cand.mean(axis=-1) - broken_ref.mean(axis=-1)


def _abs_rate_gap(broken_ref: np.ndarray, broken_cand: np.ndarray) -> np.ndarray:
    """``|`` :func:`_rate_gap` ``|``."""
    return np.abs(_rate_gap(broken_ref, broken_cand))


def _share_fooled(replayed: np.ndarray, fools: np.ndarray) -> np.ndarray:
    """``(R, n)`` masks -> ``(R,)`` share of replayed adversarial texts that fool the target; NaN for none."""
    n = replayed.sum(axis=-1)
    return np.where(n > 0, (replayed & fools).sum(axis=-1) / np.maximum(n, 1), np.nan)
