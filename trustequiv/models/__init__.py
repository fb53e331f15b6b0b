"""Judged models: the :class:`ModelSource` interface (``source``) and the :class:`ModelHandle` characteristics
receive (``handle``), texts to probabilities (``scorer``), model specs and where their checkpoints are
(``spec``), checkpoints checked (``checks``), loaded with their labels mapped (``loading``) and fingerprinted
(``fingerprint``), the :class:`Compressor` interface and how a candidate is built (``compressor``) and the hub
zoo (``zoo``).

May import: the core modules and ``trustequiv.data``.
"""
