"""Validate VIM on a model: `python -m valharm.validate [model=...] [trainer=gpu] ...` (conf/validate.yaml).

Trains VIM for two opposed targets in three arms — positive control (labels cued in the text), real data, shuffled
labels — on one base load; reads every adapter, the untuned model and ICL over the whole answer space; writes
`validation.json` and `verdict.md` into the run dir (valharm.values.validation: the levels; valharm.runs.validation:
the job). Rerunning into the same run dir (`hydra.run.dir=...`) resumes.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from valharm.errors import report_errors
from valharm.runs import validation


@hydra.main(version_base="1.3", config_path="../conf", config_name="validate")
@report_errors
def main(cfg: DictConfig) -> None:
    validation.run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
