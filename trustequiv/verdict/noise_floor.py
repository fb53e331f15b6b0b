"""The noise floor: replicas of the reference (the same model trained again with other seeds), compared with
the reference exactly as a candidate is, so each difference a candidate shows can be set against how far the
reference is from itself (McCoy et al. 2020, "BERTs of a feather do not generalize together": fine-tuning
seeds alone change which examples a model gets wrong).

The ``noise_floor:`` config block:

- ``seeds``: training seeds of replicas fine-tuned here by the reference's recipe (``<reference>+seed<k>``):
  a list, ``[]``, or ``auto``: ``n_auto`` seeds (1, 2, 3 ..., skipping the run's own ``seed``) when the run
  can fine-tune the reference (its recipe is here: fine-tuned locally, and ``train_missing=true`` or the
  replicas trained), else none, with a note saying why. A list holding the run's own seed is refused: that
  replica would be the reference itself.
- ``n_auto``: how many seeds ``auto`` takes (default 3).
- ``predictions``: predictions files of replicas made elsewhere (this project's ``predictions/<model>.csv``
  format, read by the ``predictions`` source), e.g. the ``predictions/<reference>+seed1.csv`` of another run.
- ``checkpoints``: fine-tuned replica checkpoints (a local dir or hub id, e.g. other seeds published on the
  hub), run as ``hf`` sources built from the reference's model config.

``predictions`` and ``checkpoints`` give a floor to any reference (a hub or zoo checkpoint, ONNX,
predictions), named ``<reference>+floor-<file or dir stem>``. They add to the replicas of an explicit
``seeds`` list; with ``seeds: auto`` they replace them (explicit floors win: nothing is fine-tuned).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustequiv.models.source import ModelSource, RunContext, build_source
from trustequiv.models.spec import resolve_checkpoint
from trustequiv.user_errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

#: how many seeds ``seeds: auto`` takes when ``n_auto`` is not set.
N_AUTO = 3
#: what a floor model's name may not hold: it names files and directories (predictions/<name>.csv).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
_MAX_NAME = 200


@dataclass
class NoiseFloor:
    """The replicas a run compares with the reference, and why there are none or fewer than asked.

    Attributes:
        models: the replicas, as model sources: ``<reference>+seed<k>`` (fine-tuned here) and
            ``<reference>+floor-<stem>`` (``noise_floor.predictions`` / ``checkpoints``).
        seeds: the training seeds of the fine-tuned ones, in order.
        sources: replica name -> where it comes from: ``{"from": "seed", "seed": k}``,
            ``{"from": "predictions", "path": ...}`` or ``{"from": "checkpoint", "checkpoint": ...}``.
        notes: why the floor is off or lacks a seed (shown in the report and results.json).
    """

    models: list[ModelSource] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, model: ModelSource, source: dict[str, Any]) -> None:
        self.models.append(model)
        self.sources[model.name] = source

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "models": [m.name for m in self.models],
            "sources": self.sources,
            "notes": self.notes,
        }


def auto_seeds(n: int, run_seed: int) -> list[int]:
    """The ``n`` seeds ``auto`` takes: 1, 2, 3 ..., skipping ``run_seed`` (the reference's own)."""
    return list(itertools.islice((s for s in itertools.count(1) if s != run_seed), n))


def wanted_seeds(setting: Any, run_seed: int) -> list[int] | None:
    """``noise_floor.seeds`` read: a list of distinct ints, or None for ``auto``.

    Raises:
        ConfigError: neither ``auto`` nor a list of integers, or a list holding ``run_seed`` (the reference's
            own training seed: that replica would be the reference itself).
    """
    if setting is None or setting == "auto":
        return None
    example = ",".join(map(str, auto_seeds(3, run_seed)))
    if isinstance(setting, str | bytes) or not isinstance(setting, Sequence):
        raise ConfigError(
            f"noise_floor.seeds must be auto or a list of training seeds, got {setting!r}",
            f"use e.g. noise_floor.seeds=[{example}], noise_floor.seeds=auto, or noise_floor.seeds=[] (off)",
        )
    try:
        seeds = [int(s) for s in setting]
    except (TypeError, ValueError):
        raise ConfigError(
            f"noise_floor.seeds must be auto or a list of integers, got {list(setting)}",
            f"use e.g. noise_floor.seeds=[{example}]",
        ) from None
    if run_seed in seeds:
        raise ConfigError(
            f"noise_floor.seeds={_list(seeds)} includes the reference's own training seed {run_seed}",
            f"use other seeds, e.g. noise_floor.seeds=[{example}]",
        )
    return list(dict.fromkeys(seeds))


@dataclass(frozen=True)
class FloorSettings:
    """The ``noise_floor:`` block, read (see the module docstring).

    Attributes:
        seeds: the training seeds to fine-tune, or None for ``auto``. n_auto: how many ``auto`` takes.
        predictions: predictions files of replicas. checkpoints: replica checkpoints (dirs or hub ids).
    """

    seeds: list[int] | None
    n_auto: int = N_AUTO
    predictions: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()

    @classmethod
    def read(cls, settings: Any, run_seed: int) -> FloorSettings:
        """From the block (a mapping), or from a bare ``seeds`` value (a list, ``auto`` or None).

        Raises:
            ConfigError: a bad ``seeds`` (:func:`wanted_seeds`), ``n_auto`` not a positive integer, or
                ``predictions`` / ``checkpoints`` not lists of paths.
        """
        block = dict(settings) if isinstance(settings, Mapping) else {"seeds": settings}
        n_auto = block.get("n_auto")
        n_auto = N_AUTO if n_auto is None else n_auto
        if isinstance(n_auto, bool) or not isinstance(n_auto, int) or n_auto < 1:
            raise ConfigError(
                f"noise_floor.n_auto must be a positive integer, got {n_auto!r}",
                "use e.g. noise_floor.n_auto=3; noise_floor.seeds=[] fine-tunes no replica",
            )
        return cls(
            seeds=wanted_seeds(block.get("seeds", "auto"), run_seed),
            n_auto=n_auto,
            predictions=_paths(block.get("predictions"), "predictions"),
            checkpoints=_paths(block.get("checkpoints"), "checkpoints"),
        )


def _list(values: Iterable[Any]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _paths(value: Any, key: str) -> tuple[str, ...]:
    """A ``noise_floor.<key>`` list of paths (one string alone counts as a list of one)."""
    if value is None:
        return ()
    if isinstance(value, str | Path):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str | Path) and str(v) for v in value):
        raise ConfigError(
            f"noise_floor.{key} must be a list of paths, got {value!r}",
            f"use e.g. noise_floor.{key}=[<path>,<path>]",
        )
    return tuple(dict.fromkeys(str(v) for v in value))


