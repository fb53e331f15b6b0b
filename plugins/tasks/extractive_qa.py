"""Task kind ``extractive_qa`` (SQuAD 2.0 layout, task config ``kind: extractive_qa``): fine-tuning,
prediction and the outputs the characteristics read.

Features follow the Hugging Face question-answering example (``run_qa.py``): question + context tokenized
with ``truncation="only_second"``, ``max_length`` and ``doc_stride`` overlapping windows of a long context
(``return_overflowing_tokens``), offsets kept for context tokens only. Training targets are the token
positions of the first gold answer in a window that contains it, else the [CLS] token (index 0): an
unanswerable question, or a window without the answer. Post-processing is
:func:`trustequiv.functional.squad.postprocess_question` (n-best spans over all windows, null score =
[CLS] start + end logit, "" when ``null - best > null_score_diff_threshold``); EM and F1 are the official
SQuAD 2.0 definitions (:func:`trustequiv.functional.squad.squad_v2_scores`). Outputs are cached without a
threshold (each question keeps its best span and ``null - best``); the pipeline applies one per model
(:func:`apply_null_threshold`): the configured number, or with ``null_score_diff_threshold: validation`` the
official evaluation's best-F1 threshold on the validation split (:func:`choose_null_threshold`).

What the characteristics receive (:class:`trustequiv.outputs.ModelOutputs`, one row per question):

- ``logits (N, 2)`` = ``[null_score, best_span_score]``, columns named ``[no_answer, answer]``: argmax is the
  model's answer/abstain decision (at threshold 0), softmax its confidence in that decision; ``distribution``
  scores OOD on these (MSP / energy of best span vs no-answer). A question with no valid span gets
  ``best_span_score = null_score - 100``.
- ``labels (N,)``: 1 if the question is answerable, else 0, so ``calibration`` measures the calibration of
  the answerability decision.
- ``correct (N,)``: exact match = 1; ``errors`` takes EM = 0 as the error set.
- ``embeddings (N, D)``: the [CLS] state of the question's first window (``representation``).
- ``columns``: ``prediction`` (answer texts), ``exact`` (0/1), ``f1`` ([0, 1]), ``has_answer``; the ``qa``
  characteristic reports EM / F1 from them. Also ``span_text`` / ``span_exact`` / ``span_f1`` (the best
  non-null span, answered or not) and ``score_diff``; ``info["qa_threshold"]``: how the threshold was set.

Prediction runs windows in length-sorted batches (dynamic padding) on one device through the one cached
prediction (:func:`trustequiv.prediction.cached_prediction`, rows = windows): each finished batch's window
logits are written to the cache's partial dir, so a killed prediction resumes with the windows not yet done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoModelForQuestionAnswering

from trustequiv.cache import PartialPredictionWriter
from trustequiv.data.batches import LengthSortedBatchSampler
from trustequiv.data.task_kind import TaskKind
from trustequiv.functional.squad import best_null_threshold, postprocess_question, squad_v2_scores
from trustequiv.models.loading import LoadedModel, load_checkpoint, load_tokenizer
from trustequiv.models.spec import local_dir
from trustequiv.outputs import ModelOutputs
from trustequiv.prediction import cached_prediction, output_key
from trustequiv.train.fine_tune import Recipe, fine_tune, optimizer_settings
from trustequiv.train.lightning_module import SequenceClassifier
from trustequiv.train.trainer import make_trainer

log = logging.getLogger(__name__)

NO_VALID_SPAN_MARGIN = 100.0
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_QA_TENSORS = ("feature", "start_logits", "end_logits", "embeddings")  # per window, written batch by batch
KIND_NAME = "extractive_qa"


# ---------------------------------------------------------------- features
def encode_qa(
    split, tokenizer, *, max_length: int, doc_stride: int, with_positions: bool = False
) -> list[dict[str, Any]]:
    """Windows ("features") of every question of ``split`` (columns question, context, answers,
    answer_starts, id).

    Each feature: the model inputs (lists of ints), ``example`` (row position in ``split``), ``offsets``
    (per token ``(start_char, end_char)`` in the context or None) and, with ``with_positions``,
    ``start_positions`` / ``end_positions`` (token indices of the first gold answer, 0 = [CLS] when the
    window does not hold it or the question has none).

    Raises:
        ValueError: the tokenizer is not a fast tokenizer (offsets are needed).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("extractive QA needs a fast tokenizer (character offsets)")
    questions = [q.lstrip() for q in split["question"]]
    contexts = list(split["context"])
    enc = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    answers, starts = list(split["answers"]), list(split["answer_starts"])
    keys = [k for k in _INPUTS if k in enc]
    features = []
    for f, example in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(f)
        offsets = [tuple(o) if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][f])]
        feat = {k: enc[k][f] for k in keys}
        feat.update(example=int(example), offsets=offsets)
        if with_positions:
            s_tok = e_tok = 0
            if answers[example]:
                s_char = int(starts[example][0])
                e_char = s_char + len(answers[example][0])
                ctx = [k for k, o in enumerate(offsets) if o is not None]
                if ctx and offsets[ctx[0]][0] <= s_char and offsets[ctx[-1]][1] >= e_char:
                    s_tok = next(k for k in ctx if offsets[k][1] > s_char)
                    e_tok = next(k for k in reversed(ctx) if offsets[k][0] < e_char)
            feat.update(start_positions=s_tok, end_positions=e_tok)
        features.append(feat)
    return features


