"""Callbacks added to fine-tunings: trust against the reference, logged while the model trains.

:class:`TrustCallback` compares, at the end of every validation epoch, the model being trained with the
reference's validation outputs on the selected characteristics (their own pure ``compare``), and logs the
pair metrics through the trainer's logger(s) as ``trust/<characteristic>/<metric>`` (e.g.
``trust/calibration/ece_uniform_diff``, ``trust/errors/error_jaccard``, ``trust/representation/knn_k10``).

:func:`trust_callbacks` builds it for a fine-tuning whose reference is known: a compressed candidate
re-fine-tuned from its fine-tuned base (the base is the reference; knowledge distillation's teacher is that
same base). The reference's validation outputs come from the output cache under the key evaluate.py uses for
that checkpoint on that split, predicted once when missing. Config: ``callbacks.trust`` (conf/train.yaml).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from trustequiv.cache import content_key
from trustequiv.characteristic import Characteristic, pair_name
from trustequiv.conf_tree import CONF_DIR, available
from trustequiv.data.sampling import sample_positions
from trustequiv.data.splits import split_fingerprint
from trustequiv.models.compressor import build_compressor
from trustequiv.models.fingerprint import fingerprint
from trustequiv.models.loading import LoadedModel
from trustequiv.models.scorer import TorchTextScorer
from trustequiv.models.spec import local_dir
from trustequiv.outputs import ModelOutputs, aligned_rows
from trustequiv.prediction import assemble_rows
from trustequiv.train.fine_tune import BestHFCheckpoint

log = logging.getLogger(__name__)

#: prefix of every logged key: ``trust/<characteristic>/<metric>``.
PREFIX = "trust"
#: the model names the pair metrics are computed under (their scope is stripped before logging).
REFERENCE, CANDIDATE = "reference", "candidate"
#: ``callbacks.trust`` settings when the block (or a key of it) is absent: conf/train.yaml's values.
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "characteristics": ["calibration", "errors", "representation"],
    "attribution": False,
    "attribution_examples": 16,
    "limit_examples": None,
    "overrides": {
        "calibration": {"n_bootstrap": 200},
        "errors": {"n_bootstrap": 200},
        "representation": {"n_permutations": 20},
    },
}
#: the attribution method ``attribution: true`` selects (deterministic, one run).
DEFAULT_ATTRIBUTION = "attribution_ig"


def trust_settings(callbacks_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``callbacks.trust`` block of ``callbacks_cfg`` over :data:`DEFAULTS`.

    Raises:
        ValueError: a key that is not a setting (one line naming the known ones).
    """
    given = dict((callbacks_cfg or {}).get("trust") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"callbacks.trust has no setting {', '.join(unknown)} - use {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **given}


def build_trust_characteristics(
    names: Sequence[str],
    *,
    context: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    model_driven: bool = False,
) -> list[Characteristic]:
    """The characteristics ``names``, each built from the shipped ``conf/characteristic/<name>.yaml`` (the
    class comes only from there), its ``${...}`` resolved against ``context`` (``{"task": ..., "paths":
    {"cache_dir": ...}}``), less the pipeline's ``splits`` key, with ``overrides[name]`` applied to its
    settings.

    Args:
        model_driven: build characteristics that run the model (attribution); otherwise those refuse.

    Raises:
        ValueError: an unknown name, a characteristic that needs the model (unless ``model_driven``) or
            out-of-distribution sets, or an override of ``_target_``; one line each.
        TypeError: the config builds something that is not a Characteristic.
    """
    known = available("characteristic")
    chars = []
    for name in names:
        if name not in known:
            raise ValueError(
                f"callbacks.trust: unknown characteristic {name!r} - use some of {', '.join(known)}"
            )
        node = OmegaConf.load(CONF_DIR / "characteristic" / f"{name}.yaml")
        cls = hydra.utils.get_class(str(node["_target_"]))
        if (getattr(cls, "needs_model", False) and not model_driven) or getattr(cls, "needs_ood", False):
            raise ValueError(
                f"callbacks.trust.characteristics: {name} needs "
                f"{'out-of-distribution sets' if cls.needs_ood else 'the model run again'}, not validation "
                "outputs - drop it (evaluate.py measures it; attribution: callbacks.trust.attribution=true)"
            )
        extra = dict((overrides or {}).get(name) or {})
        if "_target_" in extra:
            raise ValueError(
                f"callbacks.trust.overrides.{name}._target_ cannot be set - the class comes from the shipped "
                f"conf/characteristic/{name}.yaml; override its settings only"
            )
        root = OmegaConf.create({**dict(context), "node": node})
        spec = OmegaConf.to_container(root.node, resolve=True)
        spec.pop("splits", None)  # the pipeline's setting, not the plugin's
        spec.update(extra)
        obj = hydra.utils.instantiate(spec)
        if not isinstance(obj, Characteristic):
            raise TypeError(f"characteristic '{name}' built a {type(obj).__name__}, not a Characteristic")
        chars.append(obj)
    return chars


def scoped_metrics(name: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``compare``'s ``"reference_vs_candidate/<metric>"`` entries as ``"trust/<name>/<metric>"``."""

    pair = f"{pair_name(REFERENCE, CANDIDATE)}/"
    return {f"{PREFIX}/{name}/{k[len(pair) :]}": float(v) for k, v in metrics.items() if k.startswith(pair)}


class TrustCallback(Callback):
    """At the end of each validation epoch, compare the model being trained with the reference and log
    ``trust/<characteristic>/<metric>`` for every pair metric of each characteristic's ``compare``.

    The candidate's outputs are collected from the validation epoch itself: the module's ``validation_step``
    returns them (:attr:`trustequiv.train.lightning_module.SequenceClassifier.validation_outputs`, switched on
    in
    :meth:`setup`, with the reference's ``pooling`` and ``layer`` so embeddings compare like for like).
    Validation is not sharded across DDP ranks here (every rank sees every row), so each rank computes the
    same numbers. A characteristic whose ``compare`` fails (e.g. too few examples for a K) is skipped with
    one warning; training goes on.

    Args:
        reference: the reference's validation outputs (logits in the task's label order, embeddings).
        characteristics: built e.g. by :func:`build_trust_characteristics`; those that run the model
            (attribution, ``needs_model``) also call ``collect`` on the model being trained, on the same
            seeded sample of ``data`` as the reference's (``reference.collected`` holds its result).
        pooling, layer: how the reference's embeddings were pooled (``predict.pooling``, ``predict.layer``).
        data: the validation rows (``id``, ``text_a`` ...) in ``reference``'s order; needed with a
            model-driven characteristic only.
        task_cfg: the task config (``collect``'s ``task``).
    """

    def __init__(
        self,
        reference: ModelOutputs,
        characteristics: Sequence[Characteristic],
        *,
        pooling: str = "cls",
        layer: int = -1,
        data: Any = None,
        task_cfg: Mapping[str, Any] | None = None,
    ):
        self.reference = dataclasses.replace(reference, name=REFERENCE)
        self.characteristics = list(characteristics)
        self.pooling, self.layer = pooling, int(layer)
        self.data, self.task_cfg = data, dict(task_cfg or {})
        self._batches: list[dict[str, torch.Tensor]] = []
        self._warned: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "validation_outputs"):
            name = type(pl_module).__name__
            self._warn("module", f"{name} cannot return its validation outputs: no trust/ metrics")
            return
        pl_module.validation_outputs = True
        pl_module.pooling, pl_module.layer = self.pooling, self.layer

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, Mapping) and "logits" in outputs:
            self._batches.append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches, self._batches = self._batches, []
        if trainer.sanity_checking:
            return
        if not batches:
            name = type(pl_module).__name__
            self._warn(
                "outputs", f"{name}.validation_step returned no outputs (logits, ids): no trust/ metrics"
            )
            return
        candidate = assemble_rows(CANDIDATE, self.reference.label_names)(batches)
        metrics = self.compare(candidate, pl_module, trainer)
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def compare(
        self, candidate: ModelOutputs, pl_module: Any = None, trainer: Any = None
    ) -> dict[str, float]:
        """``trust/<characteristic>/<metric>`` of ``candidate`` against the reference (model-driven
        characteristics need ``pl_module`` and ``trainer``)."""
        metrics: dict[str, float] = {}
        candidate = dataclasses.replace(candidate, name=CANDIDATE)
        for char in self.characteristics:
            try:
                cand = candidate
                if char.needs_model:
                    collected = self._collect(char, candidate, pl_module, trainer)
                    cand = candidate.with_collected(char.name, collected)
                result = char.compare(self.reference, cand)
            except ValueError as err:
                self._warn(char.name, f"{char.name} not logged: {str(err).splitlines()[0]}")
                continue
            metrics.update(scoped_metrics(char.name, result.metrics))
        return metrics

    def _collect(
        self, char: Characteristic, candidate: ModelOutputs, pl_module: Any, trainer: Any
    ) -> Mapping[str, Any]:
        """``char.collect`` on the model being trained, on the device it trains on, with gradients on."""

        tokenizer = next((cb.tokenizer for cb in trainer.callbacks if isinstance(cb, BestHFCheckpoint)), None)
        if tokenizer is None or self.data is None:
            raise ValueError("no tokenizer or validation texts for the model being trained")
        loaded = LoadedModel(
            model=pl_module.model,
            tokenizer=tokenizer,
            label_permutation=pl_module.perm.tolist(),
            directory=Path("."),
            fingerprint=f"training-step{trainer.global_step}",
            metadata={},
        )
        handle = TorchTextScorer.handle(loaded, name=CANDIDATE, fingerprint=loaded.fingerprint)
        # Never moved to another device, nor replicated (the scorer's default takes every GPU).
        char.devices = [str(pl_module.device)]
        # Validation runs under inference mode: gradient methods (IG) need it off.
        with torch.inference_mode(False), torch.enable_grad():
            return char.collect(handle, candidate, self.data, self.task_cfg)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("trust callback: %s", message)


