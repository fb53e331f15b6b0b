"""Data carried between the pipeline stages: one model's cached outputs and one characteristic's result."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ModelOutputs:
    """One model's outputs on one task split (N examples, C classes, D embedding dims).

    Attributes:
        name: model name as shown in results (e.g. ``"minilm+layer_drop"``).
        example_ids: ``(N,)`` int64, stable ids that align two models' rows.
        logits: ``(N, C)`` float32, columns in the task's canonical label order (``label_names``).
        labels: ``(N,)`` int64 gold labels in the same order, ``-1`` where unlabelled.
        label_names: the ``C`` canonical class names.
        embeddings: ``(N, D)`` float32 pooled representation, or ``None``.
        correct: ``(N,)`` bool, whether each example is answered correctly when that is not
            ``argmax(logits) == label`` (extractive QA: exact match), or ``None`` (classification).
        columns: per-row values, each a sequence of length ``N`` in row order (extractive QA: the answer
            texts, exact match, F1); :meth:`select` and :func:`align` reorder them with the rows.
        info: facts about the model on this split that are not per row (e.g. QA's no-answer threshold).
        ood: ``"<task>/<split>" -> ModelOutputs`` of the same model on each out-of-distribution set
            (filled by the pipeline for characteristics with ``needs_ood``).
        collected: characteristic name -> what its :meth:`~trustequiv.characteristic.Characteristic.collect`
            returned for this model (attributions, attack outcomes; ``["replay"]`` for the second pass).

    ``logits`` may be ``None`` for outputs that carry only correctness (e.g. a released error set): then
    :attr:`probs` and :attr:`predictions` raise, and characteristics that need scores say so.
    """

    name: str
    example_ids: Tensor
    logits: Tensor | None
    labels: Tensor
    label_names: tuple[str, ...]
    embeddings: Tensor | None = None
    correct: Tensor | None = None
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    ood: Mapping[str, ModelOutputs] = field(default_factory=dict)
    collected: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.example_ids.shape[0]
        if self.logits is None and self.correct is None:
            raise ValueError(f"{self.name}: outputs need logits, or at least per-example correctness")
        if self.logits is not None and (self.logits.ndim != 2 or self.logits.shape[0] != n):
            raise ValueError(f"{self.name}: logits must be (N, C) with N={n}, got {tuple(self.logits.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"{self.name}: labels must be ({n},), got {tuple(self.labels.shape)}")
        if self.logits is not None and self.logits.shape[1] != len(self.label_names):
            raise ValueError(
                f"{self.name}: {self.logits.shape[1]} logit columns but {len(self.label_names)} label names"
            )
        for key, values in self.columns.items():
            if len(values) != n:
                raise ValueError(f"{self.name}: column {key!r} has {len(values)} values, expected {n}")
        if self.embeddings is not None and self.embeddings.shape[0] != n:
            raise ValueError(f"{self.name}: embeddings have {self.embeddings.shape[0]} rows, expected {n}")
        if self.correct is not None and self.correct.shape != (n,):
            raise ValueError(f"{self.name}: correct must be ({n},), got {tuple(self.correct.shape)}")
        if self.logits is not None and not torch.isfinite(self.logits).all():
            bad = int((~torch.isfinite(self.logits)).any(dim=1).sum())
            raise ValueError(
                f"{self.name}: {bad} of {n} examples have NaN/inf logits; the checkpoint is broken or "
                "ran in too low a precision (try trainer.precision=32-true)"
            )

    @property
    def has_scores(self) -> bool:
        """Whether the outputs carry logits (a released error set carries only correctness)."""
        return self.logits is not None

    def _scores(self) -> Tensor:
        if self.logits is None:
            raise ValueError(
                f"{self.name}: these outputs carry no logits (only which examples are wrong); "
                "give per-example probabilities to use this characteristic"
            )
        return self.logits

    @property
    def probs(self) -> Tensor:
        """``(N, C)`` softmax probabilities in float64 (metrics are computed in double precision).

        Raises:
            ValueError: the outputs carry no logits.
        """
        return torch.softmax(self._scores().double(), dim=-1)

    @property
    def predictions(self) -> Tensor:
        """``(N,)`` int64 argmax class. Raises ``ValueError`` when the outputs carry no logits."""
        return self._scores().argmax(dim=-1)

    def __len__(self) -> int:
        return int(self.example_ids.shape[0])

    def select(self, example_ids: Tensor) -> ModelOutputs:
        """Rows for ``example_ids`` in that order. Raises ``KeyError`` if any id is missing."""
        pos = {int(i): k for k, i in enumerate(self.example_ids.tolist())}
        try:
            idx = torch.tensor([pos[int(i)] for i in example_ids.tolist()], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"{self.name}: example id {err.args[0]} not in these outputs") from None
        rows = idx.tolist()
        return dataclasses.replace(
            self,
            example_ids=self.example_ids[idx],
            logits=None if self.logits is None else self.logits[idx],
            labels=self.labels[idx],
            embeddings=None if self.embeddings is None else self.embeddings[idx],
            correct=None if self.correct is None else self.correct[idx],
            columns={k: [v[r] for r in rows] for k, v in self.columns.items()},
        )

    def correct_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(correct (N,) bool, usable (N,) bool)`` over all rows: the one definition of "right" behind error
        sets, flips and the report's flipped examples.

        With scores: usable = labelled rows (label != -1); correct = ``correct`` when the task sets it
        (extractive QA: exact match), else ``argmax(probs) == label``. Without scores (a released error set):
        ``correct`` on every row, gold label or not (whoever made the set judged the answers).

        Raises:
            ValueError: outputs with scores and no labelled example.
        """
        if not self.has_scores:
            correct = self.correct.detach().cpu().numpy().astype(bool)
            return correct, np.ones(correct.shape[0], dtype=bool)
        labelled(self)  # raises on a split without any gold label
        labels = self.labels.detach().cpu().numpy()
        if self.correct is None:
            correct = self.probs.detach().cpu().numpy().argmax(axis=1) == labels
        else:
            correct = self.correct.detach().cpu().numpy().astype(bool)
        return correct, labels >= 0

    def with_collected(self, name: str, value: Any) -> ModelOutputs:
        """A copy with ``collected[name] = value``."""
        return dataclasses.replace(self, collected={**self.collected, name: value})


def align(reference: ModelOutputs, candidate: ModelOutputs) -> tuple[ModelOutputs, ModelOutputs]:
    """Restrict two models' outputs to their common examples, in the reference's order.

    Raises:
        ValueError: the label names differ (the two outputs come from different tasks or label orders),
            the gold labels disagree on a shared example, or no example is shared.
    """
    if tuple(reference.label_names) != tuple(candidate.label_names):
        raise ValueError(
            f"label sets do not match: {reference.name} has {list(reference.label_names)}, "
            f"{candidate.name} has {list(candidate.label_names)}; evaluate both on the same task"
        )
    cand_ids = set(candidate.example_ids.tolist())
    keep = torch.tensor([int(i) in cand_ids for i in reference.example_ids.tolist()], dtype=torch.bool)
    if not bool(keep.any()):
        raise ValueError(f"{reference.name} and {candidate.name} share no example ids")
    ids = reference.example_ids[keep]
    ref, cand = reference.select(ids), candidate.select(ids)
    if not torch.equal(ref.labels, cand.labels):
        raise ValueError(f"gold labels of {reference.name} and {candidate.name} disagree on shared examples")
    return ref, cand


@dataclass
class CharacteristicResult:
    """What one characteristic reports.

    Attributes:
        metrics: flat ``"<scope>/<metric>": number`` entries; scope is a model name or ``"<ref>_vs_<cand>"``.
            The pipeline prefixes the characteristic's name.
        tables: name -> list of row dicts (rendered in the report, logged as W&B tables).
        figures: name -> matplotlib Figure (saved as PNG in the run dir, shown in the report and W&B).
        per_example: name -> ``{column: 1-D array}`` aligned per-example values for export.
        notes: sentences for the report (protocol choices, departures from a paper).
    """

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    per_example: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def update(self, other: CharacteristicResult) -> CharacteristicResult:
        """Merge ``other`` into this result (later keys win) and return self."""
        self.metrics.update(other.metrics)
        self.tables.update(other.tables)
        self.figures.update(other.figures)
        self.per_example.update(other.per_example)
        self.notes.extend(n for n in other.notes if n not in self.notes)
        return self


def labelled(outputs: ModelOutputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs (n, C) float64, labels (n,) int64, example_ids (n,))`` of the rows with a gold label (!= -1).

    Raises:
        ValueError: no row is labelled.
    """
    labels = outputs.labels.detach().cpu().numpy()
    keep = labels >= 0
    if not keep.any():
        raise ValueError(
            f"{outputs.name}: none of the {len(outputs)} examples has a gold label (all -1); "
            "calibration and error metrics need a labelled split"
        )
    probs = outputs.probs.detach().cpu().numpy()
    return probs[keep], labels[keep].astype(np.int64), outputs.example_ids.detach().cpu().numpy()[keep]


def paired_correct(a: ModelOutputs, b: ModelOutputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(correct_a (n,), correct_b (n,), example_ids (n,))`` of two aligned outputs on the rows that count
    for both (:meth:`ModelOutputs.correct_rows`); a flip is a row where the two differ.

    Raises:
        ValueError: the two share no usable row, or one has scores and no labelled example.
    """
    (ca, ua), (cb, ub) = a.correct_rows(), b.correct_rows()
    usable = ua & ub
    if not usable.any():
        raise ValueError(f"{a.name} and {b.name} share no labelled example")
    return ca[usable], cb[usable], a.example_ids.detach().cpu().numpy()[usable]


def aligned_rows(data, outputs: ModelOutputs):
    """The rows of ``data`` in the example order of ``outputs``."""
    order = {int(i): k for k, i in enumerate(data["id"])}
    return data.select([order[int(i)] for i in outputs.example_ids.tolist()])
