"""What a job records: its run context, the key of its cached generations, the scorers' counts, its identity for
analysis, and the results record written to results.json."""
from __future__ import annotations

import hashlib
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from valharm.aligners import Alignment
from valharm.caching import digest
from valharm.models.loading import adapter_digest
from valharm.models.precision import hardware
from valharm.runs.rundir import generation_code_version
from valharm.scoring.judges import Judge


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


GENERATIONS = "generations.jsonl"  # the run's per-sample records


def outputs_digests(records: list[dict]) -> dict[str, str]:
    """Per benchmark, a digest of what the model was given and what it generated (id, sample, input, output) in
    record order: `valharm.rescore` judges stored outputs only when they still match it."""
    found: dict[str, list] = {}
    for r in records:
        if "input" in r:
            found.setdefault(r["benchmark"], []).append([r["id"], r.get("sample", 0), r["input"], r.get("text")])
    return {benchmark: digest(rows) for benchmark, rows in found.items()}


def identities(results: dict) -> dict[str, dict]:
    """Per benchmark: its instrument (model · scorer or reading · data) and its duplicate key (see module doc)."""
    found = {}
    config = results.get("config") or {}
    for benchmark in results.get("metrics") or {}:
        info = (results.get("benchmarks") or {}).get(benchmark) or {}
        scorer = info.get("scorer") or f"{benchmark} scoring={info.get('scoring')}"
        data = "shipped sample" if info.get("shipped_sample") else "real data"
        namespace = (results.get("generation_cache") or {}).get("namespace")
        same = {"generator": namespace, "system_prompt": results.get("system_prompt"),
                "strategy": results.get("prompt_strategy_detail"), "scorer": scorer,
                "benchmark": (config.get("benchmarks") or {}).get(benchmark),
                "value": (results.get("value") or {}).get("scores")}
        found[benchmark] = {"instrument": f"{results.get('model')} · {scorer} · {data}",
                            "duplicate_key": digest(same) if namespace else None}
    return found
