import math

import pytest

from valharm.benchmarks.pvq40 import PVQ40, answer_distribution, load_items
from valharm.benchmarks.rtp import RealToxicityPrompts, expected_max_toxicity, load_prompts, toxicity_probability
from valharm.errors import ValharmError
from valharm.prompting import Prompter, PromptStrategy
from valharm.scoring import Scorer, Verdict
from valharm.values.distributions import extreme


def test_rtp_metrics_by_hand():
    scores = [[0.1, 0.7], [0.2, 0.3], [0.5, 0.0]]
    assert expected_max_toxicity(scores) == pytest.approx((0.7 + 0.3 + 0.5) / 3)
    assert toxicity_probability(scores) == pytest.approx(2 / 3)


def test_rtp_prompts_from_the_distributed_csv(shared_data):
    prompts = load_prompts(shared_data / "real_toxic_prompts.csv", limit=3000)
    assert len(prompts) == 3000
    assert prompts[1].startswith("A shocking photo, showing a young boy")


class CountingScorer(Scorer):
    kind, task = "counting", "toxicity"

    def __init__(self, cache_path=None):
        super().__init__(cache_path, progress=False)
        self.calls = []

    def settings(self):
        return {"scale": 100}

    def _score(self, texts, done):
        self.calls.append(list(texts))
        for i, t in enumerate(texts):
            done(i, Verdict(len(t) / 100))


def values(verdicts):
    return [v.value for v in verdicts]


def test_scores_are_cached_by_scorer_and_text(tmp_path):
    scorer = CountingScorer(tmp_path / "cache.sqlite")
    assert values(scorer.score(["ab", "abcd", "ab"])) == [0.02, 0.04, 0.02]
    again = CountingScorer(tmp_path / "cache.sqlite")
    assert values(again.score(["abcd", "xyz"])) == [0.04, 0.03]
    assert scorer.calls == [["ab", "abcd"]] and again.calls == [["xyz"]]
    assert again.counts["cache_hits"] == 1 and again.counts["cache_misses"] == 1


def prompter(bundle):
    return Prompter(bundle, PromptStrategy(), extreme("power"))


def test_rtp_evaluate_reduces_k_samples_per_prompt(tiny_bundle):
    bench = RealToxicityPrompts(num_prompts=2, num_samples=2)
    requests = bench.requests(prompter(tiny_bundle))  # SmolLM2's tokenizer adds no BOS
    assert [r.prompt for r in requests] == bench.prompts and requests[0].num_samples == 2
    outputs = [["x" * 80, "x" * 10], ["x" * 20, ""]]
    result = bench.evaluate(requests, outputs, extreme("power"), {"toxicity": CountingScorer()})
    assert result.metrics["expected_max_toxicity"] == pytest.approx(0.5)
    assert result.metrics["toxicity_probability"] == 0.5
    assert result.metrics["empty_generations"] == 1 and len(result.records) == 4


def test_pvq_counts_unparseable_answers(tiny_bundle):
    bench = PVQ40(scoring="generate")
    requests = bench.requests(prompter(tiny_bundle))
    outputs = [["6"] if "Power" == v else ["no idea"] for v in bench.items["value"]]
    result = bench.evaluate(requests, outputs, extreme("power"))
    assert result.metrics["invalid"] == 9 and result.metrics["scores"]["Power"] == 6
    assert math.isnan(result.metrics["nmse"]) and result.metrics["nmse_scored_values"] == 0.0
    assert len(result.metrics["values_without_valid_answer"]) == 9 and result.info["shipped_sample"]
    outputs = [["6"] if "Power" == v else ["2 - not like me"] for v in bench.items["value"]]
    assert bench.evaluate(requests, outputs, extreme("power")).metrics["nmse"] == pytest.approx(9 * 0.04 / 10)


def test_answer_distribution_by_hand():
    rating, mean, probs = answer_distribution([math.log(p) for p in (0.05, 0.1, 0.2, 0.4, 0.15, 0.1)])
    assert rating == 4 and mean == pytest.approx(0.05 + 0.2 + 0.6 + 1.6 + 0.75 + 0.6)
    assert probs == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.15, 0.1])
    _, mean, probs = answer_distribution([-1.0, -3.0, -3.0, -3.0, -3.0, -3.0])  # renormalised over the six
    total = math.exp(-1) + 5 * math.exp(-3)
    assert probs[0] == pytest.approx(math.exp(-1) / total) and mean == pytest.approx(
        sum(r * math.exp(-1 if r == 1 else -3) for r in range(1, 7)) / total)


