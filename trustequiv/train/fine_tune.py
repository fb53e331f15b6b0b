"""Fine-tuning (and compressing) one model on one task into a Hugging Face checkpoint directory."""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from trustequiv.cache import distributed_rank
from trustequiv.models.compressor import CalibrationData, build_compressor
from trustequiv.models.loading import read_metadata, write_metadata
from trustequiv.models.spec import ModelSpec
from trustequiv.train.trainer import make_trainer, resolve_precision

log = logging.getLogger(__name__)

#: Inside the staging dir ``<out>.training``: Lightning's resumable state (``last.ckpt``) and ``resume.json``,
#: what it was made for. Removed when the fine-tuning completes.
RESUME_DIR = "lightning"
LAST_CHECKPOINT = "last.ckpt"
RESUME_FILE = "resume.json"
#: Trainer settings that do not change the trained weights: a resume may differ in them.
_COSMETIC_TRAINER_KEYS = frozenset(
    {
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "logger",
        "default_root_dir",
        "profiler",
    }
)


class BestHFCheckpoint(Callback):
    """After each validation, saves the model in Hugging Face format (safetensors + tokenizer) when
    ``monitor`` improved. Only the global-zero process writes; the directory is replaced atomically, carrying
    over its entries named in ``keep``. The best score is part of Lightning's checkpoint, so a resumed
    fine-tuning keeps the best over the whole run. ``before_save``: the model as it is written, leaving the
    training one as it is (:meth:`trustequiv.models.compressor.Compressor.before_save`); None: the model
    itself.
    """

    def __init__(
        self,
        directory: str | Path,
        tokenizer,
        monitor: str = "val/acc",
        mode: str = "max",
        keep: tuple[str, ...] = (),
        before_save: Callable[[Any], Any] | None = None,
    ):
        self.directory, self.tokenizer, self.monitor, self.mode = Path(directory), tokenizer, monitor, mode
        self.keep, self.before_save = keep, before_save
        self.best: float | None = None
        self.best_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    @property
    def key(self) -> str:
        """``best_<monitor>``: the score's entry in ``trustequiv.json``."""
        return f"best_{self.monitor.replace('/', '_')}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]
        # A run killed after saving a better epoch's weights but before last.ckpt recorded it left those
        # weights staged: their own trustequiv.json says which they are, and they count as the best so far.
        staged = read_metadata(self.directory) if self.directory.is_dir() else {}
        if staged.get("best_epoch") not in (None, self.best_epoch) and self.key in staged:
            log.info(
                "staged best checkpoint is from epoch %d (%s=%.4f), after the resumed checkpoint's",
                staged["best_epoch"],
                self.monitor,
                staged[self.key],
            )
            self.best, self.best_epoch = float(staged[self.key]), int(staged["best_epoch"])

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not self._improved(value):
            return
        self.best, self.best_epoch = value, trainer.current_epoch
        if trainer.is_global_zero:
            save_hf(
                pl_module.model if self.before_save is None else self.before_save(pl_module.model),
                self.tokenizer,
                self.directory,
                keep=self.keep,
                metadata={self.key: value, "best_epoch": trainer.current_epoch},
            )
            log.info(
                "saved best checkpoint (%s=%.4f, epoch %d) to %s",
                self.monitor,
                value,
                trainer.current_epoch,
                self.directory,
            )


