"""Which processes a job runs in and how many threads each gets: torch threads shared among the jobs a
parallel launcher runs at once, and the coordination of DDP ranks that a scheduler starts together."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from valharm.errors import ValharmError
from valharm.runs.rundir import write_json_atomic

log = logging.getLogger("valharm")


def usable_cores() -> int:
    """The cores this process may use (affinity and cgroup quotas counted, as joblib counts them for n_jobs)."""
    import joblib

    return joblib.cpu_count()


def job_threads(setting) -> int | None:
    """Torch threads for this job: `threads=auto` shares the cores among the jobs a parallel launcher runs at
    once (joblib: n_jobs; submitit/SLURM: the job's cpus_per_task); an int is taken as is; null leaves torch's
    default (OMP_NUM_THREADS)."""
    if setting != "auto":
        return setting
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", "")).lower()
    if "joblib" in target:
        cores, n_jobs = usable_cores(), launcher.n_jobs
        at_once = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 is every core, -2 all but one
        return max(1, cores // max(1, at_once))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return launcher.cpus_per_task
    return None


def set_threads(setting) -> None:
    import torch

    threads = job_threads(setting)
    if threads:
        torch.set_num_threads(threads)
        log.info(f"{threads} torch thread(s) for this job (threads={setting})")


ATTEMPT_FILE = ".attempt"  # rank 0's decision for this attempt of a job whose ranks start together


def attempt_id() -> str | None:
    """This attempt of the job when a scheduler starts all its ranks at once (SLURM tasks, torchrun), else None."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


def announce(run_dir: Path, attempt: str, decision: str) -> None:
    """Rank 0: this attempt runs (its training state and results already sorted out) or skips."""
    write_json_atomic(run_dir / ATTEMPT_FILE, {"attempt": attempt, "decision": decision})


def wait_for_rank_zero(run_dir: Path, attempt: str, timeout: float = 1800.0) -> str:
    """Other ranks: rank 0's decision for this attempt, once it is made."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            said = json.loads((run_dir / ATTEMPT_FILE).read_text())
            if said["attempt"] == attempt:
                return said["decision"]
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise ValharmError(f"rank 0 of attempt {attempt} said nothing in {run_dir / ATTEMPT_FILE} within {timeout:.0f} s; "
                       f"check its log")


def check_process_launch(cfg: DictConfig) -> None:
    """A multi-process strategy started by Lightning re-runs the command line, which only a single run allows."""
    strategy = str(cfg.trainer.get("strategy", ""))
    external = "LOCAL_RANK" in os.environ or attempt_id() is not None
    if strategy.startswith("ddp") and HydraConfig.get().mode == RunMode.MULTIRUN and not external:
        raise ValharmError(f"trainer.strategy={strategy} starts its extra processes by re-running the command line, "
                           "which a local multirun cannot do; run one job at a time, or sweep with "
                           "hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices> (SLURM starts them)")
