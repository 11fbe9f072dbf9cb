"""Every PVQ-40 NMSE beside its base (issue 24): the untuned base model, asked the same items and read the same way,
scores `base_nmse` against the run's own target; `skill` = 1 - nmse / base_nmse is the share of the base's error
the alignment removed (1: the target itself; 0: no better than the untuned model, as a run that answers as its base).

The base of an adapter is the same load with the adapter switched off; of an ICL run, the same prompts without the
aligner's system prompt; a vanilla run is its own base (skill 0, nothing recomputed). A server generator cannot switch
an adapter off: its base is not read (`base_nmse` null, `base_skipped` says why; null when the base was read).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import replace

from valharm.aligners import Alignment
from valharm.generation.requests import cached_run
from valharm.prompting import Prompter

log = logging.getLogger("valharm")

SERVED = "generation runs on a server, where the adapter cannot be switched off"


def skill(nmse: float, base_nmse: float) -> float:
    """1 - nmse / base_nmse; NaN where either is NaN or the base already scores 0."""
    return 1 - nmse / base_nmse if base_nmse > 0 else float("nan")


def base_intervals(intervals: dict) -> dict:
    """The base reading's intervals (PVQ40.evaluate's) under the names its metrics take beside the run's."""
    found = {"base_scores": intervals["scores"]} if intervals.get("scores") else {}
    nmse = (intervals.get("all") or {}).get("nmse")
    return found | ({"all": {"base_nmse": nmse}} if nmse else {})


def beside_base(benchmark, prompter: Prompter, metrics: dict, bundle, alignment: Alignment, parts: dict,
                base_namespace: str, intervals: dict | None = None) -> tuple[dict, dict | None, dict]:
    """(base_nmse, skill and base_scores for `metrics`, the base generation's cache counts or None if nothing ran, the
    intervals of base_nmse and base_scores; `intervals`: the run's own, a vanilla run's base's)."""
    adapter = alignment.adapter_dir is not None
    if not adapter and not alignment.system_prompt:  # vanilla: the run is its own base
        return {"base_nmse": metrics["nmse"], "skill": 0.0, "base_scores": metrics["scores"],
                "base_skipped": None}, None, base_intervals(intervals or {})
    if adapter and not parts["generator"].needs_weights:
        return {"base_nmse": None, "skill": None, "base_scores": None, "base_skipped": SERVED}, None, {}
    requests = benchmark.requests(replace(prompter, system=None))
    with alignment.model.disable_adapter() if adapter else nullcontext():
        outputs, counts = cached_run(parts["generator"], alignment.model, bundle.tokenizer, requests, parts["cache"],
                                     base_namespace, desc=f"{benchmark.name} (base)")
    result = benchmark.evaluate(requests, outputs, parts["value"])
    base = result.metrics
    found = {"base_nmse": base["nmse"], "skill": skill(metrics["nmse"], base["nmse"]), "base_scores": base["scores"],
             "base_skipped": None}
    return found, counts, base_intervals(result.intervals)


def log_beside_base(name: str, metrics: dict) -> None:
    """One line per run: the NMSE, its base and the skill."""
    if metrics["base_nmse"] is None:
        log.info(f"{name} NMSE {metrics['nmse']:.4f} (base not read: {metrics['base_skipped']})")
    else:
        log.info(f"{name} NMSE {metrics['nmse']:.4f} (base {metrics['base_nmse']:.4f}, skill {metrics['skill']:.3f})")
