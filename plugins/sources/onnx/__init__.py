"""Model source ``onnx``: a classifier exported to ONNX and run through ONNX Runtime on the CPU.

- :mod:`.files`: the ``.onnx`` file's checks (its external tensor-data files, the one-line error for a file
  that is not an ONNX model), its fingerprint, and the label names and ``config.json`` beside it;
- :mod:`.runtime`: ONNX Runtime sessions on the CPU provider, :class:`~.runtime.OnnxModel` and the scorer
  :class:`~.runtime.OnnxTextScorer`;
- :mod:`.export`: exporting a Hugging Face classifier to ONNX, checked against torch, with int8 quantization;
- :mod:`.source`: :class:`~.source.OnnxSource`, the ModelSource (config, export on demand, cached outputs);
  its module docstring describes the source as a whole.

Each module imports only those listed before it.
"""
