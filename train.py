"""Fine-tune a model on a task: python train.py model=bert_base task=mnli"""

import hydra
from omegaconf import DictConfig

from trustequiv.config import quiet_third_party, register_resolvers, stop_on_sigterm

quiet_third_party()
register_resolvers()
stop_on_sigterm()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from trustequiv.pipeline import train

    train(cfg)


if __name__ == "__main__":
    main()
