"""Interpretability alignment: do the two models rest their predictions on the same words?

Per model (:meth:`AttributionCharacteristic.collect`, cached, once per model and split): word-level
attributions of ``n_examples`` examples (the project's seeded sample, :func:`trustequiv.data.sampling.
sample_positions`: the examples the adversarial characteristic attacks), for EVERY class (LIME and SHAP give
all classes from the same perturbations; IG runs once per class), for each run seed. Storing every class is
what lets ``explained_class="reference_prediction"`` work although ``collect`` sees one model at a time, and
keeps the explained-class mode out of the cache key. LIME and SHAP score perturbed texts through the model's
text scorer (any model source); IG needs the torch model's gradients.

Per pair (:meth:`compare`): paper A's top-K unique-word Jaccard (Rai, Pal, Awekar, arXiv 2508.13533) and
Krishna et al. (2022)'s feature / rank / sign / signed-rank agreement, Spearman rank correlation and pairwise
rank agreement, per example and per seed; reported as the mean over runs with the sample variance over runs
(ddof=1, paper A's 3 seeds) and a percentile bootstrap interval over examples of the seed-averaged values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plugins.characteristics.attribution.figures import heatmap_figure, heatmap_html, histogram_figure
from plugins.characteristics.attribution.perturb import DEFAULT_WORD_PATTERN, WordFeatures, word_keys
from trustequiv.cache import OutputCache, content_key
from trustequiv.characteristic import Characteristic, PairStatistic, pair_name
from trustequiv.data.sampling import SAMPLER, sample_positions
from trustequiv.functional.attribution import ALIGNMENT_METRICS, alignment_scores
from trustequiv.functional.bootstrap import paired_bootstrap
from trustequiv.models.handle import ModelHandle
from trustequiv.models.scorer import TextScorer
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align

log = logging.getLogger(__name__)

ExplainedClass = Literal["gold", "prediction", "reference_prediction"]

#: the alignment metrics the verdict judges (:meth:`AttributionCharacteristic.pair_statistics`).
VERDICT_METRICS = ("jaccard", "spearman")


@dataclass(frozen=True)
class AttributionSettings:
    """The settings of an :class:`AttributionCharacteristic` (its keyword arguments, documented there).

    Built from the config keys (``conf/characteristic/attribution_*.yaml``) or a sweep's saved settings; the
    values are normalised (ints, floats, lists, a :class:`~pathlib.Path`) and checked on construction.

    Raises:
        ValueError: an unknown ``explained_class`` or ``rank_by``, ``top_k`` < 1, no seed, or ``n_examples``
            that is not a positive number.
    """

    n_examples: int | None = 200
    seeds: Sequence[int] = (42, 43, 44)
    explained_class: ExplainedClass = "gold"
    top_k: int = 10
    rank_by: str = "abs"
    lowercase: bool = True
    word_pattern: str = DEFAULT_WORD_PATTERN
    mask_token: str | None = None
    batch_tokens: int | None = None
    max_batch: int = 1024
    devices: Sequence[str] | None = None
    n_bootstrap: int = 1000
    confidence: float = 0.95
    bootstrap_seed: int = 42
    n_figure_examples: int = 3
    figure_examples: Sequence[int] | None = None
    runs_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.explained_class not in ("gold", "prediction", "reference_prediction"):
            raise ValueError(
                "explained_class must be gold, prediction or reference_prediction, "
                f"got {self.explained_class!r}"
            )
        if self.rank_by not in ("abs", "signed"):
            raise ValueError(f"rank_by must be 'abs' or 'signed', got {self.rank_by!r}")
        if int(self.top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        sample_positions([0], self.n_examples, key="n_examples")  # a bad n_examples fails at construction
        seeds = [int(s) for s in self.seeds]
        if not seeds:
            raise ValueError("seeds must name at least one run seed")
        normalised = {
            "n_examples": None if self.n_examples is None else int(self.n_examples),
            "seeds": seeds,
            "top_k": int(self.top_k),
            "lowercase": bool(self.lowercase),
            "word_pattern": str(self.word_pattern),
            "batch_tokens": None if self.batch_tokens is None else int(self.batch_tokens),
            "max_batch": int(self.max_batch),
            "devices": list(self.devices) if self.devices else None,
            "n_bootstrap": int(self.n_bootstrap),
            "confidence": float(self.confidence),
            "bootstrap_seed": int(self.bootstrap_seed),
            "n_figure_examples": int(self.n_figure_examples),
            "figure_examples": [int(i) for i in self.figure_examples] if self.figure_examples else None,
            "runs_dir": Path(self.runs_dir) if self.runs_dir else None,
        }
        for key, value in normalised.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_kwargs(cls, owner: str, settings: Mapping[str, Any]) -> AttributionSettings:
        """The settings from keyword arguments; ``owner`` names the class in the error of an unknown key.

        Raises:
            TypeError: a key that is not a setting (the message lists the accepted ones).
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"{owner}: unknown setting(s) {unknown}; accepted: {', '.join(known)}")
        return cls(**settings)


