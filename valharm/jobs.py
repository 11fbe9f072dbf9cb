"""List the jobs a sweep would run, without running them.

    python -m valharm.jobs experiment=vim_all_distributions
    python -m valharm.jobs --config evaluate value=power,hedonism model=tiny

Takes the same overrides as `python -m valharm.train -m`; the sweep is the comma/range overrides plus the
config's `hydra.sweeper.params`, expanded by Hydra's own basic sweeper. One line per job: its number, its
overrides and the value distribution it trains for.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from valharm.errors import report_errors

CONF = Path(__file__).resolve().parents[1] / "conf"


def sweep_jobs(overrides: list[str], config: str = "train") -> list[list[str]]:
    """The override list of every job, in the order Hydra's basic sweeper runs them."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    parsed = parser.parse_overrides(params + overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def job_values(jobs: list[list[str]], config: str = "train") -> list:
    """The value distribution of each job (loads ESS data for realistic distributions)."""
    values = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in jobs:
            values.append(instantiate(compose(config, overrides=job).value))
    return values


@report_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train", choices=["train", "evaluate"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    jobs = sweep_jobs(args.overrides, args.config)
    for number, (job, value) in enumerate(zip(jobs, job_values(jobs, args.config))):
        print(f"{number}\t{value.name}\t{' '.join(job)}")
    print(f"{len(jobs)} jobs", file=sys.stderr)


if __name__ == "__main__":
    main()
