"""The one seeded example sampler: which ``n`` examples of a split a run uses.

Used by the pipeline's ``limit_examples`` / ``limit_ood_examples`` and by the characteristics that work on a
sample (attribution, adversarial). An example is chosen by a seeded hash of its id
(:func:`trustequiv.data.splits.hash_unit`), never by its position: the same examples whatever the file order,
for
every model, and a random sample (files sorted by label, like IMDB's, would otherwise give one class).
Samples nest: the ``n`` examples are the ``n`` smallest hashes, so a smaller ``n`` takes a subset of a larger
one, and a sample of a ``limit_examples`` sample with the same seed is the sample of the whole split.

History: ``limit_examples`` has always chosen this way (same rows as before). Attribution (a sha256 of
``"attribution:<id>"``) and adversarial (``random.Random(seed).sample`` of the id-sorted split) used their
own samplers until both moved here, so that they explain and attack the SAME examples: attribution and attack
numbers of runs made before that change came from other examples and differ.
"""

from __future__ import annotations

from collections.abc import Sequence

from trustequiv.data.splits import hash_unit

__all__ = ["SAMPLER", "sample_positions"]

#: names the sampling scheme in cache configs, so results drawn by an earlier sampler are not reused.
SAMPLER = "hash_unit"


def sample_positions(
    ids: Sequence[int | str], n: int | None, seed: int = 0, *, key: str = "n_examples"
) -> list[int]:
    """Positions of ``n`` examples chosen by a seeded hash of their ids, in ascending (file) order.

    Args:
        ids: the examples' ids (ints or strings; ``3`` and ``"3"`` hash alike).
        n: how many; None, or at least ``len(ids)``: all positions.
        seed: hash seed (every caller in the project uses 0, so their samples agree).
        key: the config key ``n`` comes from, named in the error.

    Returns:
        the positions (into ``ids``) of the ``n`` smallest :func:`~trustequiv.data.splits.hash_unit` values,
        in ascending order.

    Raises:
        ValueError: ``n`` is not a positive whole number (one line naming ``key``).
    """
    if n is None:
        return list(range(len(ids)))
    try:
        whole = not isinstance(n, bool) and float(n).is_integer() and int(n) > 0
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"{key} must be a positive number of examples or null (all), got {n!r}")
    n = int(n)
    if n >= len(ids):
        return list(range(len(ids)))
    chosen = sorted(range(len(ids)), key=lambda i: hash_unit(ids[i], seed))[:n]
    return sorted(chosen)