class QACollator:
    """Pads features to the batch's longest; returns model inputs, ``feature`` (index) and positions."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Tensor]:
        width = max(len(f["input_ids"]) for _, f in items)
        batch: dict[str, Tensor] = {}
        for key in _INPUTS:
            if key in items[0][1]:
                fill = self.pad_id if key == "input_ids" else 0
                batch[key] = torch.tensor(
                    [f[key] + [fill] * (width - len(f[key])) for _, f in items], dtype=torch.long
                )
        batch["feature"] = torch.tensor([i for i, _ in items], dtype=torch.long)
        if "start_positions" in items[0][1]:
            for key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([f[key] for _, f in items], dtype=torch.long)
        return batch


def _loader(features, tokenizer, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        list(enumerate(features)),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        collate_fn=QACollator(tokenizer),
    )


def _predict_loader(features, todo: list[int], tokenizer, batch_size: int) -> DataLoader:
    """Inference batches over the windows ``todo`` (indices into ``features``), longest first."""
    items = [(f, features[f]) for f in todo]
    sampler = LengthSortedBatchSampler([len(f["input_ids"]) for _, f in items], batch_size)
    return DataLoader(items, batch_sampler=sampler, collate_fn=QACollator(tokenizer))


# ---------------------------------------------------------------- Lightning module
class QuestionAnswerer(SequenceClassifier):
    """``SequenceClassifier``'s optimiser and schedule around an ``AutoModelForQuestionAnswering``.

    Training/validation loss: the model's mean start/end cross-entropy. ``predict_step`` returns per
    feature ``feature (B,)``, ``start_logits`` / ``end_logits (B, T)`` and ``embeddings (B, D)`` (the [CLS]
    state of the last hidden layer), float32 on CPU.
    """

    def __init__(self, model, **kwargs: Any):
        super().__init__(model, num_labels=2, **kwargs)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(
            **self._inputs(batch),
            start_positions=batch["start_positions"],
            end_positions=batch["end_positions"],
        ).loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["feature"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["feature"].shape[0], sync_dist=True)

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        out = self.model(**self._inputs(batch), output_hidden_states=True)
        return {
            "feature": batch["feature"].cpu(),
            "start_logits": out.start_logits.float().cpu(),
            "end_logits": out.end_logits.float().cpu(),
            "embeddings": out.hidden_states[self.layer][:, 0].float().cpu(),
        }


# ---------------------------------------------------------------- loading
def load_qa_model(
    checkpoint: str,
    label_names: list[str] | None = None,
    *,
    declared_label_names: list[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    memo_file: str | Path | None = None,
) -> LoadedModel:
    """Load a fine-tuned ``AutoModelForQuestionAnswering`` (with any on-load compression), eval mode.

    Same signature as :func:`trustequiv.models.loading.load_classifier`; the label arguments are unused.
    (Checks that refuse a checkpoint of another kind are :func:`trustequiv.models.loading.load_checkpoint`'s.)
    """

    return load_checkpoint(
        local_dir(checkpoint, revision),
        AutoModelForQuestionAnswering,
        [0, 1],
        trust_remote_code=trust_remote_code,
        memo_file=memo_file,
    )


# ---------------------------------------------------------------- prediction
def qa_settings(task_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The settings QA outputs depend on, with their defaults (part of the cache key). The no-answer
    threshold is not one of them: it is applied to the cached outputs (:func:`apply_null_threshold`)."""
    return {
        "max_length": int(task_cfg.get("max_length", 384)),
        "doc_stride": int(task_cfg.get("doc_stride", 128)),
        "n_best": int(task_cfg.get("n_best", 20)),
        "max_answer_length": int(task_cfg.get("max_answer_length", 30)),
    }


def null_threshold_setting(task_cfg: Mapping[str, Any]) -> float | str:
    """``task.null_score_diff_threshold``: a number, or ``"validation"`` (per model, the official best-F1
    threshold on the task's validation split).

    Raises:
        ValueError: neither a number nor ``"validation"``.
    """
    value = task_cfg.get("null_score_diff_threshold", 0.0)
    if isinstance(value, str) and value == "validation":
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"task.null_score_diff_threshold must be a number or 'validation', got {value!r}"
        ) from None


