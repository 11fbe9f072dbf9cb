"""The validation job (`python -m valharm.validate`): train VIM for two opposed targets in three arms on one base
load — positive control (labels cued in the text), real data, shuffled labels — read every adapter, the untuned
model and ICL over the whole answer space, measure the levels and write `validation.json` and `verdict.md`.

Rerunning into the same run dir resumes: finished training stages are reloaded, a stage killed mid-way continues
from its last checkpoint, and ratings come from the run dir's cache. `report_only=true` measures what a run dir
holds (finished adapters, cached ratings) without training or reading anything, naming the runs it lacks.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from valharm.aligners.icl import persona_prompt
from valharm.benchmarks.pvq40 import load_items
from valharm.caching import Cache, digest
from valharm.data.touche import cue_labels
from valharm.errors import ValharmError
from valharm.generation.requests import LoglikelihoodRequest, cached_run, request_key
from valharm.models.loading import adapter_digest
from valharm.models.precision import choose, hardware
from valharm.runs.records import package_versions
from valharm.runs.rundir import code_version, generation_code_version, keep_training_state, write_json_atomic
from valharm.values import answer_space as A
from valharm.values.distributions import VALUES, extreme, snake
from valharm.values.questionnaire import argument_statement, rating_prompt, value_answers
from valharm.values.verdict import ARM_SUFFIXES, measure, report

log = logging.getLogger("valharm")
ARMS = {"": {}, "_shuffled": {"shuffle_labels": True}, "_cued": {"cue": "labels"}}  # run suffix -> aligner settings
SETS = {"": ("fit", "test", "table", "pvq"), "_shuffled": ("test", "table"),
        "_cued": ("fit_cued", "test_cued", "table", "pvq")}


def subsets(splits: dict, cfg: DictConfig) -> dict:
    """The arguments each part uses: training/valid (the heads of the dataset's splits), the M0 set (the first
    training arguments), the M1 test set and the M0b contexts (the first test arguments)."""
    def head(frame, n):
        return frame.head(n) if n else frame

    train = head(splits["train"], cfg.train_arguments)
    test = head(splits["test"], cfg.test_arguments)
    return {"train": train, "valid": head(splits["valid"], cfg.valid_arguments), "test": test,
            "fit": train.head(cfg.fit_arguments), "contexts": test.head(cfg.table_contexts)}


def all_requests(bundle, parts: dict, items, system: str | None = None) -> dict[str, list]:
    """Every rating request, by set: fit (M0), test (M1), their cued versions, table (M0b), pvq (M2); with
    `system` (an ICL persona) as the system prompt."""
    def prompt(text: str) -> str:
        return bundle.format_prompt(rating_prompt(text), system)

    def arguments(frame, prefix: str) -> list:
        return A.argument_requests(bundle, frame, prefix, system)

    table = [LoglikelihoodRequest(f"table/{i}/{v}", prompt(argument_statement(row)) + f"{v} is", value_answers(v))
             for i, (_, row) in enumerate(parts["contexts"].iterrows()) for v in VALUES]
    return {"fit": arguments(parts["fit"], "fit"), "test": arguments(parts["test"], "test"),
            "fit_cued": arguments(cue_labels(parts["fit"]), "fit_cued"),
            "test_cued": arguments(cue_labels(parts["test"]), "test_cued"), "table": table,
            "pvq": [A.answer_space_request(f"pvq40/{row.item}", prompt(row.text)) for row in items.itertuples()]}


class Validation:
    """One base load, its caches and the runs rated on it."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        spec, self.generator = instantiate(cfg.model), instantiate(cfg.generation)
        self.plan = {"training": choose(cfg.precision, cfg.trainer.accelerator, spec.width()),
                     "generation": choose(cfg.precision, self.generator.device, spec.width())}
        self.bundle = spec.load(self.plan["training"].dtype, weights=not cfg.report_only)
        self.parts = subsets(instantiate(cfg.dataset), cfg)
        self.items = load_items(cfg.pvq_path)
        self.requests = all_requests(self.bundle, self.parts, self.items)
        self.cache = Cache(cfg.ratings_cache or out / "ratings.sqlite")
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.config_hash = digest({"config": self.resolved, "code": code_version()})
        self.make_trainer = instantiate(cfg.trainer, _partial_=True)
        self.timing, self.outputs, self.training = {}, {}, {}

    def namespace(self, adapter_dir) -> str:
        model = OmegaConf.to_container(self.cfg.model, resolve=True)
        return "validate/" + digest({"model": model, "dtype": self.plan["generation"].name,
                                     "adapter": adapter_digest(adapter_dir), "code": generation_code_version()})

    def rate(self, run: str, model, requests: dict, sets: tuple, adapter_dir=None) -> None:
        start = time.perf_counter()
        model.to(self.plan["generation"].dtype)
        self.outputs[run] = {name: cached_run(self.generator, model, self.bundle.tokenizer, requests[name], self.cache,
                                              self.namespace(adapter_dir), desc=f"{run} {name}")[0] for name in sets}
        self.timing[f"{run}_rating_s"] = round(time.perf_counter() - start, 1)

    def cached(self, run: str, requests: dict, sets: tuple, adapter_dir=None) -> None:
        """`run`'s outputs from the cache alone, when every one of its ratings is there (`report_only`)."""
        found = {}
        for name in sets:
            keys = [request_key(r) for r in requests[name]]
            known = self.cache.get(self.namespace(adapter_dir), keys)
            if len(known) < len(set(keys)):
                log.info(f"validate: {run} has {len(known)} of {len(set(keys))} {name} ratings; left out")
                return
            found[name] = [known[k] for k in keys]
        self.outputs[run] = found

    def collect(self, targets: tuple[str, str], suffixes: list[str]) -> None:
        """Every run the run dir holds, finished adapter and ratings, without training or reading anything."""
        self.cached("vanilla", self.requests, tuple(self.requests))
        for target in targets:
            icl = all_requests(self.bundle, self.parts, self.items, persona_prompt(extreme(target)))
            self.cached(f"icl_{target}", icl, ("test", "pvq"))
        for suffix in suffixes:
            for target in targets:
                adapter = self.out / (target + suffix) / "adapter"
                if adapter.is_dir():
                    self.cached(target + suffix, self.requests, SETS[suffix], adapter)
        if "vanilla" not in self.outputs:
            raise ValharmError(f"{self.out} holds no ratings of the untuned model: run the validation into it first "
                               f"(without report_only)")

    def references(self, targets: tuple[str, str]) -> None:
        """The untuned model on every set; ICL (the persona as system prompt) for each target."""
        self.rate("vanilla", self.bundle.model, self.requests, tuple(self.requests))
        for target in targets:
            icl = all_requests(self.bundle, self.parts, self.items, persona_prompt(extreme(target)))
            self.rate(f"icl_{target}", self.bundle.model, icl, ("test", "pvq"))

    def train(self, target: str, suffix: str) -> None:
        """Train (or resume) one run, rate it, and leave the base as it was."""
        run = target + suffix
        aligner = instantiate(self.cfg.aligner, **ARMS[suffix])
        start = time.perf_counter()
        self.bundle.model.to(self.plan["training"].dtype)
        keep_training_state(self.out / run, self.config_hash, resume=True)
        splits = {name: self.parts[name] for name in ("train", "valid", "test")}

        def trainer_for(stage, **kwargs):
            return self.make_trainer(logger=False, precision=self.plan["training"].lightning, **kwargs)

        alignment = aligner.align(self.bundle, extreme(target), splits, self.out / run, trainer_for)
        self.timing[f"{run}_training_s"] = round(time.perf_counter() - start, 1)
        self.training[run] = alignment.metrics
        self.rate(run, alignment.model, self.requests, SETS[suffix], alignment.adapter_dir)
        alignment.model.unload()  # the base again, for the next run
        log.info(f"validate: {run} trained in {self.timing[f'{run}_training_s']} s and rated in "
                 f"{self.timing[f'{run}_rating_s']} s")


