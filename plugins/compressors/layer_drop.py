"""Drop encoder layers of a fine-tuned model (then fine-tune again)."""

from __future__ import annotations

from typing import Any

from torch import nn

from trustequiv.models.compressor import Compressor


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """The ``nn.ModuleList`` of transformer blocks and the attribute name holding it.

    Supports BERT/RoBERTa/ELECTRA (``<base>.encoder.layer``) and DistilBERT (``<base>.transformer.layer``).

    Raises:
        ValueError: the architecture is not one of those.
    """
    base = getattr(model, "base_model", model)
    for holder_name in ("encoder", "transformer"):
        holder = getattr(base, holder_name, None)
        if holder is not None and isinstance(getattr(holder, "layer", None), nn.ModuleList):
            return holder, "layer"
    raise ValueError(f"layer_drop does not know where {type(model).__name__} keeps its layers")


def kept_layers(n_layers: int, keep: str | list[int]) -> list[int]:
    """Indices of the layers to keep: ``every_other`` (0, 2, 4, ...), ``top_half_dropped`` (the lower half),
    or an explicit list.

    Raises:
        ValueError: an empty selection or an index out of range.
    """
    if keep == "every_other":
        idx = list(range(0, n_layers, 2))
    elif keep == "top_half_dropped":
        idx = list(range((n_layers + 1) // 2))
    else:
        idx = sorted({int(i) for i in keep})
    if not idx or idx[0] < 0 or idx[-1] >= n_layers:
        raise ValueError(f"layers to keep {idx} do not fit a model with {n_layers} layers")
    return idx


class LayerDrop(Compressor):
    """Keep a subset of encoder layers of the fine-tuned reference (default every other one), then fine-tune.

    The layer-dropping strategies of Sajjad et al. (2023, "On the effect of dropping layers of pre-trained
    transformer models"); "alternate" dropping is their every-other scheme.

    Args:
        name: registry name. keep: ``every_other``, ``top_half_dropped`` or a list of layer indices.
        finetune: fine-tune on the task afterwards (default True).
    """

    def __init__(
        self, name: str = "layer_drop", keep: str | list[int] = "every_other", finetune: bool = True
    ):
        self.name, self.keep, self.finetune = name, keep, bool(finetune)

    def compress(self, model: nn.Module) -> nn.Module:
        holder, attr = encoder_layers(model)
        layers = getattr(holder, attr)
        idx = kept_layers(len(layers), self.keep if isinstance(self.keep, str) else list(self.keep))
        setattr(holder, attr, nn.ModuleList([layers[i] for i in idx]))
        config = model.config
        for key in ("num_hidden_layers", "n_layers"):  # BERT-style, DistilBERT
            if hasattr(config, key):
                setattr(config, key, len(idx))
        # Attention modules index their layer for caches; renumber so the config and modules agree.
        for new_i, layer in enumerate(getattr(holder, attr)):
            attn = getattr(getattr(layer, "attention", None), "self", None)
            if attn is not None and hasattr(attn, "layer_idx"):
                attn.layer_idx = new_i
        return model

    def recipe(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep if isinstance(self.keep, str) else list(self.keep)}
