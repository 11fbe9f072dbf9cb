"""Validate VIM on a model: `python -m valharm.validate [model=...] [trainer=gpu] ...` (conf/validate.yaml).

Trains VIM for two opposed targets and a shuffled-label control of each on one base load, rates training
arguments, test arguments, the value table and the PVQ-40 items with every adapter and with none (vanilla),
and writes `validation.json` and `verdict.md` into the run dir (see valharm.values.validation for the levels).
Rerunning into the same run dir (`hydra.run.dir=...`) resumes: finished training stages are reloaded and
ratings come from the run dir's cache.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm.values import validation
from valharm.values.alignment import expected_ratings, rating_requests, value_contrasts
from valharm.benchmarks.pvq40 import load_items
from valharm.caching import Cache, digest
from valharm.errors import ValharmError, report_errors
from valharm.generation.requests import LoglikelihoodRequest, SlotRequest, cached_run
from valharm.models.loading import adapter_digest
from valharm.runs.records import package_versions
from valharm.runs.rundir import code_version, generation_code_version, keep_training_state, write_json_atomic
from valharm.models.precision import choose, hardware
from valharm.values.questionnaire import argument_statement
from valharm.values.questionnaire import ANSWER_SLOT, SLOT_ANSWERS, rating_prompt, value_answers
from valharm.values.distributions import VALUES, extreme, snake

log = logging.getLogger("valharm")


def subsets(splits: dict, cfg: DictConfig) -> dict:
    """The arguments each part uses: training/valid (the heads of the dataset's splits), the M0 set (the first
    training arguments), the M1 test set and the M0b contexts (the first test arguments)."""
    def head(frame, n):
        return frame.head(n) if n else frame

    train = head(splits["train"], cfg.train_arguments)
    test = head(splits["test"], cfg.test_arguments)
    return {"train": train, "valid": head(splits["valid"], cfg.valid_arguments), "test": test,
            "fit": train.head(cfg.fit_arguments), "contexts": test.head(cfg.table_contexts)}


def all_requests(bundle, parts: dict, items, reply_tokens: int) -> dict[str, list]:
    """Every rating request, by set: fit (M0), test (M1), table (M0b), pvq (M2)."""
    table = [LoglikelihoodRequest(f"table/{i}/{v}", bundle.format_prompt(rating_prompt(argument_statement(row))) +
                                  f"{v} is", value_answers(v))
             for i, (_, row) in enumerate(parts["contexts"].iterrows()) for v in VALUES]
    pvq = [SlotRequest(f"pvq40/{row.item}", bundle.format_prompt(rating_prompt(row.text)), ANSWER_SLOT, SLOT_ANSWERS,
                       reply_tokens) for row in items.itertuples()]
    return {"fit": rating_requests(bundle, parts["fit"], reply_tokens, "fit"),
            "test": rating_requests(bundle, parts["test"], reply_tokens, "test"), "table": table, "pvq": pvq}


def rate(model, bundle, generator, requests: dict, cache: Cache, namespace: str, sets: tuple) -> dict:
    """Outputs of the chosen request sets, through the cache."""
    return {name: cached_run(generator, model, bundle.tokenizer, requests[name], cache, namespace, desc=name)[0]
            for name in sets}


def train_run(cfg, aligner, bundle, value, parts, run_dir: Path, trainer_for, config_hash: str):
    """Train (or resume) one VIM run; the PEFT model stays attached to the base until unloaded."""
    keep_training_state(run_dir, config_hash, resume=True)
    splits = {"train": parts["train"], "valid": parts["valid"], "test": parts["test"]}
    return aligner.align(bundle, value, splits, run_dir, trainer_for)


@hydra.main(version_base="1.3", config_path="../conf", config_name="validate")
@report_errors
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    out = Path(HydraConfig.get().runtime.output_dir)
    a, b = (snake(t) for t in cfg.targets)
    names = {snake(v): v for v in VALUES}
    if a not in names or b not in names or a == b:
        raise ValharmError(f"validate targets {list(cfg.targets)}: give two different basic values "
                           f"(e.g. targets=[power,universalism])")
    spec = instantiate(cfg.model)
    generator = instantiate(cfg.generation)
    width = spec.width()
    plan = {"training": choose(cfg.precision, cfg.trainer.accelerator, width),
            "generation": choose(cfg.precision, generator.device, width)}
    bundle = spec.load(plan["training"].dtype)
    parts = subsets(instantiate(cfg.dataset), cfg)
    items = load_items(cfg.pvq_path)
    requests = all_requests(bundle, parts, items, cfg.reply_tokens)
    cache = Cache(out / "ratings.sqlite")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    config_hash = digest({"config": resolved, "code": code_version()})
    model_key = OmegaConf.to_container(cfg.model, resolve=True)

    def namespace(adapter_dir):
        return "validate/" + digest({"model": model_key, "dtype": plan["generation"].name,
                                     "adapter": adapter_digest(adapter_dir), "code": generation_code_version()})

    make_trainer = instantiate(cfg.trainer, _partial_=True)

    def trainer_for(stage, **kwargs):
        return make_trainer(logger=False, precision=plan["training"].lightning, **kwargs)

    timing, outputs = {}, {}
    log.info(f"validate: rating {', '.join(f'{len(r)} {name}' for name, r in requests.items())} requests with the "
             f"base model, then training and rating {a}, {a}_shuffled, {b}, {b}_shuffled")
    start = time.perf_counter()
    bundle.model.to(plan["generation"].dtype)
    outputs["vanilla"] = rate(bundle.model, bundle, generator, requests, cache, namespace(None),
                              ("fit", "test", "table", "pvq"))
    timing["vanilla_rating_s"] = round(time.perf_counter() - start, 1)
    training = {}
    for target in (a, b):
        for shuffled in (False, True):
            run = f"{target}_shuffled" if shuffled else target
            aligner = instantiate(cfg.aligner, shuffle_labels=shuffled)
            start = time.perf_counter()
            bundle.model.to(plan["training"].dtype)
            alignment = train_run(cfg, aligner, bundle, extreme(target), parts, out / run, trainer_for, config_hash)
            timing[f"{run}_training_s"] = round(time.perf_counter() - start, 1)
            training[run] = alignment.metrics
            start = time.perf_counter()
            alignment.model.to(plan["generation"].dtype)
            sets = ("test", "table", "pvq") if shuffled else ("fit", "test", "table", "pvq")
            outputs[run] = rate(alignment.model, bundle, generator, requests, cache, namespace(alignment.adapter_dir),
                                sets)
            timing[f"{run}_rating_s"] = round(time.perf_counter() - start, 1)
            alignment.model.unload()  # the base again, for the next run
            log.info(f"validate: {run} trained in {timing[f'{run}_training_s']} s and rated in "
                     f"{timing[f'{run}_rating_s']} s")
    result = measure(cfg, outputs, parts, items, (names[a], names[b]))
    timing["total_s"] = round(time.perf_counter() - started, 1)
    result |= {"config": resolved, "code_version": code_version(), "precision": {k: p.record() for k, p in plan.items()},
               "hardware": hardware(), "versions": package_versions(), "timing": timing, "training": training}
    write_json_atomic(out / "validation.json", result)
    (out / "verdict.md").write_text(validation.report(result))
    log.info(f"validate: {result['verdict']}; see {out / 'verdict.md'}")


def measure(cfg: DictConfig, outputs: dict, parts: dict, items, targets: tuple[str, str]) -> dict:
    """The four levels and the verdict from every run's outputs."""
    a, b = targets
    fit = {run: expected_ratings(o["fit"]) for run, o in outputs.items() if "fit" in o}
    test = {run: expected_ratings(o["test"]) for run, o in outputs.items()}
    pvq = {run: expected_ratings(o["pvq"]) for run, o in outputs.items()}
    tables = {run: validation.value_table(o["table"], len(parts["contexts"])) for run, o in outputs.items()}
    scores = {run: extreme(run.removesuffix("_shuffled")).as_dict() for run in outputs if run != "vanilla"}
    t = cfg.thresholds
    levels = {
        "M0": validation.level_m0(fit, parts["fit"], targets, t.m0),
        "M0b": validation.level_m0b(tables, scores, t.m0b),
        "M1": validation.level_m1(test, parts["test"], targets, t.m1, t.control, cfg.resamples, cfg.seed),
        "M2": validation.level_m2(pvq, items["value"].tolist(), targets, t.m2, cfg.resamples, cfg.seed),
    }
    slot_appended = {run: {name: sum(not x["slot_written"] for x in o[name]) for name in ("fit", "test", "pvq")
                           if name in o} for run, o in outputs.items()}
    return {"targets": [a, b], "levels": levels, "verdict": validation.verdict(levels),
            "fit_contrasts": {run: value_contrasts(r, parts["fit"]) for run, r in fit.items()},
            "mean_test_rating": {run: float(r.mean()) for run, r in test.items()},
            "slot_appended": slot_appended,
            "arguments": {k: len(v) for k, v in parts.items()},
            "example_replies": {run: [x["reply"] for x in o["test"][:3]] for run, o in outputs.items()}}


if __name__ == "__main__":
    main()