def floor_name(reference: str, entry: str, taken: set[str]) -> str:
    """``<reference>+floor-<stem>`` for a replica from ``entry`` (a file, dir or hub id), unique among
    ``taken`` (``-2``, ``-3`` ... appended) and safe as a file name; added to ``taken``. A stem that starts
    with ``<reference>+`` loses it (``tiny+seed1.csv`` -> ``tiny+floor-seed1``)."""
    path = Path(entry.rstrip("/\\") or entry).expanduser()
    stem = path.stem if path.suffix in (".csv", ".json") or path.is_file() else path.name
    if stem in ("", ".", ".."):
        stem = path.resolve().name
    stem = stem.removeprefix(f"{reference}+")
    stem = _UNSAFE.sub("_", stem).strip("._") or "replica"
    base = f"{reference}+floor-{stem}"[: _MAX_NAME - 4]
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _predictions_file(entry: str) -> Path:
    """The predictions file ``entry`` names, checked before anything is fine-tuned.

    Raises:
        MissingFileError: no such file. ConfigError: a directory, or not a .csv / .json file.
    """
    path = Path(entry).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"noise_floor.predictions: {entry} is a directory, not a predictions file",
            "name the file itself, e.g. <run dir>/predictions/<model>.csv (a run writes one per model)",
        )
    if not path.is_file():
        raise MissingFileError(
            f"noise_floor.predictions: file not found: {entry}",
            "check the path (relative paths start from the directory the command runs in); a run writes its "
            "models' predictions to <run dir>/predictions/<model>.csv",
        )
    if path.suffix not in (".csv", ".json"):
        raise ConfigError(
            f"noise_floor.predictions: {entry} is neither a predictions CSV (.csv) nor an error set (.json)",
            "give files in the predictions format (README 'Where models come from', source predictions)",
        )
    return path


