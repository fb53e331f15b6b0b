"""Task data for Lightning: tokenization once per split, length-sorted dynamic padding, bucketed batches."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit(Dataset):
    """One tokenized split: a list of feature dicts (input_ids, attention_mask, [token_type_ids]),
    example ids and labels, all aligned."""

    features: list[dict[str, list[int]]]
    example_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.example_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.features[i], "example_id": self.example_ids[i], "label": self.labels[i]}

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]

    def subset(self, positions: Sequence[int]) -> EncodedSplit:
        return EncodedSplit(
            [self.features[i] for i in positions],
            [self.example_ids[i] for i in positions],
            [self.labels[i] for i in positions],
        )


def encode_split(split, tokenizer, *, pair: bool, max_length: int, name: str = "split") -> EncodedSplit:
    """Tokenize a split (columns ``id``, ``text_a``, [``text_b``], ``label``), truncated to ``max_length``.


    Raises:
        ValueError: a text is empty or not a string (names the example ids and the fix), or a pair task
            lacks ``text_b``.
    """
    ids = [int(i) for i in split["id"]]
    text_a = list(split["text_a"])
    text_b = list(split["text_b"]) if pair else None
    if pair and "text_b" not in split.column_names:
        raise ValueError(f"{name}: a sentence-pair task needs a text_b column")
    bad = [ids[k] for k, t in enumerate(text_a) if not isinstance(t, str) or not t.strip()]
    if text_b is not None:
        bad += [ids[k] for k, t in enumerate(text_b) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(
            f"{name}: {len(bad)} example(s) have empty text (ids {sorted(set(bad))[:5]}...); "
            "drop or fix them in the data files before evaluating"
        )
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(ids))]
    n_long = sum(len(f["input_ids"]) >= max_length for f in features)
    if n_long:
        log.warning(
            "%s: %d of %d examples reach max_length=%d and were truncated", name, n_long, len(ids), max_length
        )
    return EncodedSplit(features, ids, [int(y) for y in split["label"]])


class LengthSortedBatchSampler(Sampler[list[int]]):
    """Inference batches of similar length, longest first (an out-of-memory shows at once).

    Dynamic padding then pads each batch only to its own longest sequence. With ``num_replicas`` > 1 each
    rank takes every ``num_replicas``-th batch, so no example is duplicated (unlike DistributedSampler).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.batches = batches[rank::num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BucketBatchSampler(Sampler[list[int]]):
    """Training batches: shuffle, sort within buckets of ``bucket_batches`` batches by length, shuffle.

    Keeps batches random across epochs while cutting padding. The epoch seed is ``seed + epoch``. Under
    data parallelism every rank draws the same batch list and keeps its ``rank::num_replicas`` share, cut to
    an equal count so no rank waits on another at the last step.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        bucket_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths, self.batch_size, self.seed, self.bucket = (
            list(lengths),
            batch_size,
            seed,
            bucket_batches,
        )
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        span = self.batch_size * self.bucket
        batches = []
        for s in range(0, len(idx), span):
            chunk = sorted(idx[s : s + span], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        per_rank = len(batches) // self.num_replicas
        return iter(batches[self.rank :: self.num_replicas][:per_rank])

    def __len__(self) -> int:
        n_batches = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        return n_batches // self.num_replicas


#: the token features a batch is padded in (those a tokenizer returns, in this order).
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def pad_features(
    features: Sequence[Mapping[str, Sequence[int]]], pad_id: int, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Pad token features to the longest row: the one padding of every batch (training, cached prediction,
    the text scorer, integrated gradients).

    Args:
        features: per row, ``input_ids``, ``attention_mask`` and optionally ``token_type_ids`` (the keys the
            first row has are padded; other keys are ignored).
        pad_id: the tokenizer's pad token id (``input_ids`` fill); masks and token types are filled with 0.
        device: where the tensors are made (default: CPU).

    Returns:
        ``{key: (B, T) int64 tensor}`` with ``T`` the longest row's length.
    """
    width = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in TOKEN_KEYS:
        if key not in features[0]:
            continue
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor(
            [list(f[key]) + [fill] * (width - len(f[key])) for f in features], dtype=torch.long, device=device
        )
    return batch


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad token id, 0 when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class PadCollator:
    """Pads examples to the batch's longest sequence (:func:`pad_features`); returns tensors plus
    ``example_id`` and ``labels``."""

    def __init__(self, tokenizer):
        self.pad_id = pad_id_of(tokenizer)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_features(examples, self.pad_id)
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        batch["example_id"] = torch.tensor([e["example_id"] for e in examples], dtype=torch.long)
        return batch


class TaskDataModule(L.LightningDataModule):
    """Train/validation loaders (bucketed) for fine-tuning; predict loaders (length-sorted) for inference."""

    def __init__(
        self,
        splits: dict[str, EncodedSplit],
        tokenizer,
        *,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        predict_split: str | None = None,
    ):
        super().__init__()
        self.splits, self.collate = splits, PadCollator(tokenizer)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed, self.predict_split = num_workers, seed, predict_split

    def _loader(self, split: str, sampler: Sampler) -> DataLoader:
        if split not in self.splits:
            raise KeyError(f"split '{split}' not loaded; have {sorted(self.splits)}")
        return DataLoader(
            self.splits[split],
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _world(self) -> tuple[int, int]:
        # Our samplers shard by rank themselves: the trainer runs with use_distributed_sampler=False.
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        lengths = self.splits["train"].lengths
        sampler = BucketBatchSampler(lengths, self.batch_size, seed=self.seed, num_replicas=world, rank=rank)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            "validation", LengthSortedBatchSampler(self.splits["validation"].lengths, self.eval_batch_size)
        )

    def predict_dataloader(self) -> DataLoader:
        split = self.predict_split or "test"
        world, rank = self._world()
        sampler = LengthSortedBatchSampler(self.splits[split].lengths, self.eval_batch_size, world, rank)
        return self._loader(split, sampler)
