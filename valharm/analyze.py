"""Findings from many runs: `python -m valharm.analyze runs=[<run or multirun dir>, ...]`."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from valharm.analysis.pipeline import analyze
from valharm.errors import report_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
@report_errors
def main(cfg: DictConfig):
    analyze(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
