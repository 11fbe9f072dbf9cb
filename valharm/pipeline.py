"""Align then evaluate, one Hydra job: everything it writes goes into the job's run dir."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from importlib.metadata import version
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm import study
from valharm.aligners import Alignment
from valharm.analysis.runs import identities
from valharm.benchmarks import SCORER_ROLES
from valharm.caching import Cache, digest
from valharm.errors import ValharmError
from valharm.generation.requests import GenerationRequest, cached_run
from valharm.models.loading import adapter_digest
from valharm.models.precision import Precision, choose, hardware
from valharm.processes import announce, attempt_id, check_process_launch, set_threads, wait_for_rank_zero
from valharm.prompting import Prompter
from valharm.rundir import (RESULTS, RESULTS_SCHEMA, Decision, archive_results, code_version, data_digests, decide, failed_items,
                            fingerprint, generation_code_version, keep_training_state, write_json_atomic)
from valharm.scoring.judges import Judge
from valharm.tracking import NoTracker, flatten
from valharm.models.training import main_process

log = logging.getLogger("valharm")


def value_aligned(model_type: str) -> bool:
    """Whether a model type is aligned to a value distribution (vim, icl) or not (vanilla, sft_*, an adapter not
    trained by valharm unless value= says what it was aligned to)."""
    return model_type not in ("vanilla", "adapter") and not model_type.startswith("sft")


ADAPTER_ORIGIN = "valharm.yaml"  # written next to a trained adapter: aligner, model and value configs
PACKAGES = ("valharm", "torch", "transformers", "peft", "lightning", "hydra-core", "wandb", "alt-profanity-check",
            "vaderSentiment", "openai")
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


def build_tracker(logger_cfg: DictConfig | None):
    """The configured tracker (`logger=wandb`), or none (`logger=none`)."""
    configs = [c for c in (logger_cfg or {}).values() if c is not None]
    if len(configs) > 1:
        raise ValharmError(f"one logger at a time, got {', '.join(logger_cfg)}; choose one with logger=...")
    return instantiate(configs[0]) if configs else NoTracker()


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


def generation_key(cfg: DictConfig, parts: dict, adapter_dir: Path | None, bundle) -> dict:
    """What cached generations depend on besides their prompts and sampling (which key each entry): the model
    and adapter, precision, the generator and its seed, the generation code, the library versions that shape
    local outputs, the stop tokens and the chat template. Recorded in results.json (`generation_cache.key`)."""
    import torch
    import transformers

    local = parts["precision"].get("generation")  # none when a server generates
    generator = parts["generator"]
    eos = getattr(getattr(bundle.model, "generation_config", None), "eos_token_id", None)
    return {"model": OmegaConf.to_container(cfg.model, resolve=True), "adapter": adapter_digest(adapter_dir),
            "dtype": local.name if local else None, "generator": generator.identity(), "seed": generator.seed,
            "code": generation_code_version(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__} if local else None,
            "stop_tokens": eos if eos is not None else bundle.tokenizer.eos_token_id,
            "chat_template": digest(bundle.tokenizer.chat_template or "")}


def generation_namespace(cfg: DictConfig, parts: dict, adapter_dir: Path | None, bundle) -> str:
    """The generation cache's namespace: a digest of `generation_key`."""
    return "generation/" + digest(generation_key(cfg, parts, adapter_dir, bundle))


def failure_summary(results: dict) -> str:
    """Which scorers failed how often, for the one error line."""
    return "; ".join(f"{sid}: {s['counts']['failed']} failed" for sid, s in (results.get("scoring") or {}).items()
                     if s["counts"].get("failed"))


