"""One Hydra job, top to bottom (`train`, `evaluate_only` -> `run_job`): decide whether it runs, build its parts,
track it, align, evaluate, record. Everything it writes goes into the job's run dir."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm import study
from valharm.aligners import Alignment
from valharm.caching import digest
from valharm.errors import ValharmError
from valharm.generation.probe import server_needs
from valharm.models.loading import adapter_digest
from valharm.models.training import main_process
from valharm.runs.components import (
    build_components,
    check_alignment,
    detach_adapter,
    evaluate,
    forget_base,
    load_base,
    precision_plan,
)
from valharm.runs.inspect_log import write_inspect_logs
from valharm.runs.processes import (
    announce,
    attempt_id,
    check_process_launch,
    set_threads,
    wait_for_rank_zero,
)
from valharm.runs.records import (
    ADAPTER_ORIGIN,
    GENERATIONS,
    failure_summary,
    generation_key,
    generation_namespace,
    identities,
    job_record,
    outputs_digests,
    results_record,
    run_context,
    value_aligned,
)
from valharm.runs.rundir import (
    RESULTS,
    RESULTS_SCHEMA,
    Decision,
    archive_results,
    code_version,
    data_digests,
    decide,
    failed_items,
    fingerprint,
    keep_training_state,
    write_json_atomic,
)
from valharm.runs.tracking import NoTracker, flatten

log = logging.getLogger("valharm")


def admission(cfg: DictConfig, run_dir: Path, trains: bool) -> tuple[Decision, dict]:
    """Whether the job runs (skip a finished run, resume training, or start afresh), and what it is computed from:
    the resolved config, its data digests, its fingerprint and, for training jobs, the DDP attempt."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data = data_digests(resolved)
    job = {"resolved": resolved, "data": data, "attempt": attempt_id() if trains else None,  # DDP ranks started together
           "config_hash": fingerprint(resolved, adapter_digest(cfg.get("adapter_dir")), data)}
    if job["attempt"] and not main_process():  # wait until rank 0 has decided and cleaned up
        skip = wait_for_rank_zero(run_dir, job["attempt"]) == "skip"
        return Decision(skip=skip), job
    decision = decide(run_dir, resolved, data, job["config_hash"], cfg.skip_finished)
    if decision.skip and job["attempt"]:
        announce(run_dir, job["attempt"], "skip")
    return decision, job


def write_results(cfg: DictConfig, parts: dict, run_dir: Path, job: dict, done: dict) -> dict:
    """The results record (results.json, the earlier one archived) and the tracker's copy of it and its records."""
    alignment, tracker = done["alignment"], parts["tracker"]
    results = results_record(cfg, parts, done["aligner_name"], alignment, done["metrics"], done["info"], run_dir)
    key = generation_key(cfg, parts, alignment.adapter_dir, done["bundle"])
    results |= {"alignment_check": done["checked"], "study_settings": job["study_settings"], "timing": done["timing"],
                "generation_cache": {"namespace": done["namespace"], "key": key, **done["cache_counts"]},
                "base_model_load": done["base_load"], "job": job_record(job["started"]), "config": job["resolved"],
                "config_hash": job["config_hash"], "code_version": code_version(), "data_digests": job["data"],
                "intervals": done["intervals"],
                "served_capabilities": getattr(parts["generator"], "capabilities", None),  # generation=openai
                "generation_counts": dict(getattr(parts["generator"], "counts", None) or {}) or None,
                "schema": RESULTS_SCHEMA}
    results["identity"] = identities(results)  # what analysis groups and deduplicates by (W&B has it too)
    results["records"] = {"file": GENERATIONS, "outputs": outputs_digests(done["records"])}
    results["inspect_log"] = write_inspect_logs(results, done["records"], run_dir, cfg.get("inspect_log", "auto"))
    results["wandb"] = tracker.record()
    archive_results(run_dir)  # the earlier results, if any, are kept in results.history/
    write_json_atomic(run_dir / RESULTS, results)
    tracker.log_results(results, done["records"])
    unscored = failed_items(results)
    if unscored:  # a dead or failing service: the run is not finished, and says so
        raise ValharmError(f"{unscored} item(s) could not be scored ({failure_summary(results)}); every finished "
                           f"generation and verdict is kept: run the same command again to score the rest")
    return results


