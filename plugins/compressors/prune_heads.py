"""Structured attention-head pruning by gradient importance (Michel et al. 2019), then fine-tuning again."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from trustequiv.models.compressor import CalibrationData, Compressor

log = logging.getLogger(__name__)


def head_importance(model: nn.Module, data: CalibrationData, normalize_by_layer: bool = True) -> Tensor:
    """Importance of each attention head: ``I_h = E |dL/dxi_h|``, the mean absolute gradient of the task loss
    with respect to a head mask ``xi`` (all ones) that scales each head's attention output.

    Michel, Levy and Neubig (2019), "Are Sixteen Heads Really Better than One?", eq. 2, with the expectation
    taken over batches (the batch-mean loss) as in their code and transformers' ``run_bertology.py``; with
    ``normalize_by_layer`` each layer's scores are divided by their l2 norm (their section 4.2). ``xi`` is
    passed as the model's Hugging Face ``head_mask`` argument by a forward pre-hook; the model runs in eval
    mode (no dropout) and its parameters get no gradient.

    Args:
        model: a Hugging Face model taking ``head_mask`` (BERT, RoBERTa, ELECTRA, DistilBERT ...), unpruned.
        data: the batches and the task loss (:class:`trustequiv.models.compressor.CalibrationData`).

    Returns:
        ``(num_hidden_layers, num_attention_heads)`` float tensor on the CPU, >= 0.

    Raises:
        ValueError: no batches, or the model already has pruned heads (layers of unequal head counts).
    """
    config = model.config
    if getattr(config, "pruned_heads", None):
        raise ValueError(
            f"prune_heads: the model already has pruned heads {config.pruned_heads} - "
            "start from the unpruned fine-tuned model"
        )
    if not data.batches:
        raise ValueError("prune_heads: no calibration batches - the task's train split is empty")
    device = next(model.parameters()).device
    mask = torch.ones(config.num_hidden_layers, config.num_attention_heads, device=device, requires_grad=True)
    total = torch.zeros_like(mask, requires_grad=False)

    def add_head_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "head_mask": mask}

    handle = model.register_forward_pre_hook(add_head_mask, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        for batch in data.batches:
            on_device = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            (grad,) = torch.autograd.grad(data.loss(on_device), mask)
            total += grad.abs()
    finally:
        handle.remove()
        model.train(was_training)
    importance = total / len(data.batches)
    if normalize_by_layer:
        importance = importance / (importance.norm(dim=-1, keepdim=True) + 1e-20)
    return importance.detach().cpu()


def least_important_heads(importance: Tensor, fraction: float) -> dict[int, list[int]]:
    """The ``round(fraction * all heads)`` heads of lowest importance over all layers together, keeping at
    least one head in every layer; ties go to the lower (layer, head).

    Args:
        importance: ``(layers, heads)`` scores (:func:`head_importance`). fraction: share to prune, in [0, 1).

    Returns:
        ``{layer: sorted heads}`` for the layers losing any, the form of ``PreTrainedModel.prune_heads``.
    """
    n_layers, n_heads = importance.shape
    n_prune = min(round(fraction * n_layers * n_heads), n_layers * (n_heads - 1))
    order = sorted((float(importance[i, h]), i, h) for i in range(n_layers) for h in range(n_heads))
    left, chosen = [n_heads] * n_layers, {}
    for _, i, h in order:
        if n_prune == 0:
            break
        if left[i] > 1:
            chosen.setdefault(i, []).append(h)
            left[i] -= 1
            n_prune -= 1
    return {i: sorted(heads) for i, heads in sorted(chosen.items())}


class PruneHeads(Compressor):
    """Remove the least important attention heads, globally across layers (Michel et al. 2019), with
    transformers' ``model.prune_heads``: the query/key/value rows and output columns of those heads go,
    and ``config.pruned_heads`` records them, so the checkpoint reloads with the pruned shapes.

    Importance (:func:`head_importance`) is measured on the first ``calibration_batches`` training batches
    of the task; the pruned heads go into the recipe (``trustequiv.json``).

    Args:
        name: registry name. heads_to_prune: share of all heads removed, in [0, 1) (at least one head stays
            per layer). calibration_batches: training batches the importance is averaged over.
        normalize_by_layer: divide each layer's importance by its l2 norm (the paper's default).
        finetune: fine-tune on the task afterwards (default True, as in the paper's pruning-then-retraining).

    Raises:
        ValueError: heads_to_prune outside [0, 1) or calibration_batches < 1.
    """

    def __init__(
        self,
        name: str = "prune_heads",
        heads_to_prune: float = 0.5,
        calibration_batches: int = 32,
        normalize_by_layer: bool = True,
        finetune: bool = True,
    ):
        if not 0.0 <= float(heads_to_prune) < 1.0:
            raise ValueError(f"prune_heads: heads_to_prune must be in [0, 1), got {heads_to_prune} - try 0.5")
        if int(calibration_batches) < 1:
            raise ValueError(f"prune_heads: calibration_batches must be >= 1, got {calibration_batches}")
        self.name, self.heads_to_prune = name, float(heads_to_prune)
        self.calibration_batches, self.normalize_by_layer = int(calibration_batches), bool(normalize_by_layer)
        self.finetune = bool(finetune)
        self.pruned: dict[int, list[int]] | None = None

    def compress(self, model: nn.Module, data: CalibrationData | None = None) -> nn.Module:
        if data is None:
            raise ValueError("prune_heads: compress needs data=CalibrationData (head importance)")
        importance = head_importance(model, data, self.normalize_by_layer)
        self.pruned = least_important_heads(importance, self.heads_to_prune)
        n_pruned = sum(map(len, self.pruned.values()))
        log.info("prune_heads: pruning %d of %d heads: %s", n_pruned, importance.numel(), self.pruned)
        model.prune_heads(self.pruned)
        return model

    def recipe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "heads_to_prune": self.heads_to_prune,
            "calibration_batches": self.calibration_batches,
            "normalize_by_layer": self.normalize_by_layer,
            "finetune": self.finetune,
        }
        if self.pruned is not None:
            out["pruned_heads"] = {str(i): heads for i, heads in self.pruned.items()}
        return out
