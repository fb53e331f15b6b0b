"""Adversarial vulnerability (paper B: BERT-Attack through TextAttack).

The characteristic is :class:`~plugins.characteristics.adversarial.characteristic.Adversarial`; the attack's
construction is in :mod:`.attack`, its run and resume in :mod:`.runner`, the TextAttack model wrapper over
the model's text scorer in :mod:`.wrapper`, the lazy BERT-Attack word swap in :mod:`.swap`, the offline
TextAttack import in :mod:`.env` (with :mod:`.stopwords`). This module only re-exports (the config's
``_target_`` names ``Adversarial`` here). The masked LM for offline substitutes is fitted by
``scripts/fit_masked_lm.py``.
"""

from plugins.characteristics.adversarial.attack import (
    PAPER_MLM,
    build_attack,
    departures,
    load_masked_lm,
    sentence_encoder_constraint,
)
from plugins.characteristics.adversarial.characteristic import Adversarial
from plugins.characteristics.adversarial.runner import (
    read_jsonl,
    result_record,
    reusable_under_budget,
    run_attack,
)
from plugins.characteristics.adversarial.wrapper import TextClassifier, textattack_wrapper

__all__ = [
    "PAPER_MLM",
    "Adversarial",
    "TextClassifier",
    "build_attack",
    "departures",
    "load_masked_lm",
    "read_jsonl",
    "result_record",
    "reusable_under_budget",
    "run_attack",
    "sentence_encoder_constraint",
    "textattack_wrapper",
]