def trust_callbacks(spec: Any, base_checkpoint: str | None, ctx: Any) -> list[Callback]:
    """``[TrustCallback]`` for fine-tuning ``spec`` when its reference is known and ``callbacks.trust`` is
    enabled (``ctx.callbacks_cfg``), else ``[]``.

    The reference is known for a compressed candidate that is re-fine-tuned (or distilled) from its base,
    ``base_checkpoint``. Its validation outputs are those evaluate.py caches for the base checkpoint on the
    ``validation`` split (same key: kind, fingerprint, task, split content, max_length, pooling, layer,
    declared labels), predicted once when missing; ``limit_examples`` compares on that many of them (a
    seeded sample of ids, :func:`trustequiv.data.sampling.sample_positions`).

    Args:
        spec: the :class:`trustequiv.models.spec.ModelSpec` being fine-tuned; ctx: the
            :class:`trustequiv.models.source.RunContext`.

    Raises:
        ValueError: bad ``callbacks.trust`` settings (one line, from :func:`trust_settings` and
            :func:`build_trust_characteristics`), before anything is trained.
    """

    settings = trust_settings(getattr(ctx, "callbacks_cfg", None))
    if not settings["enabled"] or base_checkpoint is None or not spec.compressor or spec.base is None:
        return []
    if not build_compressor(spec.compressor).finetune:
        return []  # nothing is trained
    if ctx.kind.name != "classification":
        log.info("trust callback: %s tasks are not supported (classification only): off", ctx.kind.name)
        return []
    names, overrides = _selected_characteristics(settings)
    paths = {"cache_dir": str(ctx.cache.root), "models_dir": str(ctx.models_dir)}
    context = {"task": ctx.task_cfg, "paths": paths}
    chars = build_trust_characteristics(names, context=context, overrides=overrides, model_driven=True)
    if not chars:
        return []

    base = spec.base
    reference, data = _base_reference(base, base_checkpoint, ctx, chars, settings["limit_examples"])
    log.info(
        "trust callback: %s vs its base %s on %d validation examples: %s",
        spec.name,
        base.name,
        len(reference),
        ", ".join(c.name for c in chars),
    )
    return [
        TrustCallback(
            reference,
            chars,
            pooling=ctx.predict_cfg.get("pooling", "cls"),
            layer=int(ctx.predict_cfg.get("layer", -1)),
            data=data,
            task_cfg=ctx.task_cfg,
        )
    ]


