"""Align then evaluate, one Hydra job: everything it writes goes into the job's run dir."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import threading
import time
from importlib.metadata import version
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm.aligners import Alignment
from valharm.benchmarks import SCORER_ROLES
from valharm.caching import Cache, digest
from valharm.errors import ValharmError
from valharm.generation import GenerationRequest, cached_run
from valharm.models import adapter_digest
from valharm.precision import Precision, choose, hardware
from valharm.prompting import Prompter
from valharm import study
from valharm.analysis.runs import identities
from valharm.scoring.judges import Judge
from valharm.tracking import NoTracker, flatten
from valharm.training import main_process

log = logging.getLogger("valharm")


def value_aligned(model_type: str) -> bool:
    """Whether a model type is aligned to a value distribution (vim, icl) or not (vanilla, sft_*, a foreign adapter)."""
    return model_type not in ("vanilla", "adapter") and not model_type.startswith("sft")


ADAPTER_ORIGIN = "valharm.yaml"  # written next to a trained adapter: aligner, model and value configs
PACKAGES = ("valharm", "torch", "transformers", "peft", "lightning", "hydra-core", "wandb", "alt-profanity-check",
            "vaderSentiment", "openai")
# where things are kept and how they show, not what is computed: top-level keys, and leaf keys at any depth
NOT_FINGERPRINTED = ("skip_finished", "paths", "logger", "cache", "threads")
NOT_FINGERPRINTED_LEAVES = ("progress", "cache_path")


def short_dirname(overrides: str, limit: int = 80) -> str:
    """A run subdir name from Hydra's override string: no '/', and hashed when it gets long."""
    name = overrides.replace("/", "%")
    if len(name) <= limit:
        return name
    return f"{name[:limit - 9]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("valharm_dirname", short_dirname, replace=True)


def package_versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - an absent optional package is simply not listed
            continue
    return found


def run_context() -> tuple[Path, str, str]:
    """(run dir, job name, W&B group): a multirun's jobs share the sweep's group."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    if hydra.mode == RunMode.MULTIRUN:
        group = f"{hydra.job.name}-{Path(hydra.sweep.dir).name}"
        name = f"{group}/{hydra.job.num}:{hydra.job.override_dirname or hydra.job.name}"
    else:
        group = name = run_dir.name
    return run_dir, name, group


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


def build_tracker(logger_cfg: DictConfig | None):
    """The configured tracker (`logger=wandb`), or none (`logger=none`)."""
    configs = [c for c in (logger_cfg or {}).values() if c is not None]
    if len(configs) > 1:
        raise ValharmError(f"one logger at a time, got {', '.join(logger_cfg)}; choose one with logger=...")
    return instantiate(configs[0]) if configs else NoTracker()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """valharm's version and a digest of its source files: results of other code are not reused."""
    package = Path(__file__).parent
    sources = {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(package.rglob("*.py"))}
    return f"{version('valharm')}+{digest(sources)[:12]}"


def computed(config: dict) -> dict:
    """The flattened settings that decide what a run computes."""
    return {k: v for k, v in flatten(config).items()
            if k.split("/")[0] not in NOT_FINGERPRINTED and k.split("/")[-1] not in NOT_FINGERPRINTED_LEAVES}


def fingerprint(config: dict, adapter: str | None = None) -> str:
    """The hash that decides whether a finished run can be skipped: resolved config + code version (+ the
    digest of an evaluated adapter's weights: a folder can be trained again under the same path)."""
    return digest({"config": computed(config), "code": code_version(), "adapter": adapter})


def failed_items(results: dict) -> int:
    """Items whose scoring failed (no answer after retries): a run with any is not finished."""
    return sum(s["counts"].get("failed", 0) for s in (results.get("scoring") or {}).values())


def changed_keys(old: dict, new: dict, limit: int = 6) -> list[str]:
    old, new = computed(old), computed(new)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return keys[:limit] + (["..."] if len(keys) > limit else [])


def build_scorers(cfg: DictConfig, benchmarks: dict) -> dict:
    """The scorers the configured benchmarks need, one per role (toxicity, regard, judge)."""
    roles = {b.scorer_role for b in benchmarks.values() if b.scorer_role}
    return {role: instantiate(cfg[SCORER_ROLES[role]]) for role in sorted(roles)}