def arm_suffixes(arms) -> list[str]:
    """The run suffixes of the arms asked for, in the order they run."""
    unknown = [arm for arm in arms if arm not in ARM_SUFFIXES]
    if unknown or not arms:
        raise ValharmError(f"validate arms={list(arms)}: choose among {', '.join(ARM_SUFFIXES)} "
                           f"(e.g. arms=[real] for a capacity rung, docs/validation.md)")
    return [suffix for arm, suffix in ARM_SUFFIXES.items() if arm in arms]


def run(cfg: DictConfig, out: Path) -> dict:
    started = time.perf_counter()
    a, b = (snake(t) for t in cfg.targets)
    names = {snake(v): v for v in VALUES}
    if a not in names or b not in names or a == b:
        raise ValharmError(f"validate targets {list(cfg.targets)}: give two different basic values "
                           f"(e.g. targets=[power,universalism])")
    suffixes = arm_suffixes(cfg.arms)
    job = Validation(cfg, out)
    log.info(f"validate: {', '.join(f'{len(r)} {name}' for name, r in job.requests.items())} requests per model; "
             f"the untuned model and ICL, then {a} and {b} in the arms {', '.join(cfg.arms)}")
    if cfg.report_only:
        job.collect((a, b), suffixes)
    else:
        job.references((a, b))
        for suffix in suffixes:
            for target in (a, b):
                job.train(target, suffix)
    result = measure(cfg, job.outputs, job.parts, job.items, (names[a], names[b]))
    job.timing["total_s"] = round(time.perf_counter() - started, 1)
    result |= {"config": job.resolved, "code_version": code_version(), "hardware": hardware(),
               "precision": {k: p.record() for k, p in job.plan.items()}, "versions": package_versions(),
               "timing": job.timing, "training": job.training}
    write_json_atomic(out / "validation.json", result)
    (out / "verdict.md").write_text(report(result))
    log.info(f"validate: {result['verdict']}; see {out / 'verdict.md'}")
    return result
