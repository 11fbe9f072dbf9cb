"""A job's run dir: what its results were computed from (the fingerprint), whether a finished run can be
skipped, results written atomically, and every superseded results file kept (`results.history/`).

The fingerprint covers the resolved config (not where things are kept or how they show), valharm's code (its
Python sources, the YAML configs and the shipped samples), the content of every data file or folder the config
names, and an evaluated adapter's weights: a data file edited in place, or a config default changed in a YAML
file, makes the job run again.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from valharm.caching import content_digest, digest, digest_cache, file_tree_digest
from valharm.errors import ValharmError
from valharm.runs.tracking import flatten

log = logging.getLogger("valharm")

PACKAGE = Path(__file__).resolve().parents[1]  # valharm/
CONF = PACKAGE.parent / "conf"
RESULTS = "results.json"
HISTORY = "results.history"  # every superseded results.json, as results-<finished time>.json
TRAINING_STATE = "stages"  # aligners keep each stage's checkpoints and best adapter here
# where things are kept and how they show, not what is computed: top-level keys, and leaf keys at any depth
NOT_FINGERPRINTED = ("skip_finished", "paths", "logger", "cache", "threads", "inspect_log")
NOT_FINGERPRINTED_LEAVES = ("progress", "cache_path")


def json_safe(data):
    """NaN (no valid answer) becomes null so results.json stays strict JSON."""
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return None if isinstance(data, float) and math.isnan(data) else data


def write_json_atomic(path: Path, data) -> None:
    """Write via a temporary file so a crash never leaves a half-written results file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """valharm's version and a digest of its Python sources, its YAML configs and its shipped samples: results of
    other code or defaults are not reused."""
    sources = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    configs = sorted(CONF.rglob("*.yaml")) if CONF.is_dir() else []
    return (f"{version('valharm')}+{file_tree_digest(sources, PACKAGE)[:8]}"
            f"{file_tree_digest(configs, CONF)[:4] if configs else ''}")


# the code path generated texts depend on
GENERATION_SOURCES = ("generation", "models/loading.py")  # a package's every module, or one file


@functools.lru_cache(maxsize=1)
def generation_code_version() -> str:
    """A digest of the generation code path only: a fix there invalidates cached generations, an edit elsewhere
    (a README, the analysis) does not."""
    files = [path for name in GENERATION_SOURCES for path in sorted((PACKAGE / name).rglob("*.py")) or [PACKAGE / name]]
    return file_tree_digest(files, PACKAGE)[:16]


def data_digests(config: dict) -> dict[str, str]:
    """Setting -> content digest, for every computed setting that names an existing data file or folder (models and
    adapters are identified otherwise: by config, and by their weights' digest)."""
    found, cache = {}, None
    for key, value in computed(config).items():
        if set(key.split("/")) & {"model", "adapter_dir", "hub_id"}:
            continue
        if isinstance(value, str) and ("/" in value or value.endswith((".csv", ".tsv", ".json", ".jsonl", ".txt"))):
            path = Path(value)
            if path.exists():
                cache = cache or digest_cache()
                found[key] = content_digest(path, cache)
    return found


def computed(config: dict) -> dict:
    """The flattened settings that decide what a run computes."""
    return {k: v for k, v in flatten(config).items()
            if k.split("/")[0] not in NOT_FINGERPRINTED and k.split("/")[-1] not in NOT_FINGERPRINTED_LEAVES}


def fingerprint(config: dict, adapter: str | None = None, data: dict | None = None) -> str:
    """The hash that decides whether a finished run can be skipped: resolved config + code version + the content of
    the data it names (+ the digest of an evaluated adapter's weights: a folder can be trained again under the same
    path)."""
    return digest({"config": computed(config), "code": code_version(), "adapter": adapter,
                   "data": data if data is not None else data_digests(config)})


def failed_items(results: dict) -> int:
    """Items whose scoring failed (no answer after retries): a run with any is not finished."""
    return sum(s["counts"].get("failed", 0) for s in (results.get("scoring") or {}).values())


