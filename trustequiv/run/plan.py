"""What an evaluate run will do, read from the config: the task and its kind, the models (as sources), the
characteristics, the splits and OOD sets (each limited once, so every model sees the same rows)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from trustequiv.characteristic import Characteristic
from trustequiv.conf_tree import CONF_DIR, available
from trustequiv.data.sampling import sample_positions
from trustequiv.data.task_kind import TaskKind, task_kind
from trustequiv.models.source import ModelSource, build_source
from trustequiv.plain import plain
from trustequiv.verdict.noise_floor import NoiseFloor

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """An evaluate run's plan.

    Attributes:
        task_cfg: the task config; kind: its :class:`TaskKind`.
        reference, candidates: the models, as :class:`ModelSource` objects.
        characteristics: the selected characteristics.
        dataset: the task's ``DatasetDict``; splits: evaluated split name -> its (limited) rows, main first.
        ood: ``"<task>/<split>"`` -> (task config, limited rows) of the out-of-distribution sets to score.
        floor: the noise floor's replicas of the reference (:mod:`trustequiv.verdict.noise_floor`), compared
        with the
            reference like candidates but judged apart.
        reference_cfg: the reference's model config (plain), the base of replicas given as checkpoints.
    """

    task_cfg: dict[str, Any]
    kind: TaskKind
    reference: ModelSource
    candidates: list[ModelSource]
    characteristics: list[Characteristic]
    dataset: Any
    splits: dict[str, Any]
    ood: dict[str, tuple[dict[str, Any], Any]] = field(default_factory=dict)
    floor: NoiseFloor = field(default_factory=NoiseFloor)
    reference_cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[ModelSource]:
        """The reference, the candidates, then the noise floor's replicas."""
        return [self.reference, *self.candidates, *self.floor.models]

    @property
    def main_split(self) -> str:
        return next(iter(self.splits))


def load_task_data(cfg: DictConfig):
    """The task's ``DatasetDict`` from ``paths.data_dir`` (local files) or the hub when it is null."""
    task_cfg = plain(cfg.task)
    return task_kind(task_cfg).load_data(task_cfg, cfg.paths.get("data_dir"))


def model_node(node: Any) -> Any:
    """A ``conf/model`` node; a bare name (``reference=bert_large`` on the command line) is looked up there.

    Raises:
        ValueError: the name is not a file in conf/model.
    """
    if not isinstance(node, str):
        return node
    path = CONF_DIR / "model" / f"{node}.yaml"
    if not path.exists():
        raise ValueError(f"unknown model '{node}'; available: {', '.join(available('model'))}")
    return OmegaConf.load(path)


def model_sources(cfg: DictConfig) -> tuple[ModelSource, list[ModelSource]]:
    """(reference, candidates) from ``reference``, ``model``, ``compressor`` and ``candidates``.

    Raises:
        ValueError: two models share a name (their outputs and checkpoints would collide).
    """
    reference = build_source(model_node(cfg.reference))
    if cfg.get("candidates"):
        candidates = [build_source(c["base"], c.get("compressor")) for c in cfg.candidates]
    else:
        candidates = [build_source(cfg.model, cfg.get("compressor"))]
    names = [reference.name, *(c.name for c in candidates)]
    if len(set(names)) != len(names):
        raise ValueError(
            f"model names must differ, got {names}: compare a model with a compressed or differently named "
            "version (e.g. compressor=quantize_dynamic), or give the checkpoint another model.name"
        )
    return reference, candidates


def build_characteristics(cfg: DictConfig) -> list[Characteristic]:
    """The selected characteristics, each with its ``splits`` setting.

    Raises:
        ValueError: none selected. TypeError: a config builds something that is not a Characteristic.
    """
    chars = []
    for name, node in (cfg.get("characteristic") or {}).items():
        node = OmegaConf.to_container(node, resolve=True)
        splits = node.pop("splits", None)  # the pipeline's setting, not the plugin's
        obj = hydra.utils.instantiate(node)
        if not isinstance(obj, Characteristic):
            raise TypeError(f"characteristic '{name}' built a {type(obj).__name__}, not a Characteristic")
        obj.splits = None if splits is None else [str(s) for s in splits]
        chars.append(obj)
    if not chars:
        raise ValueError("no characteristic selected: use e.g. characteristic=[calibration,errors]")
    return chars


def limit(split, n: int | None, seed: int = 0, key: str = "limit_examples"):
    """``n`` rows of ``split`` chosen by a seeded hash of their ids
    (:func:`trustequiv.data.sampling.sample_positions`), in file order: the same rows whatever the file order,
    and a random sample (files sorted by label, like IMDB's, would otherwise give one class). ``None``: all.

    Raises:
        ValueError: ``n`` is not a positive number (names ``key``).
    """
    positions = sample_positions(split["id"], n, seed=seed, key=key)
    return split if len(positions) == len(split) else split.select(positions)


