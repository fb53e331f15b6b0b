"""The verdict: each candidate judged against the noise floor, statistic by statistic (``verdict``), and the
floor's replicas: the reference fine-tuned again with other seeds, or replicas made elsewhere
(``noise_floor``).

May import: the core modules, ``trustequiv.functional`` and ``trustequiv.models``.
"""