def test_pvq_loglik_mode_scores_every_item_and_records_its_mode(tiny_bundle):
    bench = PVQ40(scoring="loglik")
    requests = bench.requests(prompter(tiny_bundle))
    assert all(r.continuations == ("1", "2", "3", "4", "5", "6") for r in requests)
    sure_six = [math.log(p) for p in (0.01, 0.01, 0.01, 0.01, 0.06, 0.9)]
    sure_two = [math.log(p) for p in (0.3, 0.6, 0.04, 0.03, 0.02, 0.01)]
    outputs = [sure_six if v == "Power" else sure_two for v in bench.items["value"]]
    result = bench.evaluate(requests, outputs, extreme("power"))
    metrics = result.metrics
    assert metrics["scoring"] == "loglik" and result.info["scoring"] == "loglik" and metrics["invalid"] == 0
    assert metrics["scores"]["Power"] == 6 and metrics["scores"]["Tradition"] == 2
    assert metrics["nmse"] == pytest.approx(9 * (1 / 5) ** 2 / 10)
    assert metrics["scores_expected"]["Power"] == pytest.approx(0.01 * (1 + 2 + 3 + 4) + 0.06 * 5 + 0.9 * 6)
    assert metrics["scores_expected"]["Tradition"] == pytest.approx(0.3 + 1.2 + 0.12 + 0.12 + 0.1 + 0.06)
    assert {"rating", "expected_rating", "probabilities"} <= set(result.records[0])


def test_pvq_slot_mode_is_the_default_and_reads_the_rating_after_the_reason(tiny_bundle):
    bench = PVQ40()
    assert bench.scoring == "slot"
    requests = bench.requests(prompter(tiny_bundle))
    assert all(r.slot == "my answer is" and r.continuations == tuple(f" {n}" for n in range(1, 7)) for r in requests)
    sure_six = [math.log(p) for p in (0.01, 0.01, 0.01, 0.01, 0.06, 0.9)]
    sure_two = [math.log(p) for p in (0.3, 0.6, 0.04, 0.03, 0.02, 0.01)]
    outputs = [{"reply": "Power is very important to me, so my answer is 6.", "slot_written": v == "Power",
                "read_after": "...", "logprobs": sure_six if v == "Power" else sure_two} for v in bench.items["value"]]
    result = bench.evaluate(requests, outputs, extreme("power"))
    metrics = result.metrics
    assert metrics["scoring"] == "slot" and metrics["invalid"] == 0
    assert metrics["scores"]["Power"] == 6 and metrics["scores"]["Tradition"] == 2
    assert metrics["slot_appended"] == len(requests) - 1  # the shipped sample has one Power item
    assert result.records[0]["text"].startswith("Power is") and "slot_written" in result.records[0]


def test_pvq_answer_space_reads_every_item_over_the_whole_answer_on_the_tiny_model(tiny_bundle):
    from valharm.generation.local import HFGenerator
    from valharm.generation.requests import AnswerTreeRequest, run_requests
    from valharm.values.distributions import VALUES

    bench = PVQ40(scoring="answer_space")
    requests = bench.requests(prompter(tiny_bundle))
    assert all(isinstance(r, AnswerTreeRequest) and len(r.branches) == 10 and len(r.leaves) == 6 for r in requests)
    outputs = run_requests(HFGenerator(progress=False, device="cpu"), tiny_bundle.model, tiny_bundle.tokenizer, requests)
    result = bench.evaluate(requests, outputs, extreme("power"))
    metrics, records = result.metrics, result.records
    assert metrics["scoring"] == "answer_space" and metrics["invalid"] == 0 and len(records) == 10
    for field in ("scores", "scores_expected"):
        assert set(metrics[field]) == set(VALUES) and all(1 <= metrics[field][v] <= 6 for v in VALUES)
    assert 0 <= metrics["nmse"] <= 1 and 0 <= metrics["nmse_expected"] <= 1
    for record in records:
        assert set(record["value_named"]) == set(VALUES)
        assert sum(record["value_named"].values()) == pytest.approx(1, abs=1e-3)
        assert sum(record["probabilities"]) == pytest.approx(1)
        assert record["rating"] == 1 + max(range(6), key=record["probabilities"].__getitem__)
        assert record["expected_rating"] == pytest.approx(sum(r * p for r, p in enumerate(record["probabilities"], 1)))
    power = next(r for r in records if r["value"] == "Power")
    assert metrics["scores_expected"]["Power"] == pytest.approx(power["expected_rating"])  # one Power item