def _selected_characteristics(settings: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``(names, overrides)`` of the characteristics ``settings`` (:func:`trust_settings`) selects: its
    ``characteristics``, then the attribution method when ``attribution`` is on (compared on a small seeded
    sample of ``attribution_examples``).

    Raises:
        ValueError: ``attribution`` names no attribution characteristic.
    """
    names = list(settings["characteristics"] or [])
    attribution = settings["attribution"]
    if attribution:
        names.append(DEFAULT_ATTRIBUTION if attribution is True else str(attribution))
        if not names[-1].startswith("attribution"):
            raise ValueError(
                f"callbacks.trust.attribution={attribution!r} - use true, false or one of "
                f"{', '.join(n for n in available('characteristic') if n.startswith('attribution'))}"
            )
    overrides = {k: dict(v or {}) for k, v in dict(settings["overrides"] or {}).items()}
    if attribution:  # a small seeded sample, re-attributed every epoch; nothing kept between runs
        overrides[names[-1]] = {
            "n_examples": int(settings["attribution_examples"]),
            "runs_dir": None,
            "n_figure_examples": 0,
            **overrides.get(names[-1], {}),
        }
    return names, overrides


def _base_reference(
    base: Any, base_checkpoint: str, ctx: Any, chars: Sequence[Characteristic], limit: int | None
) -> tuple[ModelOutputs, Any]:
    """``(reference, rows)``: the base checkpoint's validation outputs (:func:`reference_outputs`), limited
    to ``limit`` rows (:func:`limit_reference`), with what each model-driven characteristic of ``chars``
    collects on it (:func:`_reference_collect`). The base model is loaded only when something needs it."""
    directory = local_dir(base_checkpoint, base.revision)
    loaded: dict[str, Any] = {}

    def load():
        if "model" not in loaded:
            loaded["model"] = ctx.kind.load_model(
                directory,
                ctx.task_cfg,
                declared_label_names=base.label_names,
                revision=base.revision,
                trust_remote_code=base.trust_remote_code,
                memo_file=ctx.memo_file,
            )
        return loaded["model"]

    base_fingerprint = fingerprint(directory, ctx.memo_file)
    reference, data = reference_outputs(
        ctx, name=base.name, fingerprint=base_fingerprint, load=load, declared=base.label_names
    )
    reference, data = limit_reference(reference, data, limit)
    for char in chars:
        if char.needs_model:
            collected = _reference_collect(char, ctx, load, base_fingerprint, reference, data)
            reference = reference.with_collected(char.name, collected)
    return reference, data


def reference_outputs(
    ctx: Any, *, name: str, fingerprint: str, load: Any, declared: Sequence[str] | None = None
) -> tuple[ModelOutputs, Any]:
    """``(outputs, rows)``: the checkpoint ``fingerprint``'s outputs on the task's ``validation`` split
    through the cache (the task kind's ``predict``, as :meth:`plugins.sources.hf.HFSource.outputs` calls
    it: the same key), and that split's rows in the outputs' order."""

    split = ctx.dataset()["validation"]
    outputs, cached = ctx.kind.predict(
        name,
        fingerprint,
        load,
        split,
        task_cfg=ctx.task_cfg,
        split="validation",
        cache=ctx.cache,
        trainer_cfg=ctx.trainer_cfg,
        predict_cfg=ctx.predict_cfg,
        key_extra={"data": split_fingerprint(split), "declared_label_names": declared},
    )
    log.info("trust callback: reference %s validation outputs %s", name, "cached" if cached else "predicted")
    return outputs, aligned_rows(split, outputs)


def limit_reference(reference: ModelOutputs, data: Any, n: int | None) -> tuple[ModelOutputs, Any]:
    """``n`` rows of ``reference`` (and of ``data``, in the same order) chosen by the project's seeded
    sampler; ``None``: all."""

    positions = sample_positions(reference.example_ids.tolist(), n, key="callbacks.trust.limit_examples")
    if len(positions) == len(reference):
        return reference, data
    return reference.select(reference.example_ids[positions]), data.select(positions)


def _reference_collect(
    char: Characteristic, ctx: Any, load: Any, fingerprint: str, reference: ModelOutputs, data: Any
) -> Mapping[str, Any]:
    """The reference's ``collect`` for ``char`` on ``data``, once: kept in the cache's extras."""

    key = content_key(
        kind="trust_callback",
        characteristic=char.name,
        config=dict(char.cache_config()),
        checkpoint=fingerprint,
        task=ctx.task_cfg["name"],
        split="validation",
        ids=content_key(ids=reference.example_ids.tolist()),
    )
    found = ctx.cache.load_extras(key)
    if found is None:
        handle = TorchTextScorer.handle(load(), name=REFERENCE, fingerprint=fingerprint)
        found = dict(char.collect(handle, reference, data, ctx.task_cfg))
        ctx.cache.save_extras(key, found)
    return found
