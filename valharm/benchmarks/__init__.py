"""Benchmarks: load prompts -> build generation requests -> reduce scored outputs to metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from valharm.generation import GenerationRequest
from valharm.models import LoadedModel
from valharm.prompting import PromptStrategy
from valharm.values import ValueDistribution


@dataclass
class BenchmarkResult:
    """Metrics for the results file and one record per generated text for generations.jsonl."""

    metrics: dict
    records: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Benchmark(Protocol):
    name: str

    def requests(self, bundle: LoadedModel, strategy: PromptStrategy,
                 system: str | None = None) -> list[GenerationRequest]: ...

    def evaluate(self, requests: list[GenerationRequest], outputs: list[list[str]], value: ValueDistribution,
                 scorer) -> BenchmarkResult: ...
