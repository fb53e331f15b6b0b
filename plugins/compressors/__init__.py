"""Compressors: how a candidate is made from a fine-tuned reference. Each is a
:class:`trustequiv.models.compressor.Compressor` subclass named by its ``conf/compressor/<name>.yaml``;
checkpoints
record only the name and plain settings, and are rebuilt by name
(:func:`trustequiv.models.compressor.build_compressor`).
"""