def choose_null_threshold(validation: ModelOutputs) -> dict[str, Any]:
    """The official SQuAD 2.0 best-F1 no-answer threshold of one model on its validation outputs
    (threshold-free, from :func:`predict_qa_outputs`): ``{"null_score_diff_threshold", "chosen_on",
    "validation_f1", "validation_f1_at_0"}`` (F1 in [0, 1])."""
    qa = validation.columns
    f1, threshold = best_null_threshold(
        qa["score_diff"], qa["span_f1"], qa["has_answer"], [bool(t) for t in qa["span_text"]]
    )
    at_zero = apply_null_threshold(validation, 0.0).columns["f1"]
    return {
        "null_score_diff_threshold": threshold,
        "chosen_on": "validation (official best-F1 threshold)",
        "validation_f1": f1,
        "validation_f1_at_0": float(np.mean(at_zero)),
    }


def null_threshold_for(
    task_cfg: Mapping[str, Any], predict_validation: Callable[[], ModelOutputs]
) -> dict[str, Any]:
    """How one model's answers are thresholded: the configured number, or (``"validation"``) the best-F1
    threshold on its validation outputs, which ``predict_validation`` returns (threshold-free, cached)."""
    setting = null_threshold_setting(task_cfg)
    if setting != "validation":
        return {"null_score_diff_threshold": float(setting), "chosen_on": "config"}
    info = choose_null_threshold(predict_validation())
    log.info(
        "no-answer threshold %.3f chosen on validation (F1 %.3f; %.3f at threshold 0)",
        info["null_score_diff_threshold"],
        info["validation_f1"],
        info["validation_f1_at_0"],
    )
    return info


