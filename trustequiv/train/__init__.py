"""Fine-tuning: one model on one task into a checkpoint (``fine_tune``), the LightningModule
(``lightning_module``), knowledge distillation (``distillation``), the Trainer shared with prediction
(``trainer``), trust measured while a model trains (``trust_callbacks``) and checkpoints found or made when
allowed (``checkpoints``).

May import: the core modules, ``trustequiv.functional``, ``trustequiv.data`` and ``trustequiv.models``.
"""