def _ood_limit(cfg: DictConfig, name: str, default: int | None) -> int | None:
    """``limit_ood_examples`` for the OOD set ``name`` ("<task>/<split>"): an int for every set, or a mapping
    by set name (COVID-QA's long articles cost ~25 windows a question); ``null`` or absent: ``default``."""
    wanted = cfg.get("limit_ood_examples")
    if isinstance(wanted, Mapping | DictConfig):
        return wanted.get(name, default)
    return default if wanted is None else int(wanted)


def ood_sets(cfg: DictConfig, task_cfg: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], Any]]:
    """``"<task>/<split>" -> (task config, split data)`` for the out-of-distribution sets to score.

    Each entry of ``cfg.ood`` (default: ``task.ood``) is ``"<task>/<split>"``; ``"<split>"`` alone means a
    split of the evaluated task (e.g. MNLI's mismatched sample). A trailing ``?`` makes the set optional: when
    its data cannot be loaded (no local file, hub unreachable) it is skipped with a warning.

    Raises:
        ValueError: an unknown task or split, or an OOD task whose label names differ from the task's.
    """
    wanted = cfg.get("ood")
    wanted = list(wanted if wanted is not None else task_cfg.get("ood") or [])
    kind = task_kind(task_cfg)
    sets: dict[str, tuple[dict[str, Any], Any]] = {}
    data_dir = cfg.paths.get("data_dir")
    for entry in wanted:
        optional = entry.endswith("?")
        entry = entry.rstrip("?")
        name, _, split = entry.rpartition("/")
        name = name or task_cfg["name"]
        path = CONF_DIR / "task" / f"{name}.yaml"
        if not path.exists():
            raise ValueError(
                f"unknown OOD task '{name}' in {entry!r}; available: {', '.join(available('task'))}"
            )
        other = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if [*other["label_names"]] != [*task_cfg["label_names"]]:
            raise ValueError(
                f"OOD set {entry} has labels {other['label_names']} but {task_cfg['name']} has "
                f"{task_cfg['label_names']}: an OOD set must share the task's label names"
            )
        other.update(kind.ood_settings(task_cfg))  # score it as the model sees its own task
        try:
            dataset = task_kind(other).load_data(other, data_dir)
        except (OSError, ValueError) as err:  # FileNotFoundError and ConnectionError are OSErrors
            if not optional:
                raise
            log.warning("optional OOD set %s not available, skipped: %s", entry, str(err).splitlines()[0])
            continue
        if split not in dataset:
            raise ValueError(f"OOD set {entry}: task {name} has no split '{split}' (has {list(dataset)})")
        sets[f"{other['name']}/{split}"] = (other, dataset[split])  # qa/subjqa -> subjqa/test
    return sets


def evaluated_splits(cfg: DictConfig, task_cfg: Mapping[str, Any], dataset) -> list[str]:
    """``splits``, or the task's ``eval_split`` and the ``extra_splits`` its data has (others are skipped
    with a warning: an optional source such as AdvGLUE may be unavailable).

    Raises:
        ValueError: a requested split is not in the data.
    """
    if cfg.get("splits"):
        splits = list(cfg.splits)
    else:
        extra = list(task_cfg.get("extra_splits", []))
        absent = [s for s in extra if s not in dataset]
        if absent:
            log.warning("task %s: extra split(s) %s not available; skipped", task_cfg["name"], absent)
        splits = [task_cfg["eval_split"], *[s for s in extra if s in dataset]]
    missing = [s for s in splits if s not in dataset]
    if missing:
        raise ValueError(f"task {task_cfg['name']} has no split(s) {missing}; it has {list(dataset)}")
    return splits


def make_plan(cfg: DictConfig) -> Plan:
    """Read the config into a :class:`Plan`; loads the task data (and OOD sets when a characteristic needs
    them), builds no model."""
    task_cfg = plain(cfg.task)
    kind = task_kind(task_cfg)
    reference, candidates = model_sources(cfg)
    characteristics = build_characteristics(cfg)
    dataset = kind.load_data(task_cfg, cfg.paths.get("data_dir"))
    n = cfg.get("limit_examples")
    splits = {s: limit(dataset[s], n) for s in evaluated_splits(cfg, task_cfg, dataset)}
    ood = ood_sets(cfg, task_cfg) if any(c.needs_ood for c in characteristics) else {}
    ood = {
        name: (t, limit(d, _ood_limit(cfg, name, n), key="limit_ood_examples"))
        for name, (t, d) in ood.items()
    }
    reference_cfg = dict(plain(model_node(cfg.reference)) or {})
    return Plan(
        task_cfg,
        kind,
        reference,
        candidates,
        characteristics,
        dataset,
        splits,
        ood,
        reference_cfg=reference_cfg,
    )