def scorer_report(scorers: dict) -> dict:
    """Every scorer used (judges: each rubric), what it is and its counts: cache hits/misses, calls, retries,
    failures, invalid replies."""
    report = {}
    for role, scorer in scorers.items():
        for one in (scorer.used() if isinstance(scorer, Judge) else [scorer]):
            report[one.id] = {"role": role, **one.record(), "counts": dict(sorted(one.counts.items()))}
    return report


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
    base_namespace = generation_namespace(cfg, parts, None, bundle)
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
    staging = run_dir / "generations.jsonl.tmp"
    with staging.open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    staging.replace(run_dir / "generations.jsonl")
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
    """One job, top to bottom: decide whether it runs, build its parts, track it, align (the callback), evaluate,
    record. `trains`: the job trains, so it needs a training precision as well as a generation one."""
    run_dir, name, group = run_context()
    started = time.time()
    main = main_process()
    set_threads(cfg.get("threads"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data = data_digests(resolved)
    config_hash = fingerprint(resolved, adapter_digest(cfg.get("adapter_dir")), data)
    attempt = attempt_id() if trains else None  # DDP ranks a scheduler started together
    if attempt and not main:  # wait until rank 0 has decided and cleaned up
        if wait_for_rank_zero(run_dir, attempt) == "skip":
            return None
        decision = Decision()
    else:
        decision = decide(run_dir, resolved, data, config_hash, cfg.skip_finished)
    if decision.skip:
        if attempt:
            announce(run_dir, attempt, "skip")
        return decision.previous
    preset = HydraConfig.get().runtime.choices.get("preset")
    study_settings = study.record(resolved, preset)
    if preset:
        log.info(f"preset={preset}; differs from the study in: {'; '.join(study_settings['differences']) or 'nothing'}")
    parts = build_components(cfg)
    if not main:  # an extra DDP process: it trains, rank 0 tracks and writes
        parts["tracker"] = NoTracker()
    parts["precision"] = plan = precision_plan(cfg, parts, training=trains)
    tracker = start_tracking(parts, resolved, run_dir, name, group, job_type, config_hash)
    if main and trains:
        keep_training_state(run_dir, config_hash, resume=decision.resume_training)
    if main and attempt:
        announce(run_dir, attempt, "run")
    generator = parts["generator"]
    shared = job_type == "eval" and threading.current_thread() is threading.main_thread()  # jobs in threads: no
    alignment, exit_code = None, 1
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
        namespace = generation_namespace(cfg, parts, alignment.adapter_dir, bundle)
        checked, check_records = check_alignment(cfg, parts, bundle, alignment, namespace)
        metrics, records, info, timing, cache_counts = evaluate(bundle, alignment, parts, run_dir, namespace,
                                                                check_records)
        results = results_record(cfg, parts, aligner_name, alignment, metrics, info, run_dir)
        results |= {"alignment_check": checked, "study_settings": study_settings, "timing": timing,
                    "generation_cache": {"namespace": namespace, "key": generation_key(cfg, parts, alignment.adapter_dir,
                                                                                       bundle), **cache_counts},
                    "base_model_load": base_load,
                    "job": job_record(started), "config": resolved, "config_hash": config_hash,
                    "code_version": code_version(), "data_digests": data, "schema": RESULTS_SCHEMA}
        results["identity"] = identities(results)  # what analysis groups and deduplicates by (W&B has it too)
        results["wandb"] = tracker.record()
        archive_results(run_dir)  # the earlier results, if any, are kept in results.history/
        write_json_atomic(run_dir / RESULTS, results)
        tracker.log_results(results, records)
        unscored = failed_items(results)
        if unscored:  # a dead or failing service: the run is not finished, and says so
            raise ValharmError(f"{unscored} item(s) could not be scored ({failure_summary(results)}); every finished "
                               f"generation and verdict is kept: run the same command again to score the rest")
        exit_code = 0
    except KeyboardInterrupt:
        log.warning(f"interrupted: nothing half-written is left in {run_dir}; run the same command again (for a "
                    f"single run, with hydra.run.dir={run_dir}) to resume: trained epochs, generations and verdicts "
                    f"are kept")
        raise
    finally:
        if shared and alignment is not None:
            detach_adapter(alignment.model)
        elif shared:  # failed while attaching the adapter: the base may hold part of it
            _BASE.clear()
        tracker.finish(exit_code)
    log.info(f"results in {run_dir / RESULTS}")
    return results


def start_tracking(parts: dict, resolved: dict, run_dir: Path, name: str, group: str, job_type: str,
                   config_hash: str):
    """Start the job's tracker run (attempts of one job, requeued or resumed, share one run)."""
    value = parts["value"]
    config = {**flatten(resolved),
              **flatten({"value": {**value.as_dict(), "name": value.name, "coding": value.coding}}),
              **{f"precision/{path}": p.name for path, p in parts["precision"].items()}}
    tracker = parts["tracker"]
    tracker.start(run_dir, name, group, job_type, config,
                  run_id=digest({"run_dir": str(run_dir.resolve()), "config": config_hash})[:16])
    return tracker


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
    from valharm.models.loading import check_adapter_dir, load_adapter

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
                                       value_aligned=value_aligned(model_type) or (
                                           model_type == "adapter" and given_on_command_line("value")))

    return run_job(cfg, "eval", align)