def configured_benchmarks(cfg: DictConfig) -> dict:
    """The benchmarks to run: settings left without a benchmark (a preset's, for one removed with
    ~benchmark@benchmarks.<name>) are skipped with a warning."""
    chosen = {}
    for name, bench in cfg.benchmarks.items():
        if bench is not None and "_target_" not in bench:
            log.warning(f"benchmarks.{name} has settings but no benchmark (removed with ~benchmark@benchmarks.{name}?); "
                        f"not run")
        elif bench is not None:
            chosen[name] = bench
    return chosen


def build_components(cfg: DictConfig) -> dict:
    """Instantiate every configured part first, so bad input fails before anything is trained or written."""
    parts = {
        "value": instantiate(cfg.value),
        "model": instantiate(cfg.model),
        "strategy": instantiate(cfg.prompt_strategy),
        "generator": instantiate(cfg.generation),
        "benchmarks": {name: instantiate(b) for name, b in configured_benchmarks(cfg).items()},
        "tracker": build_tracker(cfg.logger),
    }
    if not parts["benchmarks"]:
        raise ValharmError("no benchmarks configured; keep at least one under benchmarks")
    parts["scorers"] = build_scorers(cfg, parts["benchmarks"])
    parts["cache"] = Cache(cfg.cache.generations) if cfg.cache.generations else None
    return parts


def generation_namespace(cfg: DictConfig, parts: dict, adapter_dir: Path | None) -> str:
    """Whose generations these are: model, adapter, precision and the generator's seed (prompts key the rest)."""
    local = parts["precision"].get("generation")  # none when a server generates
    return "generation/" + digest({"model": OmegaConf.to_container(cfg.model, resolve=True),
                                   "adapter": adapter_digest(adapter_dir),
                                   "dtype": local.name if local else None,
                                   "generator": parts["generator"].identity(), "seed": parts["generator"].seed})


def scorer_report(scorers: dict) -> dict:
    """Every scorer used (judges: each rubric), what it is and its counts: cache hits/misses, calls, retries,
    failures, invalid replies."""
    report = {}
    for role, scorer in scorers.items():
        for one in (scorer.used() if isinstance(scorer, Judge) else [scorer]):
            report[one.id] = {"role": role, **one.record(), "counts": dict(sorted(one.counts.items()))}
    return report


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


def job_record(started: float) -> dict:
    """Where and when the job ran: launcher, process, start and end (a parallel launcher's jobs overlap)."""
    return {"launcher": HydraConfig.get().runtime.choices.get("hydra/launcher"), "pid": os.getpid(),
            "started": started, "finished": time.time()}


_BASE: dict = {}  # the base model evaluate jobs of this process share: key, bundle, jobs served, load time


def load_base(cfg: DictConfig, parts: dict, dtype, weights: bool, shared: bool) -> tuple:
    """The job's base model and how it was obtained. `shared` (evaluate jobs): one load per process serves
    every job with the same model and precision — an adapter is attached for a job and removed after it."""
    key = digest({"model": OmegaConf.to_container(cfg.model, resolve=True), "dtype": str(dtype), "weights": weights})
    if shared and _BASE.get("key") == key:
        _BASE["jobs"] += 1
        log.info(f"base model {parts['model'].name} reused from an earlier job of this process "
                 f"(job {_BASE['jobs']} on this load)")
        return _BASE["bundle"], {"loaded": False, "jobs_on_this_load": _BASE["jobs"], "load_s": _BASE["load_s"]}
    _BASE.clear()
    start = time.perf_counter()
    bundle = parts["model"].load(dtype, weights=weights)
    seconds = round(time.perf_counter() - start, 2)
    log.info(f"base model {parts['model'].name} loaded in {seconds} s"
             + (" (later evaluate jobs of this process reuse it)" if shared else ""))
    if shared:
        _BASE.update(key=key, bundle=bundle, jobs=1, load_s=seconds)
    return bundle, {"loaded": True, "jobs_on_this_load": 1, "load_s": seconds}


