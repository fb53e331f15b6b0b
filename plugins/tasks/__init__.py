"""Task plugins: loaders reached from ``conf/task/<task>.yaml`` through ``loader._target_``."""

from plugins.tasks.glue import GlueTaskLoader, TextClassificationLoader

__all__ = ["GlueTaskLoader", "TextClassificationLoader"]
