"""The console scripts ``trustequiv-train`` and ``trustequiv-evaluate``: ``train.py`` and ``evaluate.py``
of an installed package, reading the config tree from the package ``trustequiv_conf`` (the repository's
``conf/``).

The root scripts call the same job bodies (:func:`train_job`, :func:`evaluate_job`) with the clone's
``conf/``. The job names (run dirs ``<log_dir>/train/...``, ``<log_dir>/evaluate/...``) are set in
``conf/train.yaml`` and ``conf/evaluate.yaml``, not derived from this file's name.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from trustequiv.conf_tree import CONF_PACKAGE
from trustequiv.config import (
    check_config,
    lightning_logs_once,
    quiet_import_noise,
    quiet_third_party,
    register_resolvers,
    stop_on_sigterm,
)
from trustequiv.user_errors import reported, run

CONFIG_PATH = f"pkg://{CONF_PACKAGE}"


def setup() -> None:
    """What an entry point does before Hydra starts: quiet third-party output, resolvers, SIGTERM handling."""
    quiet_third_party()
    register_resolvers()
    stop_on_sigterm()


def train_job(cfg: DictConfig) -> None:
    """Fine-tune a model on a task (the body of ``train.py``)."""
    # Known failures end in one line, `error: <what> - fix: <how>`, exit status 2 (trustequiv.user_errors).
    with reported():
        check_config(cfg)
        # imported after quiet_third_party(): the environment is set before torch, transformers and W&B load
        from trustequiv.run.pipeline import train

        lightning_logs_once()
        quiet_import_noise()
        train(cfg)


def evaluate_job(cfg: DictConfig) -> None:
    """Compare candidates with the reference (the body of ``evaluate.py``); the last line printed is the run
    directory, for scripts."""
    with reported():
        check_config(cfg)
        # imported after quiet_third_party(), as above
        from trustequiv.run.pipeline import evaluate

        lightning_logs_once()
        quiet_import_noise()
        result = evaluate(cfg)
    print(result["output_dir"])


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train(cfg: DictConfig) -> None:
    train_job(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    evaluate_job(cfg)


def train() -> None:
    """``trustequiv-train model=<model> task=<task>``: what ``python train.py ...`` does in a clone."""
    setup()
    run(_train)


def evaluate() -> None:
    """``trustequiv-evaluate model=<candidate> task=<task>``: what ``python evaluate.py ...`` does in a
    clone."""
    setup()
    run(_evaluate)
