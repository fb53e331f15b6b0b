"""The attribution methods: LIME and SHAP (through the model's text scorer) and integrated gradients
(through the torch model), each a :class:`~plugins.characteristics.attribution.characteristic.
AttributionCharacteristic` with its own settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from plugins.characteristics.attribution import explainers
from plugins.characteristics.attribution.characteristic import AttributionCharacteristic
from trustequiv.models.scorer import default_devices

log = logging.getLogger(__name__)

#: paper A's LIME budget: 1000 samples for NLI, 100 for paraphrase identification.
PAPER_NUM_SAMPLES = {"mnli": 1000, "snli": 1000, "rte": 1000, "mrpc": 100, "qqp": 100, "paws_qqp": 100}


class LimeAttribution(AttributionCharacteristic):
    """LIME (``lime.lime_text.LimeTextExplainer``) word attributions (paper A's protocol by default).

    Args:
        num_samples: perturbations per example; null: paper A's per-task budget (:data:`PAPER_NUM_SAMPLES`:
            1000 for NLI, 100 for paraphrase identification; 1000 otherwise).
        num_features: features LIME's linear model keeps (paper A: 20); the others get 0.
        kernel_width: LIME's kernel width (its default 25).
        **kwargs: :class:`AttributionCharacteristic`.
    """

    name = "attribution_lime"
    method = "lime"

    def __init__(
        self,
        num_samples: int | None = None,
        num_features: int = 20,
        kernel_width: float = 25.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.num_features, self.kernel_width = int(num_features), float(kernel_width)

    def method_config(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "paper_num_samples": PAPER_NUM_SAMPLES,
            "num_features": self.num_features,
            "kernel_width": self.kernel_width,
        }

    def samples_for(self, task: Mapping[str, Any]) -> int:
        return self.num_samples or PAPER_NUM_SAMPLES.get(str(task.get("name")), 1000)

    def _attribute(self, feats, model, task, seed, n_classes, scorer):
        return explainers.lime_attributions(
            feats,
            scorer,
            seed=seed,
            n_classes=n_classes,
            num_samples=self.samples_for(task),
            num_features=self.num_features,
            mask_token=self.mask_token,
            kernel_width=self.kernel_width,
        )


class ShapAttribution(AttributionCharacteristic):
    """SHAP permutation values (``shap.PermutationExplainer``) over word features.

    Args:
        max_evals: model evaluations per example; null: paper A's ``max(100, 2 n + 1)``.
        **kwargs: :class:`AttributionCharacteristic`.
    """

    name = "attribution_shap"
    method = "shap"

    def __init__(self, max_evals: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_evals = None if max_evals is None else int(max_evals)

    def method_config(self) -> dict[str, Any]:
        return {"max_evals": self.max_evals, "algorithm": "permutation"}

    def _attribute(self, feats, model, task, seed, n_classes, scorer):
        return explainers.shap_attributions(
            feats,
            scorer,
            seed=seed,
            n_classes=n_classes,
            max_evals=self.max_evals,
            mask_token=self.mask_token,
        )


class IgAttribution(AttributionCharacteristic):
    """Integrated gradients (``captum.attr.LayerIntegratedGradients`` on the input embeddings), deterministic:
    one run whatever ``seeds`` says. Needs the torch model (``ModelHandle.loaded``): on a source without one
    (ONNX) ``collect`` raises ``ValueError`` naming LIME and SHAP, which run through the model's scorer.

    Args:
        n_steps: Riemann steps (Captum's default 50); batch_size: examples per attribution call;
        internal_batch_size: Captum's internal batch (bounds memory).
        **kwargs: :class:`AttributionCharacteristic` (``batch_tokens`` and ``max_batch`` do not apply;
            ``devices[0]`` is where the model runs).
    """

    name = "attribution_ig"
    needs_gradients = True
    method = "ig"
    deterministic = True
    needs_gradients = True

    def __init__(self, n_steps: int = 50, batch_size: int = 8, internal_batch_size: int = 256, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_steps, self.batch_size, self.internal_batch_size = (
            int(n_steps),
            int(batch_size),
            int(internal_batch_size),
        )

    def method_config(self) -> dict[str, Any]:
        # int8 dynamic quantization: through the dequantized int8 weights (explainers.differentiable_twin)
        return {"n_steps": self.n_steps, "baseline": "pad", "int8": "dequantized_weights"}

    def notes(self) -> list[str]:
        return [
            *super().notes(),
            "IG of an int8 (dynamically quantized) model runs through an fp32 copy with its int8 weights "
            "dequantized: activation quantization has no gradient and is left out of IG (LIME and SHAP "
            "see the int8 model itself)",
        ]

    def _attribute(self, feats, model, task, seed, n_classes, scorer):
        loaded = model.loaded
        cpu_only = bool(getattr(loaded, "cpu_only", False))  # int8 dynamic quantization: CPU kernels only
        device = "cpu" if cpu_only else (self.devices or default_devices())[0]
        net, twin = explainers.differentiable_twin(loaded.model.to(device).eval())
        if twin:
            log.info("%s: int8 model, attributing through its dequantized weights", self.name)
        with torch.enable_grad():
            return explainers.ig_attributions(
                feats,
                net,
                loaded.tokenizer,
                loaded.label_permutation,
                n_classes=n_classes,
                max_length=int(task.get("max_length", 128)),
                n_steps=self.n_steps,
                batch_size=self.batch_size,
                internal_batch_size=self.internal_batch_size,
            )
