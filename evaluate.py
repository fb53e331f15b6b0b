"""Compare a candidate with the reference: python evaluate.py model=distilbert task=mnli"""

import hydra
from omegaconf import DictConfig

from trustequiv.config import quiet_third_party, register_resolvers, stop_on_sigterm

quiet_third_party()
register_resolvers()
stop_on_sigterm()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from trustequiv.pipeline import evaluate

    result = evaluate(cfg)
    # Last line: the run directory, for scripts.
    print(result["output_dir"])


if __name__ == "__main__":
    main()
