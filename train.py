"""Fine-tune a model on a task: python train.py model=bert_base task=mnli"""

import hydra
from omegaconf import DictConfig

from trustequiv.config import (
    check_config,
    lightning_logs_once,
    quiet_third_party,
    register_resolvers,
    stop_on_sigterm,
)
from trustequiv.errors import reported, run

quiet_third_party()
register_resolvers()
stop_on_sigterm()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # Known failures end in one line, `error: <what> - fix: <how>`, exit status 2 (trustequiv.errors).
    with reported():
        check_config(cfg)
        from trustequiv.pipeline import train

        lightning_logs_once()
        train(cfg)


if __name__ == "__main__":
    run(main)