@dataclass(frozen=True)
class _Alignment:
    """Per-run, per-example alignment scores of one pair on the examples both models explained."""

    ids: list[int]  # example ids, in the reference's collected order
    rows: np.ndarray  # their rows in the aligned outputs
    runs: list[str]  # run seeds both models have
    values: dict[str, np.ndarray]  # metric -> (runs, examples), NaN where undefined
    pos_r: dict[int, int]  # example id -> position in each model's collected examples
    pos_c: dict[int, int]
    cls_r: np.ndarray  # explained class per aligned row, per model
    cls_c: np.ndarray


class AttributionCharacteristic(Characteristic):
    """Base of the attribution characteristics (subclasses implement :meth:`_attribute`).

    Takes its settings as keyword arguments (what Hydra passes), kept whole in :attr:`settings`
    (:class:`AttributionSettings`); an unknown keyword raises ``TypeError``.

    Args:
        n_examples: examples explained per split: the seeded sample of
            :func:`trustequiv.data.sampling.sample_positions` (the adversarial characteristic attacks the same
            ones; since that sampler replaced attribution's own, earlier runs' numbers came from other
            examples); null: all.
        seeds: run seeds (paper A: 42, 43, 44); each example's sampler is seeded from (seed, example id).
        explained_class: ``gold`` (paper A's default; unlabelled rows use the reference's prediction),
            ``prediction`` (each model explains its own predicted class) or ``reference_prediction``.
        top_k: K of the top-K metrics (paper A: 10).
        rank_by: ``abs`` (paper A NLI code, Krishna et al.) or ``signed`` (paper A PI code).
        lowercase: compare word strings case-insensitively in the unique-word Jaccard.
        word_pattern: regex of a word feature (paper A's PI SHAP tokenizer ``\\w+|[^\\w\\s]`` by default).
        mask_token: null deletes a hidden word (LIME's default); a string replaces it (e.g. ``"[MASK]"``).
        batch_tokens, max_batch: the text scorer's batch budget (padded tokens, texts); batch_tokens None
            = 4096 on CPU, 32768 on GPUs (:class:`trustequiv.models.scorer.TorchTextScorer`).
        devices: torch devices; null: every GPU if there is one (and the model may use it), else the CPU.

    Raises:
        ValueError: an unknown ``explained_class`` or ``rank_by``, ``top_k`` < 1, no seed, or ``n_examples``
            that is not a positive number.
        n_bootstrap, confidence, bootstrap_seed: the interval over examples.
        n_figure_examples: examples shown as word heatmaps (the lowest Jaccard, or ``figure_examples``).
        figure_examples: explicit example ids for the heatmaps.
        runs_dir: where each finished seed's attributions are kept (JSON per model, config and seed), so
            a killed run resumes with the seeds not yet done (config: ``${paths.cache_dir}/attributions``);
            null: nothing is kept between runs but the pipeline's cache of the finished result.
    """

    name = "attribution"
    method = "base"
    needs_model = True
    deterministic = False
    #: whether the method needs the torch model's gradients (IG) rather than the text scorer (LIME, SHAP).
    needs_gradients = False

    def __init__(self, **settings: Any) -> None:
        # the keyword arguments above, checked and normalised by AttributionSettings; each is also kept as an
        # attribute of the same name (what the methods read)
        self.settings = AttributionSettings.from_kwargs(type(self).__name__, settings)
        for f in fields(self.settings):
            setattr(self, f.name, getattr(self.settings, f.name))

    # ------------------------------------------------------------------ per model (cached)
    def method_config(self) -> dict[str, Any]:
        """The method's own settings that change attributions (subclasses extend)."""
        return {}

    def cache_config(self) -> Mapping[str, Any]:
        return {
            "method": self.method,
            "n_examples": self.n_examples,
            # results drawn by attribution's earlier sampler are not reused
            **({} if self.n_examples is None else {"sampler": SAMPLER}),
            "seeds": [0] if self.deterministic else self.seeds,
            "word_pattern": self.word_pattern,
            "mask_token": self.mask_token,
            **self.method_config(),
        }

    def _attribute(
        self,
        feats: list[WordFeatures],
        model: ModelHandle,
        task: Mapping[str, Any],
        seed: int,
        n_classes: int,
        scorer: TextScorer | None,
    ) -> list[np.ndarray]:
        """Per example ``(C, F)`` attributions for run ``seed``; ``scorer`` is None for gradient methods."""
        raise NotImplementedError

    def _scorer(self, model: ModelHandle, task: Mapping[str, Any]) -> TextScorer | None:
        if self.needs_gradients:
            if model.loaded is None:
                raise ValueError(
                    f"{self.method.upper()} needs gradients: a {model.source} model has none; "
                    "LIME and SHAP run through its scorer"
                )
            return None
        return model.scorer(task).configure(
            batch_tokens=self.batch_tokens, max_batch=self.max_batch, devices=self.devices
        )

    def examples(self, ids: Sequence[int]) -> list[int]:
        """Positions of the explained examples (the shared sample: the ones attacked), in file order."""
        return sample_positions(ids, self.n_examples, key="n_examples")

    def collect(
        self, model: ModelHandle, outputs: ModelOutputs, data: Any, task: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Word attributions for every class of the selected examples, per run seed.

        Args:
            model: the model's handle: LIME and SHAP score through ``model.scorer(task)``, IG differentiates
                ``model.loaded``.

        Returns:
            ``{"method", "examples": [{"id", "words", "segments"}], "runs": {seed: [(C, F) lists]}, "error",
            "seconds", "perturbed_texts", "unique_texts", "perturbed_tokens"}`` (JSON-serialisable).

        Raises:
            ValueError: a gradient method (IG) on a model without a torch model (e.g. ONNX); one line, the
                pipeline's note for this characteristic.
        """
        scorer = self._scorer(model, task)
        feats = self._features(data, task)
        n_classes = len(task["label_names"])
        # each finished seed in an OutputCache extras file (atomic; a corrupt one is moved aside and redone)
        store = None if self.runs_dir is None else OutputCache(self.runs_dir)
        run_key = content_key(
            config=dict(self.cache_config()),
            checkpoint=model.fingerprint,
            task=task.get("name"),
            max_length=int(task.get("max_length", 128)),
            ids=[f.example_id for f in feats],
        )
        runs: dict[str, Any] = {}
        totals = dict.fromkeys(("seconds", "perturbed_texts", "unique_texts", "perturbed_tokens"), 0.0)
        error = None
        seeds = [0] if self.deterministic else self.seeds
        for k, seed in enumerate(seeds):
            seed_key = content_key(run=run_key, seed=seed)
            done = None if store is None else store.load_extras(seed_key)
            kept = done is not None
            if not kept:
                try:
                    done = self._run_seed(feats, model, task, seed, n_classes, scorer)
                except RuntimeError as err:  # a model the method cannot run through: reported, not fatal
                    error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                    log.warning("%s on %s failed: %s", self.name, model.name, error)
                    break
                if store is not None:
                    store.save_extras(seed_key, done)
            runs[str(seed)] = done["attributions"]
            for key in totals:
                totals[key] += done[key]
            self._log_seed(seed, k, len(seeds), len(feats), done, kept)
        return {
            "method": self.method,
            "examples": [{"id": f.example_id, "words": f.words, "segments": f.segments} for f in feats],
            "runs": runs,
            "error": error,
            "seconds": totals["seconds"],
            "perturbed_texts": int(totals["perturbed_texts"]),
            "unique_texts": int(totals["unique_texts"]),
            "perturbed_tokens": int(totals["perturbed_tokens"]),
        }

    def _features(self, data: Any, task: Mapping[str, Any]) -> list[WordFeatures]:
        """Word features of the explained examples (:meth:`examples`), in file order."""
        ids = [int(i) for i in data["id"]]
        pos = self.examples(ids)
        pair = bool(task.get("pair"))
        text_a = data["text_a"]
        text_b = data["text_b"] if pair else None
        return [
            WordFeatures.from_texts(ids[i], text_a[i], text_b[i] if pair else None, self.word_pattern)
            for i in pos
        ]

    def _run_seed(
        self,
        feats: list[WordFeatures],
        model: ModelHandle,
        task: Mapping[str, Any],
        seed: int,
        n_classes: int,
        scorer: TextScorer | None,
    ) -> dict[str, Any]:
        """One seed's attributions (rounded to 8 decimals) with its wall time and scorer counters.

        Raises:
            RuntimeError: the method cannot run through the model (``collect`` reports it).
        """
        before = _counters(scorer)
        started = time.perf_counter()
        attrs = self._attribute(feats, model, task, seed, n_classes, scorer)
        after = _counters(scorer)
        return {
            "seed": seed,
            "attributions": [np.round(a, 8).tolist() for a in attrs],
            "seconds": time.perf_counter() - started,
            "perturbed_texts": after[0] - before[0],
            "unique_texts": after[1] - before[1],
            "perturbed_tokens": after[2] - before[2],
        }

    def _log_seed(
        self, seed: int, k: int, n_seeds: int, n_examples: int, done: Mapping[str, Any], kept: bool
    ) -> None:
        log.info(
            "%s: seed %s (%d of %d), %d examples, %.1f s%s, %d perturbed texts (%d unique, %d tokens)",
            self.name,
            seed,
            k + 1,
            n_seeds,
            n_examples,
            done["seconds"],
            " (kept from an earlier run)" if kept else "",
            done["perturbed_texts"],
            done["unique_texts"],
            done["perturbed_tokens"],
        )

    # ------------------------------------------------------------------ reports
    def _collected(self, out: ModelOutputs) -> Mapping[str, Any]:
        ex = out.collected.get(self.name)
        if not ex:
            raise ValueError(
                f"{out.name}: no '{self.name}' attributions in outputs.collected; the pipeline fills "
                "them through collect() (needs_model=True)"
            )
        return ex

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """Wall time and text-scorer counters of the model's ``collect``."""
        ex = outputs.collected.get(self.name)
        if not ex:
            return CharacteristicResult()
        m = outputs.name
        return CharacteristicResult(
            metrics={
                f"{m}/seconds": float(ex["seconds"]),
                f"{m}/n_examples": float(len(ex["examples"])),
                f"{m}/perturbed_texts": float(ex["perturbed_texts"]),
                f"{m}/unique_texts": float(ex["unique_texts"]),
            }
        )

    def _explained(self, ref: ModelOutputs, cand: ModelOutputs) -> tuple[np.ndarray, np.ndarray]:
        pr, pc = ref.predictions.cpu().numpy(), cand.predictions.cpu().numpy()
        if self.explained_class == "gold":
            y = ref.labels.cpu().numpy()
            y = np.where(y >= 0, y, pr)
            return y, y
        if self.explained_class == "prediction":
            return pr, pc
        return pr, pr

    def notes(self) -> list[str]:
        ranked = "|attribution|" if self.rank_by == "abs" else "signed attribution"
        runs = "deterministic, one run" if self.deterministic else f"seeds {self.seeds}"
        return [
            f"{self.method.upper()} word attributions; explained class: {self.explained_class}; "
            f"top-K={self.top_k} ranked by {ranked}. Features are words (sub-tokens summed); a premise "
            "word and the same hypothesis word are different features; the separator is never a feature "
            "or masked. Jaccard = paper A's top-K unique-word Jaccard (0 when both empty); "
            "feature/rank/sign/signed-rank agreement, Spearman and pairwise rank agreement as in Krishna "
            f"et al. 2022. Values: mean over runs ({runs}), `_var` = sample variance over runs (ddof=1), "
            f"`_ci_*` = {self.confidence:.0%} percentile bootstrap over examples ({self.n_bootstrap} "
            "resamples) of the run-averaged per-example values.",
        ]

    def _alignment(
        self, ref: ModelOutputs, cand: ModelOutputs, ex_r: Mapping[str, Any], ex_c: Mapping[str, Any]
    ) -> _Alignment:
        """Every alignment metric per run and example, on aligned outputs and their collected attributions.

        Raises:
            ValueError: the two models explained no common example with a common run.
        """
        runs = [s for s in ex_r["runs"] if s in ex_c["runs"]]
        pos_r = {int(e["id"]): k for k, e in enumerate(ex_r["examples"])}
        pos_c = {int(e["id"]): k for k, e in enumerate(ex_c["examples"])}
        row = {int(i): k for k, i in enumerate(ref.example_ids.tolist())}
        ids = [i for i in pos_r if i in pos_c and i in row]
        if not runs or not ids:
            pair = pair_name(ref.name, cand.name)
            raise ValueError(f"{pair}: the two models' {self.name} attributions share no example or run")
        cls_r, cls_c = self._explained(ref, cand)
        rows = np.array([row[i] for i in ids])
        values = {m: np.full((len(runs), len(ids)), np.nan) for m in ALIGNMENT_METRICS}
        for r, seed in enumerate(runs):
            for j, eid in enumerate(ids):
                e = ex_r["examples"][pos_r[eid]]
                keys = word_keys(e["words"], e["segments"], self.lowercase)
                if not keys:
                    continue
                a = np.asarray(ex_r["runs"][seed][pos_r[eid]])[cls_r[rows[j]]]
                b = np.asarray(ex_c["runs"][seed][pos_c[eid]])[cls_c[rows[j]]]
                for m, v in alignment_scores(a, b, keys, self.top_k, self.rank_by).items():
                    values[m][r, j] = v
        return _Alignment(ids, rows, runs, values, pos_r, pos_c, cls_r, cls_c)

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """``jaccard`` (paper A's J@K) and ``spearman``, both alike = higher, for the verdict.

        Rows are the explained examples both models share (ids as in the data); each row holds the example's
        value in every common run (``(n, runs)``, NaN where undefined, e.g. Spearman of a constant
        attribution), and the statistic is the compare metric on the resampled rows: the mean over runs of
        each run's mean over the finite values. None is returned when the attributions are missing, failed,
        share no example or run, or the metric is NaN on every row.
        """
        try:
            ref, cand = align(reference, candidate)
            ex_r, ex_c = self._collected(ref), self._collected(cand)
            if ex_r.get("error") or ex_c.get("error"):
                return []
            al = self._alignment(ref, cand, ex_r, ex_c)
        except ValueError:
            return []
        ids = np.asarray(al.ids, dtype=np.int64)
        stats = [
            PairStatistic(
                name=m,
                alike="higher",
                example_ids=ids,
                arrays=(al.values[m].T.copy(),),
                statistic=_mean_of_run_means,
            )
            for m in VERDICT_METRICS
        ]
        return [s for s in stats if np.isfinite(s.estimate())]

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """Alignment metrics on the examples both models explained (see the module docstring).

        Raises:
            ValueError: an output lacks the collected attributions, or the two models explained no common
                example with a common run.
        """
        ref, cand = align(reference, candidate)
        pair = pair_name(ref.name, cand.name)
        ex_r, ex_c = self._collected(ref), self._collected(cand)
        result = CharacteristicResult(notes=self.notes())
        if ex_r.get("error") or ex_c.get("error"):
            result.notes.append(
                f"{pair}: {self.method} failed: {ex_r.get('error') or ''} {ex_c.get('error') or ''}".strip()
            )
            for m in ALIGNMENT_METRICS:
                result.metrics[f"{pair}/{m}"] = float("nan")
            return result
        al = self._alignment(ref, cand, ex_r, ex_c)
        ids, rows, runs, values = al.ids, al.rows, al.runs, al.values
        cls_r, cls_c = al.cls_r, al.cls_c
        per_ex = {m: np.nanmean(v, axis=0) if np.isfinite(v).any() else v[0] for m, v in values.items()}
        for m, v in values.items():
            run_means = np.array([np.nanmean(x) if np.isfinite(x).any() else np.nan for x in v])
            result.metrics[f"{pair}/{m}"] = float(np.nanmean(run_means))
            result.metrics[f"{pair}/{m}_var"] = float(np.var(run_means, ddof=1)) if len(runs) > 1 else 0.0
            finite = per_ex[m][np.isfinite(per_ex[m])]
            if finite.size:
                boot = paired_bootstrap(
                    lambda x: np.mean(x, axis=-1),
                    finite,
                    n_resamples=self.n_bootstrap,
                    confidence=self.confidence,
                    seed=self.bootstrap_seed,
                    vectorized=True,
                )
                result.metrics[f"{pair}/{m}_ci_low"], result.metrics[f"{pair}/{m}_ci_high"] = (
                    boot.low,
                    boot.high,
                )
        result.metrics[f"{pair}/n_examples"] = float(len(ids))
        result.metrics[f"{pair}/n_runs"] = float(len(runs))
        pr, pc = ref.probs.numpy()[rows], cand.probs.numpy()[rows]
        labels = ref.labels.numpy()[rows]
        result.per_example[f"{self.name}_{pair}"] = {
            "example_id": np.array(ids),
            "gold_label": labels,
            "reference_class": cls_r[rows],
            "candidate_class": cls_c[rows],
            "reference_confidence": pr.max(axis=1),
            "candidate_confidence": pc.max(axis=1),
            "reference_correct": pr.argmax(axis=1) == labels,
            "candidate_correct": pc.argmax(axis=1) == labels,
            **{m: per_ex[m] for m in ALIGNMENT_METRICS},
        }
        result.figures[f"jaccard_hist_{pair}"] = histogram_figure(
            per_ex["jaccard"],
            f"{self.method.upper()} top-{self.top_k} Jaccard, {ref.name} vs {cand.name}",
            f"Jaccard@{self.top_k} per example (mean over runs)",
        )
        self._heatmaps(result, pair, ref, cand, ex_r, ex_c, al, per_ex)
        return result

    def _heatmaps(
        self,
        result: CharacteristicResult,
        pair: str,
        ref: ModelOutputs,
        cand: ModelOutputs,
        ex_r: Mapping[str, Any],
        ex_c: Mapping[str, Any],
        al: _Alignment,
        per_ex: Mapping[str, np.ndarray],
    ) -> None:
        ids, pos_r, pos_c, rows, cls_r, cls_c, runs = (
            al.ids,
            al.pos_r,
            al.pos_c,
            al.rows,
            al.cls_r,
            al.cls_c,
            al.runs,
        )
        if self.n_figure_examples <= 0 and not self.figure_examples:
            return
        if self.figure_examples:
            chosen = [ids.index(i) for i in self.figure_examples if i in ids]
        else:
            jac = np.nan_to_num(per_ex["jaccard"], nan=2.0)
            chosen = list(np.argsort(jac, kind="stable")[: self.n_figure_examples])
        if not chosen:
            return
        seed = runs[0]
        panels, table = [], []
        names = ref.label_names
        for j in chosen:
            eid = ids[j]
            e = ex_r["examples"][pos_r[eid]]
            for out, ex, pos, cls in ((ref, ex_r, pos_r, cls_r), (cand, ex_c, pos_c, cls_c)):
                attr = np.asarray(ex["runs"][seed][pos[eid]])[cls[rows[j]]]
                title = (
                    f"id {eid} | {out.name} | explains '{names[cls[rows[j]]]}' | "
                    f"Jaccard {per_ex['jaccard'][j]:.2f}"
                )
                panels.append((title, e["words"], e["segments"], attr))
                table.append(
                    {
                        "example_id": eid,
                        "model": out.name,
                        "explained_class": names[cls[rows[j]]],
                        "jaccard": float(per_ex["jaccard"][j]),
                        "html": heatmap_html(e["words"], e["segments"], attr),
                    }
                )
        result.figures[f"heatmaps_{pair}"] = heatmap_figure(panels)
        result.tables[f"heatmaps_{pair}"] = table


def _mean_of_run_means(values: np.ndarray) -> np.ndarray:
    """The compare metric of resampled rows: mean over runs of each run's mean over its finite values.

    Args:
        values: ``(R, n, runs)`` per-example values (NaN where undefined).

    Returns:
        ``(R,)`` float64; a run with no finite value is left out, NaN when no run has one.
    """
    finite = np.isfinite(values)
    count = finite.sum(axis=1)  # (R, runs)
    total = np.where(finite, values, 0.0).sum(axis=1)
    run_means = total / np.maximum(count, 1)
    used = count > 0
    n_used = used.sum(axis=1)
    mean = np.where(used, run_means, 0.0).sum(axis=1) / np.maximum(n_used, 1)
    return np.where(n_used > 0, mean, np.nan)


def _counters(scorer: TextScorer | None) -> tuple[int, int, int]:
    """The scorer's (texts asked for, texts run, tokens) so far; zeros for gradient methods."""
    if scorer is None:
        return 0, 0, 0
    return int(scorer.n_texts), int(scorer.n_unique), int(scorer.n_tokens)