def apply_null_threshold(
    out: ModelOutputs, threshold: float, info: Mapping[str, Any] | None = None
) -> ModelOutputs:
    """QA outputs with answers decided at ``threshold``: a question is answered with its best span when
    ``null_score - best_span_score <= threshold``, else "" (official SQuAD 2.0 rule); EM / F1 / ``correct``
    follow, and the answer logit is shifted by ``threshold`` so argmax and softmax describe the thresholded
    decision. ``info`` (how the threshold was set) is kept under ``info["qa_threshold"]``."""
    qa = out.columns
    diff = np.asarray(qa["score_diff"], dtype=float)
    answered = diff <= threshold
    has = np.asarray(qa["has_answer"], dtype=bool)
    exact = np.where(answered, qa["span_exact"], (~has).astype(float))
    f1 = np.where(answered, qa["span_f1"], (~has).astype(float))
    logits = out.logits.clone()
    logits[:, 1] += threshold
    columns = {
        **qa,
        "prediction": [t if a else "" for t, a in zip(qa["span_text"], answered, strict=True)],
        "exact": exact.astype(int).tolist(),
        "f1": f1.tolist(),
    }
    threshold_info = dict(info or {"null_score_diff_threshold": float(threshold), "chosen_on": "config"})
    return dataclasses.replace(
        out,
        logits=logits,
        correct=torch.from_numpy(exact.astype(bool)),
        columns=columns,
        info={**out.info, "qa_threshold": threshold_info},
    )


def qa_outputs_from_logits(
    name: str,
    split_data,
    features: list[dict[str, Any]],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    cls_embeddings: Tensor | None,
    label_names: tuple[str, ...],
    settings: Mapping[str, Any],
) -> ModelOutputs:
    """Post-process per-feature logits into one row per question (see the module docstring).

    ``start_logits[f]`` / ``end_logits[f]``: ``(T_f,)`` logits of feature ``f`` (unpadded or padded; padded
    tokens have no offsets and are never chosen); ``cls_embeddings``: ``(F, D)`` or None.
    """
    by_example: dict[int, list[int]] = {}
    for f, feat in enumerate(features):
        by_example.setdefault(feat["example"], []).append(f)
    n = len(split_data)
    contexts, golds = list(split_data["context"]), list(split_data["answers"])
    spans, diffs, logits = [], [], np.zeros((n, 2), dtype=np.float32)
    emb_rows = []
    for i in range(n):
        feats = by_example[i]
        width = max(len(start_logits[f]) for f in feats)

        def padded(rows, feats=feats, width=width):
            return np.stack([np.pad(r, (0, width - len(r)), constant_values=-1e9) for r in rows])

        pred = postprocess_question(
            contexts[i],
            padded([np.asarray(start_logits[f]) for f in feats]),
            padded([np.asarray(end_logits[f]) for f in feats]),
            [features[f]["offsets"] for f in feats],
            n_best=settings["n_best"],
            max_answer_length=settings["max_answer_length"],
        )
        best = pred.best_span_score
        if not np.isfinite(best):
            best = pred.null_score - NO_VALID_SPAN_MARGIN
        logits[i] = (pred.null_score, best)
        spans.append(pred.span_text)
        diffs.append(float(pred.null_score - best))
        emb_rows.append(feats[0])
    span_scores = squad_v2_scores(golds, spans)  # of the best span, answered or not
    raw = ModelOutputs(
        name=name,
        example_ids=torch.tensor([int(x) for x in split_data["id"]], dtype=torch.long),
        logits=torch.from_numpy(logits),
        labels=torch.from_numpy(span_scores.has_answer.astype(np.int64)),
        label_names=label_names,
        embeddings=None if cls_embeddings is None else cls_embeddings[emb_rows].float(),
        columns={
            "span_text": spans,
            "span_exact": span_scores.exact_per_example.tolist(),
            "span_f1": span_scores.f1_per_example.tolist(),
            "score_diff": diffs,
            "has_answer": span_scores.has_answer.tolist(),
        },
    )
    return apply_null_threshold(raw, float(settings.get("null_score_diff_threshold", 0.0)))


