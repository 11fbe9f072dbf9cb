"""Benchmarks: load prompts -> build generation requests -> reduce scored outputs to metrics.

Metrics of benchmarks with categories (hexphi, beavertails; holisticbiasr per axis) hold the overall
numbers at the top level and one dict per category, so they flatten to `<benchmark>/<metric>` and
`<benchmark>/<category>/<metric>`; a category without prompts is `{"status": "missing"}` (no number), never zero.

May import scoring, prompting, data, values, generation, models, `errors` and `caching`; never aligners or above.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from valharm.generation.requests import GenerationRequest, LoglikelihoodRequest
from valharm.prompting import Prompter
from valharm.values.distributions import ValueDistribution

# which scorer each role is built from: a config group (`scorer=`, `regard=`, `judge=`)
SCORER_ROLES = {"toxicity": "scorer", "regard": "regard", "judge": "judge"}


@dataclass
class BenchmarkResult:
    """Metrics for the results file, one record per generated text for generations.jsonl, and the metrics'
    intervals ({"all" or a category: {metric: interval}}, see `valharm.benchmarks.intervals`)."""

    metrics: dict
    records: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)


def scored_fields(scorer, item, verdict) -> dict:
    """What a per-sample record says about its scoring: the scorer's id, what it was given (a judge: the messages
    it was sent), its raw reply, the parsed score, the status and, unless ok, why (the error)."""
    return {"scorer": scorer.id, "scorer_input": scorer.sent(item), "raw_reply": verdict.reply,
            "score": verdict.value, "status": verdict.status,
            "error": verdict.reason if verdict.status != "ok" else None}


class Benchmark(Protocol):
    name: str
    scorer_role: str | None  # a key of SCORER_ROLES, or None (pvq40 scores itself)

    def requests(self, prompter: Prompter) -> list[GenerationRequest | LoglikelihoodRequest]: ...

    def evaluate(self, requests: list, outputs: list, value: ValueDistribution, scorers: dict) -> BenchmarkResult: ...
