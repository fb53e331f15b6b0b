"""Compare a candidate with the reference: python evaluate.py model=distilbert task=mnli"""

import hydra
from omegaconf import DictConfig

from trustequiv.cli import evaluate_job, setup
from trustequiv.user_errors import run

setup()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    # Known failures end in one line, `error: <what> - fix: <how>`, exit status 2 (trustequiv.user_errors);
    # the last line printed is the run directory, for scripts.
    evaluate_job(cfg)


if __name__ == "__main__":
    run(main)
