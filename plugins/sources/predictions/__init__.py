"""Model source ``predictions``: a model known only by its per-example outputs, made elsewhere.

- :mod:`.files`: reading and checking the files (a predictions CSV, an error-set JSON list, embeddings and
  their row ids) and mapping the ids they hold to a split's int ids;
- :mod:`.source`: :class:`~.source.PredictionsSource`, the ModelSource (config, identity, outputs per
  evaluated set); its module docstring describes the source and the file formats.

Each module imports only those listed before it.
"""
