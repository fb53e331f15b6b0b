"""The config tree: where ``conf/`` is (a checkout's or the installed package ``trustequiv_conf``) and which
names each config group holds. Imports nothing of trustequiv, so every module (user errors included) may
ask it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The Hydra search path of the console scripts (trustequiv.cli): the package ``trustequiv_conf``, which is the
# repository's top-level ``conf/`` folder (setup.py maps it; ``conf/__init__.py`` makes it importable).
CONF_PACKAGE = "trustequiv_conf"


def _conf_dir() -> Path:
    """The config tree: the clone's ``conf/`` beside the package when there is one (a checkout or an
    editable install), else the copy installed with the wheel as the package ``trustequiv_conf``."""
    repo = Path(__file__).resolve().parent.parent / "conf"
    if (repo / "evaluate.yaml").is_file():
        return repo
    return Path(str(files(CONF_PACKAGE)))


CONF_DIR = _conf_dir()


def available(group: str) -> list[str]:
    """Names of the config files in ``conf/<group>/`` and its nested groups (the plugin registry):
    ``conf/task/qa/squad2.yaml`` is ``qa/squad2``, selected as ``task=qa/squad2``."""
    root = CONF_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
