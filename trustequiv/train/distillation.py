"""Knowledge distillation training: a :class:`~trustequiv.train.lightning_module.SequenceClassifier` whose
``training_step``
adds the distillation and trust terms of :mod:`trustequiv.functional.distillation`.

The teacher's logits (and pooled embeddings) on the training split come from the output cache, predicted once
per training example before training (:class:`TeacherTargets`), and are looked up per batch by
``example_id``: no teacher forward during training. Only the explanation term needs the teacher itself
(:class:`LiveTeacher`): its gradient x input attributions cost one teacher forward and backward per step, and
the student's (taken with ``create_graph=True``) a second-order backward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trustequiv.functional.distillation import (
    cka_loss,
    confidence_gap,
    distillation_loss,
    explanation_alignment_loss,
    focal_distillation_loss,
    hidden_cosine_loss,
    mmce,
)
from trustequiv.train.lightning_module import SequenceClassifier, pool

CALIBRATION_TERMS = ("confidence", "mmce")
REPRESENTATION_TERMS = ("cosine", "cka")


@dataclass(frozen=True)
class DistillTerms:
    """The loss settings: Hinton's KD mixed with cross-entropy, plus trust terms, each off at weight 0.

    Attributes:
        temperature, alpha: ``alpha * T^2 KL + (1 - alpha) * CE`` (Hinton et al. 2015).
        negative_flip: weight of focal distillation (Yan et al. 2021), whose per-example weights are
            ``focal_alpha + focal_beta * 1[teacher correct]``.
        calibration: ``confidence`` (``|max p_s - max p_t|``) or ``mmce`` (Kumar et al. 2018);
            calibration_weight: its weight.
        explanation: weight of the e2KD gradient x input alignment (needs the live teacher).
        representation: ``cosine`` (through a learned projection when the widths differ) or ``cka``, on the
            pooled embeddings; representation_weight: its weight.
    """

    temperature: float = 2.0
    alpha: float = 0.5
    negative_flip: float = 0.0
    focal_alpha: float = 1.0
    focal_beta: float = 5.0
    calibration: str = "confidence"
    calibration_weight: float = 0.0
    explanation: float = 0.0
    representation: str = "cosine"
    representation_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        weights = ("negative_flip", "focal_alpha", "focal_beta", "calibration_weight", "explanation")
        for name in (*weights, "representation_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"distillation {name} must be >= 0, got {getattr(self, name)}")
        if self.calibration not in CALIBRATION_TERMS:
            raise ValueError(f"calibration must be one of {CALIBRATION_TERMS}, got {self.calibration!r}")
        if self.representation not in REPRESENTATION_TERMS:
            raise ValueError(
                f"representation must be one of {REPRESENTATION_TERMS}, got {self.representation!r}"
            )

    @property
    def needs_embeddings(self) -> bool:
        return self.representation_weight > 0

    @property
    def needs_live_teacher(self) -> bool:
        return self.explanation > 0


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's outputs on the training split: ``example_ids (N,)``, ``logits (N, C)`` in the task's
    canonical label order, ``embeddings (N, D)`` pooled as the student's are, or None."""

    example_ids: Tensor
    logits: Tensor
    embeddings: Tensor | None = None

    @classmethod
    def from_outputs(cls, outputs: Any) -> TeacherTargets:
        """From cached :class:`~trustequiv.outputs.ModelOutputs`."""
        emb = outputs.embeddings
        return cls(outputs.example_ids.long(), outputs.logits.float(), None if emb is None else emb.float())


@dataclass
class LiveTeacher:
    """The teacher model itself (eval mode, no gradients to its weights) and its logits' column order."""

    model: nn.Module
    label_permutation: Sequence[int]


def input_x_gradient(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    target: Tensor,
    permutation: Tensor,
    *,
    create_graph: bool,
    output_hidden_states: bool = False,
) -> tuple[Tensor, Any]:
    """Gradient x input over the word embeddings: ``(B, T)`` attributions of each example's ``target``
    logit (canonical class index), and the model's output of the same forward.

    With ``create_graph`` the attributions stay differentiable in the model's weights (the student's), else
    they are detached (the teacher's). Own code rather than captum's ``InputXGradient``, which cannot keep the
    graph of the gradient.
    """
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    if not create_graph:
        embeddings = embeddings.detach().requires_grad_(True)
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.enable_grad():
        out = model(inputs_embeds=embeddings, output_hidden_states=output_hidden_states, **rest)
        score = out.logits[:, permutation].gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, embeddings, create_graph=create_graph)
    attributions = (grad * embeddings).sum(dim=-1)
    return (attributions if create_graph else attributions.detach()), out


