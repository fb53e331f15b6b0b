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

__all__ = [
    "DEFAULT_ALIASES",
    "LabelMismatchError",
    "id2label_names",
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


class LabelMismatchError(ValueError):
    """Two lists of label names cannot be matched one-to-one by name."""


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
