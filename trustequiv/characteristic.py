"""The Characteristic interface: per-model measurement plus a pure reference-vs-candidate comparison."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from trustequiv.outputs import CharacteristicResult, ModelOutputs


def pair_name(reference: str, candidate: str) -> str:
    """Scope string for a pair's metrics, e.g. ``"bert_base_vs_distilbert"``."""
    return f"{reference}_vs_{candidate}"


@dataclass(frozen=True)
class PairStatistic:
    """One headline reference-vs-candidate statistic in a form the verdict can resample.

    The verdict (:mod:`trustequiv.verdict.verdict`) draws bootstrap indices over the examples shared by the
    candidate
    pair and the noise-floor pairs, and evaluates :attr:`statistic` on each pair's rows at the same indices,
    so the interval of (candidate - floor) keeps the pairing of examples.

    Attributes:
        name: the metric name as in results.json (``"error_jaccard"``, ``"abs_ece_uniform_diff"`` ...).
        alike: which direction means "more alike": ``"higher"`` (Jaccard, agreement) or ``"lower"``
            (|ΔECE|, flip rate).
        example_ids: ``(n,)`` int64 ids of the rows of :attr:`arrays`, in row order.
        arrays: per-example arrays, each with leading axis ``n`` (e.g. both models' correctness).
        statistic: vectorized: receives :attr:`arrays` each indexed with a ``(R, n)`` index array, shapes
            ``(R, n, ...)``, and returns ``(R,)`` float64. With ``R == 1`` and the identity index it gives
            the estimate reported in results.json.
        signed: optional signed version for two one-sided tests without a floor (``ΔECE`` for ``|ΔECE|``),
            same calling convention; None when the statistic has no sign.
        judged: whether the verdict decides on it. A statistic whose interval cannot hold its level
            (measured in ``benchmarks/verdict_operating.py``) is resampled and reported with
            ``"decision": null`` and :attr:`why_not_judged`, and takes no part in the worst-of.
        why_not_judged: the reason, shown in results.json and the report (required when not judged).
        min_replicas: with a noise floor of fewer replicas than this, the statistic is reported without a
            decision: its seed-to-seed spread dominates and one replica cannot measure it (calibration's
            signed differences: ``benchmarks/verdict_operating.py`` measured 9-24% ``equivalent`` at the
            margin with one replica, at most 1.5% with three).
    """

    name: str
    alike: Literal["higher", "lower"]
    example_ids: np.ndarray
    arrays: tuple[np.ndarray, ...]
    statistic: Callable[..., np.ndarray]
    signed: Callable[..., np.ndarray] | None = None
    judged: bool = True
    why_not_judged: str = ""
    min_replicas: int = 1

    def __post_init__(self) -> None:
        if not self.judged and not self.why_not_judged:
            raise ValueError(f"{self.name}: a statistic that is not judged must say why (why_not_judged)")

    def estimate(self) -> float:
        """The statistic on all rows (the identity resample)."""
        idx = np.arange(self.example_ids.shape[0])[None]
        return float(np.asarray(self.statistic(*(a[idx] for a in self.arrays))).reshape(-1)[0])


