"""Concrete plugins: model sources, task kinds, compressors and characteristics.

``PLUGINS`` declares every source, task kind and compressor by name as ``"module:attribute"``; the core
reaches them only through :func:`trustequiv.registry.lookup`, which imports a module when its entry is first
asked for (so an optional dependency, e.g. onnxruntime, loads only when used). A new plugin is a module here
plus its line below (and, for a compressor, its ``conf/compressor/<name>.yaml``). Characteristics are built
by Hydra from ``conf/characteristic/<name>.yaml`` (``_target_``, our own config tree only).
"""

PLUGINS: dict[str, dict[str, str]] = {
    "source": {
        "hf": "plugins.sources.hf:HFSource",
        "onnx": "plugins.sources.onnx.source:OnnxSource",
        "predictions": "plugins.sources.predictions.source:PredictionsSource",
    },
    "task_kind": {
        "classification": "plugins.tasks.classification:KIND",
        "extractive_qa": "plugins.tasks.extractive_qa:KIND",
    },
    # conf/compressor/<name>.yaml holds each one's settings; its _target_ must be the class named here
    "compressor": {
        "distill": "plugins.compressors.distill:Distill",
        "distill_trust": "plugins.compressors.distill:Distill",
        "layer_drop": "plugins.compressors.layer_drop:LayerDrop",
        "prune_heads": "plugins.compressors.prune_heads:PruneHeads",
        "prune_magnitude": "plugins.compressors.prune:MagnitudePrune",
        "quantize_dynamic": "plugins.compressors.quantize:QuantizeDynamic",
        "quantize_weight": "plugins.compressors.quantize_weight:QuantizeWeight",
        "quantize_weight_int4": "plugins.compressors.quantize_weight:QuantizeWeight",
    },
}
