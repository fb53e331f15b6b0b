"""LightningModule around a Hugging Face sequence classifier: fine-tuning and cached-output prediction."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
from torchmetrics.classification import MulticlassAccuracy
from transformers import get_linear_schedule_with_warmup

log = logging.getLogger(__name__)


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """Pool ``(B, T, D)`` hidden states to ``(B, D)``: ``"cls"`` (first token) or ``"mean"`` (real tokens).

    Raises:
        ValueError: unknown pooling.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown pooling '{pooling}': use cls or mean")


class SequenceClassifier(L.LightningModule):
    """Fine-tunes ``model`` (AdamW, linear warmup then linear decay) and predicts cached outputs.

    ``predict_step`` returns, per batch, ``example_id (B,)``, ``logits (B, C)`` in the task's canonical label
    order (columns permuted by ``label_permutation``), ``labels (B,)`` and ``embeddings (B, D)`` pooled from
    hidden layer ``layer``. All outputs are float32 on CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        *,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        label_permutation: Sequence[int] | None = None,
        pooling: str = "cls",
        layer: int = -1,
        fused_adamw: bool = False,
    ):
        super().__init__()
        self.model = model
        self.learning_rate, self.weight_decay, self.warmup_ratio = learning_rate, weight_decay, warmup_ratio
        self.pooling, self.layer = pooling, layer
        perm = list(label_permutation) if label_permutation is not None else list(range(num_labels))
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        #: validation_step returns the batch's outputs (hidden states are then computed too)
        self.validation_outputs = False
        #: AdamW's fused kernel (True, opt-in: ``+task.training.fused_adamw=true``) or its for-loop
        #: implementation (False, the default: checkpoints stay bit-for-bit those fine-tuned before); see
        #: :meth:`make_optimizer`
        self.fused_adamw = fused_adamw
        self.save_hyperparameters(ignore=["model"])

    @staticmethod
    def _inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, batch: dict[str, Tensor]):
        return self.model(**self._inputs(batch))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model(**self._inputs(batch), labels=batch["labels"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor] | None:
        """Logs ``val/loss`` and ``val/acc``; with :attr:`validation_outputs` set, returns the batch's outputs
        as :meth:`predict_step` does (:class:`trustequiv.train.trust_callbacks.TrustCallback` collects
        them)."""
        keep = self.validation_outputs
        out = self.model(**self._inputs(batch), labels=batch["labels"], output_hidden_states=keep)
        n = batch["labels"].shape[0]
        self.val_acc(out.logits, batch["labels"])
        self.log("val/loss", out.loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=n)
        return self._outputs(batch, out) if keep else None

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        return self._outputs(batch, self.model(**self._inputs(batch), output_hidden_states=True))

    def _outputs(self, batch: dict[str, Tensor], out) -> dict[str, Tensor]:
        logits = out.logits.detach().float()[:, self.perm]
        emb = pool(out.hidden_states[self.layer].detach(), batch["attention_mask"], self.pooling).float()
        return {
            "example_id": batch["example_id"].cpu(),
            "logits": logits.cpu(),
            "labels": batch["labels"].cpu(),
            "embeddings": emb.cpu(),
        }

    def make_optimizer(self, fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW over the module's trainable parameters, without weight decay on biases and LayerNorm weights
        (BERT's recipe). All of the module's parameters: a subclass may add its own (distillation's
        projection).

        ``fused``: PyTorch's fused AdamW kernel (one pass over each parameter instead of a dozen elementwise
        ops: 83 -> 14 ms a step for MiniLM's 22.7M parameters on 2 CPU cores, ``benchmarks/fine_tune.py``),
        the same update up to float rounding (``tests/core/test_fine_tune_speed.py``), hence opt-in. None:
        :attr:`fused_adamw`, kept only where :meth:`fused_possible` (else the for-loop one, with a warning).
        """
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if fused is None:
            fused = bool(self.fused_adamw)
            if fused and not self.fused_possible():
                log.warning(
                    "fused AdamW needs floating parameters on a device with fused kernels and a precision "
                    "other than *-mixed (Lightning refuses gradient clipping with it there): the for-loop "
                    "AdamW is used"
                )
                fused = False
        return torch.optim.AdamW(groups, lr=self.learning_rate, fused=True if fused else None)

    def fused_possible(self) -> bool:
        """Whether AdamW's fused kernel can train this module: every trainable parameter a floating tensor on
        a device with fused kernels, and a precision other than Lightning's mixed ones (its
        ``MixedPrecision`` plugin refuses gradient clipping with an optimizer that unscales gradients itself,
        as fused ones do; ``trainer.precision=bf16-mixed`` thus keeps the for-loop AdamW)."""

        params = [p for p in self.parameters() if p.requires_grad]
        supported = set(_get_fused_kernels_supported_devices())
        if not params or not all(p.is_floating_point() and p.device.type in supported for p in params):
            return False
        trainer = self._trainer
        precision = str(getattr(trainer, "precision", "32-true")) if trainer is not None else "32-true"
        return not precision.endswith("-mixed")

    def configure_optimizers(self):

        optimizer = self.make_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
