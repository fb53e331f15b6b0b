"""The config tree (Hydra configs) as a package, so an installed wheel carries it: setup.py maps the package
``trustequiv_conf`` to this folder; the console scripts (trustequiv.cli) search ``pkg://trustequiv_conf``."""
