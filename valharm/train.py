"""Align a base model to a value distribution and evaluate it: `python -m valharm.train [-m] key=value ...`."""
import hydra
from omegaconf import DictConfig

from valharm.errors import report_errors
from valharm.runs import pipeline


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@report_errors
def main(cfg: DictConfig):
    results = pipeline.train(cfg)
    return results["metrics"]["pvq40"]["nmse"] if results and "pvq40" in results["metrics"] else None


if __name__ == "__main__":
    main()
