"""trustequiv: is a compressed transformer trust-equivalent to the large one it replaces?

The package's rooms, lowest first (a room imports only rooms below it, as ``tests/core/test_layout.py``
checks):

- the core modules here: contracts (``characteristic``, ``outputs``), the output cache (``cache``), the one
  prediction path (``prediction``), config helpers and the config tree (``config``, ``conf_tree``), user
  errors (``user_errors``), the plugin registry (``registry``), plain values (``plain``), experiment loggers
  (``tracking``) and the console scripts (``cli``, which alone reaches up to ``run``);
- ``functional/``: pure metric functions;
- ``data/``, then ``models/``, then ``train/``, then ``verdict/``, then ``report/``, then ``run/``.
"""

__version__ = "0.1.0"
