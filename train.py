"""Fine-tune a model on a task: python train.py model=bert_base task=mnli"""

import hydra
from omegaconf import DictConfig

from trustequiv.cli import setup, train_job
from trustequiv.user_errors import run

setup()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    # Known failures end in one line, `error: <what> - fix: <how>`, exit status 2 (trustequiv.user_errors).
    train_job(cfg)


if __name__ == "__main__":
    run(main)