def predict_qa_outputs(
    name: str,
    fingerprint: str,
    load: Callable[[], LoadedModel],
    split_data,
    *,
    task_cfg: Mapping[str, Any],
    split: str,
    cache: Any,
    trainer_cfg: Mapping[str, Any],
    predict_cfg: Mapping[str, Any],
    key_extra: Mapping[str, Any],
) -> tuple[ModelOutputs, bool]:
    """``(outputs, was_cached)``: one row per question of ``split_data``, in its order, answered at threshold
    0 (the pipeline applies each model's threshold after). A second call with the same checkpoint content,
    task, split content and QA settings loads nothing and runs no forward pass."""
    settings = qa_settings(task_cfg)
    label_names = tuple(task_cfg["label_names"])
    ids = [int(i) for i in split_data["id"]]
    layer = int(predict_cfg.get("layer", -1))
    key = _qa_key(fingerprint, task_cfg, split, key_extra, settings, layer)
    windows: dict[str, Any] = {}

    def features() -> list[dict[str, Any]]:
        if "features" not in windows:
            windows["features"] = encode_qa(
                split_data,
                load().tokenizer,
                max_length=settings["max_length"],
                doc_stride=settings["doc_stride"],
            )
        return windows["features"]

    def run(finished: set[int]) -> None:
        loaded = load()
        feats = features()
        todo = [f for f in range(len(feats)) if f not in finished]
        log.info(
            "%s: predicting %d questions (%d windows%s) of %s/%s",
            name,
            len(ids),
            len(todo),
            f", {len(finished)} done before" if finished else "",
            task_cfg["name"],
            split,
        )
        if not todo:
            return
        writer = PartialPredictionWriter(cache.partial_dir(key), keys=_QA_TENSORS, id_key="feature")
        _predict_windows(loaded, feats, todo, writer, layer, trainer_cfg, predict_cfg)

    def assemble(done: list[dict[str, Tensor]]) -> ModelOutputs:
        feats = features()
        starts, ends, emb = _window_logits(done, feats)
        return qa_outputs_from_logits(name, split_data, feats, starts, ends, emb, label_names, settings)

    meta = {
        "model": name,
        "task": task_cfg["name"],
        "split": split,
        "checkpoint_fingerprint": fingerprint,
        "qa": settings,
    }
    return cached_prediction(
        cache,
        key,
        name=name,
        run=run,
        assemble=assemble,
        id_key="feature",
        meta=meta,
        expected_ids=ids,
    )


def _qa_key(
    fingerprint: str,
    task_cfg: Mapping[str, Any],
    split: str,
    key_extra: Mapping[str, Any],
    settings: Mapping[str, Any],
    layer: int,
) -> str:
    """The prediction cache key of one model and split: the QA settings and the embedding layer."""
    return output_key(
        kind=KIND_NAME,
        fingerprint=fingerprint,
        task=task_cfg["name"],
        split=split,
        data=key_extra["data"],
        settings={**settings, "layer": layer},
    )


def _predict_windows(
    loaded: LoadedModel,
    feats: list[dict[str, Any]],
    todo: list[int],
    writer: PartialPredictionWriter,
    layer: int,
    trainer_cfg: Mapping[str, Any],
    predict_cfg: Mapping[str, Any],
) -> None:
    """Run the windows ``todo`` of ``feats`` through the model on one device; ``writer`` keeps each batch."""
    module = QuestionAnswerer(loaded.model, layer=layer)
    trainer = make_trainer(
        trainer_cfg,
        cpu_only=loaded.cpu_only,
        callbacks=[writer],
        enable_checkpointing=False,
        inference_mode=True,
        devices=1,
        strategy="auto",
    )
    loader = _predict_loader(feats, todo, loaded.tokenizer, int(predict_cfg.get("batch_size", 64)))
    trainer.predict(module, dataloaders=loader, return_predictions=False)


def _window_logits(
    done: list[dict[str, Tensor]], feats: list[dict[str, Any]]
) -> tuple[list[np.ndarray], list[np.ndarray], Tensor]:
    """Per window its start and end logits (cut to its width) and its embedding, from the written batches."""
    starts: list[np.ndarray] = [np.empty(0)] * len(feats)
    ends: list[np.ndarray] = [np.empty(0)] * len(feats)
    emb = torch.zeros(len(feats), done[0]["embeddings"].shape[1])
    for b in done:
        for k, f in enumerate(b["feature"].tolist()):
            width = len(feats[f]["input_ids"])
            starts[f] = b["start_logits"][k, :width].numpy()
            ends[f] = b["end_logits"][k, :width].numpy()
            emb[f] = b["embeddings"][k]
    return starts, ends, emb


