"""A job's parts: everything configured, instantiated before anything runs; the base model (shared by the evaluate
jobs of one process); the precision plan; the alignment check; and the benchmark loop that generates and scores (and
reads PVQ-40 beside the untuned base)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm.aligners import Alignment
from valharm.benchmarks import SCORER_ROLES
from valharm.benchmarks.pvq40 import PVQ40
from valharm.caching import Cache, digest
from valharm.errors import ValharmError
from valharm.generation.requests import GenerationRequest, cached_run
from valharm.models.precision import Precision, choose
from valharm.prompting import Prompter
from valharm.runs.baseline import SERVED, beside_base, log_beside_base
from valharm.runs.tracking import NoTracker
from valharm.values.wording import VALHARM

log = logging.getLogger("valharm")


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
    """The benchmarks to run (none when every one was removed): settings left without a benchmark (a preset's, for
    one removed with ~benchmark@benchmarks.<name>) are skipped with a warning."""
    chosen = {}
    for name, bench in (cfg.get("benchmarks") or {}).items():
        if bench is not None and "_target_" not in bench:
            log.warning(f"benchmarks.{name} has settings but no benchmark (removed with ~benchmark@benchmarks.{name}?); "
                        f"not run")
        elif bench is not None:
            chosen[name] = bench
    return chosen


def build_components(cfg: DictConfig, trains: bool = False) -> dict:
    """Instantiate every configured part first, so bad input fails before anything is trained or written. A job
    that trains may run no benchmark (it trains and saves its adapter); one that does not needs one."""
    parts = {
        "value": instantiate(cfg.value),
        "model": instantiate(cfg.model),
        "strategy": instantiate(cfg.prompt_strategy),
        "generator": instantiate(cfg.generation),
        "benchmarks": {name: instantiate(b) for name, b in configured_benchmarks(cfg).items()},
        "tracker": build_tracker(cfg.logger),
    }
    if not parts["benchmarks"] and not trains:
        raise ValharmError("no benchmarks configured and the aligner trains nothing, so this run would do nothing; "
                           "keep at least one benchmark (drop its ~benchmark@benchmarks.<name> override)")
    if not parts["benchmarks"]:
        log.info("no benchmarks configured: the run trains and saves its adapter, and evaluates nothing")
    parts["scorers"] = build_scorers(cfg, parts["benchmarks"])
    for benchmark in parts["benchmarks"].values():  # each judge rubric (a template file) read now: bad input fails
        if benchmark.scorer_role == "judge":        # before anything is generated or written
            parts["scorers"]["judge"].scorer(benchmark.task)
    parts["cache"] = Cache(cfg.cache.generations) if cfg.cache.generations else None
    return parts


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


def forget_base() -> None:
    """Drop the shared base (a job failed while attaching its adapter: the base may hold part of it)."""
    _BASE.clear()


def detach_adapter(model) -> None:
    """Remove a LoRA adapter attached for one job, leaving the shared base as it was loaded."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.unload()


def precision_plan(cfg: DictConfig, parts: dict, training: bool) -> dict[str, Precision]:
    """The precision of local generation (none: a server generates) and of training, for train jobs, from
    `precision` (training: `aligner.training.precision` where set) and the hardware."""
    width = parts["model"].width()
    generator = parts["generator"]
    plan = {"generation": choose(cfg.precision, generator.device, width)} if generator.needs_weights else {}
    if training:
        if "precision" in cfg.trainer:
            raise ValharmError("trainer.precision is set by valharm; choose it with precision=auto|bf16|fp16|fp32")
        # aligner.training.precision: the training's own (the study trained in fp32), else `precision`
        requested = OmegaConf.select(cfg, "aligner.training.precision", default=None) or cfg.precision
        plan["training"] = choose(requested, cfg.trainer.accelerator, width)
    return plan


def check_alignment(parts: dict, bundle, alignment: Alignment, namespace: str,
                    base_namespace: str) -> tuple[dict | None, list]:
    """The aligner's check of its adapter against the base model (vim), with the job's generator and caches:
    (summary or None, records). A server generator cannot switch the adapter off, so the check is skipped."""
    if alignment.check is None:
        return None, []
    if not parts["generator"].needs_weights:
        return {"skipped": SERVED}, []
    return alignment.check.run(alignment.model, bundle, parts["generator"], parts["cache"], namespace, base_namespace,
                               parts["value"].as_dict())


def evaluate(bundle, alignment: Alignment, parts: dict, run_dir: Path, namespace: str, base_namespace: str,
             records: list[dict] | None = None) -> tuple[dict, list[dict], dict, dict, dict, dict]:
    """Generate (cached) and score every benchmark, PVQ-40 beside the untuned base (generated under
    `base_namespace`); write generations.jsonl (after `records` given), each benchmark's records as it finishes
    (`generations.jsonl.partial` until the last one is done).

    Returns (metrics, records, info, timing, generation cache counts per benchmark, intervals per benchmark).
    """
    metrics, records, info, timing, cache_counts, intervals = {}, list(records or []), {}, {}, {}, {}
    generator = parts["generator"]
    prompter = Prompter(bundle, parts["strategy"], parts["value"] if alignment.value_aligned else None,
                        alignment.system_prompt, alignment.wording or VALHARM)
    staging = run_dir / "generations.jsonl.partial"
    with staging.open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
        for name, benchmark in parts["benchmarks"].items():
            requests = benchmark.requests(prompter)
            start = time.perf_counter()
            outputs, cache_counts[name] = cached_run(generator, alignment.model, bundle.tokenizer, requests,
                                                     parts["cache"], namespace, desc=name)
            timing[name] = generation_timing(generator, requests, cache_counts[name], time.perf_counter() - start)
            start = time.perf_counter()
            result = benchmark.evaluate(requests, outputs, parts["value"], parts["scorers"])
            timing[name]["scoring_s"] = round(time.perf_counter() - start, 3)
            metrics[name], info[name], intervals[name] = result.metrics, result.info, result.intervals
            if isinstance(benchmark, PVQ40):
                start = time.perf_counter()
                base, counts, base_bounds = beside_base(benchmark, prompter, result.metrics, bundle, alignment,
                                                        parts, base_namespace, result.intervals)
                metrics[name] |= base
                intervals[name] = {**intervals[name], **base_bounds,
                                   "all": {**intervals[name].get("all", {}), **base_bounds.get("all", {})}}
                if counts is not None:
                    cache_counts[f"{name}_base"] = counts
                    timing[name]["base_generation_s"] = round(time.perf_counter() - start, 3)
                log_beside_base(name, metrics[name])
            records.extend(result.records)
            handle.writelines(json.dumps(r) + "\n" for r in result.records)
            handle.flush()
    staging.replace(run_dir / "generations.jsonl")
    return metrics, records, info, timing, cache_counts, intervals


def generation_timing(generator, requests: list, counts: dict, seconds: float) -> dict:
    """How long one benchmark's generation took, and its rate over the requests actually run."""
    run = counts["misses"]
    timing = {"generation_s": round(seconds, 3), "requests": len(requests), "requests_run": run,
              "requests_per_s": round(run / seconds, 2) if run else None}
    if run and isinstance(requests[0], GenerationRequest):  # loglik scoring generates nothing
        timing |= {"new_tokens": generator.new_tokens, "tokens_per_s": round(generator.new_tokens / seconds, 1)}
    return timing