def _checkpoint(entry: str) -> str:
    """``entry``, checked as a checkpoint directory where it is a local path (a hub id is checked when the
    replica is prepared, as any ``model.checkpoint``).

    Raises:
        MissingFileError: a local path that does not exist, or a directory without config.json.
        ConfigError: a file.
    """
    path = Path(entry).expanduser()
    fix = "point it at a directory written by save_pretrained (config.json, weights, tokenizer) or a hub id"
    if path.is_file():
        raise ConfigError(
            f"noise_floor.checkpoints: {entry} is a file, not a checkpoint directory",
            f"{fix}; a predictions file goes to noise_floor.predictions",
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MissingFileError(
                f"noise_floor.checkpoints: {entry} has no config.json: it is not a Hugging Face model "
                "directory",
                fix,
            )
        return str(path)
    if path.is_absolute() or entry.startswith((".", "~")) or entry.count("/") > 1:  # as local_dir reads it
        raise MissingFileError(
            f"noise_floor.checkpoints: checkpoint directory {entry} does not exist",
            f"check the path (relative paths start from the directory the command runs in); {fix}",
        )
    return entry


def _checkpoint_config(reference_cfg: Mapping[str, Any] | None, name: str, checkpoint: str) -> dict[str, Any]:
    """The ``hf`` model config of a replica checkpoint: the reference's (an ONNX export's: the model it
    exports from) with this checkpoint; ``pretrained`` only matters to fine-tuning, which a set checkpoint
    skips."""
    base = dict(reference_cfg or {})
    if str(base.get("source") or "hf") != "hf":
        base = dict(base.get("export_from") or {})
    return {
        **base,
        "source": "hf",
        "name": name,
        "checkpoint": checkpoint,
        "pretrained": base.get("pretrained") or checkpoint,
        "revision": None,  # the reference's revision is of its own repository
        "zoo": None,
    }


def _seeds(seeds: Sequence[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _seed_replicas(
    reference: ModelSource, seeds: list[int], auto: bool, ctx: RunContext, floor: NoiseFloor, others: bool
) -> None:
    """The replicas fine-tuned here with ``seeds`` into ``floor``; one note per reason seeds are left out
    (``others``: replicas from elsewhere follow, so the floor is not off)."""
    why_not: dict[str, list[int]] = {}
    untrained: list[tuple[int, str]] = []
    for seed in seeds:
        replica, why = reference.replica(seed, ctx)
        if replica is None:
            why_not.setdefault(why, []).append(seed)
            continue
        spec = replica.fine_tune_spec()
        ready = spec is not None and resolve_checkpoint(spec, ctx.task_cfg["name"], ctx.models_dir)
        if auto and not ready and not ctx.allow_train:
            untrained.append((seed, replica.name))
            continue
        floor.add(replica, {"from": "seed", "seed": seed})
        floor.seeds.append(seed)
    off = not floor.models and not others
    for why, left_out in why_not.items():
        head = "noise floor off" if off else f"noise floor without {_seeds(left_out)}"
        elsewhere = (
            "; replicas made elsewhere can stand in: noise_floor.predictions=[<csv>,...] or "
            "noise_floor.checkpoints=[<dir or hub id>,...]"
        )
        floor.notes.append(f"{head}: {why}{elsewhere if off else ''}")
    if untrained:
        left_out = [s for s, _ in untrained]
        head = "noise floor off" if off else f"noise floor without {_seeds(left_out)}"
        names = ", ".join(n for _, n in untrained)
        floor.notes.append(
            f"{head}: {names} (the reference fine-tuned with {_seeds(left_out)}) "
            f"{'is' if len(untrained) == 1 else 'are'} not trained and train_missing is false; add "
            "train_missing=true, or noise_floor.seeds=[] to silence this"
        )


def make_noise_floor(
    reference: ModelSource,
    settings: Any,
    ctx: RunContext,
    *,
    reference_cfg: Mapping[str, Any] | None = None,
    taken: Iterable[str] = (),
) -> NoiseFloor:
    """The replicas of ``reference`` the ``noise_floor:`` block asks for (see the module docstring).

    Args:
        reference: the reference's source. settings: the ``noise_floor:`` block (plain mapping), or a bare
            ``seeds`` value. ctx: the run's context. reference_cfg: the reference's model config, the base
            of ``checkpoints`` replicas. taken: the other models' names (the candidates'), which no replica
            takes.

    Raises:
        ConfigError, MissingFileError: a bad setting, a missing predictions file or checkpoint directory
            (names the key and the fix), before anything is fine-tuned.
    """
    s = FloorSettings.read(settings, ctx.seed)
    explicit = bool(s.predictions or s.checkpoints)
    floor = NoiseFloor()
    if s.seeds is None and explicit:  # explicit floors win: nothing fine-tuned on top of them
        log.info(
            "noise floor: the given predictions/checkpoints, no seed fine-tuned (noise_floor.seeds=auto)"
        )
    seeds = (auto_seeds(s.n_auto, ctx.seed) if not explicit else []) if s.seeds is None else s.seeds
    if not seeds and not explicit:
        return NoiseFloor(notes=["noise floor off (noise_floor.seeds=[])"])
    files = [_predictions_file(p) for p in s.predictions]  # checked before any fine-tuning
    checkpoints = [_checkpoint(c) for c in s.checkpoints]
    _seed_replicas(reference, seeds, s.seeds is None, ctx, floor, others=explicit)
    names = {reference.name, *taken, *(m.name for m in floor.models)}
    for entry, path in zip(s.predictions, files, strict=True):
        name = floor_name(reference.name, entry, names)
        model = build_source({"source": "predictions", "name": name, "path": str(path)})
        floor.add(model, {"from": "predictions", "path": str(path)})
    for checkpoint in checkpoints:
        name = floor_name(reference.name, checkpoint, names)
        model = build_source(_checkpoint_config(reference_cfg, name, checkpoint))
        floor.add(model, {"from": "checkpoint", "checkpoint": checkpoint})
    for note in floor.notes:
        log.info("%s", note)
    return floor