def save_hf(
    model,
    tokenizer,
    directory: Path,
    keep: tuple[str, ...] = (),
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model`` and ``tokenizer`` to ``directory`` (safetensors), replacing it only once complete.

    ``keep``: entries of the old ``directory`` moved into the new one (the staging dir's resume state).
    ``metadata``: written as the new directory's ``trustequiv.json``, in the same swap as the weights.
    """
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if metadata:
        write_metadata(tmp, dict(metadata))
    for name in keep:
        # A kill between this rename and the swap below loses it (rare): the next run starts over.
        if (directory / name).exists():
            (directory / name).rename(tmp / name)
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


class ResumeState(Callback):
    """What Lightning's checkpoint leaves out and a resumed fine-tuning needs to go on as the uninterrupted
    run would: the random generators (dropout masks, loader seeds; Lightning saves none), the shuffling
    generator of a train loader given to ``Trainer.fit`` itself (``train_loader``), and the number of
    finished epochs (for the resume log).

    They are taken when ``last.ckpt`` is written (end of an epoch, after its validation) and put back when it
    is loaded, before the train loader's first iterator of the resumed run draws from them, as in the
    uninterrupted run. With sanity validation steps configured (``num_sanity_val_steps``; 0 in our trainer
    configs) the resumed run draws differently: still a correct resume, no longer bit-identical.
    """

    def __init__(self, train_loader: Any = None):
        generator = getattr(train_loader, "generator", None)
        self.generator = generator if isinstance(generator, torch.Generator) else None
        self.epochs_done = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last).
        self.epochs_done = trainer.current_epoch + 1

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epochs_done": self.epochs_done, "rng": _rng_states()}
        if self.generator is not None:
            state["loader_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_done = int(state_dict["epochs_done"])
        _set_rng_states(state_dict["rng"])
        if self.generator is not None and "loader_generator" in state_dict:
            self.generator.set_state(state_dict["loader_generator"])


def _rng_states() -> dict[str, Any]:
    # Tensors and plain Python values only: last.ckpt is loaded with weights_only=True.
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


@dataclass(frozen=True)
class ResumePoint:
    """A killed fine-tuning's ``last.ckpt`` and where it stopped (finished epochs, optimizer steps)."""

    path: Path
    epochs_done: int
    step: int


def _identity(
    spec: ModelSpec,
    metadata: Mapping[str, Any],
    task_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    recipe: Recipe,
    dataset,
) -> dict[str, Any]:
    """What a staged fine-tuning was made for (model, base, task, seed, recipe, trainer, data sizes): a
    resume needs all of it unchanged. JSON-normalised, so it compares equal to its ``resume.json``."""
    task = {k: v for k, v in dict(task_cfg).items() if k != "training"}
    training = {k: v for k, v in dict(task_cfg["training"]).items() if k != "checkpoint_every_n_steps"}
    trainer = {
        k: v for k, v in dict(trainer_cfg).items() if k not in _COSMETIC_TRAINER_KEYS and v is not None
    }
    trainer["precision"] = resolve_precision(trainer.get("precision"), trainer.get("accelerator"))
    identity = {
        "model": {"name": spec.name, "pretrained": spec.pretrained, "revision": spec.revision},
        "compressor": spec.compressor,
        **{k: metadata.get(k) for k in ("seed", "base_fingerprint", "compression")},
        "task": {**task, "training": training},
        "trainer": trainer,
        "recipe": {
            "monitor": recipe.monitor,
            "mode": recipe.mode,
            **{
                name: f"{fn.__module__}.{fn.__qualname__}"
                for name, fn in (("make_module", recipe.make_module), ("fit_inputs", recipe.fit_inputs))
            },
        },
        "examples": {split: len(dataset[split]) for split in ("train", "validation")},
    }
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _last_checkpoints(directory: Path, task_cfg: Mapping[str, Any]) -> list[ModelCheckpoint]:
    """Lightning's full training state (weights, optimizer, schedule, loops, callback states) as
    ``<directory>/last.ckpt``, replaced at the end of every epoch (after its validation) and, when the task's
    training block sets ``checkpoint_every_n_steps``, every that many optimizer steps too.

    A step checkpoint resumes mid-epoch: Lightning runs the epoch's remaining number of batches, but our
    loaders are not stateful, so they come from the start of that epoch's order (some batches of that epoch
    twice, others not at all). A resume from an epoch end repeats the uninterrupted run.
    """

    def newest(**every: Any) -> ModelCheckpoint:
        # One file under a fixed name: save_top_k=1 without a monitor keeps the newest. (Lightning 2.6 writes
        # save_last's last.ckpt only along with a top-k save: save_top_k=0, save_last=True writes nothing.)
        return ModelCheckpoint(
            dirpath=directory,
            filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
            **every,
        )

    # Lightning takes epoch and step intervals only from separate callbacks.
    every_n_steps = int(task_cfg["training"].get("checkpoint_every_n_steps") or 0)
    return [newest(every_n_epochs=1)] + ([newest(every_n_train_steps=every_n_steps)] if every_n_steps else [])


def _start_batch_order_at(fit_inputs: Mapping[str, Any], epoch: int) -> None:
    """Make the train loader's batch sampler, when it has ``set_epoch``, start at ``epoch``.

    Lightning calls ``set_epoch`` on a loader's sampler only, never on its batch sampler; ours
    (:class:`~trustequiv.data.batches.BucketBatchSampler`, shuffled by seed + epoch) counts epochs itself from
    0, so
    a resumed run would replay the first epochs' orders. The loader of a datamodule is made inside
    ``Trainer.fit`` and iterated at once, so its ``train_dataloader`` is wrapped (first call only).
    """

    def start(loader: Any) -> Any:
        set_epoch = getattr(getattr(loader, "batch_sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return loader

    if "train_dataloaders" in fit_inputs:
        start(fit_inputs["train_dataloaders"])
    datamodule = fit_inputs.get("datamodule")
    if datamodule is not None:
        make = datamodule.train_dataloader

        def train_dataloader() -> Any:
            datamodule.train_dataloader = make
            return start(make())

        datamodule.train_dataloader = train_dataloader


def _resume_point(staging: Path, identity: Mapping[str, Any], name: str) -> ResumePoint | None:
    """The resume point a killed fine-tuning of the same :func:`_identity` left in ``staging``; else None
    (start over), with a log line saying why when a staged run is there."""
    last = staging / RESUME_DIR / LAST_CHECKPOINT
    if not last.exists():
        if staging.exists():
            log.info(
                "%s: the staged fine-tuning at %s has no checkpoint to resume from: starting over",
                name,
                staging,
            )
        return None
    try:
        recorded = json.loads((staging / RESUME_DIR / RESUME_FILE).read_text())
    except (OSError, ValueError):
        recorded = {}
    if recorded != identity:
        differ = sorted(k for k in identity.keys() | recorded.keys() if recorded.get(k) != identity.get(k))
        log.info(
            "%s: the staged fine-tuning at %s was made with other settings (%s differ): starting over",
            name,
            staging,
            ", ".join(differ),
        )
        return None
    try:
        # Trust boundary: last.ckpt is written by our own runs into paths.models_dir, but is unpickled with
        # weights_only=True all the same (here and by Trainer.fit), so a file planted there cannot run code.
        # mmap: only what is read here comes off the disk.
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        state = ckpt["callbacks"][ResumeState.__qualname__]
        point = ResumePoint(last, int(state["epochs_done"]), int(ckpt["global_step"]))
    except Exception as err:  # unreadable (the disk filled up?) or not ours: resuming is an optimisation
        log.warning("%s: cannot resume from %s (%s): starting over", name, last, err)
        return None
    return point


def optimizer_settings(training: Mapping[str, Any]) -> dict[str, float | bool]:
    """AdamW settings of a task's ``training`` block (learning rate, weight decay, warmup share, and the
    opt-in ``fused_adamw``: AdamW's fused kernel, the same update up to float rounding; absent = False, so
    a task config without the key fine-tunes, and fingerprints, exactly as before)."""
    return {
        "learning_rate": float(training["learning_rate"]),
        "weight_decay": float(training.get("weight_decay", 0.01)),
        "warmup_ratio": float(training.get("warmup_ratio", 0.1)),
        "fused_adamw": bool(training.get("fused_adamw", False)),
    }


@dataclass(frozen=True)
class Recipe:
    """What differs between task families when fine-tuning; :func:`fine_tune` does the rest.

    Attributes:
        new_model: ``(spec, task_cfg) -> (model, tokenizer)`` from the pretrained weights, new head.
        load_base: ``(checkpoint, task_cfg) -> LoadedModel``: the fine-tuned base of a compressed model.
        make_module: ``(model, task_cfg) -> LightningModule``.
        fit_inputs: ``(dataset, tokenizer, task_cfg, seed) -> kwargs of Trainer.fit`` (datamodule or loaders).
        monitor, mode: the validation metric that picks the best checkpoint (recorded as ``best_<monitor>``).
        metadata: ``task_cfg -> extra trustequiv.json entries``.
    """

    new_model: Callable[[ModelSpec, Mapping[str, Any]], tuple[Any, Any]]
    load_base: Callable[[str, Mapping[str, Any]], Any]
    make_module: Callable[[Any, Mapping[str, Any]], L.LightningModule]
    fit_inputs: Callable[[Any, Any, Mapping[str, Any], int], dict[str, Any]]
    monitor: str = "val/acc"
    mode: str = "max"
    metadata: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=lambda task_cfg: {})


def _calibration_data(
    recipe: Recipe, model: Any, fit_inputs: Mapping[str, Any], task_cfg: Mapping[str, Any], n_batches: int
) -> CalibrationData:
    """The first ``n_batches`` training batches and the task's training loss of ``model``, for a compressor
    that scores the model on data. The random generators (the global one and a train loader's own) are
    put back, so fine-tuning then draws as it would have without."""
    loader = fit_inputs.get("train_dataloaders")
    if loader is None:
        loader = fit_inputs["datamodule"].train_dataloader()  # a new loader: the datamodule's stays unused
    generator = getattr(loader, "generator", None)
    state = generator.get_state() if isinstance(generator, torch.Generator) else None
    with torch.random.fork_rng(devices=[]):
        batches = list(itertools.islice(loader, n_batches))
    if state is not None:
        generator.set_state(state)
    module = recipe.make_module(model, task_cfg)

    def loss(batch: Mapping[str, Any]) -> torch.Tensor:
        with warnings.catch_warnings():  # training_step logs; without a trainer Lightning warns and skips it
            warnings.filterwarnings("ignore", message=".*self.log.*")
            return module.training_step(batch, 0)

    return CalibrationData(batches=batches, loss=loss)


@dataclass(frozen=True)
class _Job:
    """What one :func:`fine_tune` call fine-tunes, on what and how: the inputs its steps share."""

    spec: ModelSpec
    dataset: Any
    task_cfg: Mapping[str, Any]
    trainer_cfg: Mapping[str, Any]
    recipe: Recipe
    seed: int


def _check_splits(dataset, task_cfg: Mapping[str, Any]) -> None:
    """Raises ValueError: ``dataset`` has no ``train`` or no ``validation`` split (an evaluation-only set)."""
    for split in ("train", "validation"):
        if split not in dataset:
            raise ValueError(
                f"task {task_cfg['name']} has no '{split}' split to fine-tune on (has {list(dataset)}); "
                "it is an evaluation-only set: fine-tune on its source task and evaluate here"
            )


def _initial_metadata(job: _Job) -> dict[str, Any]:
    """``trustequiv.json``'s entries known before anything is built: model, task, labels, provenance."""
    return {
        "model": job.spec.name,
        "task": job.task_cfg["name"],
        "label_names": list(job.task_cfg["label_names"]),
        "pretrained": job.spec.pretrained,
        "seed": job.seed,
        "training": dict(job.task_cfg["training"]),
        **job.recipe.metadata(job.task_cfg),
    }


def _compress_base(
    job: _Job, compressor: Any, base_checkpoint: str | None, metadata: dict[str, Any]
) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """``(base, model, tokenizer, fit_inputs)``: the fine-tuned base loaded from ``base_checkpoint`` and
    compressed (scored on training batches first when the compressor calibrates: ``fit_inputs`` are then
    those batches' inputs, reusable for training unless the compressor changed the tokenizer; else None).
    Records the base and the compression in ``metadata``.

    Raises:
        ValueError: ``base_checkpoint`` is None.
    """
    if base_checkpoint is None:
        raise ValueError(f"{job.spec.name}: a compressed model needs the fine-tuned base checkpoint")
    fit_inputs: dict[str, Any] | None = None
    base = job.recipe.load_base(base_checkpoint, job.task_cfg)
    model, tokenizer = base.model, base.tokenizer
    if compressor.calibration_batches > 0:  # scored on training batches first (e.g. head importance)
        fit_inputs = job.recipe.fit_inputs(job.dataset, tokenizer, job.task_cfg, job.seed)
        data = _calibration_data(job.recipe, model, fit_inputs, job.task_cfg, compressor.calibration_batches)
        model = compressor.compress(model, data=data)
    else:
        model = compressor.compress(model)
    tokenizer = compressor.candidate_tokenizer(tokenizer)
    if tokenizer is not base.tokenizer:
        fit_inputs = None  # calibration batches were encoded with the base's tokenizer
    metadata.update(base_checkpoint=str(base.directory), base_fingerprint=base.fingerprint)
    metadata["compression"] = compressor.recipe()
    return base, model, tokenizer, fit_inputs


def _save_untrained(
    job: _Job,
    compressor: Any,
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    metadata: dict[str, Any],
    started: float,
) -> Path:
    """Nothing to train: keep the fp32 weights and the recipe the loader applies; returns ``out_dir``."""
    save_hf(compressor.before_save(model), tokenizer, out_dir)
    metadata["compressor"] = dict(job.spec.compressor)
    metadata["seconds"] = round(time.time() - started, 1)
    write_metadata(out_dir, metadata)
    return out_dir


def _training_module(job: _Job, compressor: Any, model: Any, base: Any, ctx: Any) -> L.LightningModule:
    """The LightningModule that trains ``model``: the compressor's own when it has one (e.g. distillation's
    module, with the teacher's outputs), else the recipe's."""
    module = None
    if compressor is not None:  # e.g. distillation's module, with the teacher's outputs
        module = compressor.training_module(
            model, base=base, base_spec=job.spec.base, task_cfg=job.task_cfg, dataset=job.dataset, ctx=ctx
        )
    if module is None:
        module = job.recipe.make_module(model, job.task_cfg)
    return module


def _start_staging(staging: Path, identity: Mapping[str, Any], name: str) -> ResumePoint | None:
    """Where to resume the fine-tuning staged in ``staging`` (:func:`_resume_point`); with none, the staging
    dir is started over (by one rank), with ``identity`` as its ``resume.json``."""
    resume = _resume_point(staging, identity, name)
    if resume is None and distributed_rank() == 0:  # one rank (re)starts the staging dir
        resume_dir = staging / RESUME_DIR
        shutil.rmtree(staging, ignore_errors=True)
        resume_dir.mkdir(parents=True, exist_ok=True)
        (resume_dir / RESUME_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True))
    return resume


def _fit_trainer(
    job: _Job,
    staging: Path,
    tokenizer: Any,
    before_save: Callable[[Any], Any] | None,
    fit_inputs: Mapping[str, Any],
    callbacks: Sequence[Callback],
    logger: Any,
) -> tuple[L.Trainer, BestHFCheckpoint]:
    """The trainer (and its best-checkpoint callback, saving into ``staging``) with the resume state, the
    ``last.ckpt`` checkpoints and then ``callbacks``."""
    best = BestHFCheckpoint(
        staging, tokenizer, job.recipe.monitor, job.recipe.mode, keep=(RESUME_DIR,), before_save=before_save
    )
    callbacks = [
        best,
        ResumeState(fit_inputs.get("train_dataloaders")),
        *_last_checkpoints(staging / RESUME_DIR, job.task_cfg),
        *callbacks,
    ]
    trainer = make_trainer(job.trainer_cfg, callbacks=callbacks, enable_checkpointing=True, logger=logger)
    return trainer, best


def _fit(
    job: _Job,
    trainer: L.Trainer,
    module: L.LightningModule,
    fit_inputs: Mapping[str, Any],
    resume: ResumePoint | None,
) -> None:
    """``trainer.fit``: from the start, or from ``resume`` (the batch order starting at its epoch)."""
    if resume is None:
        log.info("fine-tuning %s on %s", job.spec.name, job.task_cfg["name"])
    else:
        _start_batch_order_at(fit_inputs, resume.epochs_done)
        log.info(
            "resuming fine-tuning of %s on %s from epoch %d, step %d (%s)",
            job.spec.name,
            job.task_cfg["name"],
            resume.epochs_done,
            resume.step,
            resume.path,
        )
    with warnings.catch_warnings():
        # resume.json (and a last.ckpt being resumed from) are expected there.
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, **fit_inputs, ckpt_path=resume.path if resume else None, weights_only=True)


def _move_into_place(
    trainer: L.Trainer,
    best: BestHFCheckpoint,
    module: L.LightningModule,
    out_dir: Path,
    metadata: dict[str, Any],
    resume: ResumePoint | None,
    started: float,
) -> None:
    """After the fit (global zero only): the staging dir (``best.directory``) without its resume state,
    moved to ``out_dir``, its ``trustequiv.json`` completed with ``metadata``, the best score and timings."""
    staging = best.directory
    if best.best is None:  # no validation ran (e.g. limit_val_batches=0): keep the last weights
        last = module.model if best.before_save is None else best.before_save(module.model)
        save_hf(last, best.tokenizer, staging, keep=(RESUME_DIR,))
    # Done with the resume state. A kill from here on leaves a staged dir without it: started over.
    shutil.rmtree(staging / RESUME_DIR, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    metadata.update(
        {best.key: best.best},
        best_epoch=best.best_epoch,
        epochs_run=trainer.current_epoch,
        seconds=round(time.time() - started, 1),
        torch=torch.__version__,
    )
    if resume is not None:
        metadata["resumed_from"] = {"epochs_done": resume.epochs_done, "step": resume.step}
    write_metadata(out_dir, {**read_metadata(out_dir), **metadata})


def fine_tune(
    spec: ModelSpec,
    dataset,
    *,
    task_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    out_dir: Path,
    seed: int = 42,
    base_checkpoint: str | None = None,
    logger: Any = False,
    recipe: Recipe,
    callbacks: Sequence[Callback] = (),
    ctx: Any = None,
) -> Path:
    """Make ``spec``'s fine-tuned checkpoint at ``out_dir`` and return it.

    Plain models start from ``spec.pretrained`` with a new head. Compressed models start from
    ``base_checkpoint`` (the fine-tuned base model): the compressor's :meth:`compress` runs, then fine-tuning
    when the compressor asks for it; otherwise the weights are copied with the compressor's recipe so it is
    applied at load time. ``trustequiv.json`` records task, labels, provenance and the best validation
    metric. ``recipe`` says what is specific to the task kind
    (:meth:`trustequiv.data.task_kind.TaskKind.recipe`).

    Training is staged in ``<out_dir>.training`` (the best weights; Lightning's ``lightning/last.ckpt`` of
    the latest epoch) and moved to ``out_dir`` when complete. Run again after a kill, it resumes from
    ``last.ckpt`` when ``lightning/resume.json`` shows the same model, base, task, seed, recipe, trainer
    settings and data sizes (the log says from which epoch and step); otherwise it starts over.

    ``callbacks`` are added to the trainer's (e.g. :class:`trustequiv.train.trust_callbacks.TrustCallback`:
    trust
    against the base, logged at each validation epoch).

    ``ctx``: the run's :class:`~trustequiv.models.source.RunContext` (output cache, prediction settings), for
    a
    compressor that trains its own way (:meth:`~trustequiv.models.compressor.Compressor.training_module`;
    distill
    reads its teacher's outputs from the cache).

    Raises:
        ValueError: the dataset has no ``train``/``validation`` split, or a compressed spec lacks its base.
    """
    _check_splits(dataset, task_cfg)
    started = time.time()
    L.seed_everything(seed, workers=True)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(spec, dataset, task_cfg, trainer_cfg, recipe, seed)
    metadata = _initial_metadata(job)

    compressor = build_compressor(spec.compressor) if spec.compressor else None
    base, fit_inputs = None, None
    if compressor is not None:
        base, model, tokenizer, fit_inputs = _compress_base(job, compressor, base_checkpoint, metadata)
        if not compressor.finetune:
            return _save_untrained(job, compressor, model, tokenizer, out_dir, metadata, started)
    else:
        model, tokenizer = recipe.new_model(spec, task_cfg)

    if fit_inputs is None:
        fit_inputs = recipe.fit_inputs(dataset, tokenizer, task_cfg, seed)
    module = _training_module(job, compressor, model, base, ctx)
    # from_pretrained returns eval mode and Lightning keeps submodule modes: without this, no dropout.
    model.train()
    # Best checkpoints go to a staging dir moved into place only when fit completes: a killed run never
    # leaves a half-trained model where evaluate.py would take it for a finished one. Lightning's last.ckpt
    # beside them lets the same command resume a killed run; the model above was rebuilt the same way
    # (compressed the same way) first, so the checkpoint's weights fit it.
    staging = out_dir.with_name(f"{out_dir.name}.training")
    resume = _start_staging(
        staging, _identity(spec, metadata, task_cfg, trainer_cfg, recipe, dataset), spec.name
    )
    before_save = compressor.before_save if compressor is not None else None
    trainer, best = _fit_trainer(job, staging, tokenizer, before_save, fit_inputs, callbacks, logger)
    _fit(job, trainer, module, fit_inputs, resume)
    if trainer.is_global_zero:
        _move_into_place(trainer, best, module, out_dir, metadata, resume, started)
    # Under DDP the other ranks go on to load out_dir: only once rank 0 has moved it into place.
    trainer.strategy.barrier("fine_tune_checkpoint_moved")
    return out_dir