def detach_adapter(model) -> None:
    """Remove a LoRA adapter attached for one job, leaving the shared base as it was loaded."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.unload()


def precision_plan(cfg: DictConfig, parts: dict, training: bool) -> dict[str, Precision]:
    """The precision of local generation (none: a server generates) and of training, for train jobs, from
    `precision` and the hardware."""
    width = parts["model"].width()
    generator = parts["generator"]
    plan = {"generation": choose(cfg.precision, generator.device, width)} if generator.needs_weights else {}
    if training:
        if "precision" in cfg.trainer:
            raise ValharmError("trainer.precision is set by valharm; choose it with precision=auto|bf16|fp16|fp32")
        plan["training"] = choose(cfg.precision, cfg.trainer.accelerator, width)
    return plan


def check_alignment(cfg: DictConfig, parts: dict, bundle, alignment: Alignment, namespace: str) -> tuple[dict | None, list]:
    """The aligner's check of its adapter against the base model (vim), with the job's generator and caches:
    (summary or None, records). A server generator cannot switch the adapter off, so the check is skipped."""
    if alignment.check is None:
        return None, []
    if not parts["generator"].needs_weights:
        return {"skipped": "generation runs on a server, where the adapter cannot be switched off"}, []
    base_namespace = generation_namespace(cfg, parts, None)
    return alignment.check.run(alignment.model, bundle, parts["generator"], parts["cache"], namespace, base_namespace,
                               parts["value"].as_dict())


def evaluate(bundle, alignment: Alignment, parts: dict, run_dir: Path, namespace: str,
             records: list[dict] | None = None) -> tuple[dict, list[dict], dict, dict, dict]:
    """Generate (cached) and score every benchmark; write generations.jsonl (after `records` given).

    Returns (metrics, records, info, timing, generation cache counts per benchmark).
    """
    metrics, records, info, timing, cache_counts = {}, list(records or []), {}, {}, {}
    generator = parts["generator"]
    prompter = Prompter(bundle, parts["strategy"], parts["value"] if alignment.value_aligned else None,
                        alignment.system_prompt)
    for name, benchmark in parts["benchmarks"].items():
        requests = benchmark.requests(prompter)
        start = time.perf_counter()
        outputs, cache_counts[name] = cached_run(generator, alignment.model, bundle.tokenizer, requests,
                                                 parts["cache"], namespace, desc=name)
        seconds = time.perf_counter() - start
        run = cache_counts[name]["misses"]
        timing[name] = {"generation_s": round(seconds, 3), "requests": len(requests), "requests_run": run,
                        "requests_per_s": round(run / seconds, 2) if run else None}
        if run and isinstance(requests[0], GenerationRequest):  # loglik scoring generates nothing
            timing[name] |= {"new_tokens": generator.new_tokens, "tokens_per_s": round(generator.new_tokens / seconds, 1)}
        start = time.perf_counter()
        result = benchmark.evaluate(requests, outputs, parts["value"], parts["scorers"])
        timing[name]["scoring_s"] = round(time.perf_counter() - start, 3)
        metrics[name], info[name] = result.metrics, result.info
        records.extend(result.records)
    with (run_dir / "generations.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return metrics, records, info, timing, cache_counts


def results_record(cfg: DictConfig, parts: dict, aligner_name: str, alignment: Alignment, metrics: dict,
                   info: dict, run_dir: Path) -> dict:
    return {
        "value": parts["value"].to_record(),
        "aligner": aligner_name,
        "model_type": alignment.model_type or aligner_name,
        "model": parts["model"].name,
        "prompt_strategy": parts["strategy"].name,
        "prompt_strategy_detail": parts["strategy"].record(parts["value"] if alignment.value_aligned else None),
        "scoring": scorer_report(parts["scorers"]),
        "generator": parts["generator"].name,
        "served_model": getattr(parts["generator"], "served", None),  # generation=openai: the model (adapter) name
        "adapter_dir": str(alignment.adapter_dir) if alignment.adapter_dir else None,
        "system_prompt": alignment.system_prompt,
        "training": alignment.metrics,
        "metrics": metrics,
        "benchmarks": info,
        "run_dir": str(run_dir),
        "seed": cfg.seed,
        "precision": {path: p.record() for path, p in parts["precision"].items()},
        "hardware": hardware(),
        "versions": package_versions(),
    }


def run_job(cfg: DictConfig, job_type: str, align, trains: bool = False) -> dict | None:
    """Shared job flow: build parts, skip finished runs, track, align (callback), evaluate, save.

    `trains`: the job trains, so it needs a training precision as well as a generation one.
    """
    run_dir, name, group = run_context()
    results_path = run_dir / "results.json"
    main = main_process()
    started = time.time()
    set_threads(cfg.get("threads"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_hash = fingerprint(resolved, adapter_digest(cfg.get("adapter_dir")))
    redo = results_path.exists()
    resume_training = not redo  # interrupted; or finished with failed items (below): keep the trained stages
    attempt = attempt_id() if trains else None
    if attempt and not main:  # started with rank 0: wait until it has decided and cleaned up
        if wait_for_rank_zero(run_dir, attempt) == "skip":
            return None
    elif redo and cfg.skip_finished:
        previous = json.loads(results_path.read_text())
        failed = failed_items(previous)
        resume_training = same_config = previous.get("config_hash") == config_hash
        if same_config and not failed:
            log.info(f"{results_path} is finished with this config and code; skipping it (skip_finished=false "
                     f"to redo it)")
            if attempt:
                announce(run_dir, attempt, "skip")
            return previous
        why = (f"{failed} item(s) failed to score" if same_config else
               f"it was produced with another config or code "
               f"({', '.join(changed_keys(previous.get('config') or {}, resolved) or ['the code or the adapter'])} changed)")
        log.info(f"{results_path}: {why}; running again (cached generations and scores are reused)")
    preset = HydraConfig.get().runtime.choices.get("preset")
    study_settings = study.record(resolved, preset)
    if preset:
        log.info(f"preset={preset}; differs from the study in: {'; '.join(study_settings['differences']) or 'nothing'}")
    parts = build_components(cfg)
    if not main:  # an extra DDP process: it trains, rank 0 tracks and writes
        parts["tracker"] = NoTracker()
    parts["precision"] = precision_plan(cfg, parts, training=trains)
    value = parts["value"]
    config = {**flatten(resolved),
              **flatten({"value": {**value.as_dict(), "name": value.name, "coding": value.coding}}),
              **{f"precision/{path}": p.name for path, p in parts["precision"].items()}}
    tracker = parts["tracker"]
    tracker.start(run_dir, name, group, job_type, config,  # attempts of one job (requeued, resumed) share a run
                  run_id=digest({"run_dir": str(run_dir.resolve()), "config": config_hash})[:16])
    exit_code = 1
    if main and trains:
        keep_training_state(run_dir, config_hash, resume=resume_training)
    if main and redo:  # keep the earlier results aside, never beside half-new outputs
        os.replace(results_path, run_dir / "results.previous.json")
    if main and attempt:
        announce(run_dir, attempt, "run")
    plan = parts["precision"]
    generator = parts["generator"]
    shared = job_type == "eval" and threading.current_thread() is threading.main_thread()  # jobs in threads: no
    alignment = None
    try:
        weights_precision = plan.get("training", plan.get("generation"))
        bundle, base_load = load_base(cfg, parts, weights_precision.dtype if weights_precision else None,
                                      weights=trains or generator.needs_weights, shared=shared)
        aligner_name, alignment = align(parts, bundle, run_dir, tracker)
        if not main:
            exit_code = 0
            return None
        if "generation" in plan:
            alignment.model.to(plan["generation"].dtype)
        if hasattr(generator, "use_adapter"):  # a server: the adapter is addressed by name
            generator.use_adapter(alignment.adapter_dir)
        namespace = generation_namespace(cfg, parts, alignment.adapter_dir)
        checked, check_records = check_alignment(cfg, parts, bundle, alignment, namespace)
        metrics, records, info, timing, cache_counts = evaluate(bundle, alignment, parts, run_dir, namespace,
                                                                check_records)
        results = results_record(cfg, parts, aligner_name, alignment, metrics, info, run_dir)
        results["alignment_check"] = checked
        results["study_settings"] = study_settings
        results |= {"timing": timing, "generation_cache": {"namespace": namespace, **cache_counts},
                    "base_model_load": base_load, "job": job_record(started), "config": resolved,
                    "config_hash": config_hash, "code_version": code_version()}
        results["identity"] = identities(results)  # what analysis groups and deduplicates by (W&B has it too)
        results["wandb"] = tracker.record()
        write_json_atomic(results_path, results)
        tracker.log_results(results, records)
        exit_code = 0
    finally:
        if shared and alignment is not None:
            detach_adapter(alignment.model)
        elif shared:  # failed while attaching the adapter: the base may hold part of it
            _BASE.clear()
        tracker.finish(exit_code)
    log.info(f"results in {results_path}")
    return results


TRAINING_STATE = "stages"  # aligners keep each stage's checkpoints and best adapter here


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


def train(cfg: DictConfig) -> dict | None:
    """Align the base model to the value distribution, then evaluate it.

    Aligners that train get the dataset and Lightning Trainers; the others (vanilla, icl) get neither.
    """
    aligner = instantiate(cfg.aligner)
    data = instantiate(cfg.dataset) if aligner.trains else None
    make_trainer = instantiate(cfg.trainer, _partial_=True) if aligner.trains else None
    if aligner.trains:
        check_process_launch(cfg)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # imported by now
        logging.getLogger(name).handlers.clear()  # log once, through Hydra's handlers

    def align(parts, bundle, run_dir, tracker):
        def trainer_for(stage, **kwargs):
            return make_trainer(logger=tracker.lightning_logger(stage), precision=parts["precision"]["training"].lightning,
                                **kwargs)

        alignment = aligner.align(bundle, parts["value"], data, run_dir, trainer_for if aligner.trains else None)
        alignment.model_type = alignment.model_type or aligner.name
        if data is not None:
            alignment.metrics["dataset"] = data.record()
        if alignment.adapter_dir and main_process():  # resolved against the whole config (values use paths.*)
            origin = {"aligner": aligner.name, "model_type": alignment.model_type,
                      **{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "value")}}
            OmegaConf.save(origin, alignment.adapter_dir / ADAPTER_ORIGIN)
        return aligner.name, alignment

    return run_job(cfg, "train", align, trains=aligner.trains)


def given_on_command_line(key: str) -> bool:
    names = (o.lstrip("+~").split("=")[0].split("@")[0] for o in HydraConfig.get().overrides.task)
    return any(n == key or n.startswith(f"{key}.") for n in names)


def evaluate_only(cfg: DictConfig) -> dict | None:
    """Evaluate the base model, or the base model plus a saved LoRA adapter (`adapter_dir`).

    An adapter trained by valharm carries the model and value it was trained for (valharm.yaml);
    they are used unless `model=` / `value=` are given on the command line.
    """
    from valharm.models import check_adapter_dir, load_adapter

    adapter_dir = check_adapter_dir(cfg.adapter_dir) if cfg.adapter_dir else None
    aligner_name = "vanilla"
    if adapter_dir:
        origin = adapter_dir / ADAPTER_ORIGIN
        trained = OmegaConf.load(origin) if origin.is_file() else None
        aligner_name = trained.aligner if trained else "adapter"
        model_type = trained.get("model_type", aligner_name) if trained else aligner_name
        for key in ("model", "value"):
            if trained and not given_on_command_line(key):
                cfg[key] = trained[key]
            elif not trained and not given_on_command_line(key):
                log.info(f"{adapter_dir} has no {ADAPTER_ORIGIN}; using the default {key}="
                         f"{cfg[key].name} (pass {key}=... to choose)")

    def align(parts, bundle, run_dir, tracker):
        if adapter_dir is None:
            return aligner_name, Alignment(model=bundle.model, value_aligned=False)
        model = load_adapter(bundle.model, adapter_dir) if bundle.model is not None else None  # None: served
        return aligner_name, Alignment(model=model, adapter_dir=adapter_dir, model_type=model_type,
                                       value_aligned=value_aligned(model_type))

    return run_job(cfg, "eval", align)
