"""Global unstructured magnitude pruning (torch.nn.utils.prune), optionally fine-tuned again with the mask."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from trustequiv.models.compressor import CalibrationData, Compressor


def prunable_linears(model: nn.Module, include_head: bool = False) -> list[nn.Linear]:
    """The ``nn.Linear`` modules magnitude pruning acts on: those of the base model (the transformer blocks
    and, in BERT, the pooler); with ``include_head`` also those outside it (the task head). Embeddings and
    LayerNorms are not ``nn.Linear``: never pruned."""
    base = getattr(model, "base_model", model)
    inside = {id(m) for m in base.modules()}
    return [m for m in model.modules() if isinstance(m, nn.Linear) and (include_head or id(m) in inside)]


def weight_sparsity(modules: list[nn.Linear]) -> float:
    """Share of exactly-zero entries over the ``weight`` of ``modules`` (the masked weight while pruning is
    not yet made permanent)."""
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    total = sum(m.weight.numel() for m in modules)
    return zeros / total if total else 0.0


def fold_masks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every pruning mask made permanent (``prune.remove``: ``weight = weight_orig *
    weight_mask``, an ordinary parameter), so it saves as plain safetensors; ``model`` keeps its masks.
    ``model`` itself when nothing in it is pruned."""
    if not prune.is_pruned(model):
        return model
    # After a forward with autograd the masked weight is a non-leaf tensor, which deepcopy refuses: copy it
    # detached (prune.remove below recomputes it from the copied weight_orig and weight_mask anyway).
    memo = {
        id(masked): masked.detach()
        for module in model.modules()
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
        and (masked := getattr(module, hook._tensor_name, None)) is not None
    }
    folded = copy.deepcopy(model, memo)
    for module in folded.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return folded


class MagnitudePrune(Compressor):
    """Global unstructured magnitude pruning: the ``sparsity`` share of smallest-magnitude weights over all
    pruned ``nn.Linear`` weights together is set to zero (Han et al. 2015, "Learning both weights and
    connections for efficient neural networks"; on BERT, Gordon et al. 2020, "Compressing BERT: studying the
    effects of weight pruning on transfer learning"), with ``torch.nn.utils.prune.global_unstructured`` and
    ``L1Unstructured``. Layers end with different sparsities; the global share is exact.

    With ``finetune`` the pruning reparametrization (``weight = weight_orig * weight_mask``) stays on during
    fine-tuning, so the pruned weights stay zero; :meth:`before_save` writes the masked weights as ordinary
    ones. The checkpoint loads as a plain dense model whose zeros are the pruned weights.

    Args:
        name: registry name. sparsity: share of weights pruned, in [0, 1). include_head: prune the task head
            (``nn.Linear`` outside the base model) too. finetune: fine-tune on the task afterwards.

    Raises:
        ValueError: sparsity outside [0, 1).
    """

    def __init__(
        self,
        name: str = "prune_magnitude",
        sparsity: float = 0.5,
        include_head: bool = False,
        finetune: bool = True,
    ):
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"prune_magnitude: sparsity must be in [0, 1), got {sparsity} - e.g. 0.5")
        self.name, self.sparsity, self.include_head = name, float(sparsity), bool(include_head)
        self.finetune = bool(finetune)
        self.measured_sparsity: float | None = None

    def compress(self, model: nn.Module, data: CalibrationData | None = None) -> nn.Module:
        modules = prunable_linears(model, self.include_head)
        if not modules:
            raise ValueError(f"prune_magnitude: {type(model).__name__} has no nn.Linear weights to prune")
        with torch.no_grad():
            prune.global_unstructured(
                [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=self.sparsity
            )
        self.measured_sparsity = weight_sparsity(modules)
        return model

    def before_save(self, model: nn.Module) -> nn.Module:
        return fold_masks(model)

    def recipe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "sparsity": self.sparsity,
            "include_head": self.include_head,
            "finetune": self.finetune,
        }
        if self.measured_sparsity is not None:
            out["measured_sparsity"] = round(self.measured_sparsity, 6)
        return out
