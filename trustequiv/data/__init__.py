"""Task data: tokenized, length-sorted batches (``batches``), seeded hash splits and content fingerprints
(``splits``), label names matched by name (``labels``), the one seeded example sampler (``sampling``) and the
:class:`TaskKind` interface that task plugins implement (``task_kind``).

May import: the core modules (``trustequiv.outputs``, ``user_errors``, ``registry``...) only; no other room.
"""