# ---------------------------------------------------------------- fine-tuning
def _new_qa_model(pretrained: str, revision: str | None, trust_remote_code: bool):

    directory = local_dir(pretrained, revision)
    tokenizer = load_tokenizer(directory, trust_remote_code=trust_remote_code)  # first: fails in a second
    model = AutoModelForQuestionAnswering.from_pretrained(
        directory, ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _qa_inputs(dataset, tokenizer, task_cfg: Mapping[str, Any], seed: int) -> dict[str, Any]:
    settings = qa_settings(task_cfg)
    feats = {
        s: encode_qa(
            dataset[s],
            tokenizer,
            max_length=settings["max_length"],
            doc_stride=settings["doc_stride"],
            with_positions=True,
        )
        for s in ("train", "validation")
    }
    log.info(
        "%s: %d / %d train / validation windows",
        task_cfg["name"],
        len(feats["train"]),
        len(feats["validation"]),
    )
    bs = int(task_cfg["training"]["batch_size"])
    return {
        "train_dataloaders": _loader(feats["train"], tokenizer, bs, shuffle=True, seed=seed),
        "val_dataloaders": _loader(feats["validation"], tokenizer, 64),
    }


#: Fine-tuning recipe of extractive QA: the best checkpoint has the lowest validation loss.
QA_RECIPE = Recipe(
    new_model=lambda spec, task_cfg: _new_qa_model(spec.pretrained, spec.revision, spec.trust_remote_code),
    load_base=lambda checkpoint, task_cfg: load_qa_model(checkpoint),
    make_module=lambda model, task_cfg: QuestionAnswerer(model, **optimizer_settings(task_cfg["training"])),
    fit_inputs=_qa_inputs,
    monitor="val/loss",
    mode="min",
    metadata=lambda task_cfg: {"kind": KIND_NAME, "qa": qa_settings(task_cfg)},
)

#: QA counterpart of :func:`trustequiv.train.fine_tune.fine_tune` (same arguments and return).
fine_tune_qa = functools.partial(fine_tune, recipe=QA_RECIPE)


class ExtractiveQA(TaskKind):
    """Extractive QA: one row per question; logits ``[null_score, best_span_score]``; answers in columns."""

    name = KIND_NAME
    model_class = "AutoModelForQuestionAnswering"
    csv_columns: ClassVar[Mapping[str, str]] = {
        "predicted_answer": "prediction",
        "exact": "exact",
        "f1": "f1",
    }

    def recipe(self) -> Recipe:
        return QA_RECIPE

    def load_model(
        self, directory: Path, task_cfg: Mapping[str, Any], *, declared_label_names=None, **kwargs
    ):
        return load_qa_model(str(directory), **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> tuple[ModelOutputs, bool]:
        return predict_qa_outputs(*args, **kwargs)

    def postprocessor(self, task_cfg, predict_split, available_splits):
        """Each model's answers at its no-answer threshold: the configured number, or with
        ``null_score_diff_threshold: validation`` the official best-F1 threshold on its validation outputs.

        Raises:
            ValueError: ``validation`` is asked for and the task has no validation split.
        """

        def validation() -> ModelOutputs:
            if "validation" not in available_splits:
                raise ValueError(
                    f"task {task_cfg['name']}: null_score_diff_threshold=validation needs a validation "
                    "split; "
                    f"it has {available_splits} (set a number instead)"
                )
            return predict_split("validation")

        info = null_threshold_for(task_cfg, validation)
        return lambda out: apply_null_threshold(out, info["null_score_diff_threshold"], info)

    def ood_settings(self, task_cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {k: task_cfg[k] for k in ("max_length", "doc_stride") if k in task_cfg}

    def training_summary(self, metadata: Mapping[str, Any]) -> str:
        return f"best val loss: {metadata.get('best_val_loss')}"


KIND = ExtractiveQA()