class DistillationModule(SequenceClassifier):
    """Trains ``model`` (the student) on ``DistillTerms``' loss against the teacher's cached outputs.

    Validation, prediction and the optimiser (AdamW over the student and the projection, warmup then linear
    decay) are :class:`SequenceClassifier`'s. The teacher's outputs are non-persistent buffers (they come from
    the cache again on a resume); the projection of the cosine representation term is a parameter, saved in
    Lightning's checkpoint with the student.

    Args:
        model: the student, a sequence classifier whose columns map to the canonical labels by
            ``label_permutation``.
        teacher: the teacher's outputs on every training example.
        terms: the loss settings.
        live_teacher: the teacher model, required when ``terms.explanation > 0`` (it must share the student's
            tokenizer), otherwise unused.
        **settings: :class:`SequenceClassifier`'s (learning_rate, weight_decay, warmup_ratio,
            label_permutation, pooling, layer).

    Raises:
        ValueError: the representation term without teacher embeddings, the explanation term without the
            live teacher, or teacher logits of another class count.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        *,
        teacher: TeacherTargets,
        terms: DistillTerms | None = None,
        live_teacher: LiveTeacher | None = None,
        **settings: Any,
    ):
        chosen, targets, live = terms or DistillTerms(), teacher, live_teacher
        # SequenceClassifier saves (and deep-copies) its caller's init arguments as hyperparameters: keep the
        # teacher's tensors and model out of them, and the terms a plain dict (last.ckpt loads weights_only).
        teacher = live_teacher = terms = None
        super().__init__(model, num_labels, **settings)
        self.remove_ignored_hparams(["teacher", "live_teacher", "terms"])
        self.save_hyperparameters({"terms": asdict(chosen)})
        self.terms = chosen
        if targets.logits.shape[1] != num_labels:
            raise ValueError(
                f"the teacher's outputs have {targets.logits.shape[1]} classes, the student {num_labels}"
            )
        order = torch.argsort(targets.example_ids)
        self.register_buffer("teacher_ids", targets.example_ids[order], persistent=False)
        self.register_buffer("teacher_logits", targets.logits[order], persistent=False)
        self.projection: nn.Module | None = None
        if chosen.needs_embeddings:
            if targets.embeddings is None:
                raise ValueError("the representation term needs the teacher's pooled embeddings")
            self.register_buffer("teacher_embeddings", targets.embeddings[order], persistent=False)
            width_s, width_t = int(model.config.hidden_size), int(targets.embeddings.shape[1])
            if chosen.representation == "cosine" and width_s != width_t:
                self.projection = nn.Linear(width_s, width_t)
        if chosen.needs_live_teacher and live is None:
            raise ValueError("the explanation term needs the live teacher model")
        # A plain attribute, not a submodule: never trained, saved or counted as the student's.
        self.live_teacher = live if chosen.needs_live_teacher else None

    def on_fit_start(self) -> None:
        if self.live_teacher is not None:
            self.live_teacher.model.to(self.device).eval().requires_grad_(False)

    def teacher_targets(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The teacher's ``(B, C)`` logits and ``(B, D)`` embeddings (None when not kept) of the batch's
        examples, looked up by ``example_id``.

        Raises:
            KeyError: an example of the batch has no teacher output (the cache entry is for other data).
        """
        ids = batch["example_id"].to(self.teacher_ids.device)
        pos = torch.searchsorted(self.teacher_ids, ids).clamp_max(self.teacher_ids.numel() - 1)
        if not torch.equal(self.teacher_ids[pos], ids):
            missing = ids[self.teacher_ids[pos] != ids][:5].tolist()
            raise KeyError(f"no teacher outputs for training example(s) {missing}")
        emb = self.teacher_embeddings[pos] if self.terms.needs_embeddings else None
        return self.teacher_logits[pos], emb

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each weighted term of the loss on ``batch`` and their sum under ``"loss"``."""
        terms, labels = self.terms, batch["labels"]
        inputs = self._inputs(batch)
        teacher_logits, teacher_emb = self.teacher_targets(batch)
        teacher_logits = teacher_logits.to(labels.device)
        target = teacher_logits.argmax(dim=-1)
        out_terms: dict[str, Tensor] = {}
        if terms.needs_live_teacher:
            student_attr, out = input_x_gradient(
                self.model,
                inputs,
                target,
                self.perm,
                create_graph=True,
                output_hidden_states=terms.needs_embeddings,
            )
            teacher_perm = torch.as_tensor(list(self.live_teacher.label_permutation), device=labels.device)
            teacher_attr, _ = input_x_gradient(
                self.live_teacher.model, inputs, target, teacher_perm, create_graph=False
            )
            out_terms["explanation"] = terms.explanation * explanation_alignment_loss(
                student_attr, teacher_attr, batch["attention_mask"]
            )
        else:
            out = self.model(**inputs, output_hidden_states=terms.needs_embeddings)
        logits = out.logits[:, self.perm]
        out_terms["distillation"] = distillation_loss(
            logits, teacher_logits, labels, temperature=terms.temperature, alpha=terms.alpha
        )
        if terms.negative_flip > 0:
            out_terms["negative_flip"] = terms.negative_flip * focal_distillation_loss(
                logits,
                teacher_logits,
                labels,
                temperature=terms.temperature,
                alpha=terms.focal_alpha,
                beta=terms.focal_beta,
            )
        if terms.calibration_weight > 0:
            penalty = (
                mmce(logits, labels)
                if terms.calibration == "mmce"
                else confidence_gap(logits, teacher_logits)
            )
            out_terms["calibration"] = terms.calibration_weight * penalty
        if terms.needs_embeddings and labels.shape[0] > 1:  # CKA of one row is undefined
            student_emb = pool(out.hidden_states[self.layer], batch["attention_mask"], self.pooling)
            teacher_emb = teacher_emb.to(student_emb.device)
            distance = (
                cka_loss(student_emb, teacher_emb)
                if terms.representation == "cka"
                else hidden_cosine_loss(student_emb, teacher_emb, projection=self.projection)
            )
            out_terms["representation"] = terms.representation_weight * distance
        out_terms["loss"] = torch.stack(list(out_terms.values())).sum()
        return out_terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        parts = self.loss_terms(batch)
        n = batch["labels"].shape[0]
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        for name, value in parts.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=n)
        return parts["loss"]
