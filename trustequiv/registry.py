"""The one way from a config name to a plugin: ``lookup(group, name)`` over the entries ``plugins.PLUGINS``
declares (``model.source``, ``task.kind``, ``compressor.name``). Nothing is found by scanning files, and no
name read from a checkpoint or cache can reach a module that is not declared there."""

from __future__ import annotations

import importlib
from typing import Any

from plugins import PLUGINS

GROUPS = {"source": "model.source", "task_kind": "task.kind", "compressor": "compressor"}


def names(group: str) -> list[str]:
    """The declared names of ``group`` (``source``, ``task_kind`` or ``compressor``), sorted.

    Raises:
        KeyError: ``group`` is not one of :data:`GROUPS`.
    """
    if group not in PLUGINS:
        raise KeyError(f"unknown plugin group {group!r}; groups: {sorted(PLUGINS)}")
    return sorted(PLUGINS[group])


def lookup(group: str, name: str) -> Any:
    """The object that ``PLUGINS[group][name]`` declares (a class, or a task kind's instance); its module is
    imported on first use.

    Raises:
        LookupError: ``name`` is not declared in ``group``; the message lists the declared ones.
        KeyError: ``group`` is unknown.
    """
    entries = PLUGINS.get(group)
    if entries is None:
        raise KeyError(f"unknown plugin group {group!r}; groups: {sorted(PLUGINS)}")
    target = entries.get(str(name)) if isinstance(name, str) else None
    if target is None:
        raise LookupError(f"unknown {GROUPS[group]} {name!r}; available: {', '.join(names(group))}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def target(group: str, name: str) -> str:
    """``module.attribute`` of a declared entry (what a config's ``_target_`` must say).

    Raises:
        LookupError: as :func:`lookup`.
    """
    if name not in PLUGINS.get(group, {}):
        raise LookupError(f"unknown {GROUPS[group]} {name!r}; available: {', '.join(names(group))}")
    return PLUGINS[group][name].replace(":", ".")
