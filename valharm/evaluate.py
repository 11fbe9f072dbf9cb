"""Evaluate a base model or a saved LoRA adapter: `python -m valharm.evaluate adapter_dir=PATH`."""
import hydra
from omegaconf import DictConfig

from valharm.errors import report_errors
from valharm.runs import pipeline


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@report_errors
def main(cfg: DictConfig):
    pipeline.evaluate_only(cfg)


if __name__ == "__main__":
    main()