def changed(previous: dict, config: dict, data: dict, limit: int = 6) -> list[str]:
    """What differs from the earlier run: settings, data files (by content), or the code."""
    old, new = computed(previous.get("config") or {}), computed(config)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    old_data = previous.get("data_digests") or {}
    keys += sorted(f"the content of {new.get(k, k)}" for k in data if old_data.get(k) not in (None, data[k]))
    if not keys and previous.get("code_version") != code_version():
        keys = [f"valharm's code or defaults ({previous.get('code_version')} -> {code_version()})"]
    return keys[:limit] + (["..."] if len(keys) > limit else []) or ["the adapter"]


RESULTS_SCHEMA = 3  # results.json's layout; a run dir holding another is refused, not misread


@dataclass
class Decision:
    """Whether a job runs: skipped (with the results to hand back), or run, resuming its training state or not."""

    skip: bool = False
    previous: dict | None = None
    resume_training: bool = True


def read_previous(results_path: Path) -> dict:
    try:
        previous = json.loads(results_path.read_text())
    except (OSError, ValueError) as err:
        raise ValharmError(f"{results_path} is not a readable valharm results file ({type(err).__name__}); move it "
                           f"away, or pass skip_finished=false to keep it in {HISTORY}/ and run again") from None
    schema = previous.get("schema", RESULTS_SCHEMA if "config_hash" in previous else None)  # earlier valharm: no field
    if schema != RESULTS_SCHEMA:
        raise ValharmError(f"{results_path} has results schema {previous.get('schema')}, this valharm reads "
                           f"{RESULTS_SCHEMA}; use a new run dir, or pass skip_finished=false to keep it in "
                           f"{HISTORY}/ and run again")
    return previous


def decide(run_dir: Path, config: dict, data: dict, config_hash: str, skip_finished: bool) -> Decision:
    """Skip a run dir finished with this config, code and data; else run again (saying why), keeping trained
    stages when only scoring failed."""
    results_path = run_dir / RESULTS
    if not results_path.exists():
        return Decision()  # new, or interrupted: resume what was trained
    if not skip_finished:
        return Decision(resume_training=False)
    previous = read_previous(results_path)
    failed = failed_items(previous)
    same = previous.get("config_hash") == config_hash
    if same and not failed:
        log.info(f"{results_path} is finished with this config, code and data; skipping it (skip_finished=false to "
                 f"redo it)")
        return Decision(skip=True, previous=previous)
    why = (f"{failed} item(s) failed to score" if same else
           f"it was produced with another config, code or data ({', '.join(changed(previous, config, data))} changed)")
    log.info(f"{results_path}: {why}; running again (cached generations and scores are reused; the earlier results "
             f"go to {HISTORY}/)")
    return Decision(resume_training=same)


def archive_results(run_dir: Path) -> Path | None:
    """Move the run dir's results.json into results.history/results-<its finished time>.json (never overwriting)."""
    results = run_dir / RESULTS
    if not results.exists():
        return None
    try:
        finished = (json.loads(results.read_text()).get("job") or {}).get("finished") or time.time()
    except ValueError:
        finished = time.time()
    history = run_dir / HISTORY
    history.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(finished))
    # results-<stamp>: a name that starts with a timestamp would be listed as an inspect_ai log by `inspect view`
    target, n = history / f"results-{stamp}.json", 1
    while target.exists():
        n += 1
        target = history / f"results-{stamp}.{n}.json"
    os.replace(results, target)
    return target


def keep_training_state(run_dir: Path, config_hash: str, resume: bool) -> None:
    """Training state left by an attempt that did not finish (or finished with items left to score) is resumed if
    it was made with this config and code; otherwise training starts afresh."""
    state = run_dir / TRAINING_STATE
    marker = state / "config_hash"
    if state.exists() and not (resume and marker.is_file() and marker.read_text() == config_hash):
        log.info(f"{state} holds training of a finished run or of another config or code; training starts afresh")
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    marker.write_text(config_hash)