def align_and_evaluate(cfg: DictConfig, parts: dict, align, run_dir: Path, trains: bool, shared: bool,
                       done: dict) -> dict:
    """Load the base, align it (the callback), then check and evaluate the aligned model, filling `done` as it goes
    (the caller detaches an attached adapter even when a later step fails); extra DDP processes only train."""
    plan, generator = parts["precision"], parts["generator"]
    weights_precision = plan.get("training", plan.get("generation"))
    bundle, base_load = load_base(cfg, parts, weights_precision.dtype if weights_precision else None,
                                  weights=trains or generator.needs_weights, shared=shared)
    if hasattr(generator, "probe") and main_process():  # a server: asked what it can do before any work
        generator.probe(bundle.tokenizer, server_needs(parts["benchmarks"], adapter=trains))
    aligner_name, alignment = align(parts, bundle, run_dir, parts["tracker"])
    done |= {"bundle": bundle, "base_load": base_load, "aligner_name": aligner_name, "alignment": alignment}
    if not main_process():
        return done
    if "generation" in plan:
        alignment.model.to(plan["generation"].dtype)
    if hasattr(generator, "use_adapter"):  # a server: the adapter is addressed by name
        generator.use_adapter(alignment.adapter_dir)
    done["namespace"] = namespace = generation_namespace(cfg, parts, alignment.adapter_dir, bundle)
    base_namespace = generation_namespace(cfg, parts, None, bundle)  # the untuned base's generations
    done["checked"], check_records = check_alignment(parts, bundle, alignment, namespace, base_namespace)
    evaluated = evaluate(bundle, alignment, parts, run_dir, namespace, base_namespace, check_records)
    return done | dict(zip(("metrics", "records", "info", "timing", "cache_counts", "intervals"), evaluated))


def run_job(cfg: DictConfig, job_type: str, align, trains: bool = False) -> dict | None:
    """One job, top to bottom: decide whether it runs, build its parts, track it, align (the callback), evaluate,
    record. `trains`: the job trains, so it needs a training precision as well as a generation one."""
    run_dir, name, group = run_context()
    started, main = time.time(), main_process()
    set_threads(cfg.get("threads"))
    decision, job = admission(cfg, run_dir, trains)
    if decision.skip:
        return decision.previous
    choices = dict(HydraConfig.get().runtime.choices)
    preset = choices.get("preset")
    job |= {"started": started, "study_settings": study.record(job["resolved"], preset, choices)}
    if preset:
        log.info(f"preset={preset}; differs from the study in: "
                 f"{'; '.join(job['study_settings']['differences']) or 'nothing'}")
    parts = build_components(cfg, trains)
    if not main:  # an extra DDP process: it trains, rank 0 tracks and writes
        parts["tracker"] = NoTracker()
    parts["precision"] = precision_plan(cfg, parts, training=trains)
    tracker = start_tracking(parts, job["resolved"], run_dir, name, group, job_type, job["config_hash"])
    if main and trains:
        keep_training_state(run_dir, job["config_hash"], resume=decision.resume_training)
    if main and job["attempt"]:
        announce(run_dir, job["attempt"], "run")
    shared = job_type == "eval" and threading.current_thread() is threading.main_thread()  # jobs in threads: no
    done, exit_code = {}, 1
    try:
        done = align_and_evaluate(cfg, parts, align, run_dir, trains, shared, done)
        results = write_results(cfg, parts, run_dir, job, done) if main else None
        exit_code = 0
    except KeyboardInterrupt:
        log.warning(f"interrupted: nothing half-written is left in {run_dir}; run the same command again (for a "
                    f"single run, with hydra.run.dir={run_dir}) to resume: trained epochs, generations and verdicts "
                    f"are kept")
        raise
    finally:
        if shared and done.get("alignment") is not None:
            detach_adapter(done["alignment"].model)
        elif shared:  # failed while attaching the adapter: the base may hold part of it
            forget_base()
        tracker.finish(exit_code)
    if main:
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
