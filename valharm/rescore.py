"""Judge a finished run's stored outputs again, generating nothing:
`python -m valharm.rescore run_dir=<run dir> judge=openai judge.model=gpt-4o`."""
import hydra
from omegaconf import DictConfig

from valharm.errors import report_errors
from valharm.runs.rescoring import rescore


@hydra.main(version_base="1.3", config_path="../conf", config_name="rescore")
@report_errors
def main(cfg: DictConfig):
    rescore(cfg)


if __name__ == "__main__":
    main()
