"""Label names matched by name, never by position.

Checkpoints order the same classes differently (MNLI models on the hub come as
entailment/neutral/contradiction, contradiction/entailment/neutral, or with generic ``LABEL_0..2``), and
dataset files code labels as strings or 0/1. Every logit column and every gold label is therefore mapped onto
the task's *canonical* label order (the ``label_names`` of ``conf/task/<task>.yaml``) by comparing names after
:func:`normalize_label` and a small alias table, and a mismatch is an error rather than a silent misalignment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from trustequiv.user_errors import LabelMismatchError

__all__ = [
    "DEFAULT_ALIASES",
    "best_label_permutation",
    "id2label_names",
    "label_order_warning",
    "label_permutation",
    "normalize_label",
    "resolve_label",
]

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_GENERIC = re.compile(r"(label)?\d+")

#: Default aliases, keys and values in :func:`normalize_label` form: ``alias -> canonical``. Both the source
#: and the canonical names pass through this table, so either side may use either spelling. Kept deliberately
#: small: only spellings of the *same* class seen in public checkpoints and datasets of the supported tasks.
#:
#: ============================  ==========================================================
#: alias                          used by
#: ============================  ==========================================================
#: paraphrase / notparaphrase     MRPC readme wording, some MRPC checkpoints
#: isduplicate / notisduplicate   QQP column ``is_duplicate`` used as a label name
#: neg / pos                      IMDB ClassLabel (``stanfordnlp/imdb``)
#: contradictory / entails        NLI checkpoints with verb/adjective names
#: nonentailment                  RTE/WNLI-style ``non_entailment`` (HANS)
#: ============================  ==========================================================
DEFAULT_ALIASES: dict[str, str] = {
    "paraphrase": "equivalent",
    "notparaphrase": "notequivalent",
    "isduplicate": "duplicate",
    "notisduplicate": "notduplicate",
    "neg": "negative",
    "pos": "positive",
    "contradictory": "contradiction",
    "entails": "entailment",
    "nonentailment": "notentailment",
}


def normalize_label(name: str) -> str:
    """Return the matching key of a label name: lower-cased, stripped, non-alphanumerics removed.

    ``"Not_Entailment"``, ``"not entailment"`` and ``"NOT-ENTAILMENT"`` all give ``"notentailment"``.

    Raises:
        TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"label name must be a str, got {type(name).__name__}: {name!r}")
    return _NON_ALNUM.sub("", name.strip().lower())


def _alias_table(aliases: Mapping[str, str] | None) -> dict[str, str]:
    table = dict(DEFAULT_ALIASES)
    for alias, target in (aliases or {}).items():
        table[normalize_label(alias)] = normalize_label(target)
    return table


def resolve_label(name: str, aliases: Mapping[str, str] | None = None) -> str:
    """Matching key of ``name`` after normalisation and the alias table (defaults plus ``aliases``)."""
    key = normalize_label(name)
    return _alias_table(aliases).get(key, key)


def _is_generic(name: str) -> bool:
    return _GENERIC.fullmatch(normalize_label(name)) is not None


