"""Align then evaluate, one Hydra job: everything it writes goes into the job's run dir."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm.aligners import Alignment
from valharm.errors import ValharmError
from valharm.generation import GenerationRequest
from valharm.precision import Precision, choose, hardware
from valharm.tracking import flatten

ADAPTER_ORIGIN = "valharm.yaml"  # written next to a trained adapter: aligner, model and value configs
PACKAGES = ("valharm", "torch", "transformers", "peft", "lightning", "hydra-core", "wandb", "alt-profanity-check")


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
    from valharm.tracking import NoTracker

    configs = [c for c in (logger_cfg or {}).values() if c is not None]
    if len(configs) > 1:
        raise ValharmError(f"one logger at a time, got {', '.join(logger_cfg)}; choose one with logger=...")
    return instantiate(configs[0]) if configs else NoTracker()


def build_components(cfg: DictConfig) -> dict:
    """Instantiate every configured part first, so bad input fails before anything is trained or written."""
    parts = {
        "value": instantiate(cfg.value),
        "model": instantiate(cfg.model),
        "strategy": instantiate(cfg.prompt_strategy),
        "generator": instantiate(cfg.generation),
        "benchmarks": {name: instantiate(b) for name, b in cfg.benchmarks.items() if b is not None},
        "tracker": build_tracker(cfg.logger),
    }
    if not parts["benchmarks"]:
        raise ValharmError("no benchmarks configured; keep at least one under benchmarks")
    needs_scorer = any(name != "pvq40" for name in parts["benchmarks"])
    parts["scorer"] = instantiate(cfg.scorer) if needs_scorer else None
    return parts


def precision_plan(cfg: DictConfig, parts: dict, training: bool) -> dict[str, Precision]:
    """The precision of generation (and of training, for train jobs), from `precision` and the hardware."""
    width = parts["model"].width()
    plan = {"generation": choose(cfg.precision, parts["generator"].device, width)}
    if training:
        if "precision" in cfg.trainer:
            raise ValharmError("trainer.precision is set by valharm; choose it with precision=auto|bf16|fp16|fp32")
        plan["training"] = choose(cfg.precision, cfg.trainer.accelerator, width)
    return plan


def evaluate(bundle, alignment: Alignment, parts: dict, run_dir: Path) -> tuple[dict, list[dict], dict, dict]:
    """Generate and score every benchmark; write generations.jsonl; return (metrics, records, info, timing)."""
    metrics, records, info, timing = {}, [], {}, {}
    generator = parts["generator"]
    for name, benchmark in parts["benchmarks"].items():
        requests = benchmark.requests(bundle, parts["strategy"], alignment.system_prompt)
        start = time.perf_counter()
        outputs = generator.run(alignment.model, bundle.tokenizer, requests, desc=name)
        seconds = time.perf_counter() - start
        timing[name] = {"generation_s": round(seconds, 3), "requests": len(requests),
                        "requests_per_s": round(len(requests) / seconds, 2)}
        if requests and isinstance(requests[0], GenerationRequest):  # loglik scoring generates nothing
            timing[name] |= {"new_tokens": generator.new_tokens, "tokens_per_s": round(generator.new_tokens / seconds, 1)}
        result = benchmark.evaluate(requests, outputs, parts["value"], parts["scorer"])
        metrics[name], info[name] = result.metrics, result.info
        records.extend(result.records)
    with (run_dir / "generations.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return metrics, records, info, timing


def results_record(cfg: DictConfig, parts: dict, aligner_name: str, alignment: Alignment, metrics: dict,
                   info: dict, run_dir: Path) -> dict:
    return {
        "value": parts["value"].to_record(),
        "aligner": aligner_name,
        "model_type": alignment.model_type or aligner_name,
        "model": parts["model"].name,
        "prompt_strategy": parts["strategy"].name,
        "scorer": parts["scorer"].record() if parts["scorer"] else None,
        "generator": parts["generator"].name,
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
    if results_path.exists() and cfg.skip_finished:
        print(f"valharm: {results_path} exists; skipping finished job (skip_finished=false to redo it)")
        return json.loads(results_path.read_text())
    parts = build_components(cfg)
    parts["precision"] = precision_plan(cfg, parts, training=trains)
    value = parts["value"]
    config = {**flatten(OmegaConf.to_container(cfg, resolve=True)),
              **flatten({"value": {**value.as_dict(), "name": value.name, "coding": value.coding}}),
              **{f"precision/{path}": p.name for path, p in parts["precision"].items()}}
    tracker = parts["tracker"]
    tracker.start(run_dir, name, group, job_type, config)
    exit_code = 1
    if results_path.exists():  # a redo: keep the earlier results aside, never beside half-new outputs
        os.replace(results_path, run_dir / "results.previous.json")
    plan = parts["precision"]
    try:
        bundle = parts["model"].load(plan.get("training", plan["generation"]).dtype)
        aligner_name, alignment = align(parts, bundle, run_dir, tracker)
        alignment.model.to(plan["generation"].dtype)
        metrics, records, info, timing = evaluate(bundle, alignment, parts, run_dir)
        results = results_record(cfg, parts, aligner_name, alignment, metrics, info, run_dir)
        results["timing"] = timing
        results["wandb"] = tracker.record()
        write_json_atomic(results_path, results)
        tracker.log_results(results, records)
        exit_code = 0
    finally:
        tracker.finish(exit_code)
    print(f"valharm: results in {results_path}")
    return results


def train(cfg: DictConfig) -> dict | None:
    """Align the base model to the value distribution, then evaluate it.

    Aligners that train get the dataset and Lightning Trainers; the others (vanilla, icl) get neither.
    """
    aligner = instantiate(cfg.aligner)
    data = instantiate(cfg.dataset) if aligner.trains else None
    make_trainer = instantiate(cfg.trainer, _partial_=True) if aligner.trains else None
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
        if alignment.adapter_dir:  # resolved against the whole config: value configs point into paths.*
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
                print(f"valharm: {adapter_dir} has no {ADAPTER_ORIGIN}; using the default {key}="
                      f"{cfg[key].name} (pass {key}=... to choose)")

    def align(parts, bundle, run_dir, tracker):
        if adapter_dir is None:
            return aligner_name, Alignment(model=bundle.model)
        return aligner_name, Alignment(model=load_adapter(bundle.model, adapter_dir), adapter_dir=adapter_dir,
                                       model_type=model_type)

    return run_job(cfg, "eval", align)
