"""Knowledge distillation of the fine-tuned reference (the teacher) into a smaller student, optionally with
terms that keep the student's trust characteristics close to the teacher's
(:mod:`trustequiv.train.distillation`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from plugins.compressors.layer_drop import LayerDrop
from trustequiv.data.splits import split_fingerprint
from trustequiv.models.compressor import CalibrationData, Compressor
from trustequiv.models.spec import local_dir
from trustequiv.train.distillation import DistillationModule, DistillTerms, LiveTeacher, TeacherTargets
from trustequiv.train.fine_tune import optimizer_settings

log = logging.getLogger(__name__)

#: ``student`` value for the teacher with encoder layers dropped (as compressor=layer_drop does).
LAYER_DROP = "layer_drop"


class Distill(Compressor):
    """Distil the fine-tuned reference into a student: Hinton et al.'s (2015) soft targets mixed with the
    hard labels, plus optional trust terms (negative flips, calibration, explanations, representations).

    The teacher is the fine-tuned base checkpoint (train.py's ``model@reference`` when set, else the model).
    Its logits and pooled embeddings on the training split are predicted once through the output cache (the
    key evaluate.py would use for it on that split) and looked up per batch by example id: no teacher pass
    during training, except for the explanation term, which costs a teacher forward and backward per step.

    Args:
        name: registry name (the candidate is ``<model>+<name>``).
        student: ``layer_drop``: the teacher keeping the encoder layers ``keep`` names; or a pretrained
            checkpoint (local dir or hub id) with a new classification head over the teacher's classes.
        keep: the layer_drop student's layers (``every_other``, ``top_half_dropped`` or a list of indices).
        temperature, alpha, negative_flip, focal_alpha, focal_beta, calibration, calibration_weight,
            explanation, representation, representation_weight:
            :class:`trustequiv.train.distillation.DistillTerms`.
        finetune: train the student (default True; False saves the untrained student).

    Raises:
        ValueError: bad loss settings (at construction), a task that is not classification, or the
            explanation term with a student whose tokenizer differs from the teacher's.
    """

    distills = True

    def __init__(
        self,
        name: str = "distill",
        student: str = LAYER_DROP,
        keep: str | list[int] = "every_other",
        temperature: float = 2.0,
        alpha: float = 0.5,
        negative_flip: float = 0.0,
        focal_alpha: float = 1.0,
        focal_beta: float = 5.0,
        calibration: str = "confidence",
        calibration_weight: float = 0.0,
        explanation: float = 0.0,
        representation: str = "cosine",
        representation_weight: float = 0.0,
        finetune: bool = True,
    ):
        self.name, self.student, self.finetune = name, str(student), bool(finetune)
        self.keep = keep if isinstance(keep, str) else [int(i) for i in keep]
        self.terms = DistillTerms(
            temperature=float(temperature),
            alpha=float(alpha),
            negative_flip=float(negative_flip),
            focal_alpha=float(focal_alpha),
            focal_beta=float(focal_beta),
            calibration=str(calibration),
            calibration_weight=float(calibration_weight),
            explanation=float(explanation),
            representation=str(representation),
            representation_weight=float(representation_weight),
        )
        self._tokenizer: Any = None  # a pretrained student's own

    def compress(self, model: nn.Module, data: CalibrationData | None = None) -> nn.Module:
        """The student: ``model`` (the teacher) with layers dropped, or the pretrained ``student`` with a new
        head over the teacher's classes, in the teacher's column order."""
        if self.student == LAYER_DROP:
            return LayerDrop(keep=self.keep).compress(model)

        directory = local_dir(self.student)
        config = model.config
        student = AutoModelForSequenceClassification.from_pretrained(
            directory,
            num_labels=config.num_labels,
            id2label=dict(config.id2label),
            label2id=dict(config.label2id),
            ignore_mismatched_sizes=True,  # a checkpoint fine-tuned elsewhere brings a head of another size
            trust_remote_code=False,
        )
        self._tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        return student

    def candidate_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer if self._tokenizer is None else self._tokenizer

    def training_module(
        self,
        student: nn.Module,
        *,
        base: Any,
        base_spec: Any,
        task_cfg: Mapping[str, Any],
        dataset: Any,
        ctx: Any,
    ) -> DistillationModule:

        if ctx is None:
            raise ValueError(
                "distill reads the teacher's outputs from the output cache - fine-tune it through train.py "
                "or evaluate.py train_missing=true (build_checkpoint passes the run context)"
            )
        if ctx.kind.name != "classification":
            raise ValueError(
                f"compressor=distill distils classifiers; task {task_cfg['name']} is {ctx.kind.name} - use "
                "compressor=layer_drop there"
            )
        load = _teacher_loader(base, base_spec, task_cfg, ctx)
        targets = teacher_train_outputs(base, base_spec, load, task_cfg, dataset, ctx)
        live = None
        if self.terms.needs_live_teacher:
            teacher = load()
            if self._tokenizer is not None and self._tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
                raise ValueError(
                    f"the explanation term compares attributions token by token, but student {self.student} "
                    "tokenizes differently from the teacher - use student=layer_drop or a student with the "
                    "teacher's vocabulary, or set explanation=0"
                )
            live = LiveTeacher(teacher.model, teacher.label_permutation)
        return DistillationModule(
            student,
            len(task_cfg["label_names"]),
            teacher=targets,
            terms=self.terms,
            live_teacher=live,
            label_permutation=base.label_permutation,
            pooling=ctx.predict_cfg.get("pooling", "cls"),
            layer=int(ctx.predict_cfg.get("layer", -1)),
            **optimizer_settings(task_cfg["training"]),
        )

    def recipe(self) -> dict[str, Any]:
        recipe: dict[str, Any] = {"name": self.name, "student": self.student}
        if self.student == LAYER_DROP:
            recipe["keep"] = self.keep
        return {**recipe, **vars(self.terms)}


def _teacher_loader(base: Any, base_spec: Any, task_cfg: Mapping[str, Any], ctx: Any):
    """``() -> LoadedModel``: the teacher loaded as evaluate.py loads it (at most once; only when its
    outputs are not cached or the explanation term needs it)."""
    loaded: dict[str, Any] = {}

    def load():
        if "model" not in loaded:
            loaded["model"] = ctx.kind.load_model(
                Path(base.directory),
                task_cfg,
                declared_label_names=getattr(base_spec, "label_names", None),
                memo_file=ctx.memo_file,
            )
        return loaded["model"]

    return load


def teacher_train_outputs(
    base: Any, base_spec: Any, load: Any, task_cfg: Mapping[str, Any], dataset: Any, ctx: Any
) -> TeacherTargets:
    """The teacher's logits and pooled embeddings on every training example, through the output cache under
    the key evaluate.py uses for that checkpoint (fingerprint) on that split (content fingerprint): predicted
    on the first distillation from this teacher, read back on every later one (and on a resume).

    The global random generators are left as they were, so the student trains the same whether the outputs
    were cached or predicted.
    """

    train = dataset["train"]
    name = getattr(base_spec, "name", None) or Path(base.directory).name
    with torch.random.fork_rng(devices=[]):
        outputs, cached = ctx.kind.predict(
            name,
            base.fingerprint,
            load,
            train,
            task_cfg=task_cfg,
            split="train",
            cache=ctx.cache,
            trainer_cfg=ctx.trainer_cfg,
            predict_cfg=ctx.predict_cfg,
            key_extra={
                "data": split_fingerprint(train),
                "declared_label_names": getattr(base_spec, "label_names", None),
            },
        )
    log.info(
        "distill: teacher %s outputs on %d training examples %s",
        name,
        len(outputs),
        "from the cache" if cached else "predicted",
    )
    return TeacherTargets.from_outputs(outputs)
