"""The run's per-sample records reach its run dir benchmark by benchmark, as each finishes."""
import json
from types import SimpleNamespace

import pytest

from valharm.aligners import Alignment
from valharm.benchmarks import BenchmarkResult
from valharm.errors import ValharmError
from valharm.generation.requests import GenerationRequest
from valharm.prompting import PromptStrategy
from valharm.runs.components import evaluate


class Echo:
    """Answers every prompt with one text."""

    new_tokens = 0

    def run(self, model, tokenizer, requests, desc=None, on_batch=None):
        outputs = [[f"answer to {r.prompt}"] for r in requests]
        if on_batch:
            on_batch(list(range(len(requests))), outputs)
        return outputs


class Bench:
    scorer_role = None

    def __init__(self, name: str, fails: bool = False):
        self.name, self.fails = name, fails

    def requests(self, prompter):
        return [GenerationRequest(f"{self.name}/{i}", f"{self.name} prompt {i}") for i in range(2)]

    def evaluate(self, requests, outputs, value, scorers):
        if self.fails:
            raise ValharmError(f"{self.name}: the scorer is down")
        return BenchmarkResult({"rate": 0.5}, [{"benchmark": self.name, "id": r.id, "input": r.prompt, "text": o[0]}
                                               for r, o in zip(requests, outputs)], {}, {"all": {}})


def run(tmp_path, benchmarks):
    parts = {"generator": Echo(), "strategy": PromptStrategy(), "value": None, "scorers": {}, "cache": None,
             "benchmarks": {b.name: b for b in benchmarks}}
    return evaluate(SimpleNamespace(tokenizer=None), Alignment(model=None, value_aligned=False), parts, tmp_path, "ns",
                    "base-ns")


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_of_finished_benchmarks_are_on_disk_when_a_later_one_fails(tmp_path):
    with pytest.raises(ValharmError, match="scorer is down"):
        run(tmp_path, [Bench("first"), Bench("second", fails=True)])
    assert [r["id"] for r in lines(tmp_path / "generations.jsonl.partial")] == ["first/0", "first/1"]
    assert not (tmp_path / "generations.jsonl").exists()
    run(tmp_path, [Bench("first"), Bench("second")])  # run again: the whole file, the partial one gone
    found = lines(tmp_path / "generations.jsonl")
    assert [r["id"] for r in found] == ["first/0", "first/1", "second/0", "second/1"]
    assert found[2]["input"] == "second prompt 0" and found[2]["text"] == "answer to second prompt 0"
    assert not (tmp_path / "generations.jsonl.partial").exists()
