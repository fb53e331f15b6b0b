"""An evaluate or train job, as its steps: the plan read from the config (``plan``), one runner per model
(``runner``), the characteristics over the runners' outputs (``comparison``) and the jobs themselves
(``pipeline``: plan -> runners -> characteristics -> verdict -> report).

May import: every room; nothing imports it but the entry points (``trustequiv.cli``).
"""