def _duplicates(names: Sequence[str], keys: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    dups = []
    for name, key in zip(names, keys, strict=True):
        if key in seen:
            dups.append(f"{seen[key]!r} and {name!r}")
        else:
            seen[key] = name
    return dups


def label_permutation(
    source_names: Sequence[str],
    canonical_names: Sequence[str],
    aliases: Mapping[str, str] | None = None,
) -> list[int]:
    """Permutation ``perm`` such that ``canonical_logits = source_logits[:, perm]``.

    ``perm[j]`` is the position in ``source_names`` of the class named ``canonical_names[j]``; names are
    compared with :func:`normalize_label` and the alias table (:data:`DEFAULT_ALIASES` updated by ``aliases``,
    an ``alias -> canonical`` mapping in any spelling). To map gold labels instead of logits, invert it:
    ``canonical_index[perm[j]] = j``.

    Args:
        source_names: class names in the source's order (a checkpoint's ``id2label``, a dataset's ClassLabel).
        canonical_names: the task's canonical order (``cfg.task.label_names``).
        aliases: extra aliases.

    Returns:
        ``len(canonical_names)`` distinct ints in ``range(len(source_names))``.

    Raises:
        LabelMismatchError: a generic name such as ``LABEL_0`` or ``"1"`` (the source carries no label names),
            a duplicate name after normalisation, or different sets of names. The message names both lists
            and the fix.
    """
    source_names = list(source_names)
    canonical_names = list(canonical_names)
    generic = [n for n in source_names if _is_generic(n)]
    if generic:
        raise LabelMismatchError(
            f"the checkpoint carries no label names: got {source_names} (generic names like {generic[0]!r}), "
            f"expected names matching the task's {canonical_names}. Set `model.label_names=[...]` in its "
            f"config to declare its order, e.g. model.label_names=[{','.join(canonical_names)}] if its "
            f"class 0 is {canonical_names[0] if canonical_names else '...'!r}."
        )
    generic = [n for n in canonical_names if _is_generic(n)]
    if generic:
        raise LabelMismatchError(
            f"canonical label names {canonical_names} contain generic names like {generic[0]!r}; "
            f"give the task's real class names in `task.label_names`."
        )
    table = _alias_table(aliases)
    src_keys = [table.get(k, k) for k in map(normalize_label, source_names)]
    can_keys = [table.get(k, k) for k in map(normalize_label, canonical_names)]
    for which, names, keys in (("source", source_names, src_keys), ("canonical", canonical_names, can_keys)):
        dups = _duplicates(names, keys)
        if dups:
            raise LabelMismatchError(
                f"duplicate {which} label names {dups} in {names} (after normalisation and aliases); "
                f"every class needs a distinct name. Source {source_names}, canonical {canonical_names}."
            )
    if set(src_keys) != set(can_keys):
        missing = [n for n, k in zip(canonical_names, can_keys, strict=True) if k not in set(src_keys)]
        extra = [n for n, k in zip(source_names, src_keys, strict=True) if k not in set(can_keys)]
        raise LabelMismatchError(
            f"label names do not match: source {source_names} vs canonical {canonical_names} "
            f"(canonical without a source match: {missing}; source without a canonical match: {extra}). "
            f"Fix: set `model.label_names=[...]` to the checkpoint's class names in its order, or pass "
            f"aliases mapping a source name to a canonical one (e.g. {{{(extra or ['x'])[0]!r}: "
            f"{(missing or ['y'])[0]!r}}})."
        )
    position = {k: i for i, k in enumerate(src_keys)}
    return [position[k] for k in can_keys]


def id2label_names(id2label: Mapping[int | str, str]) -> list[str]:
    """Label names in index order from a Hugging Face ``config.id2label`` (keys may be strings like ``"0"``).

    Raises:
        ValueError: the keys are not the integers ``0..n-1``.
    """
    try:
        items = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"id2label keys must be integers or integer strings, got {list(id2label)}") from err
    if sorted(items) != list(range(len(items))):
        raise ValueError(f"id2label keys must be 0..{len(items) - 1}, got {sorted(items)}")
    return [items[i] for i in range(len(items))]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def best_label_permutation(
    logits_or_predictions: Any, labels: Any, n_classes: int
) -> tuple[list[int], float, float]:
    """The column order of a classifier's outputs that best agrees with the gold labels.

    A checkpoint whose class order was declared wrongly (a generic ``LABEL_0..n`` head read in the task's
    order) still separates the classes, so its accuracy under the right permutation is high while its accuracy
    as given is near or below chance. The permutation maximising the diagonal of the confusion matrix is found
    with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``); ties keep the order as given.

    Args:
        logits_or_predictions: ``(N, C)`` scores (numpy or torch; the argmax is taken) or ``(N,)`` predicted
            class ids in ``range(n_classes)``.
        labels: ``(N,)`` gold class ids; ids ``< 0`` (unlabelled) are ignored.
        n_classes: ``C``.

    Returns:
        ``(perm, accuracy_best, accuracy_as_is)``: ``perm[j]`` is the column (predicted id) that is really
        class ``j``, so ``logits[:, perm]`` scores ``accuracy_best``; accuracies are fractions of the labelled
        examples.

    Raises:
        ValueError: shapes do not match, no example is labelled, or an id lies outside ``range(n_classes)``.
    """

    scores = _as_numpy(logits_or_predictions)
    gold = _as_numpy(labels).astype(np.int64).reshape(-1)
    if scores.ndim == 2:
        if scores.shape[1] != n_classes:
            raise ValueError(f"logits have {scores.shape[1]} columns but n_classes={n_classes}")
        pred = scores.argmax(axis=1)
    elif scores.ndim == 1:
        pred = scores.astype(np.int64)
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {scores.shape}")
    if pred.shape[0] != gold.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions but {gold.shape[0]} labels")
    keep = gold >= 0
    pred, gold = pred[keep], gold[keep]
    if gold.size == 0:
        raise ValueError("no labelled example (all labels < 0): accuracy is undefined")
    for what, ids in (("prediction", pred), ("label", gold)):
        if ids.min() < 0 or ids.max() >= n_classes:
            raise ValueError(f"{what} ids must lie in range({n_classes}), got {ids.min()}..{ids.max()}")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)  # [predicted, gold]
    np.add.at(confusion, (pred, gold), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    best = int(confusion[rows, cols].sum())
    as_is = int(np.trace(confusion))
    if as_is >= best:  # the order as given is (one of) the best: never suggest an equal-scoring shuffle
        return list(range(n_classes)), as_is / gold.size, as_is / gold.size
    perm = [0] * n_classes
    for pred_id, gold_id in zip(rows, cols, strict=True):
        perm[int(gold_id)] = int(pred_id)
    return perm, best / gold.size, as_is / gold.size


def label_order_warning(
    outputs: Any,
    label_names: Sequence[str] | None = None,
    min_gap: float = 0.2,
    min_examples: int = 50,
) -> str | None:
    """A one-line warning when a model scores far better with its logit columns permuted: a wrong class order.

    Meant to run after prediction on a labelled split (logits already in the task's canonical order).

    Args:
        outputs: a :class:`trustequiv.outputs.ModelOutputs` (``name``, ``logits (N, C)``, ``labels (N,)``,
            ``label_names``); outputs without logits, or whose correctness is not ``argmax == label``
            (extractive QA sets ``correct``), are skipped.
        label_names: the class names the checkpoint's logit columns were read as, in the checkpoint's order
            (``model.label_names`` or its ``config.id2label``); ``None``: the canonical order itself.
        min_gap: warn only when the best permutation's accuracy exceeds the accuracy as given by this much.
        min_examples: labelled examples needed before judging (fewer: ``None``).

    Returns:
        ``None`` when the order looks right (or cannot be judged), else a message naming the permutation and
        the ``model.label_names=[...]`` to declare, e.g.
        ``model.label_names=[contradiction,entailment,neutral]``.

    Raises:
        trustequiv.user_errors.LabelMismatchError: ``label_names`` cannot be matched to
        ``outputs.label_names``.
    """
    logits = getattr(outputs, "logits", None)
    if logits is None or getattr(outputs, "correct", None) is not None:
        return None
    canonical = list(outputs.label_names)
    gold = _as_numpy(outputs.labels).reshape(-1)
    n = int((gold >= 0).sum())
    if n < min_examples or len(canonical) < 2:
        return None
    perm, best, as_is = best_label_permutation(logits, gold, len(canonical))
    if best - as_is < min_gap:
        return None
    source = list(label_names) if label_names else list(canonical)
    # canonical column k holds checkpoint column read_as[k]; canonical class j really sits in column perm[j]
    read_as = label_permutation(source, canonical)
    fixed = list(source)
    for j, name in enumerate(canonical):
        fixed[read_as[perm[j]]] = name
    moved = ", ".join(f"{canonical[perm[j]]}->{canonical[j]}" for j in range(len(canonical)) if perm[j] != j)
    name = getattr(outputs, "name", "model")
    return (
        f"{name}: accuracy {as_is:.1%} with its classes as declared but {best:.1%} "
        f"with the logit columns permuted ({moved}; n={n}): its label order is probably wrong. "
        f"Declare model.label_names=[{','.join(fixed)}] (the checkpoint's class names in its logit order)."
    )