class Characteristic(ABC):
    """One trust characteristic.

    Subclasses implement :meth:`compare` (pure: tensors in, numbers out; no Lightning, W&B or network) and
    may override :meth:`per_model` (numbers about one model alone) and :meth:`collect` (per-model work that
    needs the model itself, e.g. attributions or attacks; the pipeline caches its return value and passes it
    back through ``ModelOutputs.collected[self.name]``).

    The pipeline calls :meth:`evaluate` with every model's outputs; the default runs ``per_model`` on each
    model and ``compare`` on every (reference, candidate) pair, then :meth:`summarize` over all models.

    A characteristic that sets :attr:`needs_ood` receives, in ``outputs.ood``, a mapping
    ``"<task>/<split>" -> ModelOutputs`` with the same model's outputs on each out-of-distribution set the
    task names (``task.ood`` in its config, or ``ood=[...]`` on the command line), computed through the cache.

    Each characteristic declares its headline metrics (:attr:`headline_model`, :attr:`headline_pair`): the
    report's first tables show them; the core names none.
    """

    #: registry name; the key under ``characteristic:`` in the config and the metric prefix.
    name: str = "characteristic"
    #: whether :meth:`collect` needs the model (the pipeline then loads it and caches the result).
    needs_model: bool = False
    #: whether :meth:`collect` needs gradients through the model (a torch model, not e.g. an ONNX file).
    needs_gradients: bool = False
    #: whether it needs per-example scores (logits); outputs that carry only correctness (a released error
    #: set) are then not given to it.
    needs_scores: bool = True
    #: whether the pipeline must attach out-of-distribution outputs (``outputs.ood``).
    needs_ood: bool = False
    #: whether the pipeline calls :meth:`replay` on every model after all models' :meth:`collect` (cross-model
    #: work that needs this model and the others' collected results, e.g. replaying adversarial texts found
    #: on another).
    needs_replay: bool = False
    #: the evaluation splits it runs on (``None``: all). Set from the config key ``splits`` by the pipeline,
    #: e.g. ``splits: ["${task.eval_split}"]`` keeps an expensive attack off an extra split such as AdvGLUE.
    splits: Sequence[str] | None = None
    #: per-model metric names shown in the report's headline table (e.g. ``("accuracy", "ece_uniform")``).
    headline_model: tuple[str, ...] = ()
    #: reference-vs-candidate metric names shown in the headline table (e.g. ``("error_jaccard",)``).
    headline_pair: tuple[str, ...] = ()

    def runs_on(self, split: str) -> bool:
        """Whether this characteristic is evaluated on ``split``."""
        return self.splits is None or split in self.splits

    def collect(
        self, model: Any, outputs: ModelOutputs, data: Any, task: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Per-model work that needs the model itself; the result must be JSON-serialisable (it is cached).

        Args:
            model: a :class:`trustequiv.models.handle.ModelHandle`: ``model.scorer(task)`` scores texts (every
                source that has a model), ``model.loaded`` is the torch model for gradient methods (None
                where the source has none, e.g. ONNX: raise a ValueError saying so).
            outputs: the model's cached outputs on this split.
            data: the split as a ``datasets.Dataset`` with ``id``, ``text_a``, [``text_b``], ``label``, in the
                same example order as ``outputs``.
            task: the task config (``name``, ``label_names``, ``pair``, ``max_length`` ...).
        """
        return {}

    def replay(
        self,
        model: Any,
        outputs: ModelOutputs,
        others: Mapping[str, ModelOutputs],
        data: Any,
        task: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """Second per-model pass (only if :attr:`needs_replay`), after every model's :meth:`collect`.

        ``others`` maps each other model's name to its outputs with their ``collect`` results (no replay
        results). The JSON-serialisable return is cached (key: this model, the config, the others' results)
        and attached as ``outputs.collected[self.name]["replay"]``; arguments otherwise as in :meth:`collect`.
        """
        return {}

    def cache_config(self) -> Mapping[str, Any]:
        """The settings that change :meth:`collect`'s result (part of its cache key)."""
        return {}

    def per_model(self, outputs: ModelOutputs) -> CharacteristicResult:
        """Numbers about one model alone, scoped ``"<model>/<metric>"``. Default: none."""
        return CharacteristicResult()

    @abstractmethod
    def compare(self, reference: ModelOutputs, candidate: ModelOutputs) -> CharacteristicResult:
        """Compare two models on their shared examples; metrics scoped ``"<ref>_vs_<cand>/<metric>"``."""

    def summarize(self, outputs: Sequence[ModelOutputs]) -> CharacteristicResult:
        """Figures/tables over all models at once (e.g. a pairwise matrix). Default: none."""
        return CharacteristicResult()

    def pair_statistics(self, reference: ModelOutputs, candidate: ModelOutputs) -> list[PairStatistic]:
        """The headline pair statistics the verdict judges (see :class:`PairStatistic`), computed on the two
        models' shared examples; their estimates equal the ``compare`` metrics of the same name. Default:
        none (the characteristic then takes no part in the verdict, with a note)."""
        return []

    def evaluate(self, reference: ModelOutputs, candidates: Sequence[ModelOutputs]) -> CharacteristicResult:
        """Run per_model on every model, compare on every reference-candidate pair, then summarize."""
        result = CharacteristicResult()
        models = [reference, *candidates]
        for out in models:
            result.update(self.per_model(out))
        for cand in candidates:
            result.update(self.compare(reference, cand))
        result.update(self.summarize(models))
        return result


def all_pairs(outputs: Sequence[ModelOutputs]) -> list[tuple[ModelOutputs, ModelOutputs]]:
    """Every unordered pair of models, in the given order (paper B compares all pairs)."""
    return list(itertools.combinations(outputs, 2))


def headline_columns(characteristics: Sequence[Characteristic]) -> tuple[list[str], list[str]]:
    """The per-model and pair metric names the selected characteristics declare, in selection order."""
    model = list(dict.fromkeys(m for c in characteristics for m in c.headline_model))
    pair = list(dict.fromkeys(m for c in characteristics for m in c.headline_pair))
    return model, pair