def test_slot_requests_read_the_rating_where_the_reply_puts_it(tiny_bundle):
    from valharm.generation.local import HFGenerator
    from valharm.generation.requests import (
        GenerationRequest,
        LoglikelihoodRequest,
        SlotRequest,
        cut_at_slot,
        run_requests,
    )

    assert cut_at_slot("Power is important to me, so My Answer is 5.", "my answer is") == \
        ("Power is important to me, so My Answer is", True)
    assert cut_at_slot("I'd say 4.\n", "my answer is") == ("I'd say 4.\nMy answer is", False)
    assert cut_at_slot("", "my answer is") == ("My answer is", False)
    generator, tok = HFGenerator(progress=False), tiny_bundle.tokenizer
    prompts = [prompter(tiny_bundle).chat(q) for q in ("Rate this.", "How much is this like you?")]
    requests = [SlotRequest(str(i), p, "my answer is", (" 1", " 6"), max_new_tokens=6) for i, p in enumerate(prompts)]
    outputs = run_requests(generator, tiny_bundle.model, tok, requests)
    replies = generator.run(tiny_bundle.model, tok, [GenerationRequest(str(i), p, 6) for i, p in enumerate(prompts)])
    for out, reply, prompt in zip(outputs, replies, prompts):
        text, written = cut_at_slot(reply[0], "my answer is")
        assert out["reply"] == reply[0] and (out["read_after"], out["slot_written"]) == (text, written)
        direct = generator.run(tiny_bundle.model, tok, [LoglikelihoodRequest("x", prompt + text, (" 1", " 6"))])[0]
        assert out["logprobs"] == pytest.approx(direct, abs=1e-5)
    stored = []  # in chunks, each stored as soon as it is read (an interrupted run keeps finished chunks)
    chunked = run_requests(generator, tiny_bundle.model, tok, requests, on_batch=lambda i, o: stored.append(i), chunk=1)
    assert stored == [[0], [1]] and [o["reply"] for o in chunked] == [o["reply"] for o in outputs]


def test_loglikelihoods_equal_a_full_forward_pass(tiny_bundle):
    import torch

    from valharm.generation.local import HFGenerator
    from valharm.generation.requests import LoglikelihoodRequest
    from valharm.models.loading import encode_prompts

    answers = ("1", " yes", "not like me at all", "4. Power is important to me.")
    questions = ["Do you like music?", "Name a colour.", "What is the capital of a country you know well and why?"]
    requests = [LoglikelihoodRequest(str(i), prompter(tiny_bundle).chat(q), answers)
                for i, q in enumerate(questions)]
    ours = HFGenerator(progress=False, batch_size=8).loglikelihood(tiny_bundle.model, tiny_bundle.tokenizer, requests)
    tok = tiny_bundle.tokenizer
    with torch.no_grad():
        for request, row in zip(requests, ours):
            prompt = encode_prompts(tok, [request.prompt])[0]
            for answer, value in zip(answers, row):
                ids = tok(answer, add_special_tokens=False)["input_ids"]
                logprobs = tiny_bundle.model(input_ids=torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
                expected = sum(logprobs[len(prompt) - 1 + t, token].item() for t, token in enumerate(ids))
                assert value == pytest.approx(expected, abs=1e-4)


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
    from valharm.models.loading import LoadedModel

    bundle = LoadedModel("llama-like", model=None, tokenizer=BosTokenizer(), prompt_format="plain")
    request = RealToxicityPrompts(num_prompts=1, num_samples=1).requests(prompter(bundle))[0]
    assert request.prompt.startswith("<s>When the referee")
    assert bundle.format_prompt("Hi").startswith("<s>### Instruction:")
