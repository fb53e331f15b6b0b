"""Interpretability alignment: do the two models rest their predictions on the same words?

Per model (:meth:`AttributionCharacteristic.collect`, cached, once per model and split): word-level
attributions of a deterministic sample of ``n_examples`` examples, for EVERY class (LIME and SHAP give all
classes from the same perturbations; IG runs once per class), for each run seed. Storing every class is what
lets ``explained_class="reference_prediction"`` work although ``collect`` sees one model at a time, and keeps
the explained-class mode out of the cache key.

Per pair (:meth:`compare`): paper A's top-K unique-word Jaccard (Rai, Pal, Awekar, arXiv 2508.13533) and
Krishna et al. (2022)'s feature / rank / sign / signed-rank agreement, Spearman rank correlation and pairwise
rank agreement, per example and per seed; reported as the mean over runs with the sample variance over runs
(ddof=1, paper A's 3 seeds) and a percentile bootstrap interval over examples of the seed-averaged values.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from plugins.characteristics.attribution import explainers
from plugins.characteristics.attribution.figures import heatmap_figure, heatmap_html, histogram_figure
from plugins.characteristics.attribution.perturb import (
    DEFAULT_WORD_PATTERN,
    BatchedPredictor,
    WordFeatures,
    word_keys,
)
from trustequiv.cache import OutputCache, content_key
from trustequiv.characteristic import Characteristic, pair_name
from trustequiv.functional.attribution import ALIGNMENT_METRICS, alignment_scores
from trustequiv.functional.bootstrap import paired_bootstrap
from trustequiv.outputs import CharacteristicResult, ModelOutputs, align

log = logging.getLogger(__name__)

ExplainedClass = Literal["gold", "prediction", "reference_prediction"]
#: paper A's LIME budget: 1000 samples for NLI, 100 for paraphrase identification.
PAPER_NUM_SAMPLES = {"mnli": 1000, "snli": 1000, "rte": 1000, "mrpc": 100, "qqp": 100, "paws_qqp": 100}


def select_examples(example_ids: Sequence[int], n: int | None, salt: str = "attribution") -> list[int]:
    """Positions of ``n`` examples chosen by a fixed hash of their ids (same for every model and run, no
    dependence on file order); all positions, in hash order, when ``n`` is None or too large."""
    keyed = sorted(
        range(len(example_ids)),
        key=lambda i: hashlib.sha256(f"{salt}:{int(example_ids[i])}".encode()).digest(),
    )
    return keyed if not n else keyed[: int(n)]


def _devices(model: Any, devices: Sequence[str] | None) -> list[str]:
    if devices:
        return list(devices)
    if getattr(model, "cpu_only", False) or not torch.cuda.is_available():
        return ["cpu"]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


class AttributionCharacteristic(Characteristic):
    """Base of the attribution characteristics (subclasses implement :meth:`_attribute`).

    Args:
        n_examples: examples explained per split, chosen by a hash of their ids (:func:`select_examples`);
            null: all.
        seeds: run seeds (paper A: 42, 43, 44); each example's sampler is seeded from (seed, example id).
        explained_class: ``gold`` (paper A's default; unlabelled rows use the reference's prediction),
            ``prediction`` (each model explains its own predicted class) or ``reference_prediction``.
        top_k: K of the top-K metrics (paper A: 10).
        rank_by: ``abs`` (paper A NLI code, Krishna et al.) or ``signed`` (paper A PI code).
        lowercase: compare word strings case-insensitively in the unique-word Jaccard.
        word_pattern: regex of a word feature (paper A's PI SHAP tokenizer ``\\w+|[^\\w\\s]`` by default).
        mask_token: null deletes a hidden word (LIME's default); a string replaces it (e.g. ``"[MASK]"``).
        batch_tokens, max_batch: predictor batch budget (padded tokens, texts); batch_tokens None = 4096
            on CPU, 32768 on GPUs (see BatchedPredictor).
        devices: torch devices; null: every GPU if there is one (and the model may use it), else the CPU.
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

    def __init__(
        self,
        n_examples: int | None = 200,
        seeds: Sequence[int] = (42, 43, 44),
        explained_class: ExplainedClass = "gold",
        top_k: int = 10,
        rank_by: str = "abs",
        lowercase: bool = True,
        word_pattern: str = DEFAULT_WORD_PATTERN,
        mask_token: str | None = None,
        batch_tokens: int | None = None,
        max_batch: int = 1024,
        devices: Sequence[str] | None = None,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        bootstrap_seed: int = 42,
        n_figure_examples: int = 3,
        figure_examples: Sequence[int] | None = None,
        runs_dir: str | None = None,
    ) -> None:
        if explained_class not in ("gold", "prediction", "reference_prediction"):
            raise ValueError(
                f"explained_class must be gold, prediction or reference_prediction, got {explained_class!r}"
            )
        if rank_by not in ("abs", "signed"):
            raise ValueError(f"rank_by must be 'abs' or 'signed', got {rank_by!r}")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.n_examples = None if n_examples is None else int(n_examples)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must name at least one run seed")
        self.explained_class = explained_class
        self.top_k, self.rank_by, self.lowercase = int(top_k), rank_by, bool(lowercase)
        self.word_pattern, self.mask_token = str(word_pattern), mask_token
        self.batch_tokens = None if batch_tokens is None else int(batch_tokens)
        self.max_batch = int(max_batch)
        self.devices = list(devices) if devices else None
        self.n_bootstrap, self.confidence, self.bootstrap_seed = (
            int(n_bootstrap),
            float(confidence),
            int(bootstrap_seed),
        )
        self.n_figure_examples = int(n_figure_examples)
        self.figure_examples = [int(i) for i in figure_examples] if figure_examples else None
        self.runs_dir = Path(runs_dir) if runs_dir else None

    # ------------------------------------------------------------------ per model (cached)
    def method_config(self) -> dict[str, Any]:
        """The method's own settings that change attributions (subclasses extend)."""
        return {}

    def cache_config(self) -> Mapping[str, Any]:
        return {
            "method": self.method,
            "n_examples": self.n_examples,
            "seeds": [0] if self.deterministic else self.seeds,
            "word_pattern": self.word_pattern,
            "mask_token": self.mask_token,
            **self.method_config(),
        }

    def _attribute(
        self,
        feats: list[WordFeatures],
        loaded: Any,
        task: Mapping[str, Any],
        seed: int,
        n_classes: int,
        predictor: BatchedPredictor,
    ) -> list[np.ndarray]:
        raise NotImplementedError

    def collect(
        self, model: Any, outputs: ModelOutputs, data: Any, task: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Word attributions for every class of the selected examples, per run seed.

        Returns:
            ``{"method", "examples": [{"id", "words", "segments"}], "runs": {seed: [(C, F) lists]},
            "seconds", "perturbed_texts", "unique_texts", "perturbed_tokens"}`` (JSON-serialisable).
        """
        ids = [int(i) for i in data["id"]]
        pos = select_examples(ids, self.n_examples)
        pair = bool(task.get("pair"))
        text_a = data["text_a"]
        text_b = data["text_b"] if pair else None
        feats = [
            WordFeatures.from_texts(ids[i], text_a[i], text_b[i] if pair else None, self.word_pattern)
            for i in pos
        ]
        n_classes = len(task["label_names"])
        devices = _devices(model, self.devices)
        net = model.model.to(devices[0]).eval()
        predictor = BatchedPredictor(
            net,
            model.tokenizer,
            model.label_permutation,
            max_length=int(task.get("max_length", 128)),
            batch_tokens=self.batch_tokens,
            max_batch=self.max_batch,
            devices=devices,
        )
        # each finished seed in an OutputCache extras file (atomic; a corrupt one is moved aside and redone)
        store = None if self.runs_dir is None else OutputCache(self.runs_dir)
        run_key = content_key(
            config=dict(self.cache_config()),
            checkpoint=getattr(model, "fingerprint", None),
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
                before = (predictor.n_texts, predictor.n_unique, predictor.n_tokens)
                started = time.perf_counter()
                try:
                    attrs = self._attribute(feats, model, task, seed, n_classes, predictor)
                except RuntimeError as err:  # e.g. IG through int8 dynamic quantization (no autograd)
                    error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                    log.warning("%s on %s failed: %s", self.name, getattr(model, "directory", "?"), error)
                    break
                done = {
                    "seed": seed,
                    "attributions": [np.round(a, 8).tolist() for a in attrs],
                    "seconds": time.perf_counter() - started,
                    "perturbed_texts": predictor.n_texts - before[0],
                    "unique_texts": predictor.n_unique - before[1],
                    "perturbed_tokens": predictor.n_tokens - before[2],
                }
                if store is not None:
                    store.save_extras(seed_key, done)
            runs[str(seed)] = done["attributions"]
            for key in totals:
                totals[key] += done[key]
            log.info(
                "%s: seed %s (%d of %d), %d examples, %.1f s%s, %d perturbed texts (%d unique, %d tokens)",
                self.name,
                seed,
                k + 1,
                len(seeds),
                len(feats),
                done["seconds"],
                " (kept from an earlier run)" if kept else "",
                done["perturbed_texts"],
                done["unique_texts"],
                done["perturbed_tokens"],
            )
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

    # ------------------------------------------------------------------ reports
    def _extras(self, out: ModelOutputs) -> Mapping[str, Any]:
        ex = out.extras.get(self.name)
        if not ex:
            raise ValueError(
                f"{out.name}: no '{self.name}' attributions in outputs.extras; the pipeline fills "
                "them through collect() (needs_model=True)"
            )
        return ex

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """Wall time and predictor counters of the model's ``collect``."""
        ex = outputs.extras.get(self.name)
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

    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """Alignment metrics on the examples both models explained (see the module docstring).

        Raises:
            ValueError: an output lacks the collected attributions, or the two models explained no common
                example with a common run.
        """
        ref, cand = align(reference, candidate)
        pair = pair_name(ref.name, cand.name)
        ex_r, ex_c = self._extras(ref), self._extras(cand)
        result = CharacteristicResult(notes=self.notes())
        if ex_r.get("error") or ex_c.get("error"):
            result.notes.append(
                f"{pair}: {self.method} failed: {ex_r.get('error') or ''} {ex_c.get('error') or ''}".strip()
            )
            for m in ALIGNMENT_METRICS:
                result.metrics[f"{pair}/{m}"] = float("nan")
            return result
        runs = [s for s in ex_r["runs"] if s in ex_c["runs"]]
        pos_r = {int(e["id"]): k for k, e in enumerate(ex_r["examples"])}
        pos_c = {int(e["id"]): k for k, e in enumerate(ex_c["examples"])}
        row = {int(i): k for k, i in enumerate(ref.example_ids.tolist())}
        ids = [i for i in pos_r if i in pos_c and i in row]
        if not runs or not ids:
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
        self._heatmaps(
            result, pair, ref, cand, ex_r, ex_c, ids, pos_r, pos_c, rows, cls_r, cls_c, runs, per_ex
        )
        return result

    def _heatmaps(
        self, result, pair, ref, cand, ex_r, ex_c, ids, pos_r, pos_c, rows, cls_r, cls_c, runs, per_ex
    ):
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


class LimeAttribution(AttributionCharacteristic):
    """LIME (``lime.lime_text.LimeTextExplainer``) word attributions (paper A's protocol by default).

    Args:
        num_samples: perturbations per example; null: paper A's per-task budget (:data:`PAPER_NUM_SAMPLES`:
            1000 for NLI, 100 for paraphrase identification; 1000 otherwise).
        num_features: features LIME's linear model keeps (paper A: 20); the others get 0.
        kernel_width: LIME's kernel width (its default 25).
        **kwargs: :class:`AttributionCharacteristic`.
    """

    name = "attribution_lime"
    method = "lime"

    def __init__(
        self,
        num_samples: int | None = None,
        num_features: int = 20,
        kernel_width: float = 25.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.num_features, self.kernel_width = int(num_features), float(kernel_width)

    def method_config(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "paper_num_samples": PAPER_NUM_SAMPLES,
            "num_features": self.num_features,
            "kernel_width": self.kernel_width,
        }

    def samples_for(self, task: Mapping[str, Any]) -> int:
        return self.num_samples or PAPER_NUM_SAMPLES.get(str(task.get("name")), 1000)

    def _attribute(self, feats, loaded, task, seed, n_classes, predictor):
        return explainers.lime_attributions(
            feats,
            predictor,
            seed=seed,
            n_classes=n_classes,
            num_samples=self.samples_for(task),
            num_features=self.num_features,
            mask_token=self.mask_token,
            kernel_width=self.kernel_width,
        )


class ShapAttribution(AttributionCharacteristic):
    """SHAP permutation values (``shap.PermutationExplainer``) over word features.

    Args:
        max_evals: model evaluations per example; null: paper A's ``max(100, 2 n + 1)``.
        **kwargs: :class:`AttributionCharacteristic`.
    """

    name = "attribution_shap"
    method = "shap"

    def __init__(self, max_evals: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_evals = None if max_evals is None else int(max_evals)

    def method_config(self) -> dict[str, Any]:
        return {"max_evals": self.max_evals, "algorithm": "permutation"}

    def _attribute(self, feats, loaded, task, seed, n_classes, predictor):
        return explainers.shap_attributions(
            feats,
            predictor,
            seed=seed,
            n_classes=n_classes,
            max_evals=self.max_evals,
            mask_token=self.mask_token,
        )


class IgAttribution(AttributionCharacteristic):
    """Integrated gradients (``captum.attr.LayerIntegratedGradients`` on the input embeddings), deterministic:
    one run whatever ``seeds`` says.

    Args:
        n_steps: Riemann steps (Captum's default 50); batch_size: examples per attribution call;
        internal_batch_size: Captum's internal batch (bounds memory).
        **kwargs: :class:`AttributionCharacteristic`.
    """

    name = "attribution_ig"
    method = "ig"
    deterministic = True

    def __init__(self, n_steps: int = 50, batch_size: int = 8, internal_batch_size: int = 256, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_steps, self.batch_size, self.internal_batch_size = (
            int(n_steps),
            int(batch_size),
            int(internal_batch_size),
        )

    def method_config(self) -> dict[str, Any]:
        # int8 dynamic quantization: through the dequantized int8 weights (explainers.differentiable_twin)
        return {"n_steps": self.n_steps, "baseline": "pad", "int8": "dequantized_weights"}

    def notes(self) -> list[str]:
        return [
            *super().notes(),
            "IG of an int8 (dynamically quantized) model runs through an fp32 copy with its int8 weights "
            "dequantized: activation quantization has no gradient and is left out of IG (LIME and SHAP "
            "see the int8 model itself)",
        ]

    def _attribute(self, feats, loaded, task, seed, n_classes, predictor):
        net, twin = explainers.differentiable_twin(predictor.models[0])
        if twin:
            log.info("%s: int8 model, attributing through its dequantized weights", self.name)
        with torch.enable_grad():
            return explainers.ig_attributions(
                feats,
                net,
                loaded.tokenizer,
                loaded.label_permutation,
                n_classes=n_classes,
                max_length=int(task.get("max_length", 128)),
                n_steps=self.n_steps,
                batch_size=self.batch_size,
                internal_batch_size=self.internal_batch_size,
            )
