"""Interpretability alignment: do the two models rest their predictions on the same words?

The characteristic is :class:`~plugins.characteristics.attribution.characteristic.AttributionCharacteristic`
(sampling, per-seed resume, alignment metrics and figures); the methods are in :mod:`.methods` (LIME, SHAP,
IG), their algorithms in :mod:`.explainers`, word features in :mod:`.perturb`, figures in :mod:`.figures`.
This module only re-exports them (the configs' ``_target_``s name these classes here).
"""

from plugins.characteristics.attribution import explainers, figures, perturb
from plugins.characteristics.attribution.characteristic import AttributionCharacteristic, ExplainedClass
from plugins.characteristics.attribution.methods import (
    PAPER_NUM_SAMPLES,
    IgAttribution,
    LimeAttribution,
    ShapAttribution,
)

__all__ = [
    "PAPER_NUM_SAMPLES",
    "AttributionCharacteristic",
    "ExplainedClass",
    "IgAttribution",
    "LimeAttribution",
    "ShapAttribution",
    "explainers",
    "figures",
    "perturb",
]
