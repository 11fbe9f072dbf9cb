import math

import pytest

from valharm.benchmarks.pvq40 import PVQ40, load_items
from valharm.benchmarks.rtp import RealToxicityPrompts, expected_max_toxicity, load_prompts, toxicity_probability
from valharm.errors import ValharmError
from valharm.prompting import PromptStrategy
from valharm.scoring import Scorer
from valharm.values import extreme


def test_rtp_metrics_by_hand():
    scores = [[0.1, 0.7], [0.2, 0.3], [0.5, 0.0]]
    assert expected_max_toxicity(scores) == pytest.approx((0.7 + 0.3 + 0.5) / 3)
    assert toxicity_probability(scores) == pytest.approx(2 / 3)


def test_rtp_prompts_from_the_distributed_csv(shared_data):
    prompts = load_prompts(shared_data / "real_toxic_prompts.csv", limit=3000)
    assert len(prompts) == 3000
    assert prompts[1].startswith("A shocking photo, showing a young boy")


class CountingScorer(Scorer):
    id = "counting"

    def __init__(self, cache_path=None):
        super().__init__(cache_path)
        self.calls = []

    def _score(self, texts):
        self.calls.append(list(texts))
        return [len(t) / 100 for t in texts]


def test_scores_are_cached_by_scorer_and_text(tmp_path):
    scorer = CountingScorer(tmp_path / "cache.sqlite")
    assert scorer.score(["ab", "abcd", "ab"]) == [0.02, 0.04, 0.02]
    again = CountingScorer(tmp_path / "cache.sqlite")
    assert again.score(["abcd", "xyz"]) == [0.04, 0.03]
    assert scorer.calls == [["ab", "abcd"]] and again.calls == [["xyz"]]


def test_rtp_evaluate_reduces_k_samples_per_prompt(tiny_bundle):
    bench = RealToxicityPrompts(num_prompts=2, num_samples=2)
    requests = bench.requests(tiny_bundle, PromptStrategy())  # SmolLM2's tokenizer adds no BOS
    assert [r.prompt for r in requests] == bench.prompts and requests[0].num_samples == 2
    outputs = [["x" * 80, "x" * 10], ["x" * 20, ""]]
    result = bench.evaluate(requests, outputs, extreme("power"), CountingScorer())
    assert result.metrics["expected_max_toxicity"] == pytest.approx(0.5)
    assert result.metrics["toxicity_probability"] == 0.5
    assert result.metrics["empty_generations"] == 1 and len(result.records) == 4


def test_pvq_counts_unparseable_answers(tiny_bundle):
    bench = PVQ40()
    requests = bench.requests(tiny_bundle, PromptStrategy())
    outputs = [["6"] if "Power" == v else ["no idea"] for v in bench.items["value"]]
    result = bench.evaluate(requests, outputs, extreme("power"))
    assert result.metrics["invalid"] == 9 and result.metrics["scores"]["Power"] == 6
    assert math.isnan(result.metrics["nmse"]) and result.metrics["nmse_scored_values"] == 0.0
    assert len(result.metrics["values_without_valid_answer"]) == 9 and result.info["shipped_sample"]
    outputs = [["6"] if "Power" == v else ["2 - not like me"] for v in bench.items["value"]]
    assert bench.evaluate(requests, outputs, extreme("power")).metrics["nmse"] == pytest.approx(9 * 0.04 / 10)


def test_pvq_items_file_is_checked(tmp_path, shared_data):
    (tmp_path / "bad.csv").write_text("item,value,text\n1,Powr,x\n")
    with pytest.raises(ValharmError, match="unknown values \\['Powr'\\]"):
        load_items(tmp_path / "bad.csv")
    assert len(load_items(shared_data / "pvq40.csv")) == 40


class BosTokenizer:
    """Stands in for a Llama-style tokenizer that starts every input with BOS (id 1)."""

    bos_token, bos_token_id = "<s>", 1

    def __call__(self, text):
        return {"input_ids": [1, 42]}


def test_raw_prompts_start_with_bos_for_tokenizers_that_expect_it():
    from valharm.models import LoadedModel

    bundle = LoadedModel("llama-like", model=None, tokenizer=BosTokenizer(), prompt_format="plain")
    request = RealToxicityPrompts(num_prompts=1, num_samples=1).requests(bundle, PromptStrategy())[0]
    assert request.prompt.startswith("<s>When the referee")
    assert bundle.format_prompt("Hi").startswith("<s>### Instruction:")
